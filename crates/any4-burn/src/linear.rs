//! `QLinear`: a linear layer that is dense or any4, so that model code is written once.

use any4_core::{Any4Config, QuantizedMatrix};
use burn::module::{Module, Param, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::calib::Probe;
use crate::error::{Error, Result};
use crate::weight::{Any4Weight, CpuMatmul, int8_tables_on};

/// A linear layer whose weight is stored in any4 form (frozen; the bias stays dense).
#[derive(Module, Debug)]
pub struct Any4Linear {
    /// Packed codes `[d_output, ceil(d_input / 8)]`, u32.
    pub codes: Param<Tensor<2, Int>>,
    /// Tables `[1 or d_output, 16]`.
    pub table: Param<Tensor<2>>,
    /// Scales `[d_output, groups]`.
    pub scales: Param<Tensor<2>>,
    /// Zeros `[d_output, groups]`.
    pub zeros: Param<Tensor<2>>,
    /// Optional bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Derived from `table` at construction: the CPU int8 path's tables
    /// ([`int8_tables_tensor`](crate::int8_tables_tensor)), `[1 or d_output, 6]` u32. Must be
    /// rebuilt whenever `table` changes. Not saved by checkpoints (rebuilt from `table` on load).
    pub table_i8: Param<Tensor<2, Int>>,
    /// How the weight was quantized.
    #[module(skip)]
    pub config: Any4Config,
    /// Activation precision on CPU backends.
    #[module(skip)]
    pub cpu: CpuMatmul,
    /// Input features (`K`).
    pub d_input: usize,
    /// Output features (`N`).
    pub d_output: usize,
}

fn frozen<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::initialized(ParamId::new(), t).set_require_grad(false)
}

impl Any4Linear {
    /// Upload a quantized matrix (`[d_output, d_input]`) and an optional bias to `device`.
    pub fn from_quantized(q: &QuantizedMatrix, bias: Option<Tensor<1>>, device: &Device) -> Self {
        let [rows, cols] = q.shape();
        let f = |v: &[f32], shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), (device, DType::F32))
        };
        let codes = Tensor::<2, Int>::from_data(
            TensorData::new(q.codes().to_vec(), [rows, cols.div_ceil(8)]),
            (device, DType::U32),
        );
        let table_i8 = int8_tables_on(q.table(), device)
            .expect("a QuantizedMatrix's table is [table_rows, 16]");
        Any4Linear {
            codes: Param::initialized(ParamId::new(), codes),
            table_i8: Param::initialized(ParamId::new(), table_i8),
            table: frozen(f(q.table(), [q.table_rows(), 16])),
            scales: frozen(f(q.scales(), [rows, q.groups()])),
            zeros: frozen(f(q.zeros(), [rows, q.groups()])),
            bias: bias.map(frozen),
            config: *q.config(),
            cpu: CpuMatmul::Auto,
            d_input: cols,
            d_output: rows,
        }
    }

    /// The weight's device tensors (what the matmul and dequantize run on).
    pub fn weight(&self) -> Any4Weight {
        Any4Weight {
            codes: self.codes.val(),
            table: self.table.val(),
            scales: self.scales.val(),
            zeros: self.zeros.val(),
            shape: [self.d_output, self.d_input],
            group: self.config.group_size(),
            cpu: self.cpu,
            table_i8: self.table_i8.val(),
        }
    }

    /// Read the weight back to the host (for saving and inspection).
    pub fn to_quantized(&self) -> Result<QuantizedMatrix> {
        let f32s = |t: Tensor<2>| read_vec::<f32>(t.into_data(), "any4 parameter");
        let codes = read_vec::<u32>(self.codes.val().into_data(), "any4 codes")?;
        Ok(QuantizedMatrix::from_parts(
            self.config,
            [self.d_output, self.d_input],
            codes,
            f32s(self.table.val())?,
            f32s(self.scales.val())?,
            f32s(self.zeros.val())?,
        )?)
    }

    /// `x · Wᵀ + b` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = self.weight().matmul(x);
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}

/// `tᵀ` materialised in row-major order. A lazy `transpose()` view would make every matmul
/// re-copy the weight into a contiguous buffer first (Flex), which dominated batch-1 decode.
pub fn transposed_contiguous(t: Tensor<2>) -> Tensor<2> {
    let device = t.device();
    Tensor::from_data(t.transpose().into_data(), &device)
}

/// Convert tensor data to a `Vec<E>`, naming what failed.
pub(crate) fn read_vec<E: burn::tensor::Element>(data: TensorData, what: &str) -> Result<Vec<E>> {
    data.convert::<E>()
        .try_into_vec::<E>()
        .map_err(|e| Error::Data(format!("{what}: {e:?}")))
}

/// A dense layer whose inputs are being recorded by a [`Calibrator`](crate::Calibrator).
#[derive(Module, Debug)]
pub struct CalibratingLinear {
    /// The dense layer.
    pub linear: Linear,
    /// Where its input statistics go.
    #[module(skip)]
    pub probe: Probe,
}

