//! The any4 backend extension: `any4_matmul` and `any4_dequantize` on every backend.
//!
//! Routing, decided per call from the activation's device ([`route`]):
//! - **Flex** (the pure-Rust CPU default): the `Any4Backend` extension, whose Flex impl runs the
//!   any4-core CPU path directly on the tensors' storage (no copy of the weights);
//! - **Cube** (every CubeCL runtime: `Device::wgpu(..)`, `Device::cpu()`, `Device::cuda(i)`; crate
//!   features `wgpu`, `cpu`, `cuda`): the extension's Cube impl launches the `any4-kernels`
//!   lookup-table kernels on the device buffers, `Strategy::Auto` (GEMV for M ≤ 8, tiled GEMM
//!   above). f16 / bf16 activations are converted to f32 for the kernels and the result back;
//! - with autodiff on either, the extension's Autodiff impl: forward as above, backward
//!   `dx = dy · W` through `any4_dequantize` (the weight itself is frozen);
//! - **every other backend**: the portable path — dequantize with Burn tensor ops, then a dense
//!   matmul. Always valid, autodiff included.
//!
//! The extension is listed for Cube without `Fusion`: the crate depends on burn-cubecl without
//! its `fusion` feature, so `burn::backend::Cube` is the plain `CubeBackend` implemented here.

use any4_core::GroupSize;
use burn::backend::{
    Backend, ExtensionType, backend_extension, tensor::FloatTensor, tensor::IntTensor,
};
use burn::tensor::{Int, Tensor};

/// Device-resident any4 weights in the portable layout, as passed to the extension.
#[derive(ExtensionType, Debug, Clone)]
pub struct Any4Weight<B: Backend> {
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
}

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
    /// Largest batch that takes the int8 decode path under `Auto`.
    pub const DECODE_MAX_M: usize = 8;

    /// Whether a batch of `m` rows takes the panel GEMM: the weight is reused `m` times, so
    /// its dequantization vanishes next to the multiply-adds.
    pub fn panels(self, m: usize) -> bool {
        self == CpuMatmul::Auto && m > Self::DECODE_MAX_M
    }

    /// The any4-core precision for a batch of `m` rows.
    pub fn precision(self, m: usize) -> any4_core::MatmulPrecision {
        use any4_core::MatmulPrecision::{Exact, Int8Activations};
        match self {
            CpuMatmul::Exact => Exact,
            CpuMatmul::Int8 => Int8Activations,
            CpuMatmul::Auto if m <= Self::DECODE_MAX_M => Int8Activations,
            CpuMatmul::Auto => Exact,
        }
    }
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
        #[extension_type] w: Any4Weight<Self>,
    ) -> FloatTensor<Self>;
    /// The dense `[rows, cols]` weight, in the table's dtype.
    fn any4_dequantize(#[extension_type] w: Any4Weight<Self>) -> FloatTensor<Self>;
}

