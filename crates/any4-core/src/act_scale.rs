//! Activation-aware input scales (AWQ, Lin et al. 2024), searched against the output error.
//!
//! For an input channel scale `s_j > 0`, `y = x·Wᵀ = (x / s)·(W·diag(s))ᵀ`: the weight columns
//! are multiplied by `s`, the input divided by it (folded into the previous norm's weight, or a
//! per-channel multiply before the matmul). Quantizing `W·diag(s)` instead of `W` gives the
//! channels with large activations a larger share of each group's range, so their weights are
//! represented more finely — and their errors are the ones the output feels most.
//!
//! `s_j = m_j^α` with `m_j = mean_t |x_t,j|`, normalised so that `√(max s · min s) = 1`, and
//! `α` is chosen on a grid by the output error `tr(Δ·H·Δᵀ)` on the calibration tokens, where
//! `Δ = W − Q(W·diag(s))·diag(s)⁻¹` ([`crate::gram`]). `α = 0` (no scaling) is always on the
//! grid, so the search never does worse than no scaling on the calibration set. Layers that read
//! the same input (q/k/v, gate/up) must share `s`: their errors are searched jointly. To keep the
//! search cheap it quantizes an evenly spaced sample of each matrix's rows (the error of a
//! sample, scaled by `rows / sampled`, estimates the matrix's).

use serde::{Deserialize, Serialize};

use crate::config::Any4Config;
use crate::error::{Error, Result};
use crate::gptq::HessianFactor;
use crate::gram::{Gram, OutputError};
use crate::method::Method;

/// Options of the scale search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActScaleConfig {
    /// Grid points: `α ∈ {0, 1/grid, …, (grid − 1)/grid}`.
    pub grid: u32,
    /// Rows of each matrix quantized per grid point (all rows when it has fewer).
    pub sample_rows: usize,
}

impl Default for ActScaleConfig {
    fn default() -> Self {
        ActScaleConfig {
            grid: 10,
            sample_rows: 128,
        }
    }
}

/// The chosen scales and the search trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ActScale {
    /// The chosen exponent.
    pub alpha: f32,
    /// `s_j` per input channel: multiply weight column `j` by it, divide input channel `j` by it.
    pub scales: Vec<f32>,
    /// `(α, estimated output error per token)` for every grid point, in grid order.
    pub trace: Vec<(f32, f64)>,
}

/// `s_j = m_j^α`, normalised to `√(max · min) = 1`. Magnitudes below `1e-5 · max m` (dead
/// channels) are raised to it, so every scale is positive and finite.
pub fn scales_for(magnitudes: &[f32], alpha: f32) -> Vec<f32> {
    let max = magnitudes.iter().fold(0.0f32, |a, &m| a.max(m));
    if !(max > 0.0 && max.is_finite()) || alpha == 0.0 {
        return vec![1.0; magnitudes.len()];
    }
    let floor = max * 1e-5;
    let s: Vec<f64> = magnitudes
        .iter()
        .map(|&m| (m.max(floor) as f64).powf(alpha as f64))
        .collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let norm = (lo * hi).sqrt();
    s.iter().map(|v| (v / norm) as f32).collect()
}

/// `W·diag(s)` for a row-major `[rows, K]` matrix.
pub fn scale_columns(weights: &[f32], scales: &[f32]) -> Vec<f32> {
    let k = scales.len();
    weights
        .chunks(k)
        .flat_map(|row| row.iter().zip(scales).map(|(w, s)| w * s))
        .collect()
}

/// The input statistic `x̄` seen by the scaled layer: `x̄ / s`.
pub fn scale_stats(stats: &[f32], scales: &[f32]) -> Vec<f32> {
    stats.iter().zip(scales).map(|(x, s)| x / s).collect()
}

