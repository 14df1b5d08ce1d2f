//! [`Any4Backend`] for Flex: any4-core's CPU path on the tensors' storage.
//!
//! Per call it borrows every buffer in place (f32 activations, u32 codes, f32 parameters and
//! the weight's derived int8 tables: no copy, no conversion when the dtypes are the stored
//! ones), runs the kernel any4-core picks (int8 decode path for M ≤ 8 under `CpuMatmul::Auto`,
//! the panel GEMM above) and wraps the kernel's output `Vec` as the result tensor without a
//! copy: the output is the only allocation (the int8 path keeps its quantized activations in a
//! thread-local scratch). Other float dtypes are converted to f32 and back.

use std::borrow::Cow;

use any4_core::QuantizedView;
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};

use super::{Any4Backend, Any4WeightPrimitive};

/// f32 storage of a Flex tensor (borrowed when it is contiguous f32, else converted).
fn f32s(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => {
            let data = t.to_contiguous().into_data().convert::<f32>();
            Cow::Owned(data.try_to_vec::<f32>().expect("converted to f32"))
        }
    }
}

/// u32 storage of a Flex int tensor (borrowed when it is contiguous u32, else converted).
fn u32s(t: &FlexTensor) -> Cow<'_, [u32]> {
    match t.as_slice::<u32>() {
        Some(s) => Cow::Borrowed(s),
        None => {
            let data = t.to_contiguous().into_data().convert::<u32>();
            Cow::Owned(data.try_to_vec::<u32>().expect("converted to u32"))
        }
    }
}

fn with_view<R>(w: &Any4WeightPrimitive<Flex>, f: impl FnOnce(QuantizedView<'_>) -> R) -> R {
    let (words, table_i8) = (u32s(&w.codes), u32s(&w.table_i8));
    let (table, scales, zeros) = (f32s(&w.table), f32s(&w.scales), f32s(&w.zeros));
    let view = QuantizedView::new(w.shape, w.group, &words, &table, &scales, &zeros)
        .and_then(|v| v.with_int8_tables(&table_i8))
        .unwrap_or_else(|e| panic!("any4 weight tensors are inconsistent: {e}"));
    f(view)
}

impl Any4Backend for Flex {
    fn any4_matmul(x: FlexTensor, w: Any4WeightPrimitive<Self>) -> FlexTensor {
        let dtype = x.dtype();
        let m = x.layout().shape()[0];
        let xs = f32s(&x);
        let y = with_view(&w, |v| {
            if w.cpu.panels(m) {
                v.matmul_panels(&xs, m)
            } else {
                v.matmul_with(&xs, m, w.cpu.precision(m))
            }
        })
        .unwrap_or_else(|e| panic!("any4 matmul: {e}"));
        // `TensorData::new` takes the Vec's buffer as is; `from_data` wraps it.
        let data = TensorData::new(y, [m, w.shape[0]]);
        if dtype == DType::F32 {
            FlexTensor::from_data(data)
        } else {
            FlexTensor::from_data(data.convert_dtype(dtype))
        }
    }

    fn any4_dequantize(w: Any4WeightPrimitive<Self>) -> FlexTensor {
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
