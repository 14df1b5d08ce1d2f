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
use crate::int8::{BLOCK, MatmulPrecision, Q8Activations, quantize_activations};
use crate::simd::Isa;
use crate::view::QuantizedView;

/// Rows per rayon task: large enough to amortise scheduling, small enough to balance 2–64 cores.
const ROWS_PER_TASK: usize = 16;
/// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more
/// than the work (the embedded tiny model's 128 × 128 layers at batch 1).
const PARALLEL_MIN_MACS: usize = 1 << 16;

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
    /// [`MatmulPrecision`]); `Int8Activations` is the fast decode path.
    pub fn matmul_with(&self, x: &[f32], m: usize, precision: MatmulPrecision) -> Result<Vec<f32>> {
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
        let q8 = match (precision, isa) {
            #[cfg(target_arch = "x86_64")]
            (MatmulPrecision::Int8Activations, Isa::Avx2) => Some(quantize_activations(x, m, k)),
            _ => None,
        };
        // Output transposed ([n, m]) so each task owns contiguous memory; M = 1 needs no transpose.
        let mut yt = vec![0.0f32; n * m];
        for_each_task(&mut yt, ROWS_PER_TASK * m, n * k * m, |(task, out)| {
            let mut decoded = vec![0.0f32; if m > 1 && q8.is_none() { group } else { 0 }];
            for (r, y) in out.chunks_mut(m).enumerate() {
                let row = task * ROWS_PER_TASK + r;
                match &q8 {
                    Some(q) => self.row_times_q8(row, q, x, &xsum, y),
                    None => self.row_times(isa, row, x, &xsum, y, &mut decoded),
                }
            }
        });
        Ok(transpose(yt, n, m))
    }

    /// Int8 path of [`row_times`](Self::row_times): full blocks of 32 through the integer
    /// kernel, the centred table's `mid` folded into the zero term, the tail (`cols mod 32`) in f32.
    #[cfg(target_arch = "x86_64")]
    fn row_times_q8(&self, row: usize, q: &Q8Activations, x: &[f32], xsum: &[f32], y: &mut [f32]) {
        let (k, group, groups) = (self.cols(), self.group_len(), self.groups());
        let table = self.row_table(row);
        // SAFETY: the int8 path runs only after AVX2 and FMA were detected (`matmul_with`).
        let t8 = unsafe { crate::int8::avx2::quantize_table(table) };
        let (scales, zeros) = (self.row_scales(row), self.row_zeros(row));
        let words = self.row_codes(row);
        let full = q.blocks * BLOCK;
        for (i, yi) in y.iter_mut().enumerate() {
            // SAFETY: as for the table above.
            let mut acc = unsafe { self.row_q8(row, &t8, q, i) };
            for g in 0..groups {
                acc += (zeros[g] + scales[g] * t8.mid) * xsum[i * groups + g];
            }
            for j in full..k {
                let c = crate::pack::code(words, j) as usize;
                acc += scales[j / group] * (table[c] - t8.mid) * x[i * k + j];
            }
            *yi = acc;
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn row_times_q8(&self, _: usize, _: &Q8Activations, _: &[f32], _: &[f32], _: &mut [f32]) {
        unreachable!("the int8 path is only selected on x86-64 with AVX2")
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

/// Rows of `W` per task of [`QuantizedView::matmul_panels`].
const PANEL_ROWS: usize = 32;
/// Columns of `W` dequantized at a time: a `32 × 512` f32 panel (64 KB) stays in L2.
const PANEL_K: usize = 512;

impl QuantizedView<'_> {
    /// `y = x · Wᵀ` for batches (prefill, perplexity, batched decode above ~8 rows): each task
    /// dequantizes a `PANEL_ROWS × PANEL_K` panel of `W` into a cache-resident f32 buffer and
    /// multiplies it with a register-blocked GEMM micro-kernel (the `gemm` crate, as Flex's dense
    /// matmul uses), accumulating over K. Reads 4-bit weights once per call and never writes the
    /// dense matrix out, where the lookup path re-reads every activation row per weight row and
    /// a full dequantization writes and re-reads `rows × cols` f32.
    ///
    /// f32 throughout; results differ from [`matmul`](Self::matmul) by summation order only.
    pub fn matmul_panels(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k) = (self.rows(), self.cols());
        check_activations(x, m, k)?;
        if m == 0 || n == 0 {
            return Ok(vec![0.0; m * n]);
        }
        let isa = Isa::detect();
        // Transposed output ([n, m]): each task owns a contiguous block of rows of W.
        let mut yt = vec![0.0f32; n * m];
        for_each_task(&mut yt, PANEL_ROWS * m, n * k * m, |(task, out)| {
            let (r0, rows) = (task * PANEL_ROWS, out.len() / m);
            let mut panel = vec![0.0f32; rows * PANEL_K.min(k)];
            for k0 in (0..k).step_by(PANEL_K) {
                let kc = PANEL_K.min(k - k0);
                for r in 0..rows {
                    self.dequantize_range_with(isa, r0 + r, k0, &mut panel[r * kc..][..kc]);
                }
                // out[r·m + i] (+)= Σ_j x[i, k0 + j] · panel[r, j]: dst (i, r) has row stride
                // 1 and column stride m; lhs x (i, j) strides (k, 1); rhs panelᵀ (j, r)
                // strides (1, kc).
                // SAFETY: every index stays in bounds: x[i·k + k0 + j] with i < m, j < kc,
                // k0 + kc ≤ k; panel[r·kc + j] with r < rows; out[r·m + i].
                unsafe {
                    gemm::gemm(
                        m,
                        rows,
                        kc,
                        out.as_mut_ptr(),
                        m as isize,
                        1,
                        k0 > 0,
                        x.as_ptr().add(k0),
                        1,
                        k as isize,
                        panel.as_ptr(),
                        kc as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        Ok(transpose(yt, n, m))
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
fn check_activations(x: &[f32], m: usize, k: usize) -> Result<()> {
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
