//! The decoder block: grouped-query attention with RoPE, a feed-forward (a SwiGLU MLP, or
//! Mixtral's sparse mixture of experts) and two RMSNorms.
//!
//! Field names mirror HF (`self_attn.q_proj`, `mlp.gate_proj`, `block_sparse_moe.experts.0.w1`,
//! `input_layernorm`, ...), so module paths seen by the quantization pass read like HF tensor
//! names without the `model.` prefix.

use any4_burn::{QLinear, impl_qlinear_container};
use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::moe::SparseMoe;
use crate::rope::RopeTables;

/// Keys and values of one layer seen so far, `[batch, kv_heads, len, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Append new keys/values and return everything cached, new ones included.
    fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Keep only the last `keep` positions (sliding-window attention never looks further back).
    pub(crate) fn keep_last(&mut self, keep: usize) {
        if keep == 0 {
            self.kv = None;
        } else if let Some((k, v)) = self.kv.take() {
            let len = k.dims()[2];
            let drop = len.saturating_sub(keep);
            self.kv = Some(if drop == 0 {
                (k, v)
            } else {
                (k.narrow(2, drop, keep), v.narrow(2, drop, keep))
            });
        }
    }
}

/// What every layer of one forward call shares: rotary tables, positions and the attention mask.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Rotary tables for the new positions.
    pub rope: RopeTables,
    /// Additive mask `[new, total]` (0 or −∞), `None` when every key is visible.
    pub mask: Option<Tensor<2>>,
    /// Position of the first key (cached or new) the layers see.
    pub key_start: usize,
    /// Position of the first new token.
    pub start: usize,
    /// Sliding attention window, if any.
    pub window: Option<usize>,
}

impl StepContext {
    /// The context for `len` new tokens from position `start`, attending to keys from
    /// `key_start` (see [`attention_mask`]).
    pub fn new(
        inv_freq: &[f32],
        key_start: usize,
        start: usize,
        len: usize,
        window: Option<usize>,
        device: &Device,
    ) -> Self {
        StepContext {
            rope: RopeTables::new(inv_freq, start, len, device),
            mask: attention_mask(key_start, start, len, window, device),
            key_start,
            start,
            window,
        }
    }

    /// The keys (indices into the `[key_start, start + len)` key axis) that queries
    /// `q0..q1` (indices among the new tokens) can see: everything outside is masked for all
    /// of them, so leaving it out of the computation is exact.
    fn visible_keys(&self, q0: usize, q1: usize) -> std::ops::Range<usize> {
        let hi = self.start + q1 - self.key_start;
        let lo = self
            .window
            .map_or(0, |w| (self.start + q0 + 1).saturating_sub(w))
            .saturating_sub(self.key_start);
        lo.min(hi)..hi
    }
}

/// Queries per attention call in prefill: causal attention then skips the key blocks a chunk
/// cannot see (about half the work at long lengths), and scores stay `chunk × keys` in size.
const QUERY_CHUNK: usize = 256;

/// Additive attention mask for queries at positions `start..start+len` over cached and new keys
/// at positions `key_start..start+len`.
///
/// Key `j` is visible from query `i` iff `j ≤ i` (causal) and, with a sliding window `w`,
/// `i − j < w` (HF Mistral: the query itself counts toward the window). Returns `None` when
/// nothing is masked (single-token decode inside the window) to skip the add.
pub fn attention_mask(
    key_start: usize,
    start: usize,
    len: usize,
    window: Option<usize>,
    device: &Device,
) -> Option<Tensor<2>> {
    assert!(
        key_start <= start,
        "keys must start at or before the queries"
    );
    let keys = start + len - key_start;
    let mut any = false;
    let mut m = vec![0f32; len * keys];
    for q in 0..len {
        let i = start + q;
        for k in 0..keys {
            let j = key_start + k;
            let visible = j <= i && window.is_none_or(|w| i - j < w);
            if !visible {
                m[q * keys + k] = f32::NEG_INFINITY;
                any = true;
            }
        }
    }
    any.then(|| Tensor::from_data(TensorData::new(m, [len, keys]), device))
}

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
    /// `x: [batch, new, hidden]`; with a cache, the new keys/values are appended to it.
    pub fn forward(
        &self,
        x: Tensor<3>,
        ctx: &StepContext,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |y: Tensor<3>, heads: usize| y.reshape([b, t, heads, hd]).swap_dims(1, 2);
        let q = ctx.rope.apply(split(self.q_proj.forward(x.clone()), h));
        let k = ctx.rope.apply(split(self.k_proj.forward(x.clone()), kvh));
        let v = split(self.v_proj.forward(x), kvh);
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let (k, v) = (repeat_kv(k, h / kvh), repeat_kv(v, h / kvh));
        let chunks: Vec<Tensor<4>> = (0..t)
            .step_by(QUERY_CHUNK)
            .map(|q0| {
                let q1 = (q0 + QUERY_CHUNK).min(t);
                let keys = ctx.visible_keys(q0, q1);
                let bias = ctx
                    .mask
                    .as_ref()
                    .map(|m| m.clone().slice([q0..q1, keys.clone()]).unsqueeze::<4>());
                attend(
                    q.clone().narrow(2, q0, q1 - q0),
                    k.clone().narrow(2, keys.start, keys.len()),
                    v.clone().narrow(2, keys.start, keys.len()),
                    bias,
                )
            })
            .collect();
        let out = Tensor::cat(chunks, 2)
            .swap_dims(1, 2)
            .reshape([b, t, h * hd]);
        self.o_proj.forward(out)
    }
}

/// `softmax(q·kᵀ/√d + bias)·v` through Burn's fused attention op (Flex: tiled online softmax
/// without a `[heads, queries, keys]` score tensor; Cube: flash kernels where they apply).
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<4> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    attention(q, k, v, None, bias, options)
}

/// `[b, kv_heads, s, d] → [b, kv_heads·rep, s, d]`, query head `i` reading kv head `i / rep`.
fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, kvh, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .repeat_dim(2, rep)
        .reshape([b, kvh * rep, s, d])
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
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
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
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), ctx, cache);
        h.clone() + self.feed_forward(self.post_attention_layernorm.forward(h))
    }

    /// The feed-forward, whichever kind the layer has.
    pub fn feed_forward(&self, x: Tensor<3>) -> Tensor<3> {
        match (&self.mlp, &self.block_sparse_moe) {
            (Some(mlp), None) => mlp.forward(x),
            (None, Some(moe)) => moe.forward(x),
            _ => panic!("a decoder layer needs exactly one of `mlp` and `block_sparse_moe`"),
        }
    }
}
