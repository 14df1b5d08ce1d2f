//! Mixtral's sparse mixture of experts: a dense router sends each token to its top-k SwiGLU
//! experts and the output is the routing-weighted sum of what those experts return.
//!
//! Field names mirror HF (`block_sparse_moe.gate`, `experts.E.w1`), so an expert's linears are
//! `layers.N.block_sparse_moe.experts.E.{w1,w2,w3}` for the quantization pass and checkpoints.
//!
//! Each expert runs only on the rows routed to it (gather, expert, scatter-add), which is what
//! makes the compute sparse, and gives per-expert calibration for free: a calibration probe on
//! an expert's linear sees exactly that expert's tokens.

use any4_burn::{QLinear, impl_qlinear_container};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};

/// One expert, HF's naming: `w2(silu(w1 x) ⊙ w3 x)` (`w1` = gate, `w3` = up, `w2` = down).
#[derive(Module, Debug)]
pub struct Expert {
    /// `[hidden] → [intermediate]`, activated (gate projection).
    pub w1: QLinear,
    /// `[intermediate] → [hidden]` (down projection).
    pub w2: QLinear,
    /// `[hidden] → [intermediate]`, linear (up projection).
    pub w3: QLinear,
}
impl_qlinear_container!(Expert { w1, w2, w3 });

impl Expert {
    /// Apply to the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = silu(self.w1.forward(x.clone()));
        self.w2.forward(gate * self.w3.forward(x))
    }
}

/// HF `MixtralSparseMoeBlock` (inference: no router jitter).
#[derive(Module, Debug)]
pub struct SparseMoe {
    /// Router `[hidden] → [experts]` (no bias). A plain dense `Linear`, not a `QLinear`, so the
    /// quantization pass never touches it: it is tiny (`experts × hidden`, ~0.01 % of a Mixtral
    /// layer) and its logits decide which experts run, so an error there does not perturb an
    /// output slightly but swaps whole expert outputs. It is still saved in checkpoints.
    pub gate: Linear,
    /// The experts, indexed as the router's outputs.
    pub experts: Vec<Expert>,
    /// Experts per token.
    pub top_k: usize,
}
impl_qlinear_container!(SparseMoe { experts });

/// Which tokens go to which expert, with what weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Per expert: the token rows routed to it (ascending) and their routing weights.
    pub experts: Vec<(Vec<usize>, Vec<f32>)>,
}

impl Routing {
    /// Route `tokens` rows of router logits (`[tokens, experts]`, row-major) to `top_k` experts.
    ///
    /// As HF Mixtral: `p = softmax(logits)` in f32, keep the `top_k` largest, renormalise them to
    /// sum 1. Computed directly as `w_i = exp(l_i − m) / Σ_{j ∈ top-k} exp(l_j − m)` in f64 (the
    /// full softmax's denominator cancels). Ties go to the lower expert index.
    pub fn from_logits(logits: &[f32], tokens: usize, num_experts: usize, top_k: usize) -> Self {
        assert_eq!(
            logits.len(),
            tokens * num_experts,
            "router logits are not [tokens, experts]"
        );
        assert!(
            (1..=num_experts).contains(&top_k),
            "top_k must be in 1..=experts (validated by the config)"
        );
        let mut experts = vec![(Vec::new(), Vec::new()); num_experts];
        let mut order: Vec<usize> = Vec::with_capacity(num_experts);
        for (t, row) in logits.chunks_exact(num_experts).enumerate() {
            order.clear();
            order.extend(0..num_experts);
            // Stable sort, descending: equal logits keep the lower index first.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let chosen = &order[..top_k];
            let max = row[chosen[0]] as f64;
            let exps: Vec<f64> = chosen
                .iter()
                .map(|&e| (row[e] as f64 - max).exp())
                .collect();
            let total: f64 = exps.iter().sum();
            for (&e, x) in chosen.iter().zip(exps) {
                experts[e].0.push(t);
                experts[e].1.push((x / total) as f32);
            }
        }
        Routing { experts }
    }

    /// Tokens routed to expert `e`.
    pub fn tokens(&self, e: usize) -> usize {
        self.experts.get(e).map_or(0, |(rows, _)| rows.len())
    }
}

impl SparseMoe {
    /// Number of experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// The routing of `x: [tokens, hidden]`. Reads the router logits back to the host: the
    /// per-expert row lists decide tensor shapes, so they are needed there anyway.
    pub fn route(&self, x: Tensor<2>) -> Routing {
        let [tokens, _] = x.dims();
        let logits = self.gate.forward(x).cast(FloatDType::F32);
        let logits = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 after convert");
        Routing::from_logits(&logits, tokens, self.experts.len(), self.top_k)
    }

    /// `x: [batch, seq, hidden]` → the same shape: `Σ_{e ∈ top-k(x)} w_e · expert_e(x)` per token.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x = x.reshape([b * t, d]);
        let routing = self.route(x.clone());
        let (device, dtype) = (x.device(), x.dtype());
        let mut out = x.zeros_like();
        for (expert, (rows, weights)) in self.experts.iter().zip(routing.experts) {
            let m = rows.len();
            if m == 0 {
                continue;
            }
            let rows: Vec<i64> = rows.into_iter().map(|r| r as i64).collect();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &device);
            let w = Tensor::<2>::from_data(TensorData::new(weights, [m, 1]), (&device, dtype));
            let y = expert.forward(x.clone().select(0, idx.clone())) * w;
            // Rows are unique within one expert, so the add is deterministic.
            out = out.select_assign(0, idx, y, IndexingUpdateOp::Add);
        }
        out.reshape([b, t, d])
    }
}
