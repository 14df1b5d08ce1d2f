//! Loading HF checkpoints: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), memory-mapped, converted to f32 tensor by tensor.
//!
//! Model construction only asks a [`TensorSource`] for HF-named tensors, so another format
//! (GGUF: rename tensors, dequantize blocks, undo llama.cpp's q/k row permutation) plugs in by
//! implementing that trait.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensors};
use serde::Deserialize;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// Where a model's HF-named tensors come from.
pub trait TensorSource {
    /// The checkpoint (file or folder), for error messages.
    fn location(&self) -> &Path;
    /// The f32 values (row-major) of tensor `name`, which must have shape `shape`.
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    meta: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only; a checkpoint rewritten while mapped is the caller's
        // problem, as with every mmap-based loader (safetensors' own docs make the same demand).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            data_start: 8 + n,
            meta,
        })
    }
}

/// HF safetensors checkpoint: one file or an index of shards.
pub struct SafetensorsSource {
    location: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name → shard index (sharded checkpoints only).
    index: Option<HashMap<String, usize>>,
}

impl std::fmt::Debug for SafetensorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsSource")
            .field("location", &self.location)
            .field("shards", &self.shards.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsSource {
    /// Open `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::open_file(&single);
        }
        let index_path = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let idx: ShardIndex = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: index_path.clone(),
            source,
        })?;
        let mut files: Vec<&String> = idx.weight_map.values().collect();
        files.sort();
        files.dedup();
        let shards = files
            .iter()
            .map(|f| Shard::open(&dir.join(f)))
            .collect::<Result<Vec<_>>>()?;
        let index = idx
            .weight_map
            .iter()
            .filter_map(|(name, f)| {
                files
                    .iter()
                    .position(|g| *g == f)
                    .map(|i| (name.clone(), i))
            })
            .collect();
        Ok(SafetensorsSource {
            location: index_path,
            shards,
            index: Some(index),
        })
    }

    /// Open a single safetensors file.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Ok(SafetensorsSource {
            location: path.to_path_buf(),
            shards: vec![Shard::open(path)?],
            index: None,
        })
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shards
            .iter()
            .flat_map(|s| s.meta.tensors().into_keys())
            .collect();
        names.sort();
        names
    }

    /// Whether the checkpoint holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.shard_of(name).is_some()
    }

    /// The stored bytes of tensor `name` (little-endian, unconverted) with its dtype and shape,
    /// borrowed from the mapping.
    pub fn raw(&self, name: &str) -> Result<(safetensors::Dtype, Vec<usize>, &[u8])> {
        let shard = self.shard_of(name).ok_or_else(|| Error::MissingTensor {
            path: self.location.clone(),
            tensor: name.to_string(),
        })?;
        let info = shard.meta.info(name).ok_or_else(|| Error::MissingTensor {
            path: shard.path.clone(),
            tensor: name.to_string(),
        })?;
        let (a, b) = info.data_offsets;
        let bytes = shard
            .map
            .get(shard.data_start + a..shard.data_start + b)
            .ok_or_else(|| Error::Safetensors {
                path: shard.path.clone(),
                reason: format!("tensor `{name}` data lies outside the file"),
            })?;
        Ok((info.dtype, info.shape.clone(), bytes))
    }

    /// Drop the mapped pages of tensor `name` from this process's memory (`MADV_DONTNEED`):
    /// they stay in the page cache and are read back if touched again. Streaming calls this
    /// after each block so that reading a model larger than RAM does not grow the resident
    /// set with it. Best effort: unknown names and unsupported systems are ignored.
    pub fn release(&self, name: &str) {
        self.release_part(name, 0..usize::MAX);
    }

    /// [`release`](Self::release) for the bytes `part` of tensor `name`'s data (clamped to it),
    /// e.g. the rows of an embedding already copied.
    pub fn release_part(&self, name: &str, part: std::ops::Range<usize>) {
        let Some(shard) = self.shard_of(name) else {
            return;
        };
        let Some(info) = shard.meta.info(name) else {
            return;
        };
        let (a, b) = info.data_offsets;
        let (a, b) = (
            a.saturating_add(part.start).min(b),
            a.saturating_add(part.end).min(b),
        );
        // Whole pages inside the range only, so neighbours stay mapped.
        let page = 4096;
        let start = (shard.data_start + a).next_multiple_of(page);
        let end = (shard.data_start + b) / page * page;
        if end > start {
            #[cfg(unix)]
            // SAFETY: the mapping is a read-only, file-backed one: dropped pages are re-read
            // from the file on the next access, so no data is lost and no reference is
            // invalidated.
            unsafe {
                let _ = shard.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                );
            }
        }
    }

    fn shard_of(&self, name: &str) -> Option<&Shard> {
        match &self.index {
            Some(ix) => ix.get(name).map(|&i| &self.shards[i]),
            None => self.shards.first(),
        }
        .filter(|s| s.meta.info(name).is_some())
    }
}

impl TensorSource for SafetensorsSource {
    fn location(&self) -> &Path {
        &self.location
    }

    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let shard = self.shard_of(name).ok_or_else(|| Error::MissingTensor {
            path: self.location.clone(),
            tensor: name.to_string(),
        })?;
        let info = shard.meta.info(name).ok_or_else(|| Error::MissingTensor {
            path: shard.path.clone(),
            tensor: name.to_string(),
        })?;
        if info.shape != shape {
            return Err(Error::Shape {
                path: shard.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (a, b) = info.data_offsets;
        let bytes = shard
            .map
            .get(shard.data_start + a..shard.data_start + b)
            .ok_or_else(|| Error::Safetensors {
                path: shard.path.clone(),
                reason: format!("tensor `{name}` data lies outside the file"),
            })?;
        let n: usize = shape.iter().product();
        let values = any4_burn::bytes_to_f32(info.dtype, bytes).ok_or_else(|| Error::Dtype {
            path: shard.path.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        if values.len() != n {
            return Err(Error::Safetensors {
                path: shard.path.clone(),
                reason: format!(
                    "tensor `{name}`: {} values for shape {shape:?}",
                    values.len()
                ),
            });
        }
        Ok(values)
    }
}

/// Build the model described by `config` from `source`, on `device`.
pub fn load_model(
    config: LlamaConfig,
    source: &dyn TensorSource,
    device: &Device,
) -> Result<Llama> {
    let start = std::time::Instant::now();
    let model = Llama::from_tensors(config, device, &mut |name, shape| source.read(name, shape))?;
    tracing::info!(
        "loaded {} layers from {} in {:.2}s",
        model.num_layers(),
        source.location().display(),
        start.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// Load an HF folder (`config.json`, safetensors, `tokenizer.json`) onto `device`.
pub fn load_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<(Llama, Tokenizer)> {
    let dir = dir.as_ref();
    let config = LlamaConfig::from_file(dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"), &config)?;
    let source = SafetensorsSource::open_dir(dir)?;
    Ok((load_model(config, &source, device)?, tokenizer))
}
