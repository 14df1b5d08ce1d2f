//! Typed errors for everything in `any4-core` that can refuse its input.

/// Why a configuration, a matrix or a buffer was refused.
///
/// Every variant names what was wrong (the row and column, the group size, the two shapes), so
/// that a caller several layers up (the quantization pass, the CLI) can print it as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A weight is NaN or infinite.
    #[error("weight at row {row}, column {col} is not finite ({value})")]
    NonFiniteWeight {
        /// Output row (0-based).
        row: usize,
        /// Input column (0-based).
        col: usize,
        /// The offending value.
        value: f32,
    },
    /// An activation statistic is NaN or infinite.
    #[error("activation statistic for input channel {channel} is not finite ({value})")]
    NonFiniteStat {
        /// Input channel (0-based).
        channel: usize,
        /// The offending value.
        value: f32,
    },
    /// A group size that the format does not support.
    #[error("unsupported group size {0}: use 32, 64, 128, 256, 512, 1024 or per-row")]
    UnsupportedGroupSize(usize),
    /// The input dimension is too small to learn or index a 16-entry table meaningfully.
    #[error("input dimension K = {k} is smaller than the minimum of 16")]
    KTooSmall {
        /// The offending input dimension.
        k: usize,
    },
    /// A matrix with no rows.
    #[error("matrix has no rows (N = 0)")]
    NoRows,
    /// A buffer length does not match the shape it should have.
    #[error("{what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        /// Which buffer (e.g. `"weights [N, K]"`, `"activation statistics [K]"`).
        what: &'static str,
        /// Expected element count.
        expected: usize,
        /// Actual element count.
        got: usize,
    },
    /// A k-means option out of range.
    #[error("invalid k-means option: {0}")]
    InvalidKMeans(&'static str),
    /// A name that is not a known format, solver, scaling or dtype.
    #[error("unknown {kind} `{name}`; expected one of: {expected}")]
    UnknownName {
        /// What kind of name ("format", "solver", ...).
        kind: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// Packed codes with a code outside the table of the format.
    #[error("code {code} at row {row}, column {col} is outside the {levels}-entry table")]
    CodeOutOfRange {
        /// Output row.
        row: usize,
        /// Input column.
        col: usize,
        /// The code found.
        code: u8,
        /// Number of valid table entries.
        levels: usize,
    },
    /// A scale, zero or table entry that is not finite or (for scales) not positive.
    #[error("{what} at row {row}, index {index} is invalid ({value}){}", overflow_hint(.value))]
    InvalidParameter {
        /// "scale", "zero" or "table".
        what: &'static str,
        /// Output row.
        row: usize,
        /// Group index (scale, zero) or table index.
        index: usize,
        /// The offending value.
        value: f32,
    },
}

/// An infinite scale or zero from finite weights means the group's range overflowed the
/// parameter dtype (f16 stops at 65504): say how to fix it.
fn overflow_hint(value: &f32) -> &'static str {
    if value.is_infinite() {
        "; when quantizing, the weights' range is too wide for the parameter dtype: use bf16 or f32"
    } else {
        ""
    }
}

/// Result alias for `any4-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An overflowed scale says which dtypes fix it; other invalid values stay terse.
    #[test]
    fn infinite_parameters_carry_a_hint() {
        let at = |value| Error::InvalidParameter {
            what: "scale",
            row: 2,
            index: 1,
            value,
        };
        assert_eq!(
            at(f32::INFINITY).to_string(),
            "scale at row 2, index 1 is invalid (inf); when quantizing, the weights' range is too \
             wide for the parameter dtype: use bf16 or f32"
        );
        assert_eq!(
            at(f32::NAN).to_string(),
            "scale at row 2, index 1 is invalid (NaN)"
        );
    }
}
