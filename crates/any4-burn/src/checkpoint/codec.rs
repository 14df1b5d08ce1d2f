//! Tensor bytes: parameter dtypes to safetensors bytes and back, transposes, finiteness.

use burn::tensor::DType;
use safetensors::Dtype;

use any4_core::ParamDtype;

use crate::error::Error;

/// An owned tensor ready to be written.
pub(super) struct Owned {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub(super) fn param_bytes(values: &[f32], dtype: ParamDtype) -> (Dtype, Vec<u8>) {
    match dtype {
        ParamDtype::F32 => (
            Dtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ParamDtype::F16 => (
            Dtype::F16,
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        ParamDtype::Bf16 => (
            Dtype::BF16,
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    }
}

pub(super) fn float_dtype(d: DType) -> Option<Dtype> {
    match d {
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

/// Little-endian safetensors f32 / f16 / bf16 bytes as f32 values; `None` for other dtypes.
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let halves = |f: fn(u16) -> f32| {
        bytes
            .chunks_exact(2)
            .map(|c| f(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    };
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(halves(|b| half::f16::from_bits(b).to_f32())),
        Dtype::BF16 => Some(halves(|b| half::bf16::from_bits(b).to_f32())),
        _ => None,
    }
}

/// The first NaN or infinite value of a tensor stored as `dtype` (`[out, in]` for weights), as
/// an error naming the tensor and where in it; `None` when all are finite (or not floats).
pub(super) fn non_finite(
    tensor: &str,
    dtype: Dtype,
    shape: &[usize],
    bytes: &[u8],
) -> Option<Error> {
    let found = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .enumerate()
            .find(|(_, v)| !v.is_finite()),
        Dtype::F16 | Dtype::BF16 => {
            let half = |b: u16| match dtype {
                Dtype::F16 => half::f16::from_bits(b).to_f32(),
                _ => half::bf16::from_bits(b).to_f32(),
            };
            bytes
                .chunks_exact(2)
                .map(|c| half(u16::from_le_bytes([c[0], c[1]])))
                .enumerate()
                .find(|(_, v)| !v.is_finite())
        }
        _ => None,
    };
    let (index, value) = found?;
    let position = match shape {
        [_, cols] if *cols > 0 => format!("row {}, column {}", index / cols, index % cols),
        _ => format!("index {index}"),
    };
    Some(Error::NonFinite {
        tensor: tensor.to_string(),
        position,
        value,
    })
}
