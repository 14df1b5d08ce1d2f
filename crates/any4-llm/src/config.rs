//! A serde mirror of HF `config.json` for `LlamaForCausalLM`, `MistralForCausalLM` and
//! `MixtralForCausalLM`.
//!
//! One struct serves all three (they share every field but Mixtral's two expert counts), so the
//! model, the loaders and the checkpoint code carry one config type. Only the fields the forward pass needs are read; unknown fields are ignored so configs written
//! by any transformers version load. transformers ≥ 5 moves `rope_theta`/`rope_scaling` into
//! `rope_parameters`; both spellings are accepted.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Architectures this crate implements (HF `architectures[0]` / `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1/2/3/3.1/3.2 (and anything saved as `LlamaForCausalLM`, e.g. SmolLM2).
    Llama,
    /// Mistral (Llama with an optional sliding attention window).
    Mistral,
    /// Mixtral: Mistral attention with a sparse mixture of SwiGLU experts instead of the MLP.
    Mixtral,
}

const SUPPORTED: &str =
    "LlamaForCausalLM / llama, MistralForCausalLM / mistral, MixtralForCausalLM / mixtral";

/// HF `MixtralConfig` defaults, used when a Mixtral config omits the expert counts.
const DEFAULT_NUM_LOCAL_EXPERTS: usize = 8;
const DEFAULT_NUM_EXPERTS_PER_TOK: usize = 2;

/// The mixture-of-experts shape of a Mixtral config, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts per layer (`num_local_experts`).
    pub num_experts: usize,
    /// Experts each token is routed to (`num_experts_per_tok`), `1 ..= num_experts`.
    pub top_k: usize,
}

/// `eos_token_id`: one id or a list (Llama 3 instruct models stop on several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

/// Raw `rope_scaling` / `rope_parameters` object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RopeScalingConfig {
    /// `"default"`, `"linear"` or `"llama3"` (older files spell the key `type`).
    #[serde(alias = "type", default)]
    pub rope_type: Option<String>,
    /// transformers ≥ 5 keeps the base here.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Context extension factor (`linear`, `llama3`).
    #[serde(default)]
    pub factor: Option<f64>,
    /// Llama 3.1: wavelengths above `original_max / low_freq_factor` are divided by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama 3.1: wavelengths below `original_max / high_freq_factor` are left alone.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama 3.1: the context length the model was pretrained on.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// How rotary frequencies are derived from the base frequencies, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scale applied to low frequencies.
        factor: f64,
        /// Low-frequency threshold divisor.
        low_freq_factor: f64,
        /// High-frequency threshold divisor.
        high_freq_factor: f64,
        /// Pretraining context length.
        original_max_position_embeddings: usize,
    },
}

/// Rotary embedding parameters, resolved from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Base θ of the frequencies `θ^(-2i/d)`.
    pub theta: f64,
    /// Rotated dimensions per head (`head_dim`).
    pub dim: usize,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

/// HF `config.json` of a Llama, Mistral or Mixtral checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `["LlamaForCausalLM"]` etc.
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// `"llama"`, `"mistral"` or `"mixtral"`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width (Mixtral: the width of each expert).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (classic location).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (classic location).
    #[serde(default)]
    pub rope_scaling: Option<RopeScalingConfig>,
    /// RoPE base and scaling (transformers ≥ 5).
    #[serde(default)]
    pub rope_parameters: Option<RopeScalingConfig>,
    /// Longest context the model was configured for.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// Vocabulary size (rows of the embedding and the LM head).
    pub vocab_size: usize,
    /// Whether the LM head shares the embedding matrix (no `lm_head.weight` in the file).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Mistral: a query sees at most this many most recent keys (itself included).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Storage dtype of the checkpoint (informational; weights are converted to f32).
    #[serde(default, alias = "dtype")]
    pub torch_dtype: Option<String>,
    /// Bias on q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// MLP activation; only `silu` is implemented.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Mixtral: experts per layer (HF default 8). Ignored by the other architectures.
    /// `router_aux_loss_coef`, `router_jitter_noise`, `output_router_logits` are training-only
    /// and not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_local_experts: Option<usize>,
    /// Mixtral: experts each token is routed to (HF default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts_per_tok: Option<usize>,
}

