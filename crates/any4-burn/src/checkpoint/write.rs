//! Saving: dense parameters and any4 layers to one safetensors file with the
//! `quantization_config` metadata, written atomically.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use any4_core::QuantizedMatrix;
use burn::module::Module;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};

use super::codec::{Owned, param_bytes};
use super::walk::Collector;
use super::{CHECKPOINT_FORMAT, CheckpointMeta, LayerInfo, MAX_HEADER_BYTES, bad, table_kind};
use crate::atomic::{Sink, write_atomically};
use crate::error::{Error, Result};
use crate::linear::{Any4Linear, QLinear, QLinearContainer};

/// Save `model` (dense and any4 layers alike) to the safetensors file `path`, atomically.
///
/// Refuses a model with a NaN or infinite parameter (naming it) rather than writing a checkpoint
/// that loads but computes garbage.
pub fn save<M: Module + QLinearContainer>(model: &mut M, path: &Path) -> Result<CheckpointMeta> {
    save_with(model, path, &|file| Box::new(file))
}

pub(super) fn save_with<M: Module + QLinearContainer>(
    model: &mut M,
    path: &Path,
    sink: Sink<'_>,
) -> Result<CheckpointMeta> {
    let mut collector = Collector::default();
    model.visit(&mut collector);
    match collector.error {
        Some(Error::Data(reason)) => return Err(bad(path, reason)),
        Some(e) => return Err(e),
        None => {}
    }
    let mut tensors = collector.tensors;
    let mut config = CheckpointMeta::new(BTreeMap::new(), Vec::new());
    let mut result = Ok(());
    model.visit_qlinears("", &mut |p, layer| {
        if result.is_err() {
            return;
        }
        match layer {
            QLinear::Dense(_) => config.modules_not_quantized.push(p.to_string()),
            QLinear::Calibrating(_) => {
                result = Err(bad(
                    path,
                    format!("layer `{p}` is still being calibrated: detach the calibrator first"),
                ));
            }
            QLinear::Quant(q) => match quantized_tensors(p, q) {
                Ok((info, owned)) => {
                    config.layers.insert(p.to_string(), info);
                    tensors.extend(owned);
                }
                Err(e) => result = Err(e.in_layer(p)),
            },
        }
    });
    result?;
    let metadata = file_metadata(path, &config)?;
    // safetensors' own order: by decreasing dtype alignment, then name, so every tensor's data
    // is aligned for readers that map it in place.
    tensors.sort_by(|(a, ta), (b, tb)| file_order((a, ta.dtype), (b, tb.dtype)));
    let header = header_bytes(path, &tensors, metadata)?;
    write_atomically(path, |tmp| {
        let file = File::create(tmp).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, sink(file));
        let mut body = || -> std::io::Result<()> {
            w.write_all(&(header.len() as u64).to_le_bytes())?;
            w.write_all(&header)?;
            for (_, t) in &tensors {
                w.write_all(&t.bytes)?;
            }
            w.flush()
        };
        body().map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(config)
}

/// The `__metadata__` of a checkpoint holding `config`.
pub(super) fn file_metadata(
    path: &Path,
    config: &CheckpointMeta,
) -> Result<HashMap<String, String>> {
    let json = serde_json::to_string(config).map_err(|e| bad(path, e.to_string()))?;
    Ok(HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("quantization_config".to_string(), json),
    ]))
}

/// The order of tensors in the file: by decreasing dtype (alignment), then name.
pub(super) fn file_order(a: (&String, Dtype), b: (&String, Dtype)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then(a.0.cmp(b.0))
}

