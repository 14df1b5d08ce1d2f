//! Errors of the model crate: configs, checkpoints, tokenizers, generation and evaluation.

use std::path::PathBuf;

use thiserror::Error;

/// Why loading, running or evaluating a model failed.
#[derive(Debug, Error)]
pub enum Error {
    /// File system error, with the file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, shard index) that does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// An architecture this crate does not implement.
    #[error("{}: unsupported model `{name}` (supported: {supported})", path.display())]
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// The `model_type` or architecture named there.
        name: String,
        /// What is supported.
        supported: &'static str,
    },
    /// A config whose values cannot describe a working model.
    #[error("invalid config: {0}")]
    Config(String),
    /// A safetensors file that does not parse.
    #[error("{}: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{}: missing tensor `{tensor}`", path.display())]
    MissingTensor {
        /// The checkpoint (file or folder) that lacks it.
        path: PathBuf,
        /// HF tensor name.
        tensor: String,
    },
    /// A tensor whose shape is not what the config implies.
    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}", path.display())]
    Shape {
        /// The file holding it.
        path: PathBuf,
        /// HF tensor name.
        tensor: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor stored in a dtype the loader does not convert.
    #[error("{}: tensor `{tensor}` has unsupported dtype {dtype} (supported: F32, F16, BF16)", path.display())]
    Dtype {
        /// The file holding it.
        path: PathBuf,
        /// HF tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// The tokenizer file could not be read or used.
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer {
        /// The `tokenizer.json` (or the folder).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Encoding or decoding text failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// Bad generation or evaluation input (empty prompt, too few tokens, bad sampling values).
    #[error("{0}")]
    Input(String),
    /// Tensor data could not be read back in the expected element type.
    #[error("tensor data: {0}")]
    Data(String),
    /// The quantization layer refused.
    #[error(transparent)]
    Quant(#[from] any4_burn::Error),
    /// A GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
