//! Second-order calibration statistics of one layer input: the Gram matrix `H = Xᵀ·X`.
//!
//! For a linear layer `y = x·Wᵀ` and a quantized `Ŵ = W − Δ`, the squared output error summed
//! over the calibration tokens `x_t` is
//!
//! `Σ_t ‖x_t·Δᵀ‖² = tr(Δ·H·Δᵀ)`, with `H = Σ_t x_tᵀ·x_t` (`K × K`).
//!
//! So `H` is all that error feedback ([`crate::gptq`]) and the activation-scale search
//! ([`crate::act_scale`]) need to judge a quantization against the calibration set, whatever
//! the number of tokens. The same pass records `Σ x_t` (for the signed mean `x̄` that weights
//! the k-means samples) and `Σ |x_t|` (for the activation magnitudes the scale search uses).
//!
//! Memory: `8·K²` bytes per distinct layer input (f64; 2.6 MB at K = 576, 134 MB at K = 4096).
//! Layers that read the same input (q/k/v, gate/up) share one `Gram`.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::{Strided, gemm_into};

/// Tokens converted to f64 and multiplied at a time (bounds the temporary copy to
/// `CHUNK · K · 8` bytes).
const CHUNK: usize = 1024;
/// Rows of `H` per parallel task of the accumulation.
const TILE: usize = 64;

/// Running `Σ x`, `Σ |x|` and `H = Σ xᵀx` over the calibration tokens of one layer input, in
/// f64 (inputs are f32, so every product is exact and only the sums round).
///
/// Only the lower triangle of `H` is stored up to date (it is symmetric); [`matrix`](Self::matrix)
/// returns the full matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    k: usize,
    tokens: u64,
    sum: Vec<f64>,
    abs_sum: Vec<f64>,
    lower: Vec<f64>,
}

impl Gram {
    /// Bytes a `Gram` over `k` input channels holds (`H` plus the two channel sums).
    pub fn bytes(k: usize) -> u64 {
        8 * (k as u64) * (k as u64) + 16 * k as u64
    }

    /// An empty accumulator for inputs of width `k`, refused if it would need more than
    /// `budget` bytes (see [`bytes`](Self::bytes)).
    pub fn new(k: usize, budget: u64) -> Result<Self> {
        if k == 0 {
            return Err(Error::KTooSmall { k });
        }
        let bytes = Self::bytes(k);
        let fits = k
            .checked_mul(k)
            .is_some_and(|n| n < isize::MAX as usize / 8);
        if bytes > budget || !fits {
            return Err(Error::GramTooLarge { k, bytes, budget });
        }
        Ok(Gram {
            k,
            tokens: 0,
            sum: vec![0.0; k],
            abs_sum: vec![0.0; k],
            lower: vec![0.0; k * k],
        })
    }