impl LlamaConfig {
    /// Read and validate `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: LlamaConfig = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.architecture_at(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse and validate a config from JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let path = Path::new("<config.json>");
        let cfg: LlamaConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.architecture_at(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Which architecture the config describes.
    pub fn architecture(&self) -> Result<Architecture> {
        self.architecture_at(Path::new("<config.json>"))
    }

    fn architecture_at(&self, path: &Path) -> Result<Architecture> {
        let unsupported = |name: &str| Error::UnsupportedModel {
            path: path.to_path_buf(),
            name: name.to_string(),
            supported: SUPPORTED,
        };
        let from_arch = match self.architectures.as_deref() {
            Some([first, ..]) => Some(match first.as_str() {
                "LlamaForCausalLM" => Architecture::Llama,
                "MistralForCausalLM" => Architecture::Mistral,
                "MixtralForCausalLM" => Architecture::Mixtral,
                other => return Err(unsupported(other)),
            }),
            _ => None,
        };
        let from_type = match self.model_type.as_deref() {
            Some("llama") => Some(Architecture::Llama),
            Some("mistral") => Some(Architecture::Mistral),
            Some("mixtral") => Some(Architecture::Mixtral),
            Some(other) => return Err(unsupported(other)),
            None => None,
        };
        from_arch
            .or(from_type)
            .ok_or_else(|| unsupported("<no architectures or model_type>"))
    }

    /// Check the values describe a model this crate can build.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return bad("hidden_size, num_hidden_layers and vocab_size must be positive".into());
        }
        if self.num_attention_heads == 0 || self.kv_heads() == 0 {
            return bad("head counts must be positive".into());
        }
        self.check_sizes()?;
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {} (and head_dim is unset)",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim()
            ));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive".into());
        }
        if self.hidden_act != "silu" {
            return bad(format!("hidden_act `{}` (only silu)", self.hidden_act));
        }
        self.moe()?;
        self.rope().map(|_| ())
    }

    /// Refuse sizes far beyond any released model before anything is allocated from them: a
    /// hostile or corrupt `config.json` or GGUF header must not abort the process on allocation
    /// or overflow a product (fuzz findings F2–F5, docs/RELIABILITY.md).
    fn check_sizes(&self) -> Result<()> {
        const MAX_WIDTH: usize = 1 << 20;
        const MAX_VOCAB: usize = 1 << 22;
        const MAX_LAYERS: usize = 1 << 12;
        const MAX_HEADS: usize = 1 << 12;
        const MAX_HEAD_DIM: usize = 1 << 12;
        const MAX_EXPERTS: usize = 1 << 12;
        const MAX_PARAMS: u128 = 1 << 41;
        let experts = self.num_local_experts.unwrap_or(1);
        for (name, value, max) in [
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            (
                "num_hidden_layers (GGUF block_count)",
                self.num_hidden_layers,
                MAX_LAYERS,
            ),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.kv_heads(), MAX_HEADS),
            ("head_dim", self.head_dim(), MAX_HEAD_DIM),
            ("num_local_experts", experts, MAX_EXPERTS),
        ] {
            if value > max {
                return Err(Error::Config(format!(
                    "{name} {value} exceeds the supported maximum {max}"
                )));
            }
        }
        // Every factor is bounded above, so the u128 products cannot overflow.
        let (d, f, hd) = (
            self.hidden_size as u128,
            self.intermediate_size as u128,
            self.head_dim() as u128,
        );
        let attn = d * hd * (2 * self.num_attention_heads as u128 + 2 * self.kv_heads() as u128);
        let per_layer = attn + 3 * d * f * experts as u128;
        let params = self.num_hidden_layers as u128 * per_layer + 2 * d * self.vocab_size as u128;
        if params > MAX_PARAMS {
            return Err(Error::Config(format!(
                "the config implies {params} parameters, beyond the supported {MAX_PARAMS}"
            )));
        }
        Ok(())
    }

    /// The expert counts of a Mixtral config (HF defaults where omitted), validated; `None` for
    /// the dense architectures.
    pub fn moe(&self) -> Result<Option<MoeConfig>> {
        if self.architecture()? != Architecture::Mixtral {
            return Ok(None);
        }
        let num_experts = self.num_local_experts.unwrap_or(DEFAULT_NUM_LOCAL_EXPERTS);
        let top_k = self
            .num_experts_per_tok
            .unwrap_or(DEFAULT_NUM_EXPERTS_PER_TOK);
        if num_experts == 0 {
            return Err(Error::Config("num_local_experts must be positive".into()));
        }
        if top_k == 0 || top_k > num_experts {
            return Err(Error::Config(format!(
                "num_experts_per_tok {top_k} must be in 1..=num_local_experts ({num_experts})"
            )));
        }
        Ok(Some(MoeConfig { num_experts, top_k }))
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids (empty when the config names none).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(TokenIds::One(id)) => vec![*id],
            Some(TokenIds::Many(ids)) => ids.clone(),
            None => Vec::new(),
        }
    }

    /// Rotary parameters, with the scaling validated.
    pub fn rope(&self) -> Result<RopeConfig> {
        let params = self.rope_parameters.as_ref();
        let theta = self
            .rope_theta
            .or_else(|| params.and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0);
        if theta <= 1.0 {
            return Err(Error::Config(format!("rope_theta {theta} must exceed 1")));
        }
        let scaling = match self.rope_scaling.as_ref().or(params) {
            None => RopeScaling::None,
            Some(s) => parse_scaling(s)?,
        };
        Ok(RopeConfig {
            theta,
            dim: self.head_dim(),
            scaling,
        })
    }
}

fn parse_scaling(s: &RopeScalingConfig) -> Result<RopeScaling> {
    let need = |v: Option<f64>, name: &str| {
        v.filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| Error::Config(format!("rope scaling needs a positive `{name}`")))
    };
    match s.rope_type.as_deref().unwrap_or("default") {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: need(s.factor, "factor")?,
        }),
        "llama3" => {
            let low = need(s.low_freq_factor, "low_freq_factor")?;
            let high = need(s.high_freq_factor, "high_freq_factor")?;
            if high <= low {
                return Err(Error::Config(format!(
                    "llama3 rope scaling: high_freq_factor {high} must exceed low_freq_factor {low}"
                )));
            }
            Ok(RopeScaling::Llama3 {
                factor: need(s.factor, "factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: s
                    .original_max_position_embeddings
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        Error::Config(
                            "llama3 rope scaling needs original_max_position_embeddings".into(),
                        )
                    })?,
            })
        }
        other => Err(Error::Config(format!(
            "rope scaling type `{other}` (supported: default, linear, llama3)"
        ))),
    }
}
