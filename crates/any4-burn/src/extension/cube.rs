//! [`Any4Backend`] for `burn_cubecl::CubeBackend`: every CubeCL runtime (wgpu, cpu, cuda, …)
//! runs the `any4-kernels` lookup-table kernels directly on the tensors' device buffers.
//!
//! The kernels read a fixed layout: u32 codes, f32 activations, tables, scales and zeros, all
//! row-major and contiguous, one 16-entry table per row. A call therefore
//! 1. checks every tensor's shape against the weight's `[rows, cols]` and group size (the public
//!    [`Any4Weight`](crate::Any4Weight) API already asserts them, this guards direct callers);
//! 2. casts f16 / bf16 inputs to f32 (the output is cast back to the activation's dtype) and
//!    other integer code dtypes to u32;
//! 3. expands a shared `[1, 16]` table (int4 / nf4 / fp4) to `[rows, 16]`: `rows · 64` bytes,
//!    small next to the `rows · cols / 2` bytes of codes the kernel streams anyway;
//! 4. makes every tensor contiguous (`into_contiguous` also un-tiles matmul outputs, which
//!    `into_tensor_arg`-style kernel arguments cannot read), then launches with
//!    [`Strategy::Auto`]: GEMV for `M ≤ 8`, tiled GEMM above.
//!
//! Extension ops return tensors, not `Result`s, so a [`KernelError`](any4_kernels::KernelError)
//! becomes a panic that names the op, the shapes and the device.

