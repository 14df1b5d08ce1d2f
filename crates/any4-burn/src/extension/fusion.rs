//! [`Any4Backend`] for `Fusion<B>`: Burn's kernel fusion over an inner backend (in practice
//! `Fusion<CubeBackend>`, which is what `burn::backend::Cube` is whenever burn-cubecl's `fusion`
//! feature is on — Burn's default features turn it on).
//!
//! Fusion is lazy: an op is *registered* on the calling thread (its output is a tensor id with a
//! known shape and dtype) and *executed* later on the fusion server's thread, when something
//! needs its result. Each any4 op is registered as one opaque custom operation
//! ([`OperationIr::Custom`], id `any4_matmul` / `any4_dequantize`) whose execution takes the
//! inner backend's tensors out of the fused stream's handle table and calls the inner impl
//! (`<CubeBackend as Any4Backend>`, [`cube`](super::cube)). Everything that impl does — casts,
//! table expansion, activation quantization, the kernel launch — happens inside that one
//! operation, so fusion never materializes an intermediate of its own; fusion ends the fused
//! element-wise block before it (its input must exist) and starts a new one after.
//!
//! All checks run at registration, on the caller's thread: shapes against the weight's
//! `[rows, cols]` and group size, dtypes, and that every tensor lives on one device. A failure
//! is a panic naming the tensor, like the Cube impl's; letting a bad input reach the deferred
//! execution would instead poison the op's outputs and surface later as a read error.
//!
//! Why hand-written rather than `#[backend_extension(.., Fusion)]`: the macro's Fusion code names
//! `burn::backend::fusion`, which exists only with burn's own `fusion` feature. A downstream app
//! on Burn's default features has burn-cubecl's fusion on (so `Cube` is `Fusion<CubeBackend>`)
//! but not burn's `fusion` feature; this impl depends on burn-fusion directly, so it compiles in
//! both cases and is unused when fusion is off.

use std::marker::PhantomData;

use any4_core::GroupSize;
use burn::tensor::{DType, Shape};
use burn_fusion::client::GlobalFusionClient;
use burn_fusion::custom::{CustomOpIr, HandleContainer, OperationIr, TensorId, TensorIr};
use burn_fusion::stream::{Operation, StreamId};
use burn_fusion::{ExecutionError, Fusion, FusionBackend, FusionRuntime, FusionTensor};

use super::{Any4Backend, Any4WeightPrimitive};
use crate::weight::CpuMatmul;

/// A tensor primitive of `Fusion<B>`.
type Fused<B> = FusionTensor<<B as FusionBackend>::FusionRuntime>;
/// The inner backend's handle table, as the fusion server passes it to an operation.
type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// Float dtypes the inner impl accepts (it computes in f32 and casts back).
fn is_float(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 | DType::Flex32
    )
}

/// Integer dtypes packed codes may come in (u32 words; the Cube impl converts the others).
fn is_code(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::U32
            | DType::I32
            | DType::U64
            | DType::I64
            | DType::U16
            | DType::I16
            | DType::U8
            | DType::I8
    )
}

/// The logical 2-D shape of `t`, or a panic naming `what`.
fn dims2<R: FusionRuntime>(t: &FusionTensor<R>, op: &str, what: &str) -> [usize; 2] {
    assert_eq!(
        t.shape.num_dims(),
        2,
        "{op} (Fusion): {what} must be 2-D, got shape {:?}",
        t.shape
    );
    [t.shape[0], t.shape[1]]
}

/// Checks the weight's tensors against `w.shape` / `w.group`, their dtypes, and that they all
/// live on `device`; returns the table's dtype (what `any4_dequantize` returns).
fn check_weight<B: FusionBackend>(
    w: &Any4WeightPrimitive<Fusion<B>>,
    device: &B::Device,
    op: &str,
) -> DType {
    let [rows, cols] = w.shape;
    let group = w.group.len_for(cols);
    let groups = w.group.groups_for(cols);
    for (what, t) in [
        ("codes", &w.codes),
        ("table", &w.table),
        ("scales", &w.scales),
        ("zeros", &w.zeros),
        ("table_i8", &w.table_i8),
    ] {
        let on = t.client.device();
        assert!(
            on == device,
            "{op} (Fusion): {what} is on {on:?} but the input is on {device:?}"
        );
        let ok = if what == "codes" || what == "table_i8" {
            is_code(t.dtype)
        } else {
            is_float(t.dtype)
        };
        assert!(
            ok,
            "{op} (Fusion): {what} has dtype {:?}; codes take u32 words (or another integer \
             type), the rest f32, f16, bf16 or f64",
            t.dtype
        );
    }
    let expect = |what: &str, got: [usize; 2], want: [usize; 2]| {
        assert_eq!(
            got, want,
            "{op} (Fusion): {what} has shape {got:?}, a [{rows}, {cols}] weight with groups of \
             {group} needs {want:?}"
        );
    };
    expect(
        "codes",
        dims2(&w.codes, op, "codes"),
        [rows, cols.div_ceil(8)],
    );
    expect("scales", dims2(&w.scales, op, "scales"), [rows, groups]);
    expect("zeros", dims2(&w.zeros, op, "zeros"), [rows, groups]);
    let table = dims2(&w.table, op, "table");
    assert!(
        table == [1, 16] || table == [rows, 16],
        "{op} (Fusion): table has shape {table:?}, expected [1, 16] or [{rows}, 16]"
    );
    w.table.dtype
}

