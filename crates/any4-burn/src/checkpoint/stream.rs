//! Writing a checkpoint part by part, for models quantized one block at a time (streaming).
//!
//! Every tensor's name, dtype and shape is known before any weight is read: dense parameters
//! keep their shapes, and a quantized layer's tensors follow from its [`LayerInfo`]. So the
//! safetensors header — and with it every tensor's byte range — is computed up front, the file
//! is sized, and each tensor is written at its offset as soon as its part of the model is done;
//! nothing but the part being written is held. The bytes are those [`save`](super::save) would
//! write for the whole model (same header, same order, same encoding), and the file is written
//! atomically like every checkpoint (temporary file, fsync, rename).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use any4_core::{Any4Config, ParamDtype, QuantizedMatrix};
use burn::module::Module;
use safetensors::Dtype;

use super::codec::non_finite;
use super::walk::Collector;
use super::write::{file_metadata, file_order, header_for, matrix_tensors, quantized_tensors};
use super::{CheckpointMeta, LayerInfo, bad};
use crate::atomic::write_atomically;
use crate::error::{Error, Result};
use crate::linear::{QLinear, QLinearContainer, join_path};

/// A tensor the checkpoint will hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Checkpoint name (`layers.0.self_attn.q_proj.qweight`).
    pub name: String,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Stored shape (`[out, in]` for dense linear weights).
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// A dense f32 tensor (how [`save`](super::save) stores the parameters of a model loaded
    /// in f32).
    pub fn f32(name: impl Into<String>, shape: &[usize]) -> Self {
        PlannedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
        }
    }

    /// The tensors of quantized layer `path`: `qweight`, `table`, `scales`, `zeros` (and `bias`).
    pub fn quantized(path: &str, info: &LayerInfo) -> Vec<Self> {
        let [rows, cols] = info.shape;
        let param = match info.config.param_dtype() {
            ParamDtype::F32 => Dtype::F32,
            ParamDtype::F16 => Dtype::F16,
            ParamDtype::Bf16 => Dtype::BF16,
        };
        let groups = info.config.group_size().groups_for(cols);
        let table_rows = if info.table == "shared" { 1 } else { rows };
        let mut out = vec![
            PlannedTensor {
                name: format!("{path}.qweight"),
                dtype: Dtype::U32,
                shape: vec![rows, cols.div_ceil(8)],
            },
            PlannedTensor {
                name: format!("{path}.table"),
                dtype: param,
                shape: vec![table_rows, 16],
            },
        ];
        for what in ["scales", "zeros"] {
            out.push(PlannedTensor {
                name: format!("{path}.{what}"),
                dtype: param,
                shape: vec![rows, groups],
            });
        }
        if info.bias {
            out.push(Self::f32(format!("{path}.bias"), &[rows]));
        }
        out
    }
}

impl CheckpointMeta {
    /// The `quantization_config` of a checkpoint written by this version: `layers` quantized,
    /// `modules_not_quantized` (`QLinear` paths in model order) left dense.
    pub fn new(
        layers: std::collections::BTreeMap<String, LayerInfo>,
        modules_not_quantized: Vec<String>,
    ) -> Self {
        CheckpointMeta {
            quant_method: super::CHECKPOINT_FORMAT.to_string(),
            schema_version: super::SCHEMA_VERSION,
            tool_version: concat!("burn-any4 ", env!("CARGO_PKG_VERSION")).to_string(),
            layers,
            modules_not_quantized,
        }
    }
}

impl LayerInfo {
    /// What a layer of `shape` (`[out, in]`) quantized with `config` is recorded as; the same
    /// value [`save`](super::save) records after quantizing it.
    pub fn planned(config: Any4Config, shape: [usize; 2], bias: bool) -> Self {
        LayerInfo {
            config,
            shape,
            table: super::table_kind(config.format()).to_string(),
            bias,
        }
    }
}

/// Where a planned tensor goes and how much of it is written.
struct Slot {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute file offset of its first byte.
    offset: u64,
    len: u64,
    written: u64,
}

