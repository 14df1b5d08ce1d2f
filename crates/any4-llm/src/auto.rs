//! One entry point for every model file the project reads, and the any4 folder it writes:
//! - a **GGUF** file (llama.cpp): config from its metadata, tensors renamed to HF names and
//!   dequantized, llama.cpp's Q/K rotary permutation undone, tokenizer rebuilt from its vocabulary;
//! - an **HF folder** (`config.json`, safetensors, `tokenizer.json`);
//! - an **any4 folder** written by [`save_any4`] (`config.json` with `quantization_config`,
//!   `model.safetensors` in the any4 checkpoint format, `tokenizer.json`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use any4_burn::{Checkpoint, CheckpointMeta, LayerInfo, save, write_file_atomically};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::gguf::load_gguf;
use crate::load::load_pretrained;
use crate::model::Llama;
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
        .and_then(|j| serde_json::from_str::<CheckpointMeta>(j).ok())
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
pub fn save_any4(dir: &Path, model: &mut Llama, tokenizer: &Tokenizer) -> Result<CheckpointMeta> {
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
