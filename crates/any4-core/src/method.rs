//! Which algorithm turns a weight into codes: round-to-nearest or error feedback.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Any4Config;
use crate::error::{Error, Result};
use crate::gptq::{GptqConfig, HessianFactor, quantize_gptq};
use crate::quantize::{QuantizedMatrix, quantize_matrix};

/// How codes are assigned once the table and group scales are known.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum Method {
    /// Every weight independently to its nearest table entry (the paper's any4).
    #[default]
    Rtn,
    /// Error feedback through the calibration Gram matrix ([`crate::gptq`]).
    Gptq(GptqConfig),
}

impl Method {
    /// Whether the method needs the calibration Gram matrix of each layer input.
    pub fn needs_gram(&self) -> bool {
        matches!(self, Method::Gptq(_))
    }

    /// Lower-case name (`rtn`, `gptq`).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq(_) => "gptq",
        }
    }

    /// Quantize `weights` (`[rows, cols]`) with this method. `stats` is the signed input mean
    /// `x̄`; `factor` must be given for [`Method::Gptq`].
    pub fn quantize(
        &self,
        weights: &[f32],
        shape: [usize; 2],
        stats: Option<&[f32]>,
        factor: Option<&HessianFactor>,
        config: &Any4Config,
    ) -> Result<QuantizedMatrix> {
        match self {
            Method::Rtn => quantize_matrix(weights, shape, stats, config),
            Method::Gptq(g) => {
                let factor = factor.ok_or(Error::NoCalibrationTokens)?;
                quantize_gptq(weights, shape, stats, factor, config, g)
            }
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