/// A checkpoint file being written part by part; see the module docs.
pub struct CheckpointWriter {
    /// The final path, for errors.
    path: PathBuf,
    file: File,
    slots: HashMap<String, Slot>,
    meta: CheckpointMeta,
}

/// Write the checkpoint `path` holding exactly `tensors` with `meta` as its
/// `quantization_config`: `fill` puts every tensor (in any order, each at most once), then the
/// file is checked complete, synced and renamed into place. On any error (or a tensor left
/// unwritten) nothing appears at `path` and a previous file there is untouched; an error of
/// `fill` is returned as it is.
pub fn write_checkpoint_streaming<E: From<Error>>(
    path: &Path,
    tensors: Vec<PlannedTensor>,
    meta: CheckpointMeta,
    fill: impl FnOnce(&mut CheckpointWriter) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut failed = None;
    let outcome = write_streaming(path, tensors, meta, |w| {
        fill(w).map_err(|e| {
            failed = Some(e);
            Error::Data("interrupted".into())
        })
    });
    match (outcome, failed) {
        (Err(_), Some(e)) => Err(e),
        (outcome, _) => outcome.map_err(E::from),
    }
}

fn write_streaming(
    path: &Path,
    mut tensors: Vec<PlannedTensor>,
    meta: CheckpointMeta,
    fill: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
) -> Result<()> {
    tensors.sort_by(|a, b| file_order((&a.name, a.dtype), (&b.name, b.dtype)));
    let layout: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let header = header_for(path, layout, file_metadata(path, &meta)?)?;
    let data_start = 8 + header.len() as u64;
    let mut slots = HashMap::with_capacity(tensors.len());
    let mut offset = data_start;
    for t in tensors {
        let len = (t.shape.iter().product::<usize>() * t.dtype.bitsize()).div_ceil(8) as u64;
        let slot = Slot {
            dtype: t.dtype,
            shape: t.shape,
            offset,
            len,
            written: 0,
        };
        offset += len;
        if slots.insert(t.name.clone(), slot).is_some() {
            return Err(bad(path, format!("tensor `{}` planned twice", t.name)));
        }
    }
    write_atomically(path, |tmp| {
        let io = |source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        };
        let mut file = File::create(tmp).map_err(io)?;
        file.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| file.write_all(&header))
            .and_then(|()| file.set_len(offset))
            .map_err(io)?;
        let mut writer = CheckpointWriter {
            path: path.to_path_buf(),
            file,
            slots,
            meta,
        };
        fill(&mut writer)?;
        writer.check_complete()?;
        writer.file.flush().map_err(io)
    })
}

impl CheckpointWriter {
    /// The `quantization_config` being written.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Append `bytes` to tensor `name` (little-endian, in its planned dtype): a tensor can be
    /// written whole or in consecutive parts (e.g. row blocks of an embedding).
    pub fn put_part(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path.clone();
        let slot = self.slots.get_mut(name).ok_or_else(|| {
            bad(
                &path,
                format!("tensor `{name}` is not in the planned layout"),
            )
        })?;
        if slot.written + bytes.len() as u64 > slot.len {
            return Err(bad(
                &path,
                format!(
                    "tensor `{name}`: {} bytes written past its {} planned ones",
                    slot.written + bytes.len() as u64,
                    slot.len
                ),
            ));
        }
        if let Some(e) = non_finite(name, slot.dtype, &[bytes.len()], bytes) {
            return Err(bad(&path, e.to_string()));
        }
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        self.file
            .seek(SeekFrom::Start(slot.offset + slot.written))
            .and_then(|_| self.file.write_all(bytes))
            .map_err(io)?;
        slot.written += bytes.len() as u64;
        Ok(())
    }

