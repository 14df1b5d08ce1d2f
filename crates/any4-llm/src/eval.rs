//! Perplexity, GPTQ-style (ANY4.md §5): tokenize the whole text once (no special tokens), cut it
//! into non-overlapping windows of `seq_len` tokens, drop the partial tail, and report
//! `exp(mean NLL)` over every predicted position (`seq_len − 1` per window) of all windows.

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::{Llama, token_tensor_batch};
use crate::tokenizer::Tokenizer;

/// Perplexity options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerplexityConfig {
    /// Window length in tokens (2048 in the paper; 256 for the embedded tiny model).
    pub seq_len: usize,
    /// Evaluate at most this many windows (the first ones), to bound the time.
    pub max_windows: Option<usize>,
    /// Windows per forward.
    pub batch_size: usize,
}

impl Default for PerplexityConfig {
    fn default() -> Self {
        PerplexityConfig {
            seq_len: 2048,
            max_windows: None,
            batch_size: 1,
        }
    }
}

/// A perplexity measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(nll)`.
    pub ppl: f64,
    /// Mean negative log-likelihood per predicted token (nats).
    pub nll: f64,
    /// Predicted tokens (`windows · (seq_len − 1)`).
    pub tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
}

/// Perplexity of `model` on `text`.
pub fn perplexity(
    model: &Llama,
    tokenizer: &Tokenizer,
    text: &str,
    cfg: &PerplexityConfig,
) -> Result<Perplexity> {
    let ids = tokenizer.encode(text, false)?;
    perplexity_of_ids(model, &ids, cfg)
}

/// Perplexity of `model` on an already tokenized text.
pub fn perplexity_of_ids(model: &Llama, ids: &[u32], cfg: &PerplexityConfig) -> Result<Perplexity> {
    let seq = cfg.seq_len;
    if seq < 2 || cfg.batch_size == 0 {
        return Err(Error::Input(format!(
            "perplexity needs seq_len ≥ 2 and batch_size ≥ 1 (got {seq}, {})",
            cfg.batch_size
        )));
    }
    let mut windows: Vec<&[u32]> = ids.chunks_exact(seq).collect();
    if let Some(max) = cfg.max_windows {
        windows.truncate(max);
    }
    if windows.is_empty() {
        return Err(Error::Input(format!(
            "perplexity: {} tokens do not fill one window of {seq}",
            ids.len()
        )));
    }
    let device = model.device();
    let mut total = 0f64;
    for batch in windows.chunks(cfg.batch_size) {
        let tokens = token_tensor_batch(batch, &device);
        let logits = model.forward_all(tokens.clone());
        for v in token_nll(logits, tokens)? {
            total += v as f64;
        }
    }
    let count = windows.len() * (seq - 1);
    let nll = total / count as f64;
    Ok(Perplexity {
        ppl: nll.exp(),
        nll,
        tokens: count,
        windows: windows.len(),
    })
}

/// NLL of each next token, `[batch · (len − 1)]`, from `logits: [batch, len, vocab]` and the
/// input `tokens: [batch, len]`; log-softmax in f32 whatever the model's float type.
fn token_nll(logits: Tensor<3>, tokens: Tensor<2, burn::tensor::Int>) -> Result<Vec<f32>> {
    let [b, t, _] = logits.dims();
    let logp = log_softmax(logits.narrow(1, 0, t - 1).cast(DType::F32), 2);
    let targets = tokens.narrow(1, 1, t - 1).unsqueeze_dim::<3>(2);
    let picked: Tensor<3> = logp.gather(2, targets);
    picked
        .neg()
        .reshape([b * (t - 1)])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Data(format!("log-likelihoods: {e:?}")))
}