    /// Add `tokens` rows of a row-major `[tokens, k]` input. Refuses a non-finite value (naming
    /// its token and channel) before changing anything.
    pub fn accumulate(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let k = self.k;
        if x.len() != tokens * k {
            return Err(Error::ShapeMismatch {
                what: "calibration input [tokens, K]",
                expected: tokens * k,
                got: x.len(),
            });
        }
        if let Some(idx) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteActivation {
                token: idx / k,
                channel: idx % k,
                value: x[idx],
            });
        }
        for chunk in x.chunks(CHUNK * k) {
            let t = chunk.len() / k;
            let xd: Vec<f64> = chunk.iter().map(|&v| v as f64).collect();
            for row in xd.chunks(k) {
                for ((s, a), &v) in self.sum.iter_mut().zip(&mut self.abs_sum).zip(row) {
                    *s += v;
                    *a += v.abs();
                }
            }
            // H[i, j] += Σ_t x[t, i]·x[t, j] for j ≤ (end of i's tile): lower triangle plus the
            // part of each tile's diagonal block above the diagonal (harmless, never read).
            self.lower
                .par_chunks_mut(TILE * k)
                .enumerate()
                .for_each(|(tile, h)| {
                    let (i0, rows) = (tile * TILE, h.len() / k);
                    let cols = i0 + rows;
                    let xt = Strided {
                        rows,
                        cols: t,
                        offset: i0,
                        rs: 1,
                        cs: k,
                    };
                    gemm_into(
                        (h, Strided::block(k, 0, 0, rows, cols)),
                        (&xd, xt),
                        (&xd, Strided::block(k, 0, 0, t, cols)),
                        1.0,
                        true,
                    );
                });
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    /// A Gram matrix from stored parts: `h` the full row-major `K × K` matrix (its lower
    /// triangle is used), `sum` and `abs_sum` the channel sums `Σ x` and `Σ |x|` over `tokens`.
    pub fn from_parts(
        k: usize,
        tokens: u64,
        h: Vec<f64>,
        sum: Vec<f64>,
        abs_sum: Vec<f64>,
    ) -> Result<Self> {
        for (what, expected, got) in [
            ("Gram matrix [K, K]", k * k, h.len()),
            ("channel sums [K]", k, sum.len()),
            ("channel magnitude sums [K]", k, abs_sum.len()),
        ] {
            if expected != got {
                return Err(Error::ShapeMismatch {
                    what,
                    expected,
                    got,
                });
            }
        }
        if let Some(p) = h
            .iter()
            .chain(&sum)
            .chain(&abs_sum)
            .position(|v| !v.is_finite())
        {
            return Err(Error::InvalidParameter {
                what: "Gram matrix entry",
                row: p / k,
                index: p % k,
                value: f32::NAN,
            });
        }
        Ok(Gram {
            k,
            tokens,
            sum,
            abs_sum,
            lower: h,
        })
    }

    /// Add another accumulator's tokens (same `k`).
    pub fn merge(&mut self, other: &Gram) -> Result<()> {
        if other.k != self.k {
            return Err(Error::ShapeMismatch {
                what: "Gram matrices to merge [K, K]",
                expected: self.k * self.k,
                got: other.k * other.k,
            });
        }
        for (a, b) in self.lower.iter_mut().zip(&other.lower) {
            *a += b;
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.abs_sum.iter_mut().zip(&other.abs_sum) {
            *a += b;
        }
        self.tokens += other.tokens;
        Ok(())
    }

    /// Input width `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Tokens accumulated.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// `H[i, j]` (`i`, `j` < K).
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (i, j) = if i >= j { (i, j) } else { (j, i) };
        self.lower[i * self.k + j]
    }

    /// The full symmetric `H`, row-major `K × K`.
    pub fn matrix(&self) -> Vec<f64> {
        let k = self.k;
        let mut h = self.lower.clone();
        for i in 0..k {
            for j in 0..i {
                h[j * k + i] = h[i * k + j];
            }
        }
        h
    }

    /// The signed per-channel mean `x̄` (the first-order statistic of docs/METHOD.md §3); zeros before
    /// any token.
    pub fn mean(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sum.iter().map(|s| (s / n) as f32).collect()
    }

    /// The per-channel mean magnitude `mean_t |x_t,j|` (what activation-aware scales use).
    pub fn mean_abs(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.abs_sum.iter().map(|s| (s / n) as f32).collect()
    }

    /// Mean squared output error per token, `tr(Δ·H·Δᵀ) / tokens` with `Δ = W − Ŵ`, of a
    /// row-major `[rows, K]` weight and its reconstruction. Errors on shape mismatch or before
    /// any token.
    pub fn output_error(&self, w: &[f32], w_hat: &[f32], rows: usize) -> Result<f64> {
        OutputError::new(self)?.eval(w, w_hat, rows)
    }
}

/// Evaluates `tr(Δ·H·Δᵀ) / tokens` repeatedly against one `H` (kept symmetric in f64).
#[derive(Debug, Clone)]
pub struct OutputError {
    k: usize,
    h: Vec<f64>,
}

impl OutputError {
    /// Prepare for `gram`; refuses a Gram matrix without tokens.
    pub fn new(gram: &Gram) -> Result<Self> {
        if gram.tokens == 0 {
            return Err(Error::NoCalibrationTokens);
        }
        let inv = 1.0 / gram.tokens as f64;
        let h = gram.matrix().into_iter().map(|v| v * inv).collect();
        Ok(OutputError { k: gram.k, h })
    }

