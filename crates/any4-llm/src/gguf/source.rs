//! A GGUF file as a [`TensorSource`]: HF tensor names mapped to llama.cpp's, its metadata as an
//! HF config, and the whole model loaded with its tokenizer.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::{GgufFile, hf_tokenizer_json, unpermute_qk};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::load::{TensorSource, load_model};
use crate::model::{Llama, hf_tensor_shapes};
use crate::tokenizer::Tokenizer;

/// A GGUF file seen as HF-named tensors.
pub struct GgufSource {
    file: GgufFile,
    n_head: usize,
    n_kv_head: usize,
}

impl GgufSource {
    /// Open `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let n_head = file.get_u64("llama.attention.head_count")? as usize;
        let n_kv_head = file
            .get_u64("llama.attention.head_count_kv")
            .map_or(n_head, |v| v as usize);
        Ok(GgufSource {
            file,
            n_head,
            n_kv_head,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The HF config its metadata describes (Llama architecture only).
    pub fn config(&self) -> Result<LlamaConfig> {
        let g = &self.file;
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::UnsupportedModel {
                path: g.path().to_path_buf(),
                name: arch.to_string(),
                supported: "llama",
            });
        }
        // llama.cpp stores Mixtral as `llama` with experts (fused `ffn_*_exps` tensors), which
        // this reader does not map; refuse it by name rather than fail on a missing MLP tensor.
        if g.get_u64("llama.expert_count").is_ok_and(|n| n > 0) {
            return Err(Error::UnsupportedModel {
                path: g.path().to_path_buf(),
                name: "llama with experts (Mixtral GGUF; load the HF folder instead)".into(),
                supported: "llama (dense)",
            });
        }
        let key = |k: &str| format!("llama.{k}");
        let vocab = match g.get_u64(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| {
                    Error::Config("GGUF has neither llama.vocab_size nor a token list".into())
                })?,
        };
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": g.get_u64(&key("embedding_length"))?,
            "intermediate_size": g.get_u64(&key("feed_forward_length"))?,
            "num_hidden_layers": g.get_u64(&key("block_count"))?,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_kv_head,
            "rms_norm_eps": g.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            "rope_theta": g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0),
            "max_position_embeddings": g.get_u64(&key("context_length")).ok(),
            "vocab_size": vocab,
            "tie_word_embeddings": !g.tensors.contains_key("output.weight"),
            "bos_token_id": g.get_u64("tokenizer.ggml.bos_token_id").ok(),
            "eos_token_id": g.get_u64("tokenizer.ggml.eos_token_id").ok(),
        });
        LlamaConfig::from_json(&json.to_string())
    }

    /// GGUF name of an HF tensor name, and the head count to unpermute with (Q/K only).
    fn gguf_name(hf: &str, n_head: usize, n_kv: usize) -> Option<(String, Option<usize>)> {
        let fixed = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(n) = fixed {
            return Some((n.to_string(), None));
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (i, tail) = rest.split_once('.')?;
        let (name, heads) = match tail {
            "input_layernorm.weight" => ("attn_norm.weight", None),
            "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
            "self_attn.q_proj.weight" => ("attn_q.weight", Some(n_head)),
            "self_attn.k_proj.weight" => ("attn_k.weight", Some(n_kv)),
            "self_attn.v_proj.weight" => ("attn_v.weight", None),
            "self_attn.o_proj.weight" => ("attn_output.weight", None),
            "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
            "mlp.up_proj.weight" => ("ffn_up.weight", None),
            "mlp.down_proj.weight" => ("ffn_down.weight", None),
            _ => return None,
        };
        Some((format!("blk.{i}.{name}"), heads))
    }
}

impl TensorSource for GgufSource {
    fn location(&self) -> &Path {
        self.file.path()
    }

    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let missing = || Error::MissingTensor {
            path: self.file.path().to_path_buf(),
            tensor: name.to_string(),
        };
        let (gname, heads) =
            Self::gguf_name(name, self.n_head, self.n_kv_head).ok_or_else(missing)?;
        if !self.file.tensors.contains_key(&gname) {
            return Err(missing());
        }
        let (values, found) = self.file.tensor_f32(&gname)?;
        if found != shape {
            return Err(Error::Shape {
                path: self.file.path().to_path_buf(),
                tensor: format!("{name} (GGUF `{gname}`)"),
                expected: shape.to_vec(),
                found,
            });
        }
        Ok(match heads {
            Some(h) => unpermute_qk(&values, shape[0], shape[1], h),
            None => values,
        })
    }
}

/// Load a GGUF model and its tokenizer.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(Llama, Tokenizer)> {
    let source = GgufSource::open(path)?;
    let config = source.config()?;
    let json = hf_tokenizer_json(source.file())?;
    let tokenizer = Tokenizer::from_json(&json, PathBuf::from(path), &config)?;
    debug_assert!(
        hf_tensor_shapes(&config)
            .iter()
            .all(|(n, _)| GgufSource::gguf_name(n, 1, 1).is_some())
    );
    Ok((load_model(config, &source, device)?, tokenizer))
}
