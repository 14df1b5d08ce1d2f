//! Typed errors of the launch helpers: every shape or buffer mismatch is reported before
//! anything is launched, so a bad call never panics or reads out of bounds.

use cubecl::server::ServerError;

/// Why a launch helper refused (or the runtime rejected) a call.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A dimension that must be positive is zero.
    #[error("{what} must be > 0")]
    ZeroDimension {
        /// Which dimension (`"N"`, `"K"`, `"M"`, `"group size"`).
        what: &'static str,
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
    /// A device buffer is smaller than the declared shape requires.
    #[error("{name}: buffer holds {actual_bytes} bytes, shape needs {expected_bytes}")]
    BufferTooSmall {
        /// Buffer name (`codes`, `table`, `scales`, `zeros`, `x`, `out`).
        name: &'static str,
        /// Bytes the shape requires.
        expected_bytes: u64,
        /// Bytes the handle holds.
        actual_bytes: u64,
    },
    /// [`crate::Strategy::Gemv`] was asked for a batch above [`crate::GEMV_MAX_M`].
    #[error("GEMV supports M <= {max}, got M = {m}")]
    GemvBatchTooLarge {
        /// Requested batch.
        m: usize,
        /// Largest supported batch.
        max: usize,
    },
    /// A [`crate::GemvPlan`] given through [`crate::Strategy::GemvPlanned`] is not valid here.
    #[error("invalid GEMV plan {plan:?}: {rule}")]
    InvalidPlan {
        /// The rejected plan.
        plan: crate::GemvPlan,
        /// The rule it breaks.
        rule: &'static str,
    },
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
    /// The runtime does not support an element type the call needs (e.g. f16 on lavapipe).
    #[error("the runtime does not support {0}")]
    UnsupportedType(&'static str),
    /// The runtime reported a failure (compilation, binding, out of memory).
    #[error("runtime error: {0}")]
    Server(#[from] ServerError),
}
