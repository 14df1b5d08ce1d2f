//! Quantized checkpoints: one safetensors file plus a JSON `quantization_config` (ANY4.md §7).
//!
//! Layout-neutral by design: tensor names are Burn module paths with enum variants dropped
//! (`layers.0.self_attn.q_proj.weight`); dense `Linear` weights are stored `[out, in]` as in
//! PyTorch/HF; an any4 layer at path `p` is stored as `p.qweight` (u32 `[out, ceil(in/8)]`,
//! 8 codes per word, lowest nibble first), `p.table` (`[1 or out, 16]`), `p.scales` and `p.zeros`
//! (`[out, groups]`) in the layer's parameter dtype, and `p.bias`. Any kernel-specific repacking
//! happens after loading, never in the file. The file's `__metadata__` holds
//! `{"format": "any4", "quantization_config": <JSON>}`.
//!
//! Writes are atomic: a temporary file in the target folder, fsync, rename, fsync of the folder.
//! Reads are memory-mapped and validate the schema version, every name, shape and dtype.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use any4_core::{Any4Config, ParamDtype, QuantizedMatrix};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::linear::{Any4Linear, QLinear, QLinearContainer};

/// Value of the `format` metadata key.
pub const CHECKPOINT_FORMAT: &str = "any4";
/// Version of this layout; readers refuse newer versions.
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON `quantization_config` stored with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    /// Always `"any4"`.
    pub quant_method: String,
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// `burn-any4 x.y.z` of the writer.
    pub tool_version: String,
    /// Every quantized layer, by path.
    pub layers: BTreeMap<String, LayerInfo>,
    /// `QLinear`s left dense.
    pub modules_not_quantized: Vec<String>,
}

/// How one layer was quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Format, group size, scaling, k-means options, parameter dtype.
    pub config: Any4Config,
    /// `[out, in]` of the dense weight.
    pub shape: [usize; 2],
    /// `"per-row"` (learned) or `"shared"` (int4, nf4, fp4) table.
    pub table: String,
    /// Whether `p.bias` is present.
    pub bias: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An owned tensor ready to be written.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn param_bytes(values: &[f32], dtype: ParamDtype) -> (Dtype, Vec<u8>) {
    match dtype {
        ParamDtype::F32 => (
            Dtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ParamDtype::F16 => (
            Dtype::F16,
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        ParamDtype::Bf16 => (
            Dtype::BF16,
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    }
}

fn float_dtype(d: DType) -> Option<Dtype> {
    match d {
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

/// Transpose a row-major `[r, c]` byte matrix of `elem`-byte elements.
fn transpose_bytes(bytes: &[u8], r: usize, c: usize, elem: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    for i in 0..r {
        for j in 0..c {
            let src = (i * c + j) * elem;
            let dst = (j * r + i) * elem;
            out[dst..dst + elem].copy_from_slice(&bytes[src..src + elem]);
        }
    }
    out
}

/// Little-endian safetensors f32 / f16 / bf16 bytes as f32 values; `None` for other dtypes.
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let halves = |f: fn(u16) -> f32| {
        bytes
            .chunks_exact(2)
            .map(|c| f(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    };
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(halves(|b| half::f16::from_bits(b).to_f32())),
        Dtype::BF16 => Some(halves(|b| half::bf16::from_bits(b).to_f32())),
        _ => None,
    }
}

/// Tracks the module path while Burn walks a module; enum variants are dropped.
#[derive(Default)]
struct PathStack {
    names: Vec<(String, String)>,
}

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        self.names.push((name.to_string(), container.to_string()));
    }
    fn exit(&mut self) {
        self.names.pop();
    }
    fn path(&self) -> String {
        let parts: Vec<&str> = self
            .names
            .iter()
            .filter(|(_, c)| !c.starts_with("Enum:"))
            .map(|(n, _)| n.as_str())
            .collect();
        parts.join(".")
    }
    /// Container of the current leaf (e.g. `Struct:Linear` for a linear's weight).
    fn leaf_container(&self) -> &str {
        self.names.last().map_or("", |(_, c)| c.as_str())
    }
    fn in_any4(&self) -> bool {
        self.names
            .iter()
            .any(|(_, c)| c == "Struct:Any4Linear" || c == "Struct:CalibratingLinear")
    }
    fn is_linear_weight(&self) -> bool {
        self.leaf_container() == "Struct:Linear"
            && self.names.last().is_some_and(|(n, _)| n == "weight")
    }
}

/// Collects every dense float parameter (any4 layers excluded).
#[derive(Default)]
struct Collector {
    stack: PathStack,
    tensors: Vec<(String, Owned)>,
    error: Option<String>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.stack.in_any4() || self.error.is_some() {
            return;
        }
        let path = self.stack.path();
        let data = param.val().into_data();
        let Some(dtype) = float_dtype(data.dtype()) else {
            self.error = Some(format!(
                "parameter `{path}` has unsupported dtype {:?}",
                data.dtype()
            ));
            return;
        };
        let mut shape = data.shape().to_vec();
        let mut bytes = data.as_bytes().to_vec();
        if D == 2 && self.stack.is_linear_weight() {
            // Burn stores Linear weights [in, out]; the file holds PyTorch's [out, in].
            bytes = transpose_bytes(&bytes, shape[0], shape[1], dtype.bitsize() / 8);
            shape.swap(0, 1);
        }
        self.tensors.push((
            path,
            Owned {
                dtype,
                shape,
                bytes,
            },
        ));
    }
}

/// Save `model` (dense and any4 layers alike) to the safetensors file `path`, atomically.
pub fn save<M: Module + QLinearContainer>(
    model: &mut M,
    path: &Path,
) -> Result<QuantizationConfig> {
    let mut collector = Collector::default();
    model.visit(&mut collector);
    if let Some(e) = collector.error {
        return Err(bad(path, e));
    }
    let mut tensors = collector.tensors;
    let mut config = QuantizationConfig {
        quant_method: CHECKPOINT_FORMAT.to_string(),
        schema_version: SCHEMA_VERSION,
        tool_version: concat!("burn-any4 ", env!("CARGO_PKG_VERSION")).to_string(),
        layers: BTreeMap::new(),
        modules_not_quantized: Vec::new(),
    };
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
    let json = serde_json::to_string(&config).map_err(|e| bad(path, e.to_string()))?;
    let metadata = HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("quantization_config".to_string(), json),
    ]);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp)
            .map_err(|e| bad(path, e.to_string()))
    })?;
    Ok(config)
}

