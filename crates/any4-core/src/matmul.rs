//! The CPU matmul `y = x · Wᵀ` on quantized weights, and the dense f32 baseline it replaces.
//!
//! Per output row `n`, the group decomposition
//! `y[m, n] = Σ_g ( s[n,g] · Σ_{j∈g} table[n, code] · x[m, j]  +  z[n,g] · Σ_{j∈g} x[m, j] )`
//! moves scale and zero out of the inner loop: the inner loop is a pure table-lookup dot product
//! ([`crate::simd`]), and the group sums `Σ x` are computed once per call and reused by every
//! row. Rows are split across the rayon pool; every row is computed by one thread in a fixed
//! order, so results do not depend on the thread count.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::int8::{Int8Kernel, MatmulPrecision};
use crate::simd::Isa;
use crate::view::QuantizedView;

/// Largest batch `M` that takes the decode kernels (CPU int8 path, GPU GEMV): up to here a
/// matmul is memory-bound, each weight read once for every row; above it the weight is reused
/// enough that compute-bound GEMMs win.
pub const DECODE_MAX_M: usize = 8;

/// Rows per rayon task: large enough to amortise scheduling, small enough to balance 2–64 cores.
const ROWS_PER_TASK: usize = 16;
/// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more
/// than the work (the embedded tiny model's 128 × 128 layers at batch 1).
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 16;

/// `f(task, chunk)` over `chunk`-sized pieces of `out`, on the rayon pool when `macs` is large.
fn for_each_task<F>(out: &mut [f32], chunk: usize, macs: usize, f: F)
where
    F: Fn((usize, &mut [f32])) + Sync + Send,
{
    if macs >= PARALLEL_MIN_MACS {
        out.par_chunks_mut(chunk).enumerate().for_each(f);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(f);
    }
}

impl QuantizedView<'_> {
    /// `y = x · Wᵀ` for row-major `x: [m, cols]`, returning row-major `[m, rows]` (f32
    /// accumulation). Errors if `x` is not `m × cols`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.matmul_with(x, m, MatmulPrecision::Exact)
    }

    /// [`matmul`](Self::matmul) with a choice of activation precision (see
    /// [`MatmulPrecision`]); `Int8Activations` is the fast decode path, on the CPU's fastest
    /// [`Int8Kernel`] (the f32 path without one).
    pub fn matmul_with(&self, x: &[f32], m: usize, precision: MatmulPrecision) -> Result<Vec<f32>> {
        if precision == MatmulPrecision::Int8Activations
            && let Some(kernel) = Int8Kernel::best()
        {
            return self.matmul_int8(x, m, kernel);
        }
        let (n, k) = (self.rows(), self.cols());
        check_activations(x, m, k)?;
        if m == 0 || n == 0 {
            return Ok(vec![0.0; m * n]);
        }
        let isa = Isa::detect();
        let group = self.group_len();
        // Σ_{j∈g} x[m, j] for every (m, g), shared by all rows.
        let xsum: Vec<f32> = x
            .chunks(k)
            .flat_map(|xm| xm.chunks(group).map(|c| c.iter().sum::<f32>()))
            .collect();
        // Output transposed ([n, m]) so each task owns contiguous memory; M = 1 needs no transpose.
        let mut yt = vec![0.0f32; n * m];
        for_each_task(&mut yt, ROWS_PER_TASK * m, n * k * m, |(task, out)| {
            let mut decoded = vec![0.0f32; if m > 1 { group } else { 0 }];
            for (r, y) in out.chunks_mut(m).enumerate() {
                let row = task * ROWS_PER_TASK + r;
                self.row_times(isa, row, x, &xsum, y, &mut decoded);
            }
        });
        Ok(transpose(yt, n, m))
    }

    /// `y[i] = Σ_j x[i, j] · w[row, j]` for every activation row `i`.
    fn row_times(
        &self,
        isa: Isa,
        row: usize,
        x: &[f32],
        xsum: &[f32],
        y: &mut [f32],
        decoded: &mut [f32],
    ) {
        let (k, group, groups) = (self.cols(), self.group_len(), self.groups());
        let table = self.row_table(row);
        let words = self.row_codes(row);
        let (scales, zeros) = (self.row_scales(row), self.row_zeros(row));
        y.iter_mut().for_each(|v| *v = 0.0);
        for g in 0..groups {
            let start = g * group;
            let end = (start + group).min(k);
            // Groups start on word boundaries: supported group sizes are multiples of 8.
            let gw = &words[start / 8..end.div_ceil(8)];
            if y.len() == 1 {
                let dot = isa.lut_dot(gw, table, &x[start..end]);
                y[0] += scales[g] * dot + zeros[g] * xsum[g];
            } else {
                let dec = &mut decoded[..end - start];
                isa.lut_decode(gw, table, dec);
                for (i, yi) in y.iter_mut().enumerate() {
                    let dot = isa.dot(dec, &x[i * k + start..i * k + end]);
                    *yi += scales[g] * dot + zeros[g] * xsum[i * groups + g];
                }
            }
        }
    }
}

