//! [`Any4Backend`] for Flex: any4-core's CPU path on the tensors' storage.

use any4_core::QuantizedView;
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};

use super::{Any4Backend, Any4WeightPrimitive};

/// f32 storage of a Flex tensor (converting other float dtypes).
fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    if t.dtype() == DType::F32 && t.as_slice::<f32>().is_some() {
        std::borrow::Cow::Borrowed(t.as_slice::<f32>().expect("checked"))
    } else {
        let data = t.clone().into_data().convert::<f32>();
        std::borrow::Cow::Owned(data.try_to_vec::<f32>().expect("converted to f32"))
    }
}

fn with_view<R>(w: &Any4WeightPrimitive<Flex>, f: impl FnOnce(QuantizedView<'_>) -> R) -> R {
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
    fn any4_matmul(x: FlexTensor, w: Any4WeightPrimitive<Self>) -> FlexTensor {
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