fn quantized_tensors(p: &str, q: &Any4Linear) -> Result<(LayerInfo, Vec<(String, Owned)>)> {
    let m: QuantizedMatrix = q.to_quantized()?;
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
    if let Some(b) = &q.bias {
        let data = b.val().into_data().convert::<f32>();
        out.push((
            format!("{p}.bias"),
            Owned {
                dtype: Dtype::F32,
                shape: vec![m.rows()],
                bytes: data.as_bytes().to_vec(),
            },
        ));
    }
    let info = LayerInfo {
        config: *m.config(),
        shape: m.shape(),
        table: if m.table_rows() == 1 {
            "shared"
        } else {
            "per-row"
        }
        .to_string(),
        bias: q.bias.is_some(),
    };
    Ok((info, out))
}

/// Write through `write(tmp)` into a temporary file beside `path`, then rename it over `path`:
/// an interrupted save leaves any previous file at `path` untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| bad(path, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let outcome = write(&tmp).and_then(|()| {
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        // Make the rename itself durable.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io)
    });
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

/// Convenience for small JSON/text files written next to a checkpoint, atomically.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        let mut f = File::create(tmp).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        f.write_all(contents).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })
}

/// A memory-mapped, validated checkpoint file.
pub struct Checkpoint {
    path: PathBuf,
    mmap: memmap2::Mmap,
    config: QuantizationConfig,
}

impl Checkpoint {
    /// Map `path` and parse its header and `quantization_config`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
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
        let config: QuantizationConfig = serde_json::from_str(json)
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
        SafeTensors::deserialize(&mmap)
            .map_err(|e| bad(path, format!("corrupt or truncated: {e}")))?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            mmap,
            config,
        })
    }

    /// The stored `quantization_config`.
    pub fn config(&self) -> &QuantizationConfig {
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

    /// Read tensor `name` as f32 values with an expected shape.
    fn read_f32(&self, st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
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
        let table_rows = if info.config.format().is_learned() {
            rows
        } else {
            1
        };
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
            let [d_in, d_out] = layer.dims();
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

/// Replaces every dense float parameter with the stored tensor of the same path.
struct Loader<'a> {
    ckpt: &'a Checkpoint,
    st: &'a SafeTensors<'a>,
    stack: PathStack,
    used: Vec<String>,
    error: Option<Error>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() || self.stack.in_any4() {
            return param;
        }
        let path = self.stack.path();
        let linear = D == 2 && self.stack.is_linear_weight();
        let ckpt = self.ckpt;
        let st = self.st;
        let mut err = None;
        let param = param.map(|t| {
            let mut shape = t.dims();
            if linear {
                shape.swap(0, 1);
            }
            match ckpt.read_f32(st, &path, &shape) {
                Ok(values) => {
                    let loaded = Tensor::<D>::from_data(
                        TensorData::new(values, shape),
                        (&t.device(), t.dtype()),
                    );
                    if linear {
                        // Materialised: a lazy transposed view would be re-copied into a
                        // contiguous buffer by every matmul (it dominated batch-1 decode).
                        let dtype = loaded.dtype();
                        let data = loaded.swap_dims(0, 1).into_data();
                        Tensor::<D>::from_data(data, (&t.device(), dtype))
                    } else {
                        loaded
                    }
                }
                Err(e) => {
                    err = Some(e);
                    t
                }
            }
        });
        match err {
            Some(e) => self.error = Some(e),
            None => self.used.push(path),
        }
        param
    }
}
