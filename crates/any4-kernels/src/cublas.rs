//! The dense GPU baseline of the kernels bench: cuBLAS bf16 GEMM (`cublasGemmEx`, f32
//! accumulation) through cudarc, on its own CUDA stream (feature `cuda`).
//!
//! `y[M, N] = x[M, K] · W[N, K]ᵀ` with row-major bf16 buffers is the column-major product
//! `yᵀ = W · xᵀ`: `transa = T` (W read as `K × N` column-major), `transb = N`, `m = N`,
//! `n = M`, `k = K`. The bench rotates over `copies` weight buffers so every call streams its
//! weight from memory, chains calls and synchronizes once, as it does for the any4 side.

use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;

/// A bf16 GEMM of one shape over rotating weight copies.
pub struct CublasBf16 {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    weights: Vec<CudaSlice<bf16>>,
    x: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
    next: usize,
    shape: (usize, usize, usize),
}

fn err(what: &str, e: impl std::fmt::Debug) -> String {
    format!("cuBLAS baseline: {what}: {e:?}")
}

impl CublasBf16 {
    /// Uploads `copies` copies of the row-major `w[N, K]` and `x[M, K]` (as bf16) to device
    /// `ordinal`.
    pub fn new(
        ordinal: usize,
        w: &[f32],
        x: &[f32],
        (m, n, k): (usize, usize, usize),
        copies: usize,
    ) -> Result<Self, String> {
        if w.len() != n * k || x.len() != m * k {
            return Err(format!(
                "cuBLAS baseline: w has {} values, x {}, shape needs {} and {}",
                w.len(),
                x.len(),
                n * k,
                m * k
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err("context", e))?;
        let stream = ctx.new_stream().map_err(|e| err("stream", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err("handle", e))?;
        let wh: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let xh: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let weights = (0..copies.max(1))
            .map(|_| stream.clone_htod(&wh).map_err(|e| err("weights", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let x = stream.clone_htod(&xh).map_err(|e| err("x", e))?;
        let y = stream.alloc_zeros::<bf16>(m * n).map_err(|e| err("y", e))?;
        Ok(Self {
            stream,
            blas,
            weights,
            x,
            y,
            next: 0,
            shape: (m, n, k),
        })
    }

    /// Queues one GEMM on the next weight copy.
    pub fn call(&mut self) -> Result<(), String> {
        let (m, n, k) = self.shape;
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        let w = &self.weights[self.next];
        self.next = (self.next + 1) % self.weights.len();
        // SAFETY: `w` holds N·K, `x` M·K and `y` M·N elements, the sizes `cfg` addresses.
        unsafe { self.blas.gemm(cfg, w, &self.x, &mut self.y) }.map_err(|e| err("gemm", e))
    }

    /// Waits for the queued GEMMs.
    pub fn sync(&self) -> Result<(), String> {
        self.stream.synchronize().map_err(|e| err("sync", e))
    }

    /// The last output, row-major `[M, N]`, as f32.
    pub fn output(&self) -> Result<Vec<f32>, String> {
        let y = self
            .stream
            .clone_dtoh(&self.y)
            .map_err(|e| err("read y", e))?;
        Ok(y.iter().map(|v| v.to_f32()).collect())
    }

    /// Microseconds per call: `calls` GEMMs queued back to back, one synchronization; after
    /// at least `warmup_ms` of the same.
    pub fn time_us(&mut self, calls: usize, warmup_ms: u64) -> Result<f64, String> {
        let start = Instant::now();
        while start.elapsed().as_millis() < warmup_ms as u128 {
            for _ in 0..calls {
                self.call()?;
            }
            self.sync()?;
        }
        let t = Instant::now();
        for _ in 0..calls {
            self.call()?;
        }
        self.sync()?;
        Ok(t.elapsed().as_secs_f64() * 1e6 / calls as f64)
    }
}
