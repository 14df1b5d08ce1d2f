//! [`Any4Weight`]: the device tensors of one any4 weight, and how a call is routed.
//!
//! Routing, decided per call from the activation's device ([`route`]): Flex and Cube devices take
//! the [`Any4Backend`](crate::Any4Backend) extension; every other backend the portable path —
//! dequantize with Burn tensor ops, then a dense matmul (always valid, autodiff included).

use any4_core::GroupSize;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::error::Result;

use crate::extension::{Any4Backend, Any4WeightPrimitive};

/// Activation precision of the CPU (Flex) matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuMatmul {
    /// int8 activations for decode-sized batches (M ≤ 8, memory-bound), and above that
    /// (prefill, perplexity, batched decode: compute-bound) the f32 panel GEMM
    /// (`QuantizedView::matmul_panels`: 32 × 512 panels dequantized into L2, register-blocked GEMM).
    #[default]
    Auto,
    /// Always f32 activations and tables (bit-identical to any4-core's reference).
    Exact,
    /// Always int8 activations per block of 32 (see `any4_core::MatmulPrecision`).
    Int8,
}

impl CpuMatmul {
    /// Whether a batch of `m` rows takes the panel GEMM: the weight is reused `m` times, so
    /// its dequantization vanishes next to the multiply-adds.
    pub fn panels(self, m: usize) -> bool {
        self == CpuMatmul::Auto && m > any4_core::DECODE_MAX_M
    }

    /// The any4-core precision for a batch of `m` rows.
    pub fn precision(self, m: usize) -> any4_core::MatmulPrecision {
        use any4_core::MatmulPrecision::{Exact, Int8Activations};
        match self {
            CpuMatmul::Exact => Exact,
            CpuMatmul::Int8 => Int8Activations,
            CpuMatmul::Auto if m <= any4_core::DECODE_MAX_M => Int8Activations,
            CpuMatmul::Auto => Exact,
        }
    }
}

/// The tensors of one any4 weight on a device (what [`Any4Linear`](crate::Any4Linear) holds).
#[derive(Debug, Clone)]
pub struct Any4Weight {
    /// `[rows, ceil(cols/8)]` u32 codes.
    pub codes: Tensor<2, Int>,
    /// `[1 or rows, 16]`.
    pub table: Tensor<2>,
    /// `[rows, groups]`.
    pub scales: Tensor<2>,
    /// `[rows, groups]`.
    pub zeros: Tensor<2>,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// Group size.
    pub group: GroupSize,
    /// CPU activation precision.
    pub cpu: CpuMatmul,
    /// Derived from `table` once, when the weight is built ([`int8_tables_tensor`]): the int8
    /// tables the CPU int8 path reads instead of converting every row's table per call,
    /// `[1 or rows, any4_core::INT8_TABLE_WORDS]` u32.
    pub table_i8: Tensor<2, Int>,
}

/// The int8 tables derived from a `[1 or rows, 16]` table tensor, on its device:
/// `any4_core::int8_tables` packed `[table_rows, INT8_TABLE_WORDS]` u32 (16 int8 codes, then the
/// bits of the f32 `scale` and `mid` per row; see that function for the numerics). Integer
/// storage, so a model-wide float dtype cast leaves it exact. Reads the table back to the host:
/// call it once when a weight is built (code that builds an [`Any4Linear`](crate::Any4Linear)
/// field by field sets its `table_i8` with it), never per call.
pub fn int8_tables_tensor(table: &Tensor<2>) -> Result<Tensor<2, Int>> {
    let values = crate::linear::read_vec::<f32>(table.to_data(), "any4 table")?;
    int8_tables_on(&values, &table.device())
}

/// [`int8_tables_tensor`] of a host `[table_rows, 16]` buffer, uploaded to `device`.
pub(crate) fn int8_tables_on(table: &[f32], device: &Device) -> Result<Tensor<2, Int>> {
    let words = any4_core::int8_tables(table)?;
    let rows = words.len() / any4_core::INT8_TABLE_WORDS;
    Ok(Tensor::<2, Int>::from_data(
        TensorData::new(words, [rows, any4_core::INT8_TABLE_WORDS]),
        (device, DType::U32),
    ))
}

