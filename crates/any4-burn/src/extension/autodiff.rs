//! [`Any4Backend`] for `Autodiff<B>`: the forward of `B`, backward `dx = dy · W` (weight frozen).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata};

use super::{Any4Backend, Any4WeightPrimitive};

fn inner<B: Backend>(
    w: Any4WeightPrimitive<Autodiff<B, impl CheckpointStrategy>>,
) -> Any4WeightPrimitive<B> {
    Any4WeightPrimitive {
        codes: w.codes,
        table: w.table.into_primitive(),
        scales: w.scales.into_primitive(),
        zeros: w.zeros.into_primitive(),
        shape: w.shape,
        group: w.group,
        cpu: w.cpu,
        table_i8: w.table_i8,
    }
}

/// `y = x · Wᵀ` ⇒ `dx = dy · W`; the any4 weight is frozen (no gradient).
#[derive(Debug)]
struct Any4MatmulBackward;

impl<B: Backend + Any4Backend> Backward<B, 1> for Any4MatmulBackward {
    type State = Any4WeightPrimitive<B>;

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
        w: Any4WeightPrimitive<Self>,
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

    fn any4_dequantize(w: Any4WeightPrimitive<Self>) -> Self::FloatTensorPrimitive {
        Self::from_inner(B::any4_dequantize(inner(w)))
    }
}
