//! GGUF reader (llama.cpp's model format): metadata, tensor directory and dequantization of
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors, memory-mapped.
//!
//! Every length read from the file is checked against the bytes that remain before anything is
//! allocated, so a hostile count cannot exhaust memory; every tensor's data range is checked
//! against the file size. GGUF lists dimensions innermost first: a PyTorch `[out, in]` weight
//! has GGUF dims `[in, out]`; [`GgufFile::tensor_f32`] returns the row-major (PyTorch) shape.

//!
//! Files: [`reader`](self) parses the header (bounded reads), `dequant` turns blocks into f32,
//! `tokenizer` rebuilds an HF `tokenizer.json` from the vocabulary, `source` presents the file as
//! HF-named tensors ([`GgufSource`]) to the model loader; `writer` (feature `gguf-writer`) builds
//! small GGUF files for tests and fuzzing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use thiserror::Error;

mod dequant;
mod reader;
mod source;
#[cfg(test)]
pub(crate) mod tests;
mod tokenizer;
#[cfg(any(test, feature = "gguf-writer"))]
pub mod writer;

pub use dequant::unpermute_qk;
pub use source::{GgufSource, load_gguf};
pub use tokenizer::hf_tokenizer_json;

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
