//! Perplexity, GPTQ-style (docs/METHOD.md §5): tokenize the whole text once (no special tokens), cut it
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

/// The evaluation texts `cargo xtask fetch` puts in the cache (`$ANY4_CACHE`, else `.cache/`).
///
/// Names follow the paper's columns where the text is obtainable here (docs/METHOD.md,
/// docs/DATA.md): PTB is the GPTQ protocol's split (lines stripped, joined with a blank line);
/// Botchan and Shakespeare are public-domain stand-ins for WikiText/C4, which cannot be fetched
/// here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Penn Treebank validation split (`ptb`).
    PtbValid,
    /// Penn Treebank test split (`ptb-test`).
    PtbTest,
    /// Natsume Sōseki's *Botchan* in English (`botchan`).
    Botchan,
    /// Shakespeare's complete works (`shakespeare`).
    Shakespeare,
}

impl Dataset {
    /// Every dataset, in the order reports list them.
    pub const ALL: [Dataset; 4] = [
        Dataset::PtbValid,
        Dataset::PtbTest,
        Dataset::Botchan,
        Dataset::Shakespeare,
    ];

    /// The name `--dataset` takes.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::PtbValid => "ptb",
            Dataset::PtbTest => "ptb-test",
            Dataset::Botchan => "botchan",
            Dataset::Shakespeare => "shakespeare",
        }
    }

    /// The `cargo xtask fetch` name that provides it.
    pub fn fetch_name(self) -> &'static str {
        match self {
            Dataset::PtbValid | Dataset::PtbTest => "ptb",
            Dataset::Botchan => "botchan",
            Dataset::Shakespeare => "shakespeare",
        }
    }

    /// Path of the text under `cache`.
    pub fn path_in(self, cache: &std::path::Path) -> std::path::PathBuf {
        let file = match self {
            Dataset::PtbValid => "ptb.valid.txt",
            Dataset::PtbTest => "ptb.test.txt",
            Dataset::Botchan => "botchan.txt",
            Dataset::Shakespeare => "shakespeare.txt",
        };
        cache.join("data").join(file)
    }

    /// The cache folder: `$ANY4_CACHE`, else `.cache` in the working directory.
    pub fn cache_dir() -> std::path::PathBuf {
        std::env::var_os("ANY4_CACHE")
            .map(Into::into)
            .unwrap_or_else(|| ".cache".into())
    }

    /// Read the text from `cache` (BOM dropped, CRLF → LF); a missing file says which fetch
    /// command provides it.
    pub fn read_in(self, cache: &std::path::Path) -> Result<String> {
        let path = self.path_in(cache);
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => Err(Error::Input(format!(
                "dataset `{}`: {} is empty",
                self.name(),
                path.display()
            ))),
            // Gutenberg files come with a BOM and CRLF line ends: tokenizers see `\r` as text.
            Ok(text) => Ok(text
                .strip_prefix('\u{feff}')
                .unwrap_or(&text)
                .replace("\r\n", "\n")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Input(format!(
                "dataset `{}`: {} not found (run `cargo xtask fetch {}`)",
                self.name(),
                path.display(),
                self.fetch_name()
            ))),
            Err(e) => Err(Error::Input(format!(
                "dataset `{}`: {}: {e}",
                self.name(),
                path.display()
            ))),
        }
    }

    /// Read the text from [`Dataset::cache_dir`].
    pub fn read(self) -> Result<String> {
        self.read_in(&Self::cache_dir())
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dataset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Dataset::ALL.iter().map(|d| d.name()).collect();
                Error::Input(format!(
                    "unknown dataset `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}