/// A linear layer that is dense, any4, or dense and being calibrated.
///
/// Model code calls [`QLinear::forward`] and never needs to know which; the quantization pass
/// turns `Dense` layers into `Quant` ones.
// A model has a few hundred layers at most: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum QLinear {
    /// Full-precision `nn::Linear` (weight `[d_input, d_output]`, Burn's layout).
    Dense(Linear),
    /// any4 weight.
    Quant(Any4Linear),
    /// Dense, with its input statistics recorded (transient state during calibration).
    Calibrating(CalibratingLinear),
}

impl QLinear {
    /// A dense layer from a PyTorch/HF-layout weight `[d_output, d_input]` and optional bias.
    pub fn from_hf(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        QLinear::Dense(Linear {
            weight: Param::initialized(ParamId::new(), transposed_contiguous(weight)),
            bias: bias.map(|b| Param::initialized(ParamId::new(), b)),
        })
    }

    /// A randomly initialised dense layer (for tests and training from scratch).
    pub fn init(d_input: usize, d_output: usize, bias: bool, device: &Device) -> Self {
        QLinear::Dense(
            LinearConfig::new(d_input, d_output)
                .with_bias(bias)
                .init(device),
        )
    }

    /// `[d_output, d_input]`, the `[out, in]` order of weights everywhere in burn-any4 (Burn's
    /// own `Linear` stores its weight `[in, out]`; that layout never leaks out of this type).
    pub fn dims(&self) -> [usize; 2] {
        match self {
            QLinear::Dense(l) | QLinear::Calibrating(CalibratingLinear { linear: l, .. }) => {
                let [d_in, d_out] = l.weight.val().dims();
                [d_out, d_in]
            }
            QLinear::Quant(q) => [q.d_output, q.d_input],
        }
    }

    /// Whether the weight is in any4 form.
    pub fn is_quantized(&self) -> bool {
        matches!(self, QLinear::Quant(_))
    }

    /// Apply the layer to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            QLinear::Dense(l) => l.forward(x),
            QLinear::Quant(q) => q.forward(x),
            QLinear::Calibrating(c) => {
                c.probe.record(&x);
                c.linear.forward(x)
            }
        }
    }

    /// The dense weight in PyTorch/HF layout `[d_output, d_input]` (dequantized if needed).
    pub fn weight_hf(&self) -> Tensor<2> {
        match self {
            QLinear::Dense(l) | QLinear::Calibrating(CalibratingLinear { linear: l, .. }) => {
                l.weight.val().transpose()
            }
            QLinear::Quant(q) => q.weight().dequantize(),
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<Tensor<1>> {
        match self {
            QLinear::Dense(l) | QLinear::Calibrating(CalibratingLinear { linear: l, .. }) => {
                l.bias.as_ref().map(|b| b.val())
            }
            QLinear::Quant(q) => q.bias.as_ref().map(|b| b.val()),
        }
    }
}

/// A module that contains `QLinear`s and can hand each out, mutably, with its path.
///
/// Paths are dot-separated field names (`layers.3.self_attn.q_proj`); the quantization pass
/// matches include/exclude patterns against them and checkpoints use them as tensor names.
/// Implement it by listing the fields (see [`impl_qlinear_container!`](crate::impl_qlinear_container)).
pub trait QLinearContainer {
    /// Call `f(path, layer)` for every `QLinear` inside, in a fixed order.
    fn visit_qlinears(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut QLinear));
}

/// `prefix.name`, or `name` at the root.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl QLinearContainer for QLinear {
    fn visit_qlinears(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut QLinear)) {
        f(prefix, self)
    }
}

impl<T: QLinearContainer> QLinearContainer for Vec<T> {
    fn visit_qlinears(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut QLinear)) {
        for (i, item) in self.iter_mut().enumerate() {
            item.visit_qlinears(&join_path(prefix, &i.to_string()), f);
        }
    }
}

impl<T: QLinearContainer> QLinearContainer for Option<T> {
    fn visit_qlinears(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut QLinear)) {
        if let Some(item) = self {
            item.visit_qlinears(prefix, f);
        }
    }
}

/// Implement [`QLinearContainer`] for a struct by listing its fields that contain `QLinear`s:
/// `impl_qlinear_container!(Mlp { gate_proj, up_proj, down_proj });`
#[macro_export]
macro_rules! impl_qlinear_container {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::QLinearContainer for $ty {
            fn visit_qlinears(
                &mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &mut $crate::QLinear),
            ) {
                $( $crate::QLinearContainer::visit_qlinears(
                    &mut self.$field,
                    &$crate::join_path(prefix, stringify!($field)),
                    f,
                ); )*
            }
        }
    };
}

/// Paths of every `QLinear` in `model`, in visiting order.
pub fn qlinear_paths(model: &mut impl QLinearContainer) -> Vec<String> {
    let mut out = Vec::new();
    model.visit_qlinears("", &mut |p, _| out.push(p.to_string()));
    out
}
