//! The decoder block: grouped-query attention with RoPE, a feed-forward (a SwiGLU MLP, or
//! Mixtral's sparse mixture of experts) and two RMSNorms.
//!
//! Field names mirror HF (`self_attn.q_proj`, `mlp.gate_proj`, `block_sparse_moe.experts.0.w1`,
//! `input_layernorm`, ...), so module paths seen by the quantization pass read like HF tensor
//! names without the `model.` prefix.

use any4_burn::{QLinear, impl_qlinear_container};
use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

use crate::attention::{AttnDims, StepContext, attend};
use crate::kv_cache::LayerCache;
use crate::moe::SparseMoe;
use crate::ops;
use crate::timing::{Op, span};

/// Multi-head self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[hidden] → [heads·head_dim]`.
    pub q_proj: QLinear,
    /// `[hidden] → [kv_heads·head_dim]`.
    pub k_proj: QLinear,
    /// `[hidden] → [kv_heads·head_dim]`.
    pub v_proj: QLinear,
    /// `[heads·head_dim] → [hidden]`.
    pub o_proj: QLinear,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads; each serves `num_heads / num_kv_heads` query heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}
impl_qlinear_container!(Attention {
    q_proj,
    k_proj,
    v_proj,
    o_proj
});

impl Attention {
    /// `x: [batch, new, hidden]`; with a cache, the new keys/values are written into it.
    pub fn forward(
        &self,
        x: Tensor<3>,
        ctx: &StepContext,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [batch, t, _] = x.dims();
        let (q, k, v) = {
            let _t = span(Op::QkvProj);
            (
                self.q_proj.forward(x.clone()),
                self.k_proj.forward(x.clone()),
                self.v_proj.forward(x),
            )
        };
        let dims = AttnDims {
            batch,
            t,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        };
        let out = attend(q, k, v, ctx, cache, dims);
        let _t = span(Op::OProj);
        self.o_proj.forward(out)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[hidden] → [intermediate]`, activated.
    pub gate_proj: QLinear,
    /// `[hidden] → [intermediate]`, linear.
    pub up_proj: QLinear,
    /// `[intermediate] → [hidden]`.
    pub down_proj: QLinear,
}
impl_qlinear_container!(Mlp {
    gate_proj,
    up_proj,
    down_proj
});

impl Mlp {
    /// Apply to the last dimension.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = {
            let _t = span(Op::MlpProj);
            (self.gate_proj.forward(x.clone()), self.up_proj.forward(x))
        };
        let act = {
            let _t = span(Op::SiluMul);
            ops::silu_mul(gate, up)
        };
        let _t = span(Op::MlpProj);
        self.down_proj.forward(act)
    }
}

/// One pre-norm decoder block: `h = x + attn(norm₁ x)`, `out = h + ffn(norm₂ h)`.
///
/// The feed-forward is exactly one of `mlp` (Llama, Mistral) and `block_sparse_moe` (Mixtral).
/// Two optional fields rather than one enum field because field names are module paths: an
/// enum would put both kinds under one name, while this way the paths (hence pass patterns and
/// checkpoint names) stay HF's `layers.N.mlp.*` and `layers.N.block_sparse_moe.*`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Self-attention.
    pub self_attn: Attention,
    /// Dense feed-forward; `None` in a mixture-of-experts layer.
    pub mlp: Option<Mlp>,
    /// Sparse mixture of experts; `None` in a dense layer.
    pub block_sparse_moe: Option<SparseMoe>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the feed-forward.
    pub post_attention_layernorm: RmsNorm,
}
impl_qlinear_container!(DecoderLayer {
    self_attn,
    mlp,
    block_sparse_moe
});

impl DecoderLayer {
    /// `x: [batch, new, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        ctx: &StepContext,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let normed = {
            let _t = span(Op::Norm);
            ops::rms_norm(x.clone(), &self.input_layernorm)
        };
        let attn = self.self_attn.forward(normed, ctx, cache);
        let h = {
            let _t = span(Op::Residual);
            ops::add(x, attn)
        };
        let normed = {
            let _t = span(Op::Norm);
            ops::rms_norm(h.clone(), &self.post_attention_layernorm)
        };
        let ff = self.feed_forward(normed);
        let _t = span(Op::Residual);
        ops::add(h, ff)
    }

    /// The feed-forward, whichever kind the layer has.
    pub fn feed_forward(&self, x: Tensor<3>) -> Tensor<3> {
        match (&self.mlp, &self.block_sparse_moe) {
            (Some(mlp), None) => mlp.forward(x),
            (None, Some(moe)) => {
                let _t = span(Op::MlpProj);
                moe.forward(x)
            }
            _ => panic!("a decoder layer needs exactly one of `mlp` and `block_sparse_moe`"),
        }
    }
}
