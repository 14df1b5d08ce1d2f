#![doc = include_str!("../README.md")]
//!
//! # This crate
//!
//! The one dependency a user adds: [`core`] (any4-core: formats, k-means, the CPU reference),
//! [`burn`] (any4-burn: the Burn extension, `QLinear`, calibration, the quantization pass,
//! checkpoints) and, with the default feature `llm`, [`llm`] (any4-llm: Llama / Mistral /
//! Mixtral, HF and GGUF loading, tokenizer, generation, perplexity). [`Error`] is what each of
//! their errors converts into, so `?` works across them. The backend features (`flex` by
//! default, `wgpu`, `cpu`, `cuda`) are forwarded to every crate; see docs/BUILD.md.
#![warn(missing_docs)]

pub use ::burn::tensor::Device;
pub use any4_burn as burn;
pub use any4_burn::{Calibrator, QLinear, QuantizeConfig, quantize_model};
pub use any4_core as core;
pub use any4_core::{Any4Config, Format, GroupSize, QuantizedMatrix, Scaling};
#[cfg(feature = "llm")]
pub use any4_llm as llm;

/// An error of any crate of burn-any4, so one `?` serves calls into all of them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From any4-core (formats, k-means, shapes, non-finite values).
    #[error(transparent)]
    Core(#[from] any4_core::Error),
    /// From any4-burn (the pass, calibration, checkpoints, output folders, backends).
    #[error(transparent)]
    Burn(#[from] any4_burn::Error),
    /// From any4-llm (model files, configs, tokenizers, evaluation).
    #[cfg(feature = "llm")]
    #[error(transparent)]
    Llm(#[from] any4_llm::Error),
}

/// Result alias with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
