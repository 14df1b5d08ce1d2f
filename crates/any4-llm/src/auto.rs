//! One entry point for every model file the project reads, and the any4 folder it writes:
//! - a **GGUF** file (llama.cpp): config from its metadata, tensors renamed to HF names and
//!   dequantized, llama.cpp's Q/K rotary permutation undone, tokenizer rebuilt from its vocabulary;
//! - an **HF folder** (`config.json`, safetensors, `tokenizer.json`);
//! - an **any4 folder** written by [`save_any4`] (`config.json` with `quantization_config`,
//!   `model.safetensors` in the any4 checkpoint format, `tokenizer.json`), replaced whole.

use std::path::Path;

use any4_burn::{
    Any4Header, Checkpoint, CheckpointMeta, OutputDir, check_output_dir, checkpoint_tensor_names,
    read_any4_header, save,
};
use burn::tensor::Device;

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
    // Decided by the file's `format` tag, not by whether it validates, so a damaged any4 file
    // is reported by the checkpoint reader rather than as "not an HF model".
    let weights = path.join("model.safetensors");
    if let Some(header) = read_any4_header(&weights) {
        return load_any4(path, &weights, header, device);
    }
    load_pretrained(path, device)
}

/// An any4 folder: the model skeleton from `config.json`, every tensor from the checkpoint.
fn load_any4(
    dir: &Path,
    weights: &Path,
    header: Any4Header,
    device: &Device,
) -> Result<(Llama, Tokenizer)> {
    // An unreadable config is still an any4 file: `Checkpoint::open` names the problem below.
    let layers = header.meta.map(|m| m.layers).unwrap_or_default();
    let config = LlamaConfig::from_file(dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"), &config)?;
    // Zero-filled skeleton of the right shapes; the checkpoint then replaces every tensor.
    let skeleton = Llama::from_tensors(config, device, &mut |_, shape| {
        Ok(vec![0.0; shape.iter().product()])
    })?;
    // Name a missing tensor (an expert of a truncated Mixtral, say) as the HF loader does,
    // before the checkpoint's own validation reports it as a generic checkpoint error.
    if let Some(tensor) = checkpoint_tensor_names(&skeleton, &layers)
        .into_iter()
        .find(|t| !header.tensors.contains(t))
    {
        return Err(Error::MissingTensor {
            path: weights.to_path_buf(),
            tensor,
        });
    }
    let model = Checkpoint::open(weights)?.load_into(skeleton)?;
    Ok((model, tokenizer))
}

/// Write `model` as an any4 folder at `dir`: `model.safetensors` (any4 checkpoint),
/// `config.json` (the model config plus `quantization_config`) and `tokenizer.json`.
///
/// The folder is written beside `dir` and swapped in whole, so an interrupted save leaves the
/// previous folder or the new one, never a mix. `dir` must not exist, be empty or be an any4
/// checkpoint folder: anything else is refused, naming what it holds (see
/// [`any4_burn::check_output_dir`]; to also protect the model's own files, or to force a write
/// into a foreign folder, check the folder with it and call [`save_any4_to`]).
pub fn save_any4(dir: &Path, model: &mut Llama, tokenizer: &Tokenizer) -> Result<CheckpointMeta> {
    save_any4_to(&check_output_dir(dir, &[], false)?, model, tokenizer)
}

/// [`save_any4`] into a folder already checked by [`any4_burn::check_output_dir`] (which also
/// refuses an output that is, or contains, one of the inputs).
pub fn save_any4_to(
    out: &OutputDir,
    model: &mut Llama,
    tokenizer: &Tokenizer,
) -> Result<CheckpointMeta> {
    out.write(|dir| -> Result<CheckpointMeta> {
        let qc = save(model, &dir.join("model.safetensors"))?;
        crate::stream::write_model_files(dir, &model.config, tokenizer, &qc)?;
        Ok(qc)
    })
}