/// Most rows of `W` per task of [`QuantizedView::matmul_panels`] (fewer when that would leave
/// threads idle): with `PANEL_K` columns, a `128 × 512` f32 panel (256 KB) stays in L2.
const PANEL_ROWS: usize = 128;
/// Fewest rows per task.
const PANEL_ROWS_MIN: usize = 32;
/// Columns of `W` dequantized at a time.
const PANEL_K: usize = 512;

/// The output pointer shared by the panel tasks, which write disjoint columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint column ranges `r0 .. r0 + rows` of `y`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the `Send + Sync` wrapper, not the field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

impl QuantizedView<'_> {
    /// `y = x · Wᵀ` for batches (prefill, perplexity, batched decode above ~8 rows): each task
    /// dequantizes a panel of up to `PANEL_ROWS × PANEL_K` of `W` into a cache-resident f32
    /// buffer and multiplies it with a register-blocked micro-kernel (`panel.rs`: our
    /// AVX-512 one, elsewhere the `gemm` crate's, as Flex's dense matmul uses), accumulating over
    /// K straight into its columns of `y`. Reads 4-bit weights once per call and never writes the
    /// dense matrix out, where the lookup path re-reads every activation row per weight row and
    /// a full dequantization writes and re-reads `rows × cols` f32.
    ///
    /// f32 throughout; results differ from [`matmul`](Self::matmul) by summation order only.
    pub fn matmul_panels(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k) = (self.rows(), self.cols());
        check_activations(x, m, k)?;
        let mut y = vec![0.0f32; m * n];
        if m == 0 {
            return Ok(y);
        }
        let isa = Isa::detect();
        // At least two tasks per thread when the matrix allows, multiples of 16 rows.
        let per_thread = n.div_ceil(2 * rayon::current_num_threads());
        let panel_rows = per_thread
            .next_multiple_of(16)
            .clamp(PANEL_ROWS_MIN, PANEL_ROWS);
        let out = Out(y.as_mut_ptr());
        let task = |task: usize| {
            let r0 = task * panel_rows;
            let rows = panel_rows.min(n - r0);
            let mut panel = vec![0.0f32; rows * PANEL_K.min(k)];
            for k0 in (0..k).step_by(PANEL_K) {
                let kc = PANEL_K.min(k - k0);
                for r in 0..rows {
                    self.dequantize_range_with(isa, r0 + r, k0, &mut panel[r * kc..][..kc]);
                }
                // SAFETY: `out` is `[m, n]`; this task alone writes columns r0 .. r0 + rows.
                unsafe {
                    crate::panel::panel_times(
                        crate::panel::Operands {
                            x,
                            m,
                            k,
                            k0,
                            panel: &panel[..rows * kc],
                            rows,
                            kc,
                        },
                        out.ptr(),
                        n,
                        r0,
                    )
                };
            }
        };
        let tasks = n.div_ceil(panel_rows);
        if n * k * m >= PARALLEL_MIN_MACS {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
        Ok(y)
    }
}

/// Dense `y = x · Wᵀ` for row-major `x: [m, k]`, `w: [n, k]`: the f32 baseline of benches, with
/// the same threading and vectorised dot product as the quantized path.
pub fn dense_matmul(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Result<Vec<f32>> {
    for (what, expected, got) in [
        ("activations [m, k]", m * k, x.len()),
        ("weights [n, k]", n * k, w.len()),
    ] {
        if expected != got {
            return Err(Error::ShapeMismatch {
                what,
                expected,
                got,
            });
        }
    }
    let isa = Isa::detect();
    let mut yt = vec![0.0f32; n * m];
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            for (r, y) in out.chunks_mut(m).enumerate() {
                let row = &w[(task * ROWS_PER_TASK + r) * k..][..k];
                for (i, v) in y.iter_mut().enumerate() {
                    *v = isa.dot(row, &x[i * k..(i + 1) * k]);
                }
            }
        });
    Ok(transpose(yt, n, m))
}

/// `x` must be `[m, k]`.
pub(crate) fn check_activations(x: &[f32], m: usize, k: usize) -> Result<()> {
    if x.len() == m * k {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        what: "activations [m, cols]",
        expected: m * k,
        got: x.len(),
    })
}

/// `[rows, cols]` → `[cols, rows]` (a no-op for a single column).
fn transpose(a: Vec<f32>, rows: usize, cols: usize) -> Vec<f32> {
    if cols == 1 {
        return a;
    }
    let mut t = vec![0.0f32; a.len()];
    for (r, row) in a.chunks(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            t[c * rows + r] = *v;
        }
    }
    t
}
