//! The embedded tiny Llama (`models/tiny-llama`) exported to ONNX (`export_onnx.py`: the graph
//! written with the `onnx` package, weights as external data inside the model's safetensors),
//! imported with burn-onnx's code generation — what burn-import 0.22 re-exports — in build.rs,
//! and taken through any4 the two ways an imported Burn model can be:
//!
//! 1. **Accuracy only, any model**: [`dense::Model`] is the generated code as it is, with
//!    `burn::nn::Linear` layers. [`any4_burn::reconstruct_linears`] (a `ModuleMapper`) replaces
//!    each selected linear weight by its any4 reconstruction; the model keeps its type and
//!    measures any4's accuracy, but still runs dense matmuls.
//! 2. **On the any4 kernels**: build.rs rewrites the generated source with [`swap`]
//!    (`nn::Linear` fields → `any4_burn::QLinear`, constructors, burnpack keys, and
//!    `QLinearContainer` impls) into [`any4::Model`], which loads the same weights file and goes
//!    through [`any4_burn::quantize_model`] like a hand-written model: its linears become any4
//!    layers and run on the any4 kernels.
//!
//! The generated layers are named `linear1 … linear43` in graph order (inside `submoduleK`
//! structs: burn-onnx splits graphs over 200 nodes); [`hf_path`] gives their
//! HF names, so both routes can be calibrated with the hand-written model's statistics and
//! use the same include/exclude patterns (the LM head stays dense by default). The test
//! checks that all three give the same perplexity.

pub mod swap;

use any4_burn::{QLinear, QLinearContainer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// The model as burn-onnx generated it (`nn::Linear` layers).
#[allow(clippy::all, unused)]
pub mod dense {
    include!(concat!(env!("OUT_DIR"), "/model/tiny-llama.rs"));
}

/// The generated model rewritten by [`swap`](crate::swap): `QLinear` layers.
#[allow(clippy::all, unused)]
pub mod any4 {
    include!(concat!(env!("OUT_DIR"), "/model/tiny-llama-any4.rs"));
}

/// The weights file burn-onnx wrote (both models load it).
pub fn weights() -> &'static str {
    concat!(env!("OUT_DIR"), "/model/tiny-llama.bpk")
}

/// Linears per decoder block in the exported graph's order.
const BLOCK: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// HF module path of generated layer `[submoduleK.]linearN` of a model with `layers` blocks
/// (the export emits each block's seven linears in [`BLOCK`] order, then the LM head; burn-onnx
/// numbers them across submodules); other paths as they are.
pub fn hf_path(generated: &str, layers: usize) -> String {
    let last = generated.rsplit('.').next().unwrap_or(generated);
    let Some(n) = last
        .strip_prefix("linear")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return generated.to_string();
    };
    match n.checked_sub(1) {
        Some(i) if i < 7 * layers => format!("layers.{}.{}", i / 7, BLOCK[i % 7]),
        Some(i) if i == 7 * layers => "lm_head".to_string(),
        _ => generated.to_string(),
    }
}

/// A model's `QLinear`s visited under their HF names.
pub struct HfNames<M> {
    /// The model.
    pub model: M,
    /// Decoder blocks.
    pub layers: usize,
}

impl<M: QLinearContainer> QLinearContainer for HfNames<M> {
    fn visit_qlinears(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut QLinear)) {
        let layers = self.layers;
        self.model
            .visit_qlinears(prefix, &mut |p, l| f(&hf_path(p, layers), l));
    }
}

/// Perplexity of `forward` on `ids` with any4-llm's protocol: non-overlapping windows of
/// `seq_len`, the partial tail dropped, `exp(mean NLL)` over positions `1..seq_len`.
pub fn perplexity(
    forward: impl Fn(Tensor<2, Int>) -> Tensor<3>,
    ids: &[u32],
    seq_len: usize,
    max_windows: usize,
    device: &burn::tensor::Device,
) -> f64 {
    let windows: Vec<&[u32]> = ids.chunks_exact(seq_len).take(max_windows).collect();
    assert!(!windows.is_empty(), "text shorter than one window");
    let mut total = 0f64;
    for w in &windows {
        let data: Vec<i64> = w.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(data, [1, seq_len]), device);
        let logits = forward(tokens.clone());
        let logp = log_softmax(logits.narrow(1, 0, seq_len - 1), 2);
        let targets = tokens.narrow(1, 1, seq_len - 1).unsqueeze_dim::<3>(2);
        let nll: Vec<f32> = logp
            .gather(2, targets)
            .neg()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .expect("f32");
        total += nll.iter().map(|v| *v as f64).sum::<f64>();
    }
    (total / (windows.len() * (seq_len - 1)) as f64).exp()
}
