//! Errors of the Burn integration: quantization, calibration and checkpoints.

use std::path::PathBuf;

use thiserror::Error;

/// Why a quantization, calibration or checkpoint operation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The numerics refused a layer (NaN weights, bad shapes, ...).
    #[error("{0}")]
    Core(#[from] any4_core::Error),
    /// The same, with the layer it happened in.
    #[error("layer `{layer}`: {source}")]
    Layer {
        /// Module path of the layer.
        layer: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// Tensor data could not be read in the expected element type.
    #[error("tensor data: {0}")]
    Data(String),
    /// An include/exclude pattern that is not a valid glob.
    #[error("invalid layer pattern `{0}`: use `*` as the only wildcard")]
    Pattern(String),
    /// A calibration statistic is missing for a layer that needs one.
    #[error(
        "no calibration statistics for layer `{0}` (was it reached by the calibration forward?)"
    )]
    MissingStats(String),
    /// File system error, with the file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A NaN or infinite value in a model parameter or a stored tensor.
    #[error("tensor `{tensor}` has a non-finite value ({value}) at {position}")]
    NonFinite {
        /// Checkpoint name of the tensor (`layers.0.mlp.up_proj.weight`).
        tensor: String,
        /// `row r, column c` (`[out, in]` for weights) or `index i`.
        position: String,
        /// The value.
        value: f32,
    },
    /// A backend name that is unknown or not compiled in.
    #[error("{0}")]
    Backend(String),
    /// A checkpoint that is not valid, with the file and what is wrong.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong (missing tensor, shape, dtype, schema, ...).
        reason: String,
    },
}

impl Error {
    /// Attach the layer path to an error.
    pub fn in_layer(self, layer: &str) -> Error {
        Error::Layer {
            layer: layer.to_string(),
            source: Box::new(self),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