    /// The same metric for inputs rescaled per channel, `x' = x / s`: `H' = S⁻¹·H·S⁻¹`.
    pub fn rescaled(&self, s: &[f32]) -> Self {
        let k = self.k;
        assert_eq!(s.len(), k, "rescaled: one scale per channel");
        let mut h = self.h.clone();
        for (i, row) in h.chunks_mut(k).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v /= s[i] as f64 * s[j] as f64;
            }
        }
        OutputError { k, h }
    }

    /// `tr(Δ·H·Δᵀ) / tokens` for `Δ = w − w_hat`, both row-major `[rows, K]`.
    pub fn eval(&self, w: &[f32], w_hat: &[f32], rows: usize) -> Result<f64> {
        let k = self.k;
        for (what, got) in [
            ("weights [rows, K]", w.len()),
            ("reconstruction [rows, K]", w_hat.len()),
        ] {
            if got != rows * k {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: rows * k,
                    got,
                });
            }
        }
        let total = w
            .par_chunks(TILE * k)
            .zip(w_hat.par_chunks(TILE * k))
            .map(|(a, b)| {
                let r = a.len() / k;
                let delta: Vec<f64> = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| *x as f64 - *y as f64)
                    .collect();
                let mut dh = vec![0.0f64; r * k];
                gemm_into(
                    (&mut dh, Strided::block(k, 0, 0, r, k)),
                    (&delta, Strided::block(k, 0, 0, r, k)),
                    (&self.h, Strided::block(k, 0, 0, k, k)),
                    1.0,
                    false,
                );
                dh.iter().zip(&delta).map(|(x, y)| x * y).sum::<f64>()
            })
            .sum();
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn activations(t: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..t * k)
            .map(|i| r.next_gaussian() as f32 * (1.0 + (i % k) as f32 / 8.0))
            .collect()
    }

    /// `H`, `x̄` and `mean|x|` equal a direct f64 computation, across tiles and token chunks,
    /// and accumulating in two parts (or merging two accumulators) gives the same matrix.
    #[test]
    fn gram_matches_direct_computation() {
        let (t, k) = (CHUNK + 77, TILE + 13);
        let x = activations(t, k, 1);
        let mut g = Gram::new(k, u64::MAX).unwrap();
        g.accumulate(&x, t).unwrap();
        let h = g.matrix();
        for i in 0..k {
            for j in 0..k {
                let direct: f64 = (0..t)
                    .map(|p| x[p * k + i] as f64 * x[p * k + j] as f64)
                    .sum();
                assert!(
                    (h[i * k + j] - direct).abs() <= 1e-9 * direct.abs().max(1.0),
                    "H[{i}, {j}] = {} vs {direct}",
                    h[i * k + j]
                );
            }
        }
        let mean = g.mean();
        let mean_abs = g.mean_abs();
        for j in 0..k {
            let m: f64 = (0..t).map(|p| x[p * k + j] as f64).sum::<f64>() / t as f64;
            let a: f64 = (0..t).map(|p| x[p * k + j].abs() as f64).sum::<f64>() / t as f64;
            assert!((mean[j] as f64 - m).abs() < 1e-6 && (mean_abs[j] as f64 - a).abs() < 1e-6);
        }
        let split = 300 * k;
        let mut parts = Gram::new(k, u64::MAX).unwrap();
        parts.accumulate(&x[..split], 300).unwrap();
        let mut rest = Gram::new(k, u64::MAX).unwrap();
        rest.accumulate(&x[split..], t - 300).unwrap();
        parts.merge(&rest).unwrap();
        assert_eq!(parts.tokens(), t as u64);
        for (a, b) in parts.matrix().iter().zip(&h) {
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0));
        }
    }

    /// The output error equals the mean over tokens of ‖x·Δᵀ‖² computed directly.
    #[test]
    fn output_error_is_mean_squared_output_difference() {
        let (t, k, rows) = (50, 40, 7);
        let x = activations(t, k, 2);
        let w = activations(rows, k, 3);
        let w_hat: Vec<f32> = w.iter().map(|v| (v * 4.0).round() / 4.0).collect();
        let mut g = Gram::new(k, u64::MAX).unwrap();
        g.accumulate(&x, t).unwrap();
        let direct: f64 = (0..t)
            .map(|p| {
                (0..rows)
                    .map(|r| {
                        let y: f64 = (0..k)
                            .map(|j| x[p * k + j] as f64 * (w[r * k + j] - w_hat[r * k + j]) as f64)
                            .sum();
                        y * y
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / t as f64;
        let got = g.output_error(&w, &w_hat, rows).unwrap();
        assert!((got - direct).abs() < 1e-9 * direct, "{got} vs {direct}");
    }

    /// Bad inputs: NaN activations (named by token and channel), wrong lengths, a budget too
    /// small for K², and an error metric before any token.
    #[test]
    fn bad_inputs_are_refused() {
        let k = 16;
        let mut g = Gram::new(k, u64::MAX).unwrap();
        let mut x = vec![0.5f32; 3 * k];
        x[2 * k + 5] = f32::NAN;
        let err = g.accumulate(&x, 3).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFiniteActivation {
                    token: 2,
                    channel: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(g.tokens(), 0, "a refused input changes nothing");
        assert!(matches!(
            g.accumulate(&x[..k + 1], 1),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            g.output_error(&[0.0; 16], &[0.0; 16], 1),
            Err(Error::NoCalibrationTokens)
        ));
        let err = Gram::new(4096, 100 << 20).unwrap_err();
        assert!(err.to_string().contains("4096"), "{err}");
        assert!(matches!(
            Gram::new(0, u64::MAX),
            Err(Error::KTooSmall { k: 0 })
        ));
    }
}
