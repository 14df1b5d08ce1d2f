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
use std::sync::atomic::{AtomicU64, Ordering};

use any4_core::{Any4Config, ParamDtype, QuantizedMatrix};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::linear::{Any4Linear, QLinear, QLinearContainer};

/// Value of the `format` metadata key.
pub const CHECKPOINT_FORMAT: &str = "any4";
/// Version of this layout; readers refuse newer versions.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest safetensors header the `safetensors` crate reads (its `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: usize = 100_000_000;

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

/// The first NaN or infinite value of a tensor stored as `dtype` (`[out, in]` for weights), as
/// an error naming the tensor and where in it; `None` when all are finite (or not floats).
fn non_finite(tensor: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Option<Error> {
    let found = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .enumerate()
            .find(|(_, v)| !v.is_finite()),
        Dtype::F16 | Dtype::BF16 => {
            let half = |b: u16| match dtype {
                Dtype::F16 => half::f16::from_bits(b).to_f32(),
                _ => half::bf16::from_bits(b).to_f32(),
            };
            bytes
                .chunks_exact(2)
                .map(|c| half(u16::from_le_bytes([c[0], c[1]])))
                .enumerate()
                .find(|(_, v)| !v.is_finite())
        }
        _ => None,
    };
    let (index, value) = found?;
    let position = match shape {
        [_, cols] if *cols > 0 => format!("row {}, column {}", index / cols, index % cols),
        _ => format!("index {index}"),
    };
    Some(Error::NonFinite {
        tensor: tensor.to_string(),
        position,
        value,
    })
}

/// Check that every dense float parameter of `model` is finite (any4 layers are checked when
/// they are built); the error names the first tensor that is not, in checkpoint naming
/// (`layers.0.mlp.up_proj.weight`, `[out, in]` positions).
///
/// Worth running after loading a model and before calibrating or quantizing it: one NaN weight
/// would otherwise surface later as a NaN calibration statistic of some other layer, or not at
/// all in layers that stay dense.
pub fn check_finite<M: Module>(model: &M) -> Result<()> {
    let mut collector = Collector {
        check_only: true,
        ..Collector::default()
    };
    model.visit(&mut collector);
    collector.error.map_or(Ok(()), Err)
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
    error: Option<Error>,
    /// Only look for non-finite values; keep nothing.
    check_only: bool,
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
            self.error = Some(Error::Data(format!(
                "parameter `{path}` has unsupported dtype {:?}",
                data.dtype()
            )));
            return;
        };
        let mut shape = data.shape().to_vec();
        let mut bytes = data.as_bytes().to_vec();
        if D == 2 && self.stack.is_linear_weight() {
            // Burn stores Linear weights [in, out]; the file holds PyTorch's [out, in].
            bytes = transpose_bytes(&bytes, shape[0], shape[1], dtype.bitsize() / 8);
            shape.swap(0, 1);
        }
        if let Some(e) = non_finite(&path, dtype, &shape, &bytes) {
            self.error = Some(e);
            return;
        }
        if !self.check_only {
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
}

/// Save `model` (dense and any4 layers alike) to the safetensors file `path`, atomically.
///
/// Refuses a model with a NaN or infinite parameter (naming it) rather than writing a checkpoint
/// that loads but computes garbage.
pub fn save<M: Module + QLinearContainer>(
    model: &mut M,
    path: &Path,
) -> Result<QuantizationConfig> {
    save_with(model, path, &|file| Box::new(file))
}

/// Wraps the file a checkpoint is written to; tests pass one that fails part-way.
type Sink<'a> = &'a dyn Fn(File) -> Box<dyn Write>;

