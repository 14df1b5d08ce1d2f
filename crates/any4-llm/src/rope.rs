//! Rotary position embeddings, HF "rotate_half" convention, with Llama 3.1 frequency scaling.
//!
//! Head dimension `d` is split into halves `(x₁, x₂)`; position `p` rotates pair `(x₁ᵢ, x₂ᵢ)` by
//! `p·fᵢ` with `fᵢ = θ^(−2i/d)`: `out = x·cos + rotate_half(x)·sin`, `rotate_half(x) = (−x₂, x₁)`.
//! (llama.cpp/GGUF uses interleaved pairs instead; a GGUF loader must permute q/k rows.)
//! Tables are built on the host in f32 the way transformers does (`inv_freq` in f32, angle
//! `inv_freq · p` in f32), so logits match it to rounding.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::{RopeConfig, RopeScaling};

/// Per-pair inverse frequencies `fᵢ`, `i < dim/2`, after scaling.
pub fn inv_freq(cfg: &RopeConfig) -> Vec<f32> {
    let d = cfg.dim;
    (0..d / 2)
        .map(|i| {
            let base = (1.0 / cfg.theta.powf((2 * i) as f64 / d as f64)) as f32;
            match cfg.scaling {
                RopeScaling::None => base,
                RopeScaling::Linear { factor } => (base as f64 / factor) as f32,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                } => llama3(
                    base as f64,
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings as f64,
                ) as f32,
            }
        })
        .collect()
}

/// Llama 3.1: long wavelengths (beyond the pretraining context / `low`) are slowed by `factor`,
/// short ones (below context / `high`) kept, and the band between interpolated smoothly.
fn llama3(f: f64, factor: f64, low: f64, high: f64, original: f64) -> f64 {
    let wavelen = 2.0 * std::f64::consts::PI / f;
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    if wavelen < high_wavelen {
        f
    } else if wavelen > low_wavelen {
        f / factor
    } else {
        let smooth = (original / wavelen - low) / (high - low);
        (1.0 - smooth) * f / factor + smooth * f
    }
}

/// `cos`/`sin` tables `[len, dim]` for positions `start..start + len`.
///
/// `sin` carries `rotate_half`'s sign: its first half is `−sin(p·fᵢ)`, its second `+sin(p·fᵢ)`,
/// so `x·cos + rotate_half(x)·sin(p·f)` = `x·cos + swap_halves(x)·sin` with the same products
/// and sum (a sign flip is exact) and one op fewer (no negation).
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `cos(p·fᵢ)`, halves duplicated, `[len, dim]`.
    pub cos: Tensor<2>,
    /// `∓sin(p·fᵢ)` (first half negated), `[len, dim]`.
    pub sin: Tensor<2>,
}

impl RopeTables {
    /// Tables for `len` positions from `start`, with precomputed inverse frequencies.
    pub fn new(inv_freq: &[f32], start: usize, len: usize, device: &Device) -> Self {
        let half = inv_freq.len();
        let dim = 2 * half;
        let mut cos = vec![0f32; len * dim];
        let mut sin = vec![0f32; len * dim];
        for t in 0..len {
            let p = (start + t) as f32;
            for (i, f) in inv_freq.iter().enumerate() {
                let angle = (f * p) as f64;
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                cos[t * dim + i] = c;
                cos[t * dim + i + half] = c;
                sin[t * dim + i] = -s;
                sin[t * dim + i + half] = s;
            }
        }
        let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [len, dim]), device);
        RopeTables {
            cos: t(cos),
            sin: t(sin),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of positions `offset..offset + len` (views, nothing copied).
    pub fn narrow(&self, offset: usize, len: usize) -> Self {
        RopeTables {
            cos: self.cos.clone().narrow(0, offset, len),
            sin: self.sin.clone().narrow(0, offset, len),
        }
    }

    /// The rows of the positions in `pos` (a gather on the device, for steps whose position is a
    /// device value).
    pub fn at(&self, pos: Tensor<1, Int>) -> Self {
        RopeTables {
            cos: self.cos.clone().select(0, pos.clone()),
            sin: self.sin.clone().select(0, pos),
        }
    }

    /// Rotate `x: [batch, len, heads, dim]` (the projection's layout, before heads move forward).
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, len, _, dim] = x.dims();
        let half = dim / 2;
        let swapped = Tensor::cat(
            vec![
                x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        let cos = self.cos.clone().reshape([1, len, 1, dim]);
        let sin = self.sin.clone().reshape([1, len, 1, dim]);
        x * cos + swapped * sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_slows_low_frequencies() {
        let cfg = RopeConfig {
            theta: 500_000.0,
            dim: 64,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        };
        let plain = inv_freq(&RopeConfig {
            scaling: RopeScaling::None,
            ..cfg
        });
        let scaled = inv_freq(&cfg);
        assert_eq!(scaled[0], plain[0], "highest frequency untouched");
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() <= 1e-6 * plain[last]);
        for (s, p) in scaled.iter().zip(&plain) {
            assert!(*s <= *p && *s >= *p / 8.0 * (1.0 - 1e-6));
        }
    }
}
