//! GGUF reader (llama.cpp's model format): metadata, tensor directory and dequantization of
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors, memory-mapped.
//!
//! Every length read from the file is checked against the bytes that remain before anything is
//! allocated, so a hostile count cannot exhaust memory; every tensor's data range is checked
//! against the file size. GGUF lists dimensions innermost first: a PyTorch `[out, in]` weight
//! has GGUF dims `[in, out]`; [`GgufFile::tensor_f32`] returns the row-major (PyTorch) shape.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// `GGUF` in little-endian.
const MAGIC: u32 = 0x4655_4747;

/// Most metadata values (array items included) a file may hold. Each costs ~32 bytes in memory
/// however small it is on disk (a `u8` array item is 1 byte), so without a cap a hostile file
/// could make the reader allocate 32× its size. Real files hold well under a million (the
/// largest vocabularies: ~256k tokens, ~500k merges).
const MAX_METADATA_VALUES: usize = 1 << 24;

/// Why a GGUF file could not be read.
#[derive(Debug, Error)]
pub enum GgufError {
    /// I/O error opening or mapping the file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not GGUF or is malformed; `reason` says where.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor type this reader does not dequantize.
    #[error("{}: tensor `{tensor}` has unsupported type {ty}", path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The ggml type id.
        ty: u32,
    },
    /// A tensor that is not in the file.
    #[error("{}: missing tensor `{tensor}`", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A metadata key that is absent or of another type.
    #[error("{}: metadata `{key}` is missing or not {expected}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The expected type.
        expected: &'static str,
    },
}

type Result<T> = std::result::Result<T, GgufError>;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64).
    UInt(u64),
    /// Signed integer (i8, i16, i32, i64).
    Int(i64),
    /// Float (f32, f64).
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer (non-negative signed integers too).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::UInt(v) => Some(v),
            Value::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    /// As a float (integers too).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::UInt(v) => Some(v as f64),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale, 32 × 4-bit, value `(q − 8) · d`.
    Q4_0,
    /// Blocks of 32: f16 scale and min, 32 × 4-bit, value `q · d + m`.
    Q4_1,
    /// Blocks of 32: f16 scale, 32 × i8, value `q · d`.
    Q8_0,
    /// Anything else (kept so the directory can be listed).
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }
    /// `(values per block, bytes per block)`.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::Bf16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }
    fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Bf16 => 30,
            GgmlType::Other(id) => id,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Dimensions, innermost first (GGUF order).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape (outermost first, as PyTorch).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    fn elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor directory by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
}