/// The weight's tensors as stream inputs, with its plain fields, kept for the deferred call.
#[derive(Debug)]
struct WeightIr {
    codes: TensorIr,
    table: TensorIr,
    scales: TensorIr,
    zeros: TensorIr,
    table_i8: TensorIr,
    shape: [usize; 2],
    group: GroupSize,
    cpu: CpuMatmul,
}

impl WeightIr {
    /// Hands the weight's tensors to the stream (appending them to the op's inputs, in order).
    fn record<B: FusionBackend>(
        w: Any4WeightPrimitive<Fusion<B>>,
        inputs: &mut Vec<TensorIr>,
    ) -> Self {
        let mut input = |t: Fused<B>| {
            let ir = t.into_ir();
            inputs.push(ir.clone());
            ir
        };
        Self {
            codes: input(w.codes),
            table: input(w.table),
            scales: input(w.scales),
            zeros: input(w.zeros),
            table_i8: input(w.table_i8),
            shape: w.shape,
            group: w.group,
            cpu: w.cpu,
        }
    }

    /// The inner backend's weight, taken from the handle table at execution.
    fn resolve<B: FusionBackend>(&self, handles: &mut Handles<B>) -> Any4WeightPrimitive<B> {
        Any4WeightPrimitive {
            codes: handles.get_int_tensor::<B>(&self.codes),
            table: handles.get_float_tensor::<B>(&self.table),
            scales: handles.get_float_tensor::<B>(&self.scales),
            zeros: handles.get_float_tensor::<B>(&self.zeros),
            table_i8: handles.get_int_tensor::<B>(&self.table_i8),
            shape: self.shape,
            group: self.group,
            cpu: self.cpu,
        }
    }
}

/// Deferred `any4_matmul`: `x` and the weight in, `out` registered.
#[derive(Debug)]
struct MatmulOp<B> {
    x: TensorIr,
    w: WeightIr,
    out: TensorId,
    _backend: PhantomData<fn() -> B>,
}

impl<B: FusionBackend + Any4Backend> Operation<B::FusionRuntime> for MatmulOp<B> {
    fn execute(&self, handles: &mut Handles<B>) -> Result<(), ExecutionError> {
        let x = handles.get_float_tensor::<B>(&self.x);
        let w = self.w.resolve::<B>(handles);
        handles.register_float_tensor::<B>(&self.out, B::any4_matmul(x, w));
        Ok(())
    }
}

/// Deferred `any4_dequantize`: the weight in, `out` registered.
#[derive(Debug)]
struct DequantizeOp<B> {
    w: WeightIr,
    out: TensorId,
    _backend: PhantomData<fn() -> B>,
}

impl<B: FusionBackend + Any4Backend> Operation<B::FusionRuntime> for DequantizeOp<B> {
    fn execute(&self, handles: &mut Handles<B>) -> Result<(), ExecutionError> {
        let w = self.w.resolve::<B>(handles);
        handles.register_float_tensor::<B>(&self.out, B::any4_dequantize(w));
        Ok(())
    }
}

/// Registers one custom op on the caller's stream and returns its single output.
fn register<R: FusionRuntime>(
    client: &GlobalFusionClient<R>,
    id: &'static str,
    inputs: Vec<TensorIr>,
    output: TensorIr,
    op: impl Operation<R> + 'static,
) -> FusionTensor<R> {
    let desc = CustomOpIr::new(id, &inputs, std::slice::from_ref(&output));
    client
        .register(StreamId::current(), OperationIr::Custom(desc), op)
        .pop()
        .expect("a custom op with one output registers one tensor")
}

impl<B: FusionBackend + Any4Backend> Any4Backend for Fusion<B> {
    fn any4_matmul(x: Fused<B>, w: Any4WeightPrimitive<Self>) -> Fused<B> {
        const OP: &str = "any4 matmul";
        let [rows, cols] = w.shape;
        let [m, k] = dims2(&x, OP, "activation");
        assert_eq!(
            k, cols,
            "{OP} (Fusion): input has {k} features, the weight expects {cols}"
        );
        assert!(
            is_float(x.dtype),
            "{OP} (Fusion): activation has dtype {:?}; the kernels take f32, f16, bf16 or f64",
            x.dtype
        );
        let client = x.client.clone();
        check_weight::<B>(&w, client.device(), OP);

        // The inner impl returns `[m, rows]` in the activation's dtype (m = 0 included).
        let output = TensorIr::uninit(client.create_empty_handle(), Shape::new([m, rows]), x.dtype);
        let x = x.into_ir();
        let mut inputs = vec![x.clone()];
        let w = WeightIr::record::<B>(w, &mut inputs);
        let op = MatmulOp::<B> {
            x,
            w,
            out: output.id,
            _backend: PhantomData,
        };
        register(&client, "any4_matmul", inputs, output, op)
    }

    fn any4_dequantize(w: Any4WeightPrimitive<Self>) -> Fused<B> {
        const OP: &str = "any4 dequantize";
        let client = w.codes.client.clone();
        let dtype = check_weight::<B>(&w, client.device(), OP);

        // The inner impl returns the dense `[rows, cols]` weight in the table's dtype.
        let output = TensorIr::uninit(client.create_empty_handle(), Shape::new(w.shape), dtype);
        let mut inputs = Vec::with_capacity(5);
        let w = WeightIr::record::<B>(w, &mut inputs);
        let op = DequantizeOp::<B> {
            w,
            out: output.id,
            _backend: PhantomData,
        };
        register(&client, "any4_dequantize", inputs, output, op)
    }
}
