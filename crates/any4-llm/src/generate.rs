//! Autoregressive generation with a KV cache: greedy, or temperature + top-p sampling.
//!
//! The prompt is prefilled in one batched forward (the LM head on its last position only);
//! each further token costs one single-token forward. Greedy decoding picks the next token on
//! the device (`argmax`) and feeds it straight into the next forward: one id read back per
//! token, nothing uploaded. Top-p sampling reads the last position's logits back and samples on
//! the host with a seeded [`SplitMix64`], so a seed reproduces a generation exactly on one
//! backend. On a device that records graphs, greedy decoding records its single-token step once
//! and replays it ([`crate::decode_graph`]).

use std::time::Instant;

use any4_core::rng::SplitMix64;
use burn::tensor::{DType, Int, Tensor};

use crate::decode_graph::{DecodeGraph, MIN_CAPTURED_STEPS};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{Llama, token_tensor};
use crate::timing::{Op, span};

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
    /// Greedy decoding of a dense-MLP model on a device that records graphs (CUDA, ROCm, wgpu)
    /// records its single-token step once and replays it for every further token (see
    /// [`Generation::captured`]); `false` keeps the ordinary steps.
    pub capture: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens: Vec::new(),
            capture: true,
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
    /// from the prefill and is not counted); `0` when there were none. The capture, when there
    /// is one, counts as decode time.
    pub tokens_per_second: f64,
    /// Whether the decode steps replayed a recorded graph.
    pub captured: bool,
}

/// How the single-token steps run.
#[expect(
    clippy::large_enum_variant,
    reason = "one value per `generate` call, never stored or moved in a loop"
)]
enum Decoder<'m> {
    /// Ordinary forwards; `token` is the last token chosen, `[1, 1]`.
    Steps {
        cache: KvCache,
        token: Tensor<2, Int>,
    },
    /// Replays of a recorded step.
    Graph(DecodeGraph<'m>),
}

/// The next token `[1, 1]` and its id. Greedy: `argmax` on the device, the token stays there
/// for the next forward and only its id is read back. Top-p: the logits are read back and
/// [`sample`]d on the host (a nucleus needs the probabilities in order, and Burn's sort on
/// CubeCL backends is itself a round trip through the host), then the id is uploaded.
fn next_token(
    logits: Tensor<2>,
    sampling: Sampling,
    rng: &mut SplitMix64,
) -> Result<(Tensor<2, Int>, u32)> {
    if sampling == Sampling::Greedy {
        let token = logits.argmax(1);
        let id = read_id(token.clone())?;
        return Ok((token, id));
    }
    let device = logits.device();
    let [_, vocab] = logits.dims();
    let host = logits
        .reshape([vocab])
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Data(format!("logits: {e:?}")))?;
    let id = sample(&host, sampling, rng);
    Ok((token_tensor(&[id], &device), id))
}

/// The id of `token: [1, 1]`, read back from the device.
pub(crate) fn read_id(token: Tensor<2, Int>) -> Result<u32> {
    let v = token
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| Error::Data(format!("token id: {e:?}")))?;
    v.first()
        .map(|&id| id as u32)
        .ok_or_else(|| Error::Data("token id: empty".into()))
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
    let mut cache = model.new_cache_with_capacity(prompt.len() + cfg.max_new_tokens);
    let mut out = Generation {
        tokens: Vec::with_capacity(cfg.max_new_tokens),
        prompt_tokens: prompt.len(),
        stopped: false,
        prefill_seconds: 0.0,
        decode_seconds: 0.0,
        tokens_per_second: 0.0,
        captured: false,
    };
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let choose = |logits: Tensor<2>, rng: &mut SplitMix64| {
        let _t = span(Op::Sample);
        next_token(logits, cfg.sampling, rng)
    };
    let start = Instant::now();
    let logits = model.forward_last(token_tensor(prompt, &device), &mut cache);
    let (token, mut next) = choose(logits, &mut rng)?;
    out.prefill_seconds = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let steps = cfg.max_new_tokens - 1;
    let capturable = cfg.capture
        && cfg.sampling == Sampling::Greedy
        && steps >= MIN_CAPTURED_STEPS
        && !cfg.stop_tokens.contains(&next)
        && matches!(model.config.moe(), Ok(None))
        && any4_burn::records_graphs(&device);
    let end = prompt.len() + steps;
    let rope = match capturable {
        true => cache.device_steps(end, &model.rope_inv_freq, &device),
        false => None,
    };
    let mut decoder = match rope {
        Some(rope) => Decoder::Graph(DecodeGraph::new(model, token, cache, rope)),
        None => Decoder::Steps { cache, token },
    };
    if let Decoder::Graph(graph) = &decoder {
        out.captured = graph.is_recorded();
    }
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
        next = match &mut decoder {
            Decoder::Graph(graph) => graph.next_id()?,
            Decoder::Steps { cache, token } => {
                let logits = model.forward_last(token.clone(), cache);
                let (chosen, id) = choose(logits, &mut rng)?;
                *token = chosen;
                id
            }
        };
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

    /// Greedy generation takes the device's argmax, top-p the host sampler: both pick what
    /// [`sample`] picks on the same logits and draws.
    #[cfg(feature = "flex")]
    #[test]
    fn next_token_matches_host_sampling() {
        use burn::tensor::{Device, TensorData};
        let device = Device::flex();
        let mut r = SplitMix64::new(3);
        let logits: Vec<f32> = (0..50).map(|_| r.next_gaussian() as f32).collect();
        let (mut a, mut b) = (SplitMix64::new(9), SplitMix64::new(9));
        for s in [
            Sampling::Greedy,
            Sampling::TopP {
                temperature: 0.7,
                top_p: 0.5,
            },
        ] {
            for _ in 0..20 {
                let t = Tensor::<2>::from_data(TensorData::new(logits.clone(), [1, 50]), &device);
                let (token, id) = next_token(t, s, &mut a).unwrap();
                assert_eq!(id, sample(&logits, s, &mut b), "{s:?}");
                assert_eq!(read_id(token).unwrap(), id);
            }
        }
    }
}
