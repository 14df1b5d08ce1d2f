//! Folding activation-aware input multipliers into the RMSNorm before them.
//!
//! A layer quantized with activation-aware scales stores `W·diag(s)` and multiplies its input
//! by `1/s` ([`Any4Linear::input_scale`](any4_burn::Any4Linear::input_scale)). When every layer
//! reading a norm's output carries the same multiplier — q/k/v after `input_layernorm`,
//! gate/up after `post_attention_layernorm` — the multiplier can move into the norm's weight:
//! `RMSNorm(x)·γ ⊙ (1/s) = RMSNorm(x)·(γ/s)`, exactly the same function with one multiply
//! less per layer and nothing extra stored. Layers with no such norm (o_proj, down_proj, the
//! experts of a mixture, whose router reads the same input unscaled) keep their multiplier.

use any4_burn::QLinear;
use burn::module::Param;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

use crate::model::Llama;

/// The common input multiplier of `layers`, if each is quantized and carries the same one.
fn common_scale(layers: &[&QLinear]) -> Option<Tensor<1>> {
    let mut first: Option<(Tensor<1>, Vec<f32>)> = None;
    for l in layers {
        let QLinear::Quant(q) = l else { return None };
        let s = q.input_scale.as_ref()?.val();
        let host = s
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .ok()?;
        match &first {
            None => first = Some((s, host)),
            Some((_, h)) if *h == host => {}
            Some(_) => return None,
        }
    }
    first.map(|(s, _)| s)
}

/// Multiply the norm's weight by the layers' common input multiplier and drop theirs.
fn fold(norm: &mut RmsNorm, multiplier: Tensor<1>, layers: &mut [&mut QLinear]) {
    let gamma = norm.gamma.val() * multiplier;
    norm.gamma = Param::initialized(norm.gamma.id, gamma);
    for l in layers {
        if let QLinear::Quant(q) = l {
            q.input_scale = None;
        }
    }
}

/// Fold every foldable input multiplier of `model` into its preceding norm; returns how many
/// norms absorbed one.
pub fn fold_input_scales(model: &mut Llama) -> usize {
    let mut folded = 0;
    for layer in &mut model.layers {
        let a = &mut layer.self_attn;
        if let Some(m) = common_scale(&[&a.q_proj, &a.k_proj, &a.v_proj]) {
            fold(
                &mut layer.input_layernorm,
                m,
                &mut [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj],
            );
            folded += 1;
        }
        if let Some(mlp) = &mut layer.mlp
            && let Some(m) = common_scale(&[&mlp.gate_proj, &mlp.up_proj])
        {
            fold(
                &mut layer.post_attention_layernorm,
                m,
                &mut [&mut mlp.gate_proj, &mut mlp.up_proj],
            );
            folded += 1;
        }
    }
    folded
}
