//! # burn-any4
//!
//! any4 — learned 4-bit weight quantization for LLMs (Elhoushi & Johnson, ICML 2025) — for the
//! Burn deep-learning framework. This facade re-exports the workspace crates so that a user adds
//! one dependency: [`core`] (formats, k-means, CPU reference) and [`burn`] (the backend
//! extension, `QLinear`, calibration, the quantization pass, checkpoints).
#![warn(missing_docs)]

pub use any4_burn as burn;
pub use any4_burn::{Calibrator, QLinear, QuantizeConfig, quantize_model};
pub use any4_core as core;
pub use any4_core::{Any4Config, Format, GroupSize, QuantizedMatrix, Scaling};