/// Cursor over the header with bounds-checked reads.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata values still allowed (see [`MAX_METADATA_VALUES`]).
    values_left: usize,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T> {
        Err(GgufError::Format {
            path: self.path.to_path_buf(),
            reason: format!("{} (at byte {})", reason.into(), self.pos),
        })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.fail(format!("truncated: needs {n} more bytes")),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of items each at least `min_item` bytes long, refused if it cannot fit.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let n = self.u64()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > remaining {
            return self.fail(format!(
                "{what} count {n} cannot fit in the {remaining} bytes left"
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count("string length", 1)?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.fail("string is not UTF-8"),
        }
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        if self.values_left == 0 {
            return self.fail("metadata holds too many values (array items included)");
        }
        self.values_left -= 1;
        Ok(match ty {
            0 => Value::UInt(self.u8()? as u64),
            1 => Value::Int(self.u8()? as i8 as i64),
            2 => Value::UInt(self.u16()? as u64),
            3 => Value::Int(self.u16()? as i16 as i64),
            4 => Value::UInt(self.u32()? as u64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 4 {
                    return self.fail("arrays nested too deeply");
                }
                let item_ty = self.u32()?;
                let min = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return self.fail(format!("unknown array item type {other}")),
                };
                let n = self.count("array", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::UInt(self.u64()?),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            other => return self.fail(format!("unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    /// Map and parse `path` (header, metadata, tensor directory; data is read lazily).
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // Mapping a folder fails with an obscure "No such device"; say what is expected.
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                reason: "is a folder, not a GGUF file".into(),
            });
        }
        // SAFETY: read-only mapping of a file we do not modify; model files are not rewritten
        // in place by this project.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, mmap, MAX_METADATA_VALUES)
    }

    fn parse(path: &Path, mmap: memmap2::Mmap, max_values: usize) -> Result<Self> {
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path,
            values_left: max_values,
        };
        if r.u32().ok() != Some(MAGIC) {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                reason: "not a GGUF file (bad magic)".into(),
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return r.fail(format!(
                "unsupported GGUF version {version} (2 and 3 are supported)"
            ));
        }
        let n_tensors = r.count("tensor", 24)?;
        let n_kv = r.count("metadata", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            // llama.cpp refuses duplicates too: which value would win is not specified.
            if metadata.insert(key.clone(), v).is_some() {
                return r.fail(format!("duplicate metadata key `{key}`"));
            }
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return r.fail(format!("tensor `{name}` has {n_dims} dimensions"));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let ty = GgmlType::from_id(r.u32()?);
            let offset = r.u64()?;
            let info = TensorInfo { dims, ty, offset };
            if let Some((per_block, _)) = ty.block() {
                match info.elements() {
                    None => return r.fail(format!("tensor `{name}`: dimensions overflow")),
                    Some(n) if !n.is_multiple_of(per_block as u64) => {
                        return r.fail(format!(
                            "tensor `{name}`: {n} values is not a whole number of {per_block}-value blocks"
                        ));
                    }
                    Some(_) => {}
                }
            }
            if tensors.insert(name.clone(), info).is_some() {
                return r.fail(format!("duplicate tensor `{name}`"));
            }
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        let gguf = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            mmap,
        };
        for (name, info) in &gguf.tensors {
            // Known types have a byte range (sizes were checked above) unless it overflows.
            let past_end = match gguf.byte_range(info) {
                Some((_, end)) => end > gguf.mmap.len(),
                None => info.ty.block().is_some(),
            };
            if past_end {
                return Err(GgufError::Format {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor `{name}` extends past the end of the file (truncated?)"
                    ),
                });
            }
        }
        Ok(gguf)
    }

    /// `(start, end)` byte range of a tensor's data, if its type and sizes are known.
    fn byte_range(&self, info: &TensorInfo) -> Option<(usize, usize)> {
        let (per_block, bytes) = info.ty.block()?;
        let n = info.elements()?;
        if n % per_block as u64 != 0 {
            return None;
        }
        let len = (n / per_block as u64).checked_mul(bytes as u64)?;
        let start = (self.data_start as u64).checked_add(info.offset)?;
        let end = start.checked_add(len)?;
        Some((usize::try_from(start).ok()?, usize::try_from(end).ok()?))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Metadata `key` as an unsigned integer, or a typed error naming it.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.meta_err(key, "an integer"))
    }

    /// Metadata `key` as a float.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.meta_err(key, "a number"))
    }

    /// Metadata `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.meta_err(key, "a string"))
    }

    fn meta_err(&self, key: &str, expected: &'static str) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
        }
    }

    /// Dequantize tensor `name` to f32; returns the values and the row-major shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let Some((start, end)) = self.byte_range(info) else {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_string(),
                ty: info.ty.id(),
            });
        };
        let data = &self.mmap[start..end];
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let values: Vec<f32> = match info.ty {
            GgmlType::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            GgmlType::F16 => data.chunks_exact(2).map(f16).collect(),
            GgmlType::Bf16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::Q8_0 => data
                .chunks_exact(34)
                .flat_map(|b| {
                    let d = f16(&b[..2]);
                    b[2..].iter().map(move |&q| q as i8 as f32 * d)
                })
                .collect(),
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let with_min = info.ty == GgmlType::Q4_1;
                let block = if with_min { 20 } else { 18 };
                let mut out = Vec::with_capacity(data.len() / block * 32);
                for b in data.chunks_exact(block) {
                    let d = f16(&b[..2]);
                    let (m, qs, offset) = if with_min {
                        (f16(&b[2..4]), &b[4..20], 0.0)
                    } else {
                        (0.0, &b[2..18], 8.0)
                    };
                    // Low nibbles hold values 0..16 of the block, high nibbles 16..32.
                    out.extend(qs.iter().map(|&q| ((q & 0xF) as f32 - offset) * d + m));
                    out.extend(qs.iter().map(|&q| ((q >> 4) as f32 - offset) * d + m));
                }
                out
            }
            GgmlType::Other(ty) => {
                return Err(GgufError::UnsupportedType {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    ty,
                });
            }
        };
        Ok((values, info.shape()))
    }
}

