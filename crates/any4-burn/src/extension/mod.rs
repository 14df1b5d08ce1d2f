//! The any4 backend extension: the operations (`any4_matmul`, `any4_dequantize`) every
//! supported backend implements, and the primitive form of a weight they take.
//!
//! Implementations, one file each:
//! - [`flex`]: the pure-Rust CPU default; any4-core's CPU path runs directly on the tensors'
//!   storage (no copy of the weights);
//! - [`cube`]: every CubeCL runtime (`Device::wgpu(..)`, `Device::cpu()`, `Device::cuda(i)`;
//!   features `wgpu`, `cpu`, `cuda`): the `any4-kernels` lookup-table kernels on the device buffers;
//! - [`fusion`]: `Fusion<B>` over any of them — in practice `Fusion<CubeBackend>`, which is what
//!   `burn::backend::Cube` is when burn-cubecl's `fusion` feature is on (Burn's default
//!   features): each any4 call is registered as one custom fusion op that runs the Cube impl;
//! - [`autodiff`]: over any of them, forward as above and backward `dx = dy · W` through
//!   `any4_dequantize` (the weight is frozen).
//!
//! Other backends never reach the extension: [`route`](crate::route) sends them down the portable
//! dequantize-then-matmul path of [`Any4WeightPrimitive`](crate::Any4WeightPrimitive).
//!
//! The macro lists Cube without `Fusion`: its Cube routing calls `burn::backend::Cube`, the plain
//! `CubeBackend` (implemented in [`cube`]) in the project's builds and `Fusion<CubeBackend>`
//! (implemented in [`fusion`], by hand: see there why) wherever something turns fusion on.

use any4_core::GroupSize;
use burn::backend::{
    Backend, ExtensionType, backend_extension, tensor::FloatTensor, tensor::IntTensor,
};

use crate::weight::CpuMatmul;

#[cfg(all(feature = "autodiff", any(feature = "flex", feature = "cube")))]
mod autodiff;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "cube")]
mod fusion;

/// Device-resident any4 weights in the portable layout, as passed to the extension.
#[derive(ExtensionType, Debug, Clone)]
pub struct Any4WeightPrimitive<B: Backend> {
    /// Packed codes, `[rows, ceil(cols / 8)]`, u32, 8 nibbles per word (lowest first).
    pub codes: IntTensor<B>,
    /// Tables, `[1 or rows, 16]` f32.
    pub table: FloatTensor<B>,
    /// Scales, `[rows, groups]` f32.
    pub scales: FloatTensor<B>,
    /// Zeros, `[rows, groups]` f32.
    pub zeros: FloatTensor<B>,
    /// `[rows, cols]` of the dense matrix (`rows` outputs, `cols` inputs).
    pub shape: [usize; 2],
    /// Group size (the last group of a row may be short).
    pub group: GroupSize,
    /// How a CPU backend treats activations.
    pub cpu: CpuMatmul,
    /// Derived from `table` when the weight is built: the int8 tables of the CPU int8 path,
    /// `[1 or rows, any4_core::INT8_TABLE_WORDS]` u32 (see `any4_core::int8_tables`).
    pub table_i8: IntTensor<B>,
}

/// The any4 operations a backend provides (Flex: any4-core CPU path; Cube: any4-kernels).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "cube"),
    Autodiff: cfg(all(feature = "autodiff", any(feature = "flex", feature = "cube"))),
)]
pub trait Any4Backend: Backend {
    /// `y = x · Wᵀ` for `x: [m, cols]` → `[m, rows]`.
    fn any4_matmul(
        x: FloatTensor<Self>,
        #[extension_type] w: Any4WeightPrimitive<Self>,
    ) -> FloatTensor<Self>;
    /// The dense `[rows, cols]` weight, in the table's dtype.
    fn any4_dequantize(#[extension_type] w: Any4WeightPrimitive<Self>) -> FloatTensor<Self>;
}