/// Which implementation a call takes (chosen from the activation's device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The backend extension: Flex (any4-core CPU path) or Cube (any4-kernels).
    Extension,
    /// Dequantize with tensor ops, then a dense matmul: valid on every backend.
    Portable,
}

/// The route a tensor on `device` takes.
pub fn route(device: &burn::tensor::Device) -> Route {
    #[allow(unused_imports)]
    use burn::backend::DispatchDevice;
    match device.clone().without_autodiff().as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => Route::Extension,
        #[cfg(feature = "cube")]
        DispatchDevice::Cube(_) => Route::Extension,
        #[allow(unreachable_patterns)]
        _ => Route::Portable,
    }
}

impl Any4Weight {
    fn to_extension(&self) -> Any4WeightPrimitive<burn::backend::Dispatch> {
        Any4WeightPrimitive {
            codes: self.codes.clone().into_dispatch(),
            table: self.table.clone().into_dispatch(),
            scales: self.scales.clone().into_dispatch(),
            zeros: self.zeros.clone().into_dispatch(),
            shape: self.shape,
            group: self.group,
            cpu: self.cpu,
            table_i8: self.table_i8.clone().into_dispatch(),
        }
    }

    /// `y = x · Wᵀ` over the last dimension of `x` (`[..., cols]` → `[..., rows]`).
    pub fn matmul<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let [rows, cols] = self.shape;
        let dims = x.dims();
        assert_eq!(
            dims[D - 1],
            cols,
            "any4 matmul: input has {} features, the weight expects {cols}",
            dims[D - 1]
        );
        let m: usize = dims[..D - 1].iter().product();
        let x2: Tensor<2> = x.reshape([m, cols]);
        let y = match route(&x2.device()) {
            Route::Extension => {
                Tensor::<2>::from_dispatch(<burn::backend::Dispatch as Any4Backend>::any4_matmul(
                    x2.into_dispatch(),
                    self.to_extension(),
                ))
            }
            Route::Portable => x2.matmul(self.dequantize_portable().transpose()),
        };
        let mut out = dims;
        out[D - 1] = rows;
        y.reshape(out)
    }

    /// The dense `[rows, cols]` weight.
    pub fn dequantize(&self) -> Tensor<2> {
        match route(&self.table.device()) {
            Route::Extension => Tensor::<2>::from_dispatch(
                <burn::backend::Dispatch as Any4Backend>::any4_dequantize(self.to_extension()),
            ),
            Route::Portable => self.dequantize_portable(),
        }
    }

    /// Dequantize with Burn tensor ops only: unpack nibbles by shifts, gather from the table,
    /// broadcast each group's scale and zero. Works on every backend.
    pub fn dequantize_portable(&self) -> Tensor<2> {
        let [rows, cols] = self.shape;
        let words = cols.div_ceil(8);
        let device = self.codes.device();
        let shifts = Tensor::<1, Int>::arange(0..8, &device)
            .mul_scalar(4)
            .cast(self.codes.dtype())
            .reshape([1, 1, 8]);
        let codes: Tensor<2, Int> = self
            .codes
            .clone()
            .reshape([rows, words, 1])
            .bitwise_right_shift(shifts.expand([rows, words, 8]))
            .bitwise_and_scalar(0xF)
            .reshape([rows, words * 8])
            .slice([0..rows, 0..cols]);
        let table = if self.table.dims()[0] == 1 {
            self.table.clone().expand([rows, 16])
        } else {
            self.table.clone()
        };
        let values = table.gather(1, codes);
        let group = self.group.len_for(cols);
        let groups = self.group.groups_for(cols);
        let per_channel = |t: &Tensor<2>| {
            t.clone()
                .reshape([rows, groups, 1])
                .expand([rows, groups, group])
                .reshape([rows, groups * group])
                .slice([0..rows, 0..cols])
        };
        values * per_channel(&self.scales) + per_channel(&self.zeros)
    }
}
