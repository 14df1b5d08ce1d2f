//! Quantized checkpoints: one safetensors file plus a JSON `quantization_config`
//! (docs/METHOD.md §8).
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

mod codec;
mod read;
mod stream;
#[cfg(test)]
mod tests;
mod walk;
mod write;

use std::collections::BTreeMap;
use std::path::Path;

use any4_core::{Any4Config, Format};
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub use codec::bytes_to_f32;
pub use read::{Any4Header, Checkpoint, is_any4_checkpoint, read_any4_header};
pub use stream::{CheckpointWriter, PlannedTensor, write_checkpoint_streaming};
pub use walk::{check_finite, checkpoint_tensor_names};
pub use write::save;

/// Value of the `format` metadata key.
pub const CHECKPOINT_FORMAT: &str = "any4";
/// Version of this layout; readers refuse newer versions.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest safetensors header the `safetensors` crate reads (its `MAX_HEADER_SIZE`).
pub(crate) const MAX_HEADER_BYTES: usize = 100_000_000;

/// The JSON `quantization_config` stored with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
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

/// [`LayerInfo::table`] of a layer in `format`: learned tables are stored one per row (even for a
/// one-row matrix), fixed ones once.
fn table_kind(format: Format) -> &'static str {
    if format.is_learned() {
        "per-row"
    } else {
        "shared"
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
