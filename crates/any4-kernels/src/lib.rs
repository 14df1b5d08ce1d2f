//! CubeCL kernels for **any4** lookup-table 4-bit weights (Elhoushi & Johnson 2025).
//!
//! A linear weight `W[N, K]` is stored in the portable any4 layout (produced by `any4-core`):
//! packed codes `u32[N, ceil(K/8)]` (lowest nibble first), one 16-entry f32 table per row,
//! and per-group `scales`/`zeros` `f32[N, ceil(K/G)]` (the last group of a row may be shorter):
//!
//! `w[n,k] = table[n, code(n,k)] · scales[n, k/G] + zeros[n, k/G]`, `y = x · Wᵀ` (f32 accumulation).
//!
//! Kernels: [`dequantize`](fn@dequantize::dequantize_kernel), decode-size
//! [`gemv`](fn@gemv::gemv_kernel) (M ≤ 8), prefill-size [`gemm`](fn@gemm::gemm_kernel), and a dense
//! fallback. Use them through the checked helpers in [`launch`] ([`matmul`], [`dequantize_f32`],
//! …), which validate shapes and return [`KernelError`] instead of panicking.
//!
//! CubeCL 0.11's `Client` is runtime-erased (kernels are not monomorphized per runtime), so the
//! helpers take a `&Client` from any runtime: `cubecl::Device::cpu()?.client()`,
//! `Device::wgpu(..)`, `Device::cuda(0)`, or `R::client(&device)` for an `R: Runtime`.
#![warn(missing_docs)]

pub mod dequantize;
mod error;
pub mod gemm;
pub mod gemv;
pub mod launch;

pub use error::KernelError;
pub use launch::{
    Any4Weight, GEMV_MAX_M, GemvPlan, Strategy, WeightShape, dense_matmul_into, dequantize_f16,
    dequantize_f32, gemv_plan, matmul, matmul_into,
};

/// Re-exported so callers name the same CubeCL version as the kernels.
pub use cubecl;
