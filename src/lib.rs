//! # burn-any4
//!
//! any4 — learned 4-bit weight quantization for LLMs (Elhoushi & Johnson, ICML 2025) — for the
//! Burn deep-learning framework. This facade re-exports the workspace crates so that a user adds
//! one dependency.
#![warn(missing_docs)]

pub use any4_core as core;
pub use any4_core::{Any4Config, Any4Error, Format, GroupSize, QuantizedMatrix, Scaling, quantize};
