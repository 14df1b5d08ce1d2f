//! Typed errors of the launch helpers: every shape or buffer mismatch is reported before
//! anything is launched, so a bad call never panics or reads out of bounds.

use cubecl::server::ServerError;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Why a helper refused (or the runtime rejected) a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dimension that must be positive is zero.
    #[error("{what} must be > 0")]
    ZeroDimension {
        /// Which dimension (`"N"`, `"K"`, `"M"`, `"group size"`).
        what: &'static str,
    },
    /// The group size is neither a power of two ≥ 32 nor at least K (one group per row): the
    /// device layout puts every 32-weight code vector inside one group.
    #[error(
        "group size {group_size} with K = {k}: must be a power of two >= 32, or >= K (per row)"
    )]
    UnsupportedGroupSize {
        /// The rejected group size.
        group_size: usize,
        /// Input columns of the weight.
        k: usize,
    },
    /// A host slice has the wrong number of elements for the declared shape.
    #[error("{name}: expected {expected} elements, got {actual}")]
    LengthMismatch {
        /// Buffer name (`codes`, `table`, `scales`, `zeros`, `x`).
        name: &'static str,
        /// Elements the shape requires.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// A weight parameter is NaN or infinite (the device layout stores them as f16 with a
    /// power-of-two row factor, which only finite values have).
    #[error("{name} of row {row} is not finite ({value})")]
    NotFinite {
        /// `table`, `scales` or `zeros`.
        name: &'static str,
        /// The row holding it.
        row: usize,
        /// The value.
        value: f32,
    },
    /// A device buffer is smaller than the declared shape requires.
    #[error("{name}: buffer holds {actual_bytes} bytes, shape needs {expected_bytes}")]
    BufferTooSmall {
        /// Buffer name (`x`, `out`, `w`).
        name: &'static str,
        /// Bytes the shape requires.
        expected_bytes: u64,
        /// Bytes the handle holds.
        actual_bytes: u64,
    },
    /// [`crate::Strategy::GemvInt8`] or [`crate::Strategy::GemvExact`] was asked for a batch above `any4_core::DECODE_MAX_M`.
    #[error("GEMV supports M <= {max}, got M = {m}")]
    GemvBatchTooLarge {
        /// Requested batch.
        m: usize,
        /// Largest supported batch.
        max: usize,
    },
    /// [`crate::Strategy::TensorCore`] was asked for on a device without the cooperative-matrix
    /// configuration the kernel needs.
    #[error("no tensor-core (cmma) support for {0} on this device")]
    NoTensorCores(&'static str),
    /// The launch grid would exceed the runtime's cube-count limit.
    #[error("problem too large for one launch: {cubes} cubes along {axis}, limit {limit}")]
    GridTooLarge {
        /// Axis name.
        axis: &'static str,
        /// Cubes needed.
        cubes: usize,
        /// Runtime limit.
        limit: u32,
    },
    /// The runtime does not support an element type the call needs (e.g. bf16 on lavapipe).
    #[error("the runtime does not support {0}")]
    UnsupportedType(&'static str),
    /// The runtime reported a failure (compilation, binding, out of memory).
    #[error("runtime error: {0}")]
    Server(#[from] ServerError),
}