/// The tensors of one any4 weight on a device (what [`Any4Linear`](crate::Any4Linear) holds).
#[derive(Debug, Clone)]
pub struct Any4Tensors {
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

impl Any4Tensors {
    fn to_extension(&self) -> Any4Weight<burn::backend::Dispatch> {
        Any4Weight {
            codes: self.codes.clone().into_dispatch(),
            table: self.table.clone().into_dispatch(),
            scales: self.scales.clone().into_dispatch(),
            zeros: self.zeros.clone().into_dispatch(),
            shape: self.shape,
            group: self.group,
            cpu: self.cpu,
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

#[cfg(feature = "flex")]
mod flex {
    use any4_core::QuantizedView;
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{DType, TensorData};

    use super::{Any4Backend, Any4Weight};

    /// f32 storage of a Flex tensor (converting other float dtypes).
    fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
        if t.dtype() == DType::F32 && t.as_slice::<f32>().is_some() {
            std::borrow::Cow::Borrowed(t.as_slice::<f32>().expect("checked"))
        } else {
            let data = t.clone().into_data().convert::<f32>();
            std::borrow::Cow::Owned(data.try_to_vec::<f32>().expect("converted to f32"))
        }
    }

    fn with_view<R>(w: &Any4Weight<Flex>, f: impl FnOnce(QuantizedView<'_>) -> R) -> R {
        let codes = w.codes.to_contiguous();
        let words: std::borrow::Cow<'_, [u32]> = match codes.as_slice::<u32>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(
                codes
                    .clone()
                    .into_data()
                    .convert::<u32>()
                    .try_to_vec::<u32>()
                    .expect("codes convert to u32"),
            ),
        };
        let (table, scales, zeros) = (f32s(&w.table), f32s(&w.scales), f32s(&w.zeros));
        let view = QuantizedView::new(w.shape, w.group, &words, &table, &scales, &zeros)
            .unwrap_or_else(|e| panic!("any4 weight tensors are inconsistent: {e}"));
        f(view)
    }

    impl Any4Backend for Flex {
        fn any4_matmul(x: FlexTensor, w: Any4Weight<Self>) -> FlexTensor {
            let dtype = x.dtype();
            let m = x.layout().shape()[0];
            let x = x.to_contiguous();
            let xs = f32s(&x);
            let y = with_view(&w, |v| {
                if w.cpu.panels(m) {
                    v.matmul_panels(&xs, m)
                } else {
                    v.matmul_with(&xs, m, w.cpu.precision(m))
                }
            })
            .unwrap_or_else(|e| panic!("any4 matmul: {e}"));
            let out = FlexTensor::from_data(TensorData::new(y, [m, w.shape[0]]));
            if dtype == DType::F32 {
                out
            } else {
                FlexTensor::from_data(out.into_data().convert_dtype(dtype))
            }
        }

        fn any4_dequantize(w: Any4Weight<Self>) -> FlexTensor {
            let dtype = w.table.dtype();
            let dense = with_view(&w, |v| v.dequantize());
            let data = TensorData::new(dense, w.shape);
            if dtype == DType::F32 {
                FlexTensor::from_data(data)
            } else {
                FlexTensor::from_data(data.convert_dtype(dtype))
            }
        }
    }
}

#[cfg(all(feature = "autodiff", any(feature = "flex", feature = "cube")))]
mod autodiff {
    use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata};

    use super::{Any4Backend, Any4Weight};

    fn inner<B: Backend>(w: Any4Weight<Autodiff<B, impl CheckpointStrategy>>) -> Any4Weight<B> {
        Any4Weight {
            codes: w.codes,
            table: w.table.into_primitive(),
            scales: w.scales.into_primitive(),
            zeros: w.zeros.into_primitive(),
            shape: w.shape,
            group: w.group,
            cpu: w.cpu,
        }
    }

    /// `y = x · Wᵀ` ⇒ `dx = dy · W`; the any4 weight is frozen (no gradient).
    #[derive(Debug)]
    struct Any4MatmulBackward;

    impl<B: Backend + Any4Backend> Backward<B, 1> for Any4MatmulBackward {
        type State = Any4Weight<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            if let Some(node) = node_x {
                let w = B::any4_dequantize(ops.state);
                // The table's dtype may differ from the activation's (f32 tables, bf16 model).
                let w = if w.dtype() == grad.dtype() {
                    w
                } else {
                    B::float_cast(w, grad.dtype().into())
                };
                grads.register::<B>(node.id, B::float_matmul(grad, w));
            }
        }
    }

    impl<B: Backend + Any4Backend, C: CheckpointStrategy> Any4Backend for Autodiff<B, C> {
        fn any4_matmul(
            x: Self::FloatTensorPrimitive,
            w: Any4Weight<Self>,
        ) -> Self::FloatTensorPrimitive {
            let w = inner(w);
            match Any4MatmulBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let out = B::any4_matmul(x.primitive().clone(), w.clone());
                    prep.finish(w, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::any4_matmul(x.into_primitive(), w)),
            }
        }

        fn any4_dequantize(w: Any4Weight<Self>) -> Self::FloatTensorPrimitive {
            Self::from_inner(B::any4_dequantize(inner(w)))
        }
    }
}