    /// Write tensor `name` whole, checking its dtype and shape against the plan.
    pub fn put(&mut self, name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<()> {
        let slot = self.slots.get(name).ok_or_else(|| {
            bad(
                &self.path,
                format!("tensor `{name}` is not in the planned layout"),
            )
        })?;
        if slot.dtype != dtype || slot.shape != shape || slot.written != 0 {
            return Err(bad(
                &self.path,
                format!(
                    "tensor `{name}` is {dtype:?} {shape:?}, planned {:?} {:?}{}",
                    slot.dtype,
                    slot.shape,
                    if slot.written != 0 {
                        " (already written)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if bytes.len() as u64 != slot.len {
            return Err(bad(
                &self.path,
                format!("tensor `{name}`: {} bytes for {shape:?}", bytes.len()),
            ));
        }
        self.put_part(name, bytes)
    }

    /// Write every parameter of `module`, a part of the model whose paths start with `prefix`
    /// (`layers.3` for a decoder block): dense parameters as [`save`](super::save) stores
    /// them, quantized layers as their four tensors (and bias). Each quantized layer must be
    /// the one planned in [`meta`](Self::meta), each dense `QLinear` one planned to stay dense.
    pub fn put_module<M: Module + QLinearContainer>(
        &mut self,
        prefix: &str,
        module: &mut M,
    ) -> Result<()> {
        let mut collector = Collector::default();
        module.visit(&mut collector);
        match collector.error {
            Some(Error::Data(reason)) => return Err(bad(&self.path, reason)),
            Some(e) => return Err(e),
            None => {}
        }
        for (name, t) in collector.tensors {
            self.put(&join_path(prefix, &name), t.dtype, &t.shape, &t.bytes)?;
        }
        let mut result = Ok(());
        let mut layers = Vec::new();
        module.visit_qlinears(prefix, &mut |p, layer| {
            if result.is_err() {
                return;
            }
            match layer {
                QLinear::Dense(_) => {
                    if !self.meta.modules_not_quantized.iter().any(|m| m == p) {
                        result = Err(bad(
                            &self.path,
                            format!("layer `{p}` is dense but was planned quantized"),
                        ));
                    }
                }
                QLinear::Calibrating(_) => {
                    result = Err(bad(
                        &self.path,
                        format!(
                            "layer `{p}` is still being calibrated: detach the calibrator first"
                        ),
                    ))
                }
                QLinear::Quant(q) => match quantized_tensors(p, q) {
                    Ok(t) => layers.push((p.to_string(), t)),
                    Err(e) => result = Err(e.in_layer(p)),
                },
            }
        });
        result?;
        for (p, (info, tensors)) in layers {
            if self.meta.layers.get(&p) != Some(&info) {
                return Err(bad(
                    &self.path,
                    format!("layer `{p}` was quantized as {info:?}, which is not what was planned"),
                ));
            }
            for (name, t) in tensors {
                self.put(&name, t.dtype, &t.shape, &t.bytes)?;
            }
        }
        Ok(())
    }

    /// Write quantized layer `path` holding `m` (and its f32 `bias`), which must be the layer
    /// planned in [`meta`](Self::meta): for layers that never were a module (imported ones).
    pub fn put_quantized(
        &mut self,
        path: &str,
        m: &QuantizedMatrix,
        bias: Option<&[f32]>,
    ) -> Result<()> {
        let bias = bias.map(|b| b.iter().flat_map(|v| v.to_le_bytes()).collect());
        let (info, tensors) = matrix_tensors(path, m, bias);
        if self.meta.layers.get(path) != Some(&info) {
            return Err(bad(
                &self.path,
                format!("layer `{path}` is {info:?}, which is not what was planned"),
            ));
        }
        for (name, t) in tensors {
            self.put(&name, t.dtype, &t.shape, &t.bytes)?;
        }
        Ok(())
    }

    fn check_complete(&self) -> Result<()> {
        let mut missing: Vec<(&String, &Slot)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.written != s.len)
            .collect();
        missing.sort_by_key(|(_, s)| s.offset);
        match missing.first() {
            None => Ok(()),
            Some((name, s)) => Err(bad(
                &self.path,
                format!(
                    "tensor `{name}` was not written ({} of {} bytes; {} tensors incomplete)",
                    s.written,
                    s.len,
                    missing.len()
                ),
            )),
        }
    }
}
