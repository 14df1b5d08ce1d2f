//! CubeCL kernels for **any4** lookup-table 4-bit weights (Elhoushi & Johnson 2025).
//!
//! A linear weight `W[N, K]` comes in any4-core's portable layout (codes, a 16-entry table per
//! row, per-group scales and zeros: `w[n,k] = table[n, code(n,k)] · s[n, k/G] + z[n, k/G]`) and is
//! converted **once** per device into the kernels' [device layout](layout) ([`DeviceWeight`]):
//! codes in 16-byte vectors, one f16 (scale, zero) pair per group, the table in f32 and as int8.
//! `y = x · Wᵀ` then runs, chosen by [`Strategy`] for the batch `M`:
//!
//! | kernel | file | when |
//! |---|---|---|
//! | activation quantization + int8 GEMV | `activation.rs`, `gemv_int8.rs` | `M ≤ 8` (decode, default): int8 table lookups by byte permutes, `dp4a` |
//! | exact GEMV | `gemv_exact.rs` | `M ≤ 8` with [`Strategy::AutoExact`]: f32/f16/bf16 activations as they are |
//! | tensor-core GEMM | `gemm_cmma.rs` | `M > 8` where the device has cmma (CUDA) |
//! | SIMT GEMM | `gemm.rs` | `M > 8` elsewhere |
//! | dequantize (+ dense matmul) | `dequantize.rs`, `gemm.rs` | dense weights, the fallback |
//!
//! Activations and outputs share one [`Dtype`] (f32, f16, bf16): no casts around a call. The
//! helpers in [`launch`] validate buffer sizes and return [`Error`]; they only queue kernels
//! (no device synchronization), so calls chain.
//!
//! CubeCL 0.11's `Client` is runtime-erased, so the helpers take a `&Client` from any runtime:
//! `cubecl::Device::cpu()?.client()`, `Device::wgpu(..)`, `Device::cuda(0)`.
#![warn(missing_docs)]

pub mod activation;
#[cfg(feature = "cuda")]
pub mod cublas;
pub mod dequantize;
mod error;
pub mod gemm;
pub mod gemm_cmma;
pub mod gemv_exact;
pub mod gemv_int8;
pub mod launch;
pub mod layout;
pub mod lookup;
pub mod plan;
pub mod reduce;

#[cfg(feature = "cuda-source")]
pub mod cuda_source;

pub use error::{Error, Result};
pub use launch::{
    Path, Strategy, dense_matmul_into, dequantize, matmul, matmul_int8_portable_into, matmul_into,
    resolve,
};
pub use layout::{DeviceWeight, HostLayout, WeightShape, int8_table};
pub use plan::Dtype;

/// Re-exported so callers name the same CubeCL version as the kernels.
pub use cubecl;
