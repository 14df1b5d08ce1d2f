//! Autoregressive generation with a KV cache: greedy, or temperature + top-p sampling.
//!
//! The prompt is prefilled in one batched forward; each further token costs one single-token
//! forward. Sampling runs on the host over the last position's logits with a seeded
//! [`SplitMix64`], so a seed reproduces a generation exactly on one backend.

use std::time::Instant;

use any4_core::rng::SplitMix64;
use burn::tensor::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::{Llama, token_tensor};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties: the lowest id).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of most
    /// likely tokens whose probability reaches `top_p` (nucleus sampling).
    TopP {
        /// Softmax temperature, `> 0`.
        temperature: f32,
        /// Nucleus mass in `(0, 1]` (`1` = plain temperature sampling).
        top_p: f32,
    },
}

/// Generation options.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Seed of the sampler.
    pub seed: u64,
    /// Generation stops after emitting any of these (typically the eos ids).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

/// The outcome of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids (prompt excluded; a final stop token included).
    pub tokens: Vec<u32>,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Whether generation ended on a stop token (rather than `max_new_tokens`).
    pub stopped: bool,
    /// Time of the prompt forward (and choosing the first token).
    pub prefill_seconds: f64,
    /// Time of the single-token forwards.
    pub decode_seconds: f64,
    /// Decode speed: tokens produced by single-token forwards per second (the first token comes
    /// from the prefill and is not counted); `0` when there were none.
    pub tokens_per_second: f64,
}

/// Logits of the last position of `logits: [1, t, vocab]`, on the host, f32.
fn last_logits(logits: Tensor<3>) -> Result<Vec<f32>> {
    let [_, t, v] = logits.dims();
    logits
        .narrow(1, t - 1, 1)
        .reshape([v])
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Data(format!("logits: {e:?}")))
}

/// Choose the next token from `logits` according to `sampling`.
pub fn sample(logits: &[f32], sampling: Sampling, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            })
            .0 as u32
    };
    let (temperature, top_p) = match sampling {
        Sampling::Greedy => return argmax(),
        Sampling::TopP { temperature, top_p } => (temperature as f64, top_p as f64),
    };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, ((v as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax();
    }
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, p) in &probs {
        mass += p / total;
        kept += 1;
        if mass >= top_p {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let nucleus_total: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut r = rng.next_f64() * nucleus_total;
    for (id, p) in nucleus {
        if r < *p {
            return *id;
        }
        r -= p;
    }
    nucleus[kept - 1].0
}

/// Generate up to `cfg.max_new_tokens` tokens after `prompt` (batch 1), calling `on_token`
/// with each new id as soon as it is chosen (for streaming).
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    cfg: &GenerateConfig,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Input(
            "generate: the prompt has no tokens (encode it with the bos token)".into(),
        ));
    }
    if let Sampling::TopP { temperature, top_p } = cfg.sampling
        && !(temperature.is_finite() && temperature > 0.0 && top_p > 0.0 && top_p <= 1.0)
    {
        return Err(Error::Input(format!(
            "sampling needs temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}"
        )));
    }
    let device = model.device();
    let mut rng = SplitMix64::new(cfg.seed);
    let mut cache = model.new_cache();
    let mut out = Generation {
        tokens: Vec::with_capacity(cfg.max_new_tokens),
        prompt_tokens: prompt.len(),
        stopped: false,
        prefill_seconds: 0.0,
        decode_seconds: 0.0,
        tokens_per_second: 0.0,
    };
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let start = Instant::now();
    let logits = model.forward(token_tensor(prompt, &device), &mut cache);
    let mut next = sample(&last_logits(logits)?, cfg.sampling, &mut rng);
    out.prefill_seconds = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    loop {
        out.tokens.push(next);
        on_token(next);
        if cfg.stop_tokens.contains(&next) {
            out.stopped = true;
            break;
        }
        if out.tokens.len() >= cfg.max_new_tokens {
            break;
        }
        let logits = model.forward(token_tensor(&[next], &device), &mut cache);
        next = sample(&last_logits(logits)?, cfg.sampling, &mut rng);
    }
    out.decode_seconds = decode_start.elapsed().as_secs_f64();
    let decoded = out.tokens.len().saturating_sub(1);
    if decoded > 0 && out.decode_seconds > 0.0 {
        out.tokens_per_second = decoded as f64 / out.decode_seconds;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_p_sampling() {
        let logits = [0.0f32, 3.0, 1.0, 3.0, -2.0];
        let mut rng = SplitMix64::new(1);
        assert_eq!(sample(&logits, Sampling::Greedy, &mut rng), 1);
        // A tiny nucleus keeps only the best token (lowest id among ties).
        let tiny = Sampling::TopP {
            temperature: 1.0,
            top_p: 1e-6,
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, tiny, &mut rng), 1);
        }
        // top_p just above the two tied best tokens' mass: only those two ever come out.
        let two = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.8,
        };
        let mut seen = [0usize; 5];
        for _ in 0..400 {
            seen[sample(&logits, two, &mut rng) as usize] += 1;
        }
        assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
    }
}