fn save_with<M: Module + QLinearContainer>(
    model: &mut M,
    path: &Path,
    sink: Sink<'_>,
) -> Result<QuantizationConfig> {
    let mut collector = Collector::default();
    model.visit(&mut collector);
    match collector.error {
        Some(Error::Data(reason)) => return Err(bad(path, reason)),
        Some(e) => return Err(e),
        None => {}
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
    // safetensors' own order: by decreasing dtype alignment, then name, so every tensor's data
    // is aligned for readers that map it in place.
    tensors.sort_by(|(a, ta), (b, tb)| tb.dtype.cmp(&ta.dtype).then(a.cmp(b)));
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

/// The safetensors header of `tensors` (in file order), padded with spaces to 8 bytes.
fn header_bytes(
    path: &Path,
    tensors: &[(String, Owned)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(tensors.len());
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
        let end = offset + t.bytes.len();
        infos.push((
            name.clone(),
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
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

/// Write through `write(tmp)` into a temporary file beside `path`, fsync it, rename it over
/// `path` and fsync the folder: an interrupted save (error, crash, kill, power loss) leaves any
/// previous file at `path` untouched, and readers see the old file or the new one, never a mix.
///
/// Temporary files are named `.<name>.<pid>.<n>.tmp` (unique per process and call, so
/// concurrent saves to the same target cannot write into one file); ones left by a process
/// that no longer runs (killed mid-write) are removed first, where `/proc` says which runs.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
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
        .ok_or_else(|| bad(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    if path.is_dir() {
        return Err(bad(path, "is a folder; expected a file path to write"));
    }
    remove_stale_temporaries(&dir, &name);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
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

/// The writer's pid if `file` is one of [`write_atomically`]'s temporaries for `name`.
fn temporary_pid(file: &str, name: &str) -> Option<u32> {
    let rest = file
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?;
    let rest = rest.strip_suffix(".tmp")?;
    // `<pid>.<n>` (and `<pid>` from earlier versions).
    let pid = rest.split_once('.').map_or(rest, |(pid, _)| pid);
    pid.parse().ok()
}

/// Remove temporaries for `name` in `dir` whose writer is gone; best effort, Linux only (other
/// systems keep them: they are never read, only their disk space is lost).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        if let Some(pid) = temporary_pid(&file.to_string_lossy(), name)
            && pid != std::process::id()
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Convenience for small JSON/text files written next to a checkpoint, atomically.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    write_file_with(path, contents, &|file| Box::new(file))
}

fn write_file_with(path: &Path, contents: &[u8], sink: Sink<'_>) -> Result<()> {
    write_atomically(path, |tmp| {
        let io = |source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        };
        let mut w = sink(File::create(tmp).map_err(io)?);
        w.write_all(contents).and_then(|()| w.flush()).map_err(io)
    })
}

/// The tensors of quantized layer `p`: `(name, shape, whether it holds codes)`.
fn layer_tensors(p: &str, info: &LayerInfo) -> Vec<(String, Vec<usize>, bool)> {
    let [rows, cols] = info.shape;
    let groups = info.config.group_size().groups_for(cols);
    let table_rows = if info.config.format().is_learned() {
        rows
    } else {
        1
    };
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
    let table = if info.config.format().is_learned() {
        "per-row"
    } else {
        "shared"
    };
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use burn::tensor::Device;

    use super::*;
    use crate::{QuantizeConfig, quantize};

    #[derive(Module, Debug)]
    struct Two {
        a: QLinear,
        b: QLinear,
    }
    crate::impl_qlinear_container!(Two { a, b });

    fn two(seed: u64) -> Two {
        let device = Device::flex();
        let lin = |o: usize, i: usize, s: u64| {
            let mut x = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let v: Vec<f32> = (0..o * i)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            QLinear::from_hf(Tensor::from_data(TensorData::new(v, [o, i]), &device), None)
        };
        Two {
            a: lin(32, 64, seed),
            b: lin(16, 32, seed + 1),
        }
    }

    fn quantized(seed: u64) -> Two {
        quantize(two(seed), &QuantizeConfig::default(), None)
            .expect("quantize")
            .0
    }

    /// A writer that accepts `budget` bytes, then fails like a full disk (or a killed write).
    struct FailAfter {
        file: File,
        budget: Arc<AtomicUsize>,
    }

    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let left = self.budget.load(Ordering::Relaxed);
            if left == 0 {
                return Err(std::io::Error::other("injected failure"));
            }
            let n = self.file.write(&buf[..buf.len().min(left)])?;
            self.budget.fetch_sub(n, Ordering::Relaxed);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }

    fn fail_after(n: usize) -> impl Fn(File) -> Box<dyn Write> {
        move |file| {
            Box::new(FailAfter {
                file,
                budget: Arc::new(AtomicUsize::new(n)),
            })
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("any4-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A save that fails after N bytes, for N at every boundary of the format (length prefix,
    /// header, tensor data, last byte), leaves the previous checkpoint byte-identical and
    /// loadable, and no temporary file behind; with enough bytes it succeeds.
    #[test]
    fn interrupted_saves_leave_the_previous_checkpoint() {
        let dir = temp_dir("interrupt");
        let target = dir.join("model.safetensors");
        save(&mut quantized(1), &target).expect("first save");
        let old = std::fs::read(&target).expect("read");
        let mut new_model = quantized(7);
        let reference = dir.join("reference.safetensors");
        save(&mut new_model, &reference).expect("reference save");
        let new = std::fs::read(&reference).expect("read");
        std::fs::remove_file(&reference).expect("remove");
        assert_ne!(
            old, new,
            "the two checkpoints must differ for this test to mean anything"
        );
        let header = u64::from_le_bytes(new[..8].try_into().expect("8 bytes")) as usize;
        for n in [
            0,
            1,
            7,
            8,
            9,
            8 + header / 2,
            8 + header,
            9 + header,
            new.len() / 2,
            new.len() - 1,
        ] {
            let err = save_with(&mut new_model, &target, &fail_after(n))
                .expect_err("a failing writer must fail the save");
            assert!(
                err.to_string().contains("injected failure"),
                "N = {n}: {err}"
            );
            assert_eq!(std::fs::read(&target).expect("read"), old, "N = {n}");
            assert_eq!(entries(&dir), ["model.safetensors"], "N = {n}");
            Checkpoint::open(&target)
                .and_then(|c| c.load_into(two(99)))
                .unwrap_or_else(|e| panic!("N = {n}: previous checkpoint unreadable: {e}"));
        }
        save_with(&mut new_model, &target, &fail_after(new.len())).expect("exactly enough bytes");
        assert_eq!(std::fs::read(&target).expect("read"), new);

        let json = dir.join("config.json");
        write_file_atomically(&json, b"{\"old\": true}").expect("write");
        for n in [0, 1, 5] {
            assert!(write_file_with(&json, b"{\"new\": true}", &fail_after(n)).is_err());
            assert_eq!(std::fs::read(&json).expect("read"), b"{\"old\": true}");
        }
        assert_eq!(entries(&dir), ["config.json", "model.safetensors"]);
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    /// Two threads of one process saving to the same path at once: every save succeeds and the
    /// file is always one of the two complete checkpoints. (Temporaries used to be named by
    /// pid only, so both threads wrote into one file and one rename found it gone.)
    #[test]
    fn concurrent_saves_in_one_process_do_not_collide() {
        let dir = temp_dir("concurrent-saves");
        let target = dir.join("model.safetensors");
        let mut models = [quantized(11), quantized(12)];
        let refs: Vec<Vec<u8>> = models
            .iter_mut()
            .enumerate()
            .map(|(i, m)| {
                let f = dir.join(format!("ref{i}"));
                save(m, &f).expect("save");
                let b = std::fs::read(&f).expect("read");
                std::fs::remove_file(f).expect("remove");
                b
            })
            .collect();
        let [a, b] = &mut models;
        std::thread::scope(|s| {
            for m in [a, b] {
                let target = &target;
                s.spawn(move || {
                    for _ in 0..8 {
                        save(m, target).expect("every concurrent save succeeds");
                    }
                });
            }
        });
        let now = std::fs::read(&target).expect("read");
        assert!(now == refs[0] || now == refs[1]);
        assert_eq!(entries(&dir), ["model.safetensors"]);
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    /// Temporaries of writers that no longer run are removed by the next save; a live writer's
    /// (this process's) and other files are kept.
    #[test]
    fn stale_temporaries_are_cleaned_up() {
        assert_eq!(
            temporary_pid(".model.safetensors.123.4.tmp", "model.safetensors"),
            Some(123)
        );
        assert_eq!(
            temporary_pid(".model.safetensors.77.tmp", "model.safetensors"),
            Some(77)
        );
        assert_eq!(
            temporary_pid(".config.json.77.0.tmp", "model.safetensors"),
            None
        );
        assert_eq!(
            temporary_pid("model.safetensors", "model.safetensors"),
            None
        );
        let dir = temp_dir("stale");
        let target = dir.join("model.safetensors");
        // No process has pid u32::MAX - 1 (Linux pids stay below 2^22).
        let stale = dir.join(format!(".model.safetensors.{}.0.tmp", u32::MAX - 1));
        let live = dir.join(format!(".model.safetensors.{}.999.tmp", std::process::id()));
        let other = dir.join(".notes.txt.1.tmp");
        for f in [&stale, &live, &other] {
            std::fs::write(f, b"partial").expect("write");
        }
        save(&mut quantized(3), &target).expect("save");
        assert_eq!(!stale.exists(), Path::new("/proc/self").exists());
        assert!(live.exists() && other.exists());
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    /// A NaN in a dense parameter refuses the save and names the tensor and position (in the
    /// file's `[out, in]` layout); the same check is `check_finite`.
    #[test]
    fn non_finite_parameters_are_refused_by_name() {
        let dir = temp_dir("nan");
        let target = dir.join("model.safetensors");
        let mut model = two(5);
        let device = Device::flex();
        let mut w = vec![0.5f32; 16 * 32];
        w[3 * 32 + 9] = f32::NEG_INFINITY;
        model.b = QLinear::from_hf(
            Tensor::from_data(TensorData::new(w, [16, 32]), &device),
            None,
        );
        let err = save(&mut model, &target).expect_err("refused");
        assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "tensor `b.weight` has a non-finite value (-inf) at row 3, column 9"
        );
        assert!(!target.exists());
        assert_eq!(
            check_finite(&model).expect_err("refused").to_string(),
            err.to_string()
        );
        check_finite(&two(5)).expect("finite model");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    /// A stored NaN (a damaged file, or one written by another tool) is refused at load with
    /// the file, the tensor and the position, instead of loading a model that outputs NaN.
    #[test]
    fn non_finite_stored_tensors_are_refused_at_load() {
        let dir = temp_dir("stored-nan");
        let file = dir.join("model.safetensors");
        save(&mut two(6), &file).expect("save");
        let mut bytes = std::fs::read(&file).expect("read");
        let start = {
            let st = SafeTensors::deserialize(&bytes).expect("valid");
            let t = st.tensor("a.weight").expect("present");
            t.data().as_ptr() as usize - bytes.as_ptr() as usize
        };
        let at = start + 4 * (2 * 64 + 3);
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&file, &bytes).expect("write");
        let err = Checkpoint::open(&file)
            .and_then(|c| c.load_into(two(1)))
            .expect_err("refused")
            .to_string();
        assert!(
            err.ends_with(
                "model.safetensors: tensor `a.weight` has a non-finite value (NaN) at row 2, column 3"
            ),
            "{err}"
        );
        let err = Checkpoint::open(&dir)
            .err()
            .expect("a folder is refused")
            .to_string();
        assert!(err.contains("is a folder"), "{err}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
