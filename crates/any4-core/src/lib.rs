//! # any4-core
//!
//! The numerics of any4 (Elhoushi & Johnson, ICML 2025) without any framework: formats,
//! group scaling, activation-weighted 1-D k-means, 4-bit packing, and a fast CPU reference for
//! dequantization and matmul. Every other crate of burn-any4 (kernels, the Burn extension,
//! the quantization pass) uses these definitions as the ground truth.
//!
//! ```
//! use any4_core::{quantize_matrix, Any4Config, Format};
//!
//! let (rows, cols) = (32, 256);
//! let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
//! let q = quantize_matrix(&w, [rows, cols], None, &Any4Config::new(Format::Any4))?;
//! let x = vec![1.0f32; cols];
//! let y = q.matmul(&x, 1)?; // y = x · Wᵀ, shape [1, rows]
//! assert_eq!(y.len(), rows);
//! let err = q.reconstruction_error(&w, None)?;
//! assert!(err.max_abs < 0.1);
//! # Ok::<(), any4_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod act_scale;
mod config;
mod error;
pub mod gptq;
pub mod gram;
mod int8;
pub mod kmeans;
pub mod levels;
mod linalg;
mod matmul;
mod method;
pub mod pack;
mod panel;
mod quantize;
pub mod rng;
mod simd;
mod view;

pub use act_scale::{ActScale, ActScaleConfig};
pub use config::{Any4Config, Format, GroupSize, Init, KMeansConfig, ParamDtype, Scaling, Solver};
pub use error::{Error, Result};
pub use gptq::{GptqConfig, GroupParams, HessianFactor, TableWeights, quantize_gptq};
pub use gram::{Gram, OutputError};
pub use int8::{INT8_TABLE_WORDS, Int8Kernel, Int8Table, MatmulPrecision, int8_table, int8_tables};
pub use matmul::{DECODE_MAX_M, dense_matmul};
pub use method::Method;
pub use quantize::{QuantizedMatrix, Reconstruction, TABLE_LEN, quantize_matrix};
pub use view::QuantizedView;