/// The safetensors header of `tensors` (in file order), padded with spaces to 8 bytes.
fn header_bytes(
    path: &Path,
    tensors: &[(String, Owned)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    for (name, t) in tensors {
        let elements: usize = t.shape.iter().product();
        if elements * t.dtype.bitsize() != t.bytes.len() * 8 {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}`: {} bytes for shape {:?}",
                    t.bytes.len(),
                    t.shape
                ),
            ));
        }
    }
    let layout = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dtype, t.shape.clone()));
    header_for(path, layout.collect(), metadata)
}

/// The safetensors header of tensors `(name, dtype, shape)` laid out back to back in the given
/// (file) order, padded with spaces to 8 bytes: what [`save`] writes, and what a streaming
/// writer can compute before any tensor exists.
pub(super) fn header_for(
    path: &Path,
    tensors: Vec<(String, Dtype, Vec<usize>)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(tensors.len());
    for (name, dtype, shape) in tensors {
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize(), |n, d| n.checked_mul(*d))
            .ok_or_else(|| bad(path, format!("tensor `{name}`: shape {shape:?} overflows")))?;
        let end = offset + bits.div_ceil(8);
        infos.push((
            name,
            TensorInfo {
                dtype,
                shape,
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    // Serialized through ordered maps rather than safetensors' `Metadata` (whose metadata is a
    // `HashMap`): the same model then always gives the same bytes.
    let mut header = serde_json::Map::new();
    let ordered: BTreeMap<&String, &String> = metadata.iter().collect();
    let json = |e: serde_json::Error| bad(path, e.to_string());
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(ordered).map_err(json)?,
    );
    for (name, info) in &infos {
        header.insert(name.clone(), serde_json::to_value(info).map_err(json)?);
    }
    // The library's own validation of names and offsets.
    Metadata::new(Some(metadata), infos).map_err(|e| bad(path, e.to_string()))?;
    let mut header = serde_json::to_vec(&header).map_err(json)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    // Readers (this one included) refuse larger headers; do not write what cannot be read.
    if header.len() > MAX_HEADER_BYTES {
        return Err(bad(
            path,
            format!("header of {} bytes is too large", header.len()),
        ));
    }
    Ok(header)
}

pub(super) fn quantized_tensors(
    p: &str,
    q: &Any4Linear,
) -> Result<(LayerInfo, Vec<(String, Owned)>)> {
    let m: QuantizedMatrix = q.to_quantized()?;
    let bias = q.bias.as_ref().map(|b| {
        let data = b.val().into_data().convert::<f32>();
        data.as_bytes().to_vec()
    });
    Ok(matrix_tensors(p, &m, bias))
}

/// The tensors of quantized layer `p` holding `m` and the f32 bytes of its bias, if any.
pub(super) fn matrix_tensors(
    p: &str,
    m: &QuantizedMatrix,
    bias: Option<Vec<u8>>,
) -> (LayerInfo, Vec<(String, Owned)>) {
    let dt = m.config().param_dtype();
    let mut out = Vec::new();
    let codes: Vec<u8> = m.codes().iter().flat_map(|w| w.to_le_bytes()).collect();
    out.push((
        format!("{p}.qweight"),
        Owned {
            dtype: Dtype::U32,
            shape: vec![m.rows(), m.cols().div_ceil(8)],
            bytes: codes,
        },
    ));
    for (name, values, shape) in [
        ("table", m.table(), [m.table_rows(), 16]),
        ("scales", m.scales(), [m.rows(), m.groups()]),
        ("zeros", m.zeros(), [m.rows(), m.groups()]),
    ] {
        let (dtype, bytes) = param_bytes(values, dt);
        out.push((
            format!("{p}.{name}"),
            Owned {
                dtype,
                shape: shape.to_vec(),
                bytes,
            },
        ));
    }
    let has_bias = bias.is_some();
    if let Some(bytes) = bias {
        out.push((
            format!("{p}.bias"),
            Owned {
                dtype: Dtype::F32,
                shape: vec![m.rows()],
                bytes,
            },
        ));
    }
    let info = LayerInfo {
        config: *m.config(),
        shape: m.shape(),
        table: table_kind(m.config().format()).to_string(),
        bias: has_bias,
    };
    (info, out)
}
