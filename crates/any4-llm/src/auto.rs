//! One entry point for every model file the project reads, and the any4 folder it writes:
//! - a **GGUF** file (llama.cpp): config from its metadata, tensors renamed to HF names and
//!   dequantized, llama.cpp's Q/K rotary permutation undone, tokenizer rebuilt from its vocabulary;
//! - an **HF folder** (`config.json`, safetensors, `tokenizer.json`);
//! - an **any4 folder** written by [`save_any4`] (`config.json` with `quantization_config`,
//!   `model.safetensors` in the any4 checkpoint format, `tokenizer.json`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use any4_burn::{Checkpoint, LayerInfo, QuantizationConfig, save, write_file_atomically};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, hf_tokenizer_json, unpermute_qk};
use crate::load::{TensorSource, load_model, load_pretrained};
use crate::model::{Llama, hf_tensor_shapes};
use crate::tokenizer::Tokenizer;

/// Whether `path` is a file starting with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Load a model from a GGUF file, an HF folder or an any4 folder (see the module docs).
pub fn load_auto(path: &Path, device: &Device) -> Result<(Llama, Tokenizer)> {
    if path.is_file() {
        if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
            return Err(Error::Input(format!(
                "{}: the file is empty",
                path.display()
            )));
        }
        if is_gguf(path) {
            return load_gguf(path, device);
        }
        return Err(Error::Input(format!(
            "{}: not a GGUF file; pass a GGUF file or a model folder (config.json + safetensors)",
            path.display()
        )));
    }
    if !path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let weights = path.join("model.safetensors");
    if weights.is_file()
        && let Some(header) = any4_header(&weights)
    {
        return load_any4(path, &weights, header, device);
    }
    load_pretrained(path, device)
}

/// Tensor names and `quantization_config` of `model.safetensors` if its metadata says it is an
/// any4 checkpoint (`format = "any4"`), read from the header alone. Deciding by the metadata (not
/// by whether the checkpoint validates) keeps a damaged any4 file's error from turning into a
/// confusing "not an HF model" one.
fn any4_header(weights: &Path) -> Option<(HashSet<String>, BTreeMap<String, LayerInfo>)> {
    let file = std::fs::File::open(weights).ok()?;
    // SAFETY: read-only mapping; checkpoints are replaced by rename, never written in place.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap).ok()?;
    let info = meta.metadata().as_ref()?;
    if info.get("format").map(String::as_str) != Some(any4_burn::CHECKPOINT_FORMAT) {
        return None;
    }
    // An unreadable config is still an any4 file: `Checkpoint::open` names the problem.
    let layers = info
        .get("quantization_config")
        .and_then(|j| serde_json::from_str::<QuantizationConfig>(j).ok())
        .map(|c| c.layers)
        .unwrap_or_default();
    let names = meta.tensors().keys().cloned().collect();
    Some((names, layers))
}

/// An any4 folder: the model skeleton from `config.json`, every tensor from the checkpoint.
fn load_any4(
    dir: &Path,
    weights: &Path,
    (present, layers): (HashSet<String>, BTreeMap<String, LayerInfo>),
    device: &Device,
) -> Result<(Llama, Tokenizer)> {
    let config = LlamaConfig::from_file(dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"), &config)?;
    // Zero-filled skeleton of the right shapes; the checkpoint then replaces every tensor.
    let skeleton = Llama::from_tensors(config, device, &mut |_, shape| {
        Ok(vec![0.0; shape.iter().product()])
    })?;
    // Name a missing tensor (an expert of a truncated Mixtral, say) as the HF loader does,
    // before the checkpoint's own validation reports it as a generic checkpoint error.
    if let Some(tensor) = expected_tensors(&skeleton, &layers)
        .into_iter()
        .find(|t| !present.contains(t))
    {
        return Err(Error::MissingTensor {
            path: weights.to_path_buf(),
            tensor,
        });
    }
    let model = Checkpoint::open(weights)?.load_into(skeleton)?;
    Ok((model, tokenizer))
}

/// Float parameter paths of a module as checkpoints name them (enum variants dropped).
#[derive(Default)]
struct ParamPaths {
    stack: Vec<(String, bool)>,
    paths: Vec<String>,
}

impl ModuleVisitor for ParamPaths {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.starts_with("Enum:")));
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
        let parts: Vec<&str> = self
            .stack
            .iter()
            .filter(|(_, is_enum)| !is_enum)
            .map(|(n, _)| n.as_str())
            .collect();
        self.paths.push(parts.join("."));
    }
}

/// The main tensor of every parameter an any4 checkpoint of the dense `model` must hold: dense
/// parameters by path, a quantized layer `p` by `p.qweight` (and `p.bias` if it has one).
fn expected_tensors(model: &Llama, quantized: &BTreeMap<String, LayerInfo>) -> Vec<String> {
    let mut visitor = ParamPaths::default();
    model.visit(&mut visitor);
    visitor
        .paths
        .into_iter()
        .filter_map(|path| {
            let Some((layer, leaf)) = path.rsplit_once('.') else {
                return Some(path);
            };
            match (quantized.get(layer), leaf) {
                (Some(_), "weight") => Some(format!("{layer}.qweight")),
                (Some(info), "bias") => info.bias.then_some(path),
                _ => Some(path),
            }
        })
        .collect()
}

/// Write `model` as an any4 folder: `model.safetensors` (any4 checkpoint), `config.json` (the
/// model config plus `quantization_config`) and `tokenizer.json`, each written atomically.
pub fn save_any4(
    dir: &Path,
    model: &mut Llama,
    tokenizer: &Tokenizer,
) -> Result<QuantizationConfig> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let qc = save(model, &dir.join("model.safetensors"))?;
    let mut config =
        serde_json::to_value(&model.config).map_err(|e| Error::Input(e.to_string()))?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "quantization_config".into(),
            serde_json::to_value(&qc).map_err(|e| Error::Input(e.to_string()))?,
        );
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Input(e.to_string()))?;
    write_file_atomically(&dir.join("config.json"), text.as_bytes())?;
    let tok = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| Error::Tokenize(e.to_string()))?;
    write_file_atomically(&dir.join("tokenizer.json"), tok.as_bytes())?;
    Ok(qc)
}

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