/// Undo llama.cpp's rotary permutation of a Q or K projection (`[n_head · head_dim, in]`):
/// the converter reorders each head's rows from HF's "rotate half" layout to interleaved pairs.
///
/// `rows` must be `n_head` heads of an even width and `w` hold `rows × cols` values (callers
/// validate the config and the tensor's shape first); anything else is a caller bug.
pub fn unpermute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    assert!(
        n_head > 0
            && rows.is_multiple_of(n_head)
            && (rows / n_head).is_multiple_of(2)
            && rows.checked_mul(cols) == Some(w.len()),
        "unpermute_qk: {rows}×{cols} ({} values) is not {n_head} heads of an even width",
        w.len()
    );
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) came from HF row (h, j, i).
                let src = h * head_dim + i * 2 + j;
                let dst = h * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Build a Hugging Face `tokenizer.json` from a GGUF byte-level BPE vocabulary
/// (`tokenizer.ggml.model = "gpt2"`): tokens, merges and special tokens; SmolLM2's `"smollm"`
/// pre-tokenizer splits digits individually before the GPT-2 byte-level split.
pub fn hf_tokenizer_json(g: &GgufFile) -> Result<String> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::Format {
            path: g.path.clone(),
            reason: format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            ),
        });
    }
    let strings = |key: &str| -> Result<Vec<&str>> {
        g.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| g.meta_err(key, "an array of strings"))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i.into()))
        .collect();
    // Type 3 = control token (llama.cpp's LLAMA_TOKEN_TYPE_CONTROL).
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&3))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = match g.get("tokenizer.ggml.pre").and_then(Value::as_str) {
        Some("smollm") => serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        _ => byte_level.clone(),
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    Ok(json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF writer for tests (v3, alignment 32).
    pub(crate) fn write_gguf(
        kv: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, Vec<u64>, u32, Vec<u8>)],
    ) -> Vec<u8> {
        let s = |x: &str| {
            [
                (x.len() as u64).to_le_bytes().to_vec(),
                x.as_bytes().to_vec(),
            ]
            .concat()
        };
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (k, ty, v) in kv {
            out.extend(s(k));
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            out.extend(s(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for (_, _, _, data) in tensors {
            out.extend(data);
            while out.len() % 32 != 0 {
                out.push(0);
            }
        }
        out
    }

    fn open_bytes(bytes: &[u8], name: &str) -> Result<GgufFile> {
        let p = std::env::temp_dir().join(format!("any4-gguf-{name}-{}.gguf", std::process::id()));
        std::fs::write(&p, bytes).expect("write temp");
        let r = GgufFile::open(&p);
        let _ = std::fs::remove_file(&p);
        r
    }

    fn q4_1_block(d: f32, m: f32, q: [u8; 32]) -> Vec<u8> {
        let mut b = half::f16::from_f32(d).to_le_bytes().to_vec();
        b.extend(half::f16::from_f32(m).to_le_bytes());
        b.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
        b
    }

    #[test]
    fn reads_metadata_and_dequantizes() {
        let q: [u8; 32] = std::array::from_fn(|i| (i % 16) as u8);
        let q41 = [q4_1_block(0.5, -1.0, q), q4_1_block(0.25, 2.0, q)].concat();
        let mut q80 = half::f16::from_f32(0.1).to_le_bytes().to_vec();
        q80.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = write_gguf(
            &[
                (
                    "general.architecture",
                    8,
                    [5u64.to_le_bytes().to_vec(), b"llama".to_vec()].concat(),
                ),
                ("llama.block_count", 4, 30u32.to_le_bytes().to_vec()),
            ],
            &[
                ("a", vec![32, 2], 3, q41),
                ("b", vec![32], 8, q80),
                ("c", vec![2], 0, f32s),
            ],
        );
        let g = open_bytes(&bytes, "ok").unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
        let (a, shape) = g.tensor_f32("a").unwrap();
        assert_eq!(shape, vec![2, 32]);
        assert_eq!(a[0], -1.0);
        assert_eq!(a[5], 5.0 * 0.5 - 1.0);
        assert_eq!(a[32 + 17], 1.0 * 0.25 + 2.0);
        let (b, _) = g.tensor_f32("b").unwrap();
        assert!((b[0] - -1.6).abs() < 1e-3 && (b[31] - 1.5).abs() < 1e-3);
        assert_eq!(g.tensor_f32("c").unwrap().0, vec![1.5, -2.0]);
        assert!(matches!(
            g.tensor_f32("zz"),
            Err(GgufError::MissingTensor { .. })
        ));
        assert!(matches!(
            g.get_str("llama.block_count"),
            Err(GgufError::Metadata { .. })
        ));
    }

    #[test]
    fn hostile_and_truncated_files_are_refused() {
        assert!(matches!(
            open_bytes(b"GGUX0000", "magic"),
            Err(GgufError::Format { .. })
        ));
        // A tensor count of 2^60 must be refused before any allocation.
        let mut huge = MAGIC.to_le_bytes().to_vec();
        huge.extend(3u32.to_le_bytes());
        huge.extend((1u64 << 60).to_le_bytes());
        huge.extend(0u64.to_le_bytes());
        let err = open_bytes(&huge, "huge")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("cannot fit"), "{err}");
        let f32s: Vec<u8> = [1.5f32; 64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let good = write_gguf(&[], &[("c", vec![64], 0, f32s)]);
        let err = open_bytes(&good[..good.len() - 10], "trunc")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    fn err_of(bytes: &[u8], name: &str) -> String {
        open_bytes(bytes, name).err().expect("refused").to_string()
    }

    fn u8_array(n: u64) -> Vec<u8> {
        let mut v = 0u32.to_le_bytes().to_vec();
        v.extend(n.to_le_bytes());
        v.extend(std::iter::repeat_n(7u8, n as usize));
        v
    }

    #[test]
    fn malformed_directories_are_refused_with_the_reason() {
        let f32s = |n: usize| -> Vec<u8> { vec![0u8; 4 * n] };
        let dup = write_gguf(
            &[],
            &[("a", vec![4], 0, f32s(4)), ("a", vec![4], 0, f32s(4))],
        );
        assert!(err_of(&dup, "dup").contains("duplicate tensor `a`"));
        let kv = ("k", 4, 1u32.to_le_bytes().to_vec());
        let dup_kv = write_gguf(&[kv.clone(), kv], &[]);
        assert!(err_of(&dup_kv, "dupkv").contains("duplicate metadata key `k`"));
        // 40 values cannot be Q8_0 blocks of 32; the reader used to call this "unsupported".
        let partial = write_gguf(&[], &[("q", vec![40], 8, vec![0u8; 68])]);
        assert!(err_of(&partial, "partial").contains("not a whole number of 32-value blocks"));
        // 2^62 × 8 elements overflow u64.
        let overflow = write_gguf(&[], &[("o", vec![1 << 62, 8], 0, vec![])]);
        assert!(err_of(&overflow, "overflow").contains("dimensions overflow"));
        let far = write_gguf(&[], &[("f", vec![1 << 40], 0, vec![])]);
        assert!(err_of(&far, "far").contains("extends past the end"));
        let dir = std::env::temp_dir();
        let err = GgufFile::open(&dir).err().expect("refused").to_string();
        assert!(err.contains("is a folder"), "{err}");
    }

    /// Metadata memory is bounded by a value count, not only by the file size: each in-memory
    /// value is ~32 bytes even when its encoding is 1 byte.
    #[test]
    fn metadata_value_count_is_capped() {
        let bytes = write_gguf(&[("big", 9, u8_array(100))], &[]);
        let path = std::env::temp_dir().join(format!("any4-gguf-cap-{}.gguf", std::process::id()));
        std::fs::write(&path, &bytes).expect("write temp");
        let map = |p: &Path| {
            let f = File::open(p).expect("open");
            // SAFETY: a private temporary file nobody else writes.
            unsafe { memmap2::Mmap::map(&f) }.expect("map")
        };
        // The array itself and its 100 items: 101 values.
        assert!(GgufFile::parse(&path, map(&path), 101).is_ok());
        let err = GgufFile::parse(&path, map(&path), 100)
            .err()
            .expect("refused")
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("too many values"), "{err}");
    }

    /// Fuzz finding F2 (docs/RELIABILITY.md): a 6 KB GGUF whose `llama.block_count` is 2^24
    /// makes `load_gguf` run out of memory (model construction allocates per declared block:
    /// `hf_tensor_shapes` in auto.rs's debug assertion, `Vec::with_capacity` in model.rs); the
    /// size bounds of `LlamaConfig::validate` now refuse it before any allocation.
    #[test]
    fn block_count_beyond_the_file_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/gguf-block-count-oom.gguf");
        let g = GgufFile::open(&path).expect("the file itself parses");
        assert_eq!(g.get_u64("llama.block_count").expect("present"), 1 << 24);
        let Err(err) = crate::load_gguf(&path, &burn::tensor::Device::flex()) else {
            panic!("a GGUF declaring 2^24 blocks it does not hold was accepted");
        };
        assert!(err.to_string().contains("block"), "{err}");
    }

    /// Fuzz findings F3, F5 and review finding F4 (docs/RELIABILITY.md), same root cause as
    /// F2: `LlamaConfig::validate` bounds no size. The `llama_config` target's inputs declare
    /// 531566 Mixtral layers (the tensor list alone exceeds 2 GB) and a `hidden_size` of
    /// 644294967296 (`inv_freq` allocates 322 GB for the implied head width); the third
    /// declares `head_dim` 2^62, so `heads × head_dim` overflows (a panic in debug builds,
    /// model.rs). Refused by the size bounds of `LlamaConfig::validate`.
    #[test]
    fn configs_declaring_absurd_sizes_are_refused() {
        for name in [
            "config-layers-oom.json",
            "config-head-dim-overflow.json",
            "config-hidden-size-oom.json",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/fuzz")
                .join(name);
            let text = std::fs::read_to_string(&path).expect("fixture");
            assert!(
                crate::LlamaConfig::from_json(&text).is_err(),
                "{name} accepted"
            );
        }
    }

    #[test]
    fn unpermute_inverts_the_rotary_permutation() {
        // Forward permutation as the converter applies it: HF row (h, j, i) -> GGUF row (h, i, j).
        let (n_head, head_dim, cols) = (2, 8, 3);
        let rows = n_head * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..head_dim / 2 {
                    let src = h * head_dim + j * head_dim / 2 + i;
                    let dst = h * head_dim + i * 2 + j;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_qk(&gguf, rows, cols, n_head), hf);
    }
}