/// Search `α` for the matrices in `layers` (each `(weights, [rows, K])`), which all read the
/// input `gram` was recorded on, quantized with `method` and `config`.
pub fn search(
    layers: &[(&[f32], [usize; 2])],
    gram: &Gram,
    method: &Method,
    config: &Any4Config,
    options: &ActScaleConfig,
) -> Result<ActScale> {
    let k = gram.k();
    if options.grid == 0 || options.sample_rows == 0 {
        return Err(Error::InvalidMethodOption(
            "the activation-scale grid and row sample must be non-empty",
        ));
    }
    for &(w, [rows, cols]) in layers {
        if cols != k || w.len() != rows * cols {
            return Err(Error::ShapeMismatch {
                what: "weights [rows, K] sharing the calibrated input",
                expected: rows * k,
                got: w.len(),
            });
        }
    }
    let metric = OutputError::new(gram)?;
    let factor = match method {
        Method::Gptq(g) => Some(HessianFactor::for_config(gram, g)?),
        Method::Rtn => None,
    };
    let (mean, magnitudes) = (gram.mean(), gram.mean_abs());
    // The sampled rows of every layer, and the factor that scales their error up.
    let samples: Vec<(Vec<f32>, usize, f64)> = layers
        .iter()
        .map(|&(w, [rows, _])| {
            let take = options.sample_rows.min(rows);
            let picked: Vec<f32> = (0..take)
                .flat_map(|i| {
                    let r = i * rows / take;
                    w[r * k..(r + 1) * k].iter().copied()
                })
                .collect();
            (picked, take, rows as f64 / take as f64)
        })
        .collect();
    let mut trace = Vec::with_capacity(options.grid as usize);
    for i in 0..options.grid {
        let alpha = i as f32 / options.grid as f32;
        let s = scales_for(&magnitudes, alpha);
        let stats = scale_stats(&mean, &s);
        let scaled_factor = factor.as_ref().map(|f| f.rescaled(&s)).transpose()?;
        let mut total = 0.0;
        for (w, rows, weight) in &samples {
            let q = method.quantize(
                &scale_columns(w, &s),
                [*rows, k],
                Some(&stats),
                scaled_factor.as_ref(),
                config,
            )?;
            let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
            let w_hat = scale_columns(&q.dequantize(), &inv);
            total += weight * metric.eval(w, &w_hat, *rows)?;
        }
        trace.push((alpha, total));
    }
    let &(alpha, _) = trace
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("grid is non-empty");
    Ok(ActScale {
        alpha,
        scales: scales_for(&magnitudes, alpha),
        trace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::gptq::GptqConfig;
    use crate::rng::SplitMix64;

    /// Inputs with a few channels 30× larger than the rest (LLM-like outliers).
    fn outlier_inputs(t: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..t * k)
            .map(|i| {
                let m = if (i % k) % 23 == 5 { 30.0 } else { 1.0 };
                m * r.next_gaussian() as f32
            })
            .collect()
    }

    /// Scales are positive, normalised, and follow the magnitudes' order.
    #[test]
    fn scales_are_normalised_powers() {
        let m = [0.0, 0.5, 2.0, 8.0];
        assert_eq!(scales_for(&m, 0.0), vec![1.0; 4]);
        let s = scales_for(&m, 0.5);
        assert!(s.iter().all(|v| v.is_finite() && *v > 0.0));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        let (lo, hi) = (s[0] as f64, s[3] as f64);
        assert!(((lo * hi).sqrt() - 1.0).abs() < 1e-5);
        assert!((s[3] / s[2] - 2.0).abs() < 1e-5, "ratio follows m^α");
    }

    /// With outlier channels, scaling lowers the output error of round-to-nearest int4 and
    /// any4 clearly (a check that fails if the scales or their inverse were misapplied), and
    /// the chosen α is the trace's minimum.
    #[test]
    fn scaling_lowers_output_error_with_outliers() {
        let (rows, k) = (48, 256);
        let x = outlier_inputs(512, k, 1);
        let mut g = Gram::new(k, u64::MAX).unwrap();
        g.accumulate(&x, 512).unwrap();
        let mut r = SplitMix64::new(2);
        let w: Vec<f32> = (0..rows * k)
            .map(|_| r.next_gaussian() as f32 * 0.02)
            .collect();
        for (format, method) in [
            (Format::Int4, Method::Rtn),
            (Format::Any4, Method::Rtn),
            (Format::Any4, Method::Gptq(GptqConfig::default())),
        ] {
            let cfg = Any4Config::new(format);
            let opts = ActScaleConfig {
                grid: 5,
                sample_rows: 16,
            };
            let found = search(&[(&w, [rows, k])], &g, &method, &cfg, &opts).unwrap();
            let best = found
                .trace
                .iter()
                .map(|t| t.1)
                .fold(f64::INFINITY, f64::min);
            assert_eq!(
                found.trace.iter().find(|t| t.0 == found.alpha).unwrap().1,
                best
            );
            // Full-matrix check at the chosen α against no scaling.
            let factor = HessianFactor::new(&g, 0.01).unwrap();
            let full = |s: &[f32]| {
                let q = method
                    .quantize(
                        &scale_columns(&w, s),
                        [rows, k],
                        Some(&scale_stats(&g.mean(), s)),
                        Some(&factor.rescaled(s).unwrap()),
                        &cfg,
                    )
                    .unwrap();
                let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
                g.output_error(&w, &scale_columns(&q.dequantize(), &inv), rows)
                    .unwrap()
            };
            let (plain, scaled) = (full(&vec![1.0; k]), full(&found.scales));
            println!(
                "{format} {method}: α = {}, error {scaled:.3e} vs {plain:.3e}",
                found.alpha
            );
            assert!(
                found.alpha > 0.0,
                "{format} {method}: outliers call for scaling"
            );
            assert!(
                scaled < 0.8 * plain,
                "{format} {method}: {scaled} vs {plain}"
            );
        }
    }

    /// A weight of another width, an empty grid, and no calibration tokens are refused.
    #[test]
    fn bad_inputs_are_refused() {
        let k = 32;
        let mut g = Gram::new(k, u64::MAX).unwrap();
        let cfg = Any4Config::new(Format::Int4);
        let w = vec![0.1f32; 4 * k];
        let opts = ActScaleConfig::default();
        assert!(matches!(
            search(&[(&w, [4, k])], &g, &Method::Rtn, &cfg, &opts),
            Err(Error::NoCalibrationTokens)
        ));
        g.accumulate(&outlier_inputs(8, k, 3), 8).unwrap();
        assert!(matches!(
            search(&[(&w, [2, 2 * k])], &g, &Method::Rtn, &cfg, &opts),
            Err(Error::ShapeMismatch { .. })
        ));
        let empty = ActScaleConfig { grid: 0, ..opts };
        assert!(search(&[(&w, [4, k])], &g, &Method::Rtn, &cfg, &empty).is_err());
    }
}
