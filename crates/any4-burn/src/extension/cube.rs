//! [`Any4Backend`] for `burn_cubecl::CubeBackend`: every CubeCL runtime (wgpu, cpu, cuda, …)
//! runs the `any4-kernels` kernels on the weight's **device layout**.
//!
//! The kernels read their own layout ([`any4_kernels::layout`]: 16-byte code vectors, f16
//! (scale, zero) pairs, f32 and int8 tables), not the portable tensors of
//! [`Any4WeightPrimitive`]. It is built **once per weight**, the first time the weight reaches a
//! Cube op: the portable tensors are read back (one device sync), converted on the host exactly as
//! the CPU int8 path converts its tables, and uploaded; when `K` is a multiple of 32 the portable
//! codes already are the device codes and their buffer is shared, so the layout adds only the
//! pairs and tables (~6% of the codes at G = 128). The layout is cached under the memory ids of
//! the weight's four tensors (CubeCL never reuses an id, so a changed weight is a new entry) and
//! dropped once its table, scales or zeros are freed.
//!
//! A call then checks the activation (2-D, `cols` features, same device), makes it contiguous,
//! and launches with [`Strategy::Auto`] (int8 GEMV for `M ≤ 8`, tensor cores or SIMT above;
//! [`Strategy::AutoExact`] when the weight asks for [`CpuMatmul::Exact`]) in the activation's own
//! dtype (f32, f16, bf16: no casts; f64 and flex32 go through f32). Nothing
//! waits for the device. Extension ops return tensors, not `Result`s, so an
//! [`any4_kernels::Error`] becomes a panic that names the op, the shapes and the device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use any4_core::QuantizedView;
use any4_kernels::cubecl::prelude::Client;
use any4_kernels::cubecl::server::Handle;
use any4_kernels::{DeviceWeight, Dtype, HostLayout, Strategy};
use burn::backend::TensorMetadata;
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::tensor::{DType, FloatDType, Shape, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use super::{Any4Backend, Any4WeightPrimitive};
use crate::weight::CpuMatmul;

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

/// The kernels' dtype for a Burn float dtype, `None` for f64 / flex32 (computed in f32).
fn kernel_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

/// Identity of one tensor's buffer: memory id and byte offset (ids are never reused).
type BufferKey = (usize, u64);

fn buffer_key(h: &Handle) -> BufferKey {
    (
        h.memory.clone().binding().id().value,
        h.offset_start.unwrap_or(0),
    )
}

/// Whether a buffer is still allocated, without keeping it allocated.
type Liveness = Box<dyn Fn() -> bool + Send>;

fn liveness(h: &Handle) -> Liveness {
    let weak = h.memory.clone().binding().downgrade();
    Box::new(move || weak.upgrade().is_some())
}

/// A cached device layout and what tells when its weight is gone: the weight's table, scales
/// and zeros buffers (the cache does not keep them alive).
struct Entry {
    weight: Arc<DeviceWeight>,
    alive: [Liveness; 3],
}

type Cache = Mutex<HashMap<[BufferKey; 4], Entry>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Reads a tensor back to the host as `E` (converting its dtype).
fn host_vec<E: burn::tensor::Element>(data: TensorData, what: &str) -> Vec<E> {
    data.convert::<E>()
        .try_into_vec::<E>()
        .unwrap_or_else(|e| panic!("any4 (Cube): reading the weight's {what} back failed: {e:?}"))
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    any4_kernels::cubecl::future::block_on(f)
}

/// Checks the portable tensors against `w.shape` / `w.group` and the device.
fn check_weight(w: &Any4WeightPrimitive<CubeBackend>) {
    let [rows, cols] = w.shape;
    let group = w.group.len_for(cols);
    let groups = w.group.groups_for(cols);
    let device = &w.codes.device;
    for (what, t) in [
        ("table", &w.table),
        ("scales", &w.scales),
        ("zeros", &w.zeros),
    ] {
        assert!(
            t.device == *device,
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
}

/// Builds the device layout of `w` (one read-back of its tensors).
fn build(w: &Any4WeightPrimitive<CubeBackend>, client: &Client) -> DeviceWeight {
    let [rows, cols] = w.shape;
    let data = block_on(CubeBackend::int_into_data(w.codes.clone()))
        .unwrap_or_else(|e| panic!("any4 (Cube): reading the weight's codes back: {e:?}"));
    let codes: Vec<u32> = match w.codes.dtype {
        // The same 32 bits either way: the kernels read bits, not values.
        DType::I32 => host_vec::<i32>(data, "codes")
            .into_iter()
            .map(|v| v as u32)
            .collect(),
        _ => host_vec::<u32>(data, "codes"),
    };
    let float = |t: &CubeTensor, what: &str| -> Vec<f32> {
        let data = block_on(CubeBackend::float_into_data(t.clone()))
            .unwrap_or_else(|e| panic!("any4 (Cube): reading the weight's {what} back: {e:?}"));
        host_vec::<f32>(data, what)
    };
    let (table, scales, zeros) = (
        float(&w.table, "table"),
        float(&w.scales, "scales"),
        float(&w.zeros, "zeros"),
    );
    let view = QuantizedView::new(w.shape, w.group, &codes, &table, &scales, &zeros)
        .unwrap_or_else(|e| panic!("any4 (Cube): weight [{rows}, {cols}] is inconsistent: {e}"));
    let layout = HostLayout::from_view(&view)
        .unwrap_or_else(|e| panic!("any4 (Cube): weight [{rows}, {cols}]: {e}"));
    // With K a multiple of 32, contiguous u32 codes are the device codes already.
    let shareable = cols.is_multiple_of(32)
        && matches!(w.codes.dtype, DType::U32 | DType::I32)
        && w.codes.is_contiguous();
    if shareable {
        DeviceWeight::upload_layout_with_codes(client, &layout, w.codes.handle.clone())
            .unwrap_or_else(|e| panic!("any4 (Cube): weight [{rows}, {cols}]: {e}"))
    } else {
        DeviceWeight::upload_layout(client, &layout)
    }
}

/// The device layout of `w`, built on first use and cached (see the module docs).
fn device_weight(w: &Any4WeightPrimitive<CubeBackend>) -> Arc<DeviceWeight> {
    let key = [&w.codes, &w.table, &w.scales, &w.zeros].map(|t| buffer_key(&t.handle));
    if let Some(e) = cache().lock().expect("any4 layout cache").get(&key) {
        return e.weight.clone();
    }
    check_weight(w);
    let weight = Arc::new(build(w, &w.codes.client));
    let mut cache = cache().lock().expect("any4 layout cache");
    // Forget the layouts of weights that were freed since.
    cache.retain(|_, e| e.alive.iter().all(|alive| alive()));
    cache.insert(
        key,
        Entry {
            weight: weight.clone(),
            alive: [&w.table, &w.scales, &w.zeros].map(|t| liveness(&t.handle)),
        },
    );
    weight
}

impl Any4Backend for CubeBackend {
    fn any4_matmul(x: CubeTensor, w: Any4WeightPrimitive<Self>) -> CubeTensor {
        let [rows, cols] = w.shape;
        let [m, k] = dims2(&x, "activation");
        assert_eq!(
            k, cols,
            "any4 matmul (Cube): input has {k} features, the weight expects {cols}"
        );
        assert!(
            x.device == w.codes.device,
            "any4 matmul (Cube): input is on {:?} but the weight is on {:?}",
            x.device,
            w.codes.device
        );
        let dtype = x.dtype;
        if m == 0 {
            return CubeBackend::float_zeros(Shape::new([0, rows]), &x.device, dtype.into());
        }
        let weight = device_weight(&w);
        let (x, kdtype) = match kernel_dtype(dtype) {
            Some(d) => (into_contiguous(x), d),
            None => (
                into_contiguous(CubeBackend::float_cast(x, FloatDType::F32)),
                Dtype::F32,
            ),
        };
        // The weight's activation-precision choice: exact on request, else int8 for decode.
        let strategy = match w.cpu {
            CpuMatmul::Exact => Strategy::AutoExact,
            CpuMatmul::Auto | CpuMatmul::Int8 => Strategy::Auto,
        };
        let out = any4_kernels::matmul(&x.client, &weight, &x.handle, m, kdtype, strategy)
            .unwrap_or_else(|e| {
                panic!(
                    "any4 matmul (Cube) x[{m}, {cols}] ({dtype:?}) · W[{rows}, {cols}]ᵀ on {:?}: {e}",
                    x.device
                )
            });
        let y = CubeTensor::new_contiguous(
            x.client.clone(),
            x.device.clone(),
            Shape::new([m, rows]),
            out,
            kernel_dtype(dtype).map_or(DType::F32, |_| dtype),
        );
        if kernel_dtype(dtype).is_some() {
            y
        } else {
            CubeBackend::float_cast(y, dtype.into())
        }
    }

    fn any4_dequantize(w: Any4WeightPrimitive<Self>) -> CubeTensor {
        let [rows, cols] = w.shape;
        let param_dtype = w.table.dtype;
        let weight = device_weight(&w);
        let kdtype = kernel_dtype(param_dtype).unwrap_or(Dtype::F32);
        let (client, device) = (w.codes.client.clone(), w.codes.device.clone());
        let out = any4_kernels::dequantize(&client, &weight, kdtype).unwrap_or_else(|e| {
            panic!("any4 dequantize (Cube) W[{rows}, {cols}] ({param_dtype:?}) on {device:?}: {e}")
        });
        let dense = CubeTensor::new_contiguous(
            client,
            device,
            Shape::new([rows, cols]),
            out,
            kernel_dtype(param_dtype).map_or(DType::F32, |_| param_dtype),
        );
        if kernel_dtype(param_dtype).is_some() {
            dense
        } else {
            CubeBackend::float_cast(dense, param_dtype.into())
        }
    }
}