use any4_kernels::{Strategy, WeightShape};
use burn::backend::TensorMetadata;
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::tensor::{DType, FloatDType, IntDType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use super::{Any4Backend, Any4WeightPrimitive};

/// A float tensor as contiguous f32, converting f16 / bf16 (and f64 / flex32) first.
fn f32_contiguous(t: CubeTensor, what: &str) -> CubeTensor {
    let t = match t.dtype {
        DType::F32 => t,
        DType::F16 | DType::BF16 | DType::F64 | DType::Flex32 => {
            CubeBackend::float_cast(t, FloatDType::F32)
        }
        other => panic!(
            "any4 (Cube): {what} has dtype {other:?}; the kernels take f32, f16, bf16 or f64"
        ),
    };
    into_contiguous(t)
}

/// Packed codes as contiguous u32 words. I32 holds the same 32 bits (the kernels read bits, not
/// values), other integer widths are converted.
fn codes_u32(t: CubeTensor) -> CubeTensor {
    let t = match t.dtype {
        DType::U32 | DType::I32 => t,
        DType::U64 | DType::I64 | DType::U16 | DType::I16 | DType::U8 | DType::I8 => {
            CubeBackend::int_cast(t, IntDType::U32)
        }
        other => panic!("any4 (Cube): codes have dtype {other:?}; expected u32 packed words"),
    };
    into_contiguous(t)
}

/// The logical 2-D shape (a storage-tiled matmul output reports its tiles in `meta`).
fn dims2(t: &CubeTensor, what: &str) -> [usize; 2] {
    let shape = TensorMetadata::shape(t);
    assert_eq!(
        shape.num_dims(),
        2,
        "any4 (Cube): {what} must be 2-D, got shape {shape:?}"
    );
    [shape[0], shape[1]]
}

/// The weight's device buffers in the kernels' layout, validated against `w.shape` / `w.group`.
struct KernelWeight {
    weight: any4_kernels::Any4Weight,
    /// Keeps the prepared tensors (and so their buffers) alive for the launch.
    _tensors: [CubeTensor; 4],
    client: any4_kernels::cubecl::prelude::Client,
    device: burn_cubecl::CubeDevice,
    /// dtype of the table as given (what `any4_dequantize` returns).
    param_dtype: DType,
}

fn prepare(w: Any4WeightPrimitive<CubeBackend>) -> KernelWeight {
    let [rows, cols] = w.shape;
    let group = w.group.len_for(cols);
    let groups = w.group.groups_for(cols);
    let param_dtype = w.table.dtype;
    let device = w.codes.device.clone();
    for (what, t) in [
        ("table", &w.table),
        ("scales", &w.scales),
        ("zeros", &w.zeros),
    ] {
        assert!(
            t.device == device,
            "any4 (Cube): {what} is on {:?} but the codes are on {device:?}",
            t.device
        );
    }

    let expect = |what: &str, got: [usize; 2], want: [usize; 2]| {
        assert_eq!(
            got, want,
            "any4 (Cube): {what} has shape {got:?}, a [{rows}, {cols}] weight with groups of \
             {group} needs {want:?}"
        );
    };
    expect("codes", dims2(&w.codes, "codes"), [rows, cols.div_ceil(8)]);
    expect("scales", dims2(&w.scales, "scales"), [rows, groups]);
    expect("zeros", dims2(&w.zeros, "zeros"), [rows, groups]);
    let table_rows = dims2(&w.table, "table");
    assert!(
        table_rows == [1, 16] || table_rows == [rows, 16],
        "any4 (Cube): table has shape {table_rows:?}, expected [1, 16] or [{rows}, 16]"
    );

    let codes = codes_u32(w.codes);
    let table = if table_rows[0] == 1 && rows > 1 {
        // Materialized below by `into_contiguous` (the expanded view has row stride 0).
        CubeBackend::float_expand(w.table, Shape::new([rows, 16]))
    } else {
        w.table
    };
    let table = f32_contiguous(table, "table");
    let scales = f32_contiguous(w.scales, "scales");
    let zeros = f32_contiguous(w.zeros, "zeros");

    let shape = WeightShape::new(rows, cols, group)
        .unwrap_or_else(|e| panic!("any4 (Cube): invalid weight shape [{rows}, {cols}]: {e}"));
    let weight = any4_kernels::Any4Weight::from_handles(
        codes.handle.clone(),
        table.handle.clone(),
        scales.handle.clone(),
        zeros.handle.clone(),
        shape,
    )
    .unwrap_or_else(|e| panic!("any4 (Cube): weight buffers do not match [{rows}, {cols}]: {e}"));
    KernelWeight {
        weight,
        client: codes.client.clone(),
        _tensors: [codes, table, scales, zeros],
        device,
        param_dtype,
    }
}

/// Casts a fresh f32 result back to `dtype` when the caller's tensors were not f32.
fn to_dtype(t: CubeTensor, dtype: DType) -> CubeTensor {
    if dtype == DType::F32 {
        t
    } else {
        CubeBackend::float_cast(t, dtype.into())
    }
}

impl Any4Backend for CubeBackend {
    fn any4_matmul(x: CubeTensor, w: Any4WeightPrimitive<Self>) -> CubeTensor {
        let [rows, cols] = w.shape;
        let [m, k] = dims2(&x, "activation");
        assert_eq!(
            k, cols,
            "any4 matmul (Cube): input has {k} features, the weight expects {cols}"
        );
        let dtype = x.dtype;
        assert!(
            x.device == w.codes.device,
            "any4 matmul (Cube): input is on {:?} but the weight is on {:?}",
            x.device,
            w.codes.device
        );
        if m == 0 {
            return CubeBackend::float_zeros(Shape::new([0, rows]), &x.device, dtype.into());
        }
        let kw = prepare(w);
        let x = f32_contiguous(x, "activation");
        let out = any4_kernels::matmul(&kw.client, &kw.weight, &x.handle, m, Strategy::Auto)
            .unwrap_or_else(|e| {
                panic!(
                    "any4 matmul (Cube) x[{m}, {cols}] · W[{rows}, {cols}]ᵀ on {:?}: {e}",
                    kw.device
                )
            });
        let y = CubeTensor::new_contiguous(
            kw.client,
            kw.device,
            Shape::new([m, rows]),
            out,
            DType::F32,
        );
        to_dtype(y, dtype)
    }

    fn any4_dequantize(w: Any4WeightPrimitive<Self>) -> CubeTensor {
        let [rows, cols] = w.shape;
        let kw = prepare(w);
        let out = any4_kernels::dequantize_f32(&kw.client, &kw.weight).unwrap_or_else(|e| {
            panic!(
                "any4 dequantize (Cube) W[{rows}, {cols}] on {:?}: {e}",
                kw.device
            )
        });
        let dense = CubeTensor::new_contiguous(
            kw.client,
            kw.device,
            Shape::new([rows, cols]),
            out,
            DType::F32,
        );
        to_dtype(dense, kw.param_dtype)
    }
}
