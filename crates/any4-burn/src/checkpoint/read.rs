//! Reading: a memory-mapped checkpoint, validated (schema, names, shapes, dtypes, finiteness)
//! before anything is loaded into a model.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use any4_core::QuantizedMatrix;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::codec::{bytes_to_f32, non_finite};
use super::walk::{Loader, PathStack};
use super::{CHECKPOINT_FORMAT, CheckpointMeta, LayerInfo, SCHEMA_VERSION, bad, table_kind};
use crate::error::{Error, Result};
use crate::linear::{Any4Linear, QLinear, QLinearContainer};

/// The tensors of quantized layer `p`: `(name, shape, whether it holds codes)`.
fn layer_tensors(p: &str, info: &LayerInfo) -> Vec<(String, Vec<usize>, bool)> {
    let [rows, cols] = info.shape;
    let groups = info.config.group_size().groups_for(cols);
    let table_rows = info.config.format().table_rows(rows);
    let mut v = vec![
        (format!("{p}.qweight"), vec![rows, cols.div_ceil(8)], true),
        (format!("{p}.table"), vec![table_rows, 16], false),
        (format!("{p}.scales"), vec![rows, groups], false),
        (format!("{p}.zeros"), vec![rows, groups], false),
    ];
    if info.bias {
        v.push((format!("{p}.bias"), vec![rows], false));
    }
    v
}

/// Whether the file holds layer `p` as `info` describes it (names, shapes, dtypes, table kind).
fn check_layer(st: &SafeTensors<'_>, p: &str, info: &LayerInfo) -> std::result::Result<(), String> {
    let [rows, cols] = info.shape;
    if rows == 0 || cols == 0 {
        return Err(format!("empty shape {:?}", info.shape));
    }
    let table = table_kind(info.config.format());
    if info.table != table {
        return Err(format!(
            "table `{}` does not match format {} (expected `{table}`)",
            info.table,
            info.config.format()
        ));
    }
    for (name, shape, codes) in layer_tensors(p, info) {
        let t = st
            .tensor(&name)
            .map_err(|_| format!("missing tensor `{name}`"))?;
        let dtype_ok = match codes {
            true => t.dtype() == Dtype::U32,
            false => matches!(t.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16),
        };
        if !dtype_ok || t.shape() != shape.as_slice() {
            return Err(format!(
                "tensor `{name}` is {:?} {:?}, expected {} {shape:?}",
                t.dtype(),
                t.shape(),
                if codes { "U32" } else { "F32, F16 or BF16" }
            ));
        }
    }
    Ok(())
}

/// What the header of a checkpoint file says, read without validating the rest.
#[derive(Debug, Clone)]
pub struct Any4Header {
    /// Every tensor name in the file.
    pub tensors: HashSet<String>,
    /// The `quantization_config`, if it parses (a damaged one is [`Checkpoint::open`]'s to
    /// report).
    pub meta: Option<CheckpointMeta>,
}

/// The header of `path` if it is a safetensors file whose metadata says `format = "any4"`;
/// `None` for anything else (another safetensors file, not safetensors, unreadable). Deciding
/// by this tag, not by whether the file validates, lets callers report a damaged any4 file as
/// one (through [`Checkpoint::open`]) rather than as some other kind of file.
pub fn read_any4_header(path: &Path) -> Option<Any4Header> {
    let file = File::open(path).ok()?;
    if file.metadata().ok()?.is_dir() {
        return None;
    }
    // SAFETY: read-only mapping; checkpoints are replaced by rename, never written in place.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let (_, meta) = SafeTensors::read_metadata(&mmap).ok()?;
    let info = meta.metadata().as_ref()?;
    if info.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return None;
    }
    Some(Any4Header {
        tensors: meta.tensors().keys().cloned().collect(),
        meta: info
            .get("quantization_config")
            .and_then(|j| serde_json::from_str(j).ok()),
    })
}

/// Whether `path` is tagged as an any4 checkpoint (see [`read_any4_header`]).
pub fn is_any4_checkpoint(path: &Path) -> bool {
    read_any4_header(path).is_some()
}

/// A memory-mapped, validated checkpoint file.
pub struct Checkpoint {
    path: PathBuf,
    mmap: memmap2::Mmap,
    config: CheckpointMeta,
}

impl Checkpoint {
    /// Map `path` and parse its header and `quantization_config`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // Mapping a folder fails with an obscure "No such device"; say what is expected.
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(bad(
                path,
                "is a folder; expected the checkpoint file (model.safetensors)",
            ));
        }
        // SAFETY: the file is opened read-only; writers of this format replace files by rename,
        // never in place, so the mapped bytes do not change under us.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            bad(
                path,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        let info = meta.metadata().as_ref();
        let get = |k: &str| info.and_then(|m| m.get(k));
        if get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad(
                path,
                "not an any4 checkpoint (metadata `format` is not \"any4\")",
            ));
        }
        let json = get("quantization_config")
            .ok_or_else(|| bad(path, "missing `quantization_config` metadata"))?;
        let config: CheckpointMeta = serde_json::from_str(json)
            .map_err(|e| bad(path, format!("invalid quantization_config: {e}")))?;
        if config.schema_version > SCHEMA_VERSION {
            return Err(bad(
                path,
                format!(
                    "schema version {} is newer than this tool's {SCHEMA_VERSION}: upgrade burn-any4",
                    config.schema_version
                ),
            ));
        }
        // Full validation of offsets and sizes (catches truncation).
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| bad(path, format!("corrupt or truncated: {e}")))?;
        // Every layer the config lists has its tensors, of the shapes and dtypes its config
        // implies: what `config()` reports (e.g. `any4 inspect`) is then backed by the file,
        // and its shapes are bounded by the file size (no overflow in size arithmetic).
        for (p, info) in &config.layers {
            check_layer(&st, p, info)
                .map_err(|reason| bad(path, format!("layer `{p}`: {reason}")))?;
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            mmap,
            config,
        })
    }

    /// The stored `quantization_config`.
    pub fn config(&self) -> &CheckpointMeta {
        &self.config
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| bad(&self.path, e.to_string()))
    }

    /// Names, dtypes and shapes of every tensor, sorted by name.
    pub fn tensor_infos(&self) -> Result<Vec<(String, Dtype, Vec<usize>)>> {
        let st = self.tensors()?;
        let mut v: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    /// Total bytes of the file.
    pub fn file_bytes(&self) -> usize {
        self.mmap.len()
    }

    /// Bytes the file stores for quantized layer `p`: codes, table, scales, zeros and bias.
    pub fn layer_bytes(&self, p: &str) -> Result<usize> {
        let info = self
            .config
            .layers
            .get(p)
            .ok_or_else(|| bad(&self.path, format!("no quantized layer `{p}`")))?;
        let st = self.tensors()?;
        layer_tensors(p, info)
            .iter()
            .map(|(name, _, _)| {
                st.tensor(name)
                    .map(|t| t.data().len())
                    .map_err(|_| bad(&self.path, format!("missing tensor `{name}`")))
            })
            .sum()
    }

    /// Read tensor `name` as f32 values with an expected shape.
    pub(super) fn read_f32(
        &self,
        st: &SafeTensors<'_>,
        name: &str,
        shape: &[usize],
    ) -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(&self.path, format!("missing tensor `{name}`")))?;
        if t.shape() != shape {
            return Err(bad(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            ));
        }
        if let Some(e) = non_finite(name, t.dtype(), shape, t.data()) {
            return Err(bad(&self.path, e.to_string()));
        }
        bytes_to_f32(t.dtype(), t.data()).ok_or_else(|| {
            bad(
                &self.path,
                format!(
                    "tensor `{name}` has dtype {:?}, expected F32, F16 or BF16",
                    t.dtype()
                ),
            )
        })
    }

    fn read_quantized(
        &self,
        st: &SafeTensors<'_>,
        p: &str,
        info: &LayerInfo,
    ) -> Result<QuantizedMatrix> {
        let [rows, cols] = info.shape;
        let name = format!("{p}.qweight");
        let t = st
            .tensor(&name)
            .map_err(|_| bad(&self.path, format!("missing tensor `{name}`")))?;
        let wshape = [rows, cols.div_ceil(8)];
        if t.dtype() != Dtype::U32 || t.shape() != wshape {
            return Err(bad(
                &self.path,
                format!(
                    "tensor `{name}` is {:?} {:?}, expected U32 {wshape:?}",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        let codes = t
            .data()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let groups = info.config.group_size().groups_for(cols);
        let table_rows = info.config.format().table_rows(rows);
        let table = self.read_f32(st, &format!("{p}.table"), &[table_rows, 16])?;
        let scales = self.read_f32(st, &format!("{p}.scales"), &[rows, groups])?;
        let zeros = self.read_f32(st, &format!("{p}.zeros"), &[rows, groups])?;
        QuantizedMatrix::from_parts(info.config, info.shape, codes, table, scales, zeros)
            .map_err(|e| bad(&self.path, format!("layer `{p}`: {e}")))
    }

    /// Load into `model`, whose architecture must match: quantized layers are rebuilt from the
    /// file on the device of the layer they replace, every other float parameter is replaced by
    /// the stored tensor (cast to the parameter's dtype). Every tensor of the file must be used.
    pub fn load_into<M: Module + QLinearContainer>(&self, mut model: M) -> Result<M> {
        let st = self.tensors()?;
        let mut used: Vec<String> = Vec::new();
        let mut result = Ok(());
        let mut found = 0usize;
        model.visit_qlinears("", &mut |p, layer| {
            if result.is_err() {
                return;
            }
            let Some(info) = self.config.layers.get(p) else {
                return;
            };
            found += 1;
            let [d_out, d_in] = layer.dims();
            if [d_out, d_in] != info.shape {
                result = Err(bad(
                    &self.path,
                    format!(
                        "layer `{p}` is [{d_out}, {d_in}] in the model but {:?} in the checkpoint",
                        info.shape
                    ),
                ));
                return;
            }
            let device: Device = layer.weight_hf().device();
            let built = self.read_quantized(&st, p, info).and_then(|q| {
                let bias = if info.bias {
                    let b = self.read_f32(&st, &format!("{p}.bias"), &[d_out])?;
                    Some(Tensor::<1>::from_data(TensorData::new(b, [d_out]), &device))
                } else {
                    None
                };
                Ok(Any4Linear::from_quantized(&q, bias, &device))
            });
            match built {
                Ok(l) => {
                    *layer = QLinear::Quant(l);
                    used.extend(
                        ["qweight", "table", "scales", "zeros"]
                            .iter()
                            .map(|s| format!("{p}.{s}")),
                    );
                    if info.bias {
                        used.push(format!("{p}.bias"));
                    }
                }
                Err(e) => result = Err(e),
            }
        });
        result?;
        if found != self.config.layers.len() {
            let mut paths = Vec::new();
            model.visit_qlinears("", &mut |p, _| paths.push(p.to_string()));
            let missing = self
                .config
                .layers
                .keys()
                .find(|k| !paths.contains(k))
                .cloned()
                .unwrap_or_default();
            return Err(bad(
                &self.path,
                format!("checkpoint layer `{missing}` does not exist in the model"),
            ));
        }
        let mut loader = Loader {
            ckpt: self,
            st: &st,
            stack: PathStack::default(),
            used: Vec::new(),
            error: None,
        };
        let model = model.map(&mut loader);
        if let Some(e) = loader.error {
            return Err(e);
        }
        used.extend(loader.used);
        if let Some(extra) = st
            .names()
            .into_iter()
            .find(|n| !used.iter().any(|u| u == *n))
        {
            return Err(bad(
                &self.path,
                format!("unexpected tensor `{extra}` (checkpoint of another model?)"),
            ));
        }
        Ok(model)
    }
}
