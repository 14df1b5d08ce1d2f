//! The attention step between the projections: rotary embedding of queries and keys, writing
//! the new keys/values into the KV cache, and `softmax(q·kᵀ/√d)·v` over the keys each query sees.
//!
//! Two routes compute it. On Flex with f32 tensors, [`crate::host`]'s loops: RoPE in place, keys
//! copied into the cache's storage, masking by index, grouped-query heads read straight from the
//! cache (no `repeat_kv` copy, no mask tensor). Elsewhere, Burn tensor ops: the cache written with
//! `slice_assign` (in place) and read through a narrowed view; a single-token step groups each kv
//! head's query heads into one `[rep, head_dim]` block (no `repeat_kv`, no mask); longer steps
//! take Burn's attention op in query chunks with an additive mask built once per forward.
//!
//! A third route serves captured decode steps ([`crate::decode_graph`]): the position is a
//! device tensor, not a host value, so one recorded step replays at every position. The key is
//! written with `select_assign` at that position (in place) and the query attends over the
//! cache's whole capacity with a mask computed on the device.

use std::ops::Range;
use std::sync::OnceLock;

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::kv_cache::LayerCache;
use crate::rope::RopeTables;
use crate::timing::{Op, span};

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnDims {
    /// Batch.
    pub batch: usize,
    /// New tokens (queries per head).
    pub t: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

/// What every layer of one forward call shares: rotary tables, positions, where the keys are.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Rotary tables for the new positions.
    pub rope: RopeTables,
    /// Position of the first key (cached or new) the layers see.
    pub key_start: usize,
    /// Position of the first new token.
    pub start: usize,
    /// Sliding attention window, if any.
    pub window: Option<usize>,
    /// New tokens.
    len: usize,
    /// Position held by slot 0 of the key buffer: the cache's base, or `start` without a cache
    /// (the keys are then the new tokens themselves).
    slot_base: usize,
    /// Additive mask for the tensor route, built on first use.
    mask: OnceLock<Option<Tensor<2>>>,
    /// Set for a single-token step whose position lives on the device (captured decode).
    at: Option<DevicePosition>,
}

/// The position of a single-token step as device tensors, so that a recorded step replays at
/// any position: nothing in it is a host value frozen into the recording.
#[derive(Debug, Clone)]
pub(crate) struct DevicePosition {
    /// The new token's position `p`, `[1]`; its key goes to cache slot `p`.
    pub pos: Tensor<1, Int>,
    /// `[1, 1, 1, capacity]`: `true` for the slots the token must not see (after `p`, or before
    /// the sliding window).
    pub hidden: Tensor<4, Bool>,
}

impl DevicePosition {
    /// Position `pos` over a cache whose slot `s` holds position `s`: `slots` is `0..capacity`
    /// on the device.
    pub fn new(pos: Tensor<1, Int>, slots: &Tensor<1, Int>, window: Option<usize>) -> Self {
        let [capacity] = slots.dims();
        let p = pos.clone().expand([capacity]);
        let mut hidden = slots.clone().greater(p.clone());
        if let Some(w) = window {
            // Visible iff p − s < w, i.e. hidden iff s ≤ p − w.
            hidden = hidden.bool_or(slots.clone().lower_equal(p.sub_scalar(w as i64)));
        }
        DevicePosition {
            pos,
            hidden: hidden.reshape([1, 1, 1, capacity]),
        }
    }
}

impl StepContext {
    /// The context for `len` new tokens from position `start`, attending to keys from
    /// `key_start` (see [`attention_mask`]), with rotary tables uploaded for them.
    pub fn new(
        inv_freq: &[f32],
        key_start: usize,
        start: usize,
        len: usize,
        window: Option<usize>,
        device: &Device,
    ) -> Self {
        let rope = RopeTables::new(inv_freq, start, len, device);
        Self::with_rope(rope, key_start, start, len, window)
    }

    /// As [`StepContext::new`], with rotary tables `rope` (`len` rows) already on the device.
    pub fn with_rope(
        rope: RopeTables,
        key_start: usize,
        start: usize,
        len: usize,
        window: Option<usize>,
    ) -> Self {
        assert!(
            key_start <= start,
            "keys must start at or before the queries"
        );
        StepContext {
            rope,
            key_start,
            start,
            window,
            len,
            slot_base: start,
            mask: OnceLock::new(),
            at: None,
        }
    }

    /// The context of a single-token step at a device position, with the rotary rows `rope`
    /// (`[1, head_dim]`) already gathered for it. The host positions are unused on this route.
    pub(crate) fn at_device(rope: RopeTables, at: DevicePosition) -> Self {
        StepContext {
            at: Some(at),
            ..Self::with_rope(rope, 0, 0, 1, None)
        }
    }

    /// Keys come from a cache buffer whose slot 0 holds position `base`.
    pub(crate) fn in_cache(mut self, base: usize) -> Self {
        self.slot_base = base;
        self
    }

    /// The additive mask `[new, total]` (0 or −∞) over keys `key_start..start + new`, `None`
    /// when every key is visible; built on first use.
    pub fn mask(&self) -> Option<Tensor<2>> {
        self.mask
            .get_or_init(|| {
                let device = self.rope.cos.device();
                attention_mask(self.key_start, self.start, self.len, self.window, &device)
            })
            .clone()
    }

    /// The keys (indices into the `[key_start, start + len)` key axis) that queries
    /// `q0..q1` (indices among the new tokens) can see: everything outside is masked for all
    /// of them, so leaving it out of the computation is exact.
    fn visible_keys(&self, q0: usize, q1: usize) -> Range<usize> {
        let hi = self.start + q1 - self.key_start;
        let lo = self
            .window
            .map_or(0, |w| (self.start + q0 + 1).saturating_sub(w))
            .saturating_sub(self.key_start);
        lo.min(hi)..hi
    }

    /// The buffer slots new token `i` sees: positions `max(key_start, p + 1 − w) ..= p` for
    /// `p = start + i`.
    fn visible_slots(&self, i: usize) -> Range<usize> {
        let p = self.start + i;
        let lo = self
            .window
            .map_or(0, |w| (p + 1).saturating_sub(w))
            .max(self.key_start);
        (lo - self.slot_base)..(p + 1 - self.slot_base)
    }
}

/// Queries per attention call on the tensor route: causal attention then skips the key blocks a
/// chunk cannot see (about half the work at long lengths), and scores stay `chunk × keys`.
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

/// Rotate `q`, `k` (`[batch, t, heads·head_dim]` from the projections), write `k`, `v` into
/// `cache` if given, and attend: `[batch, t, heads·head_dim]`, ready for the output projection.
pub(crate) fn attend(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    ctx: &StepContext,
    cache: Option<&mut LayerCache>,
    dims: AttnDims,
) -> Tensor<3> {
    if let Some(at) = &ctx.at {
        let cache = cache.expect("a step at a device position writes a KV cache");
        return attend_at(q, k, v, &ctx.rope, at, cache, dims);
    }
    #[cfg(feature = "flex")]
    if crate::host::eligible(&q) {
        return attend_host(q, k, v, ctx, cache, dims);
    }
    attend_tensors(q, k, v, ctx, cache, dims)
}

/// The Flex route: [`crate::host`] loops on the tensors' storage.
#[cfg(feature = "flex")]
fn attend_host(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    ctx: &StepContext,
    cache: Option<&mut LayerCache>,
    dims: AttnDims,
) -> Tensor<3> {
    use crate::host::{self, KvLayout, from_flex, into_flex, values, values_mut};
    let AttnDims {
        batch: b,
        t,
        heads: h,
        kv_heads: kvh,
        head_dim: hd,
    } = dims;
    let (mut q, mut k, v) = (into_flex(q), into_flex(k), into_flex(v));
    {
        let _t = span(Op::Rope);
        let (cos, sin) = (
            into_flex(ctx.rope.cos.clone()),
            into_flex(ctx.rope.sin.clone()),
        );
        let (cos, sin) = (values(&cos), values(&sin));
        host::rope(values_mut(&mut q), t, h, cos, sin);
        host::rope(values_mut(&mut k), t, kvh, cos, sin);
    }
    let mut out = vec![0f32; b * t * h * hd];
    let visible = |i: usize| ctx.visible_slots(i);
    match cache {
        Some(cache) => {
            let (kb, vb) = cache.take();
            let (mut kb, mut vb) = (into_flex(kb), into_flex(vb));
            let cap = kb.layout().shape()[2];
            let slot = ctx.start - ctx.slot_base;
            {
                let _t = span(Op::KvWrite);
                for (buf, new) in [(&mut kb, &k), (&mut vb, &v)] {
                    let (dst, src) = (values_mut(buf), values(new));
                    for bi in 0..b {
                        for i in 0..t {
                            for g in 0..kvh {
                                let from = ((bi * t + i) * kvh + g) * hd;
                                let to = ((bi * kvh + g) * cap + slot + i) * hd;
                                dst[to..to + hd].copy_from_slice(&src[from..from + hd]);
                            }
                        }
                    }
                }
            }
            let layout = KvLayout {
                batch: kvh * cap * hd,
                head: cap * hd,
                slot: hd,
            };
            {
                let _t = span(Op::Attention);
                let (kv, vv) = (values(&kb), values(&vb));
                host::attention(values(&q), kv, vv, layout, dims, &visible, &mut out);
            }
            cache.put(from_flex(kb), from_flex(vb));
        }
        None => {
            let _t = span(Op::Attention);
            let layout = KvLayout {
                batch: t * kvh * hd,
                head: hd,
                slot: kvh * hd,
            };
            host::attention(
                values(&q),
                values(&k),
                values(&v),
                layout,
                dims,
                &visible,
                &mut out,
            );
        }
    }
    from_flex(host::new_flex(out, vec![b, t, h * hd]))
}

/// The tensor route (every backend).
fn attend_tensors(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    ctx: &StepContext,
    cache: Option<&mut LayerCache>,
    dims: AttnDims,
) -> Tensor<3> {
    let AttnDims {
        batch: b,
        t,
        heads: h,
        kv_heads: kvh,
        head_dim: hd,
    } = dims;
    let (q, k) = {
        let _t = span(Op::Rope);
        (
            ctx.rope.apply(q.reshape([b, t, h, hd])),
            ctx.rope.apply(k.reshape([b, t, kvh, hd])),
        )
    };
    let k = k.swap_dims(1, 2);
    let v = v.reshape([b, t, kvh, hd]).swap_dims(1, 2);
    let (k, v) = match cache {
        Some(cache) => {
            let _t = span(Op::KvWrite);
            let (kb, vb) = cache.take();
            let slot = ctx.start - ctx.slot_base;
            let region = [0..b, 0..kvh, slot..slot + t, 0..hd];
            let (kb, vb) = (
                kb.slice_assign(region.clone(), k),
                vb.slice_assign(region, v),
            );
            let from = ctx.key_start - ctx.slot_base;
            let n = ctx.start + t - ctx.key_start;
            let view = (kb.clone().narrow(2, from, n), vb.clone().narrow(2, from, n));
            cache.put(kb, vb);
            view
        }
        None => (k, v),
    };
    let _t = span(Op::Attention);
    if t == 1 {
        // One query per head: the `rep` query heads of a kv head form one block of queries
        // against that head's keys, all of which the query sees once narrowed to its window.
        let keys = ctx.visible_keys(0, 1);
        let (k, v) = (
            k.narrow(2, keys.start, keys.len()),
            v.narrow(2, keys.start, keys.len()),
        );
        let q = q.reshape([b, kvh, h / kvh, hd]);
        return sdpa(q, k, v, None).reshape([b, 1, h * hd]);
    }
    let q = q.swap_dims(1, 2);
    let (k, v) = (repeat_kv(k, h / kvh), repeat_kv(v, h / kvh));
    let mask = ctx.mask();
    let chunks: Vec<Tensor<4>> = (0..t)
        .step_by(QUERY_CHUNK)
        .map(|q0| {
            let q1 = (q0 + QUERY_CHUNK).min(t);
            let keys = ctx.visible_keys(q0, q1);
            let bias = mask
                .as_ref()
                .map(|m| m.clone().slice([q0..q1, keys.clone()]).unsqueeze::<4>());
            sdpa(
                q.clone().narrow(2, q0, q1 - q0),
                k.clone().narrow(2, keys.start, keys.len()),
                v.clone().narrow(2, keys.start, keys.len()),
                bias,
            )
        })
        .collect();
    Tensor::cat(chunks, 2)
        .swap_dims(1, 2)
        .reshape([b, t, h * hd])
}

/// The device-position route: one token, its key and value written at slot `at.pos` in place,
/// attention over every slot with `at.hidden` masked.
fn attend_at(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    rope: &RopeTables,
    at: &DevicePosition,
    cache: &mut LayerCache,
    dims: AttnDims,
) -> Tensor<3> {
    let AttnDims {
        batch: b,
        t,
        heads: h,
        kv_heads: kvh,
        head_dim: hd,
    } = dims;
    assert!(
        b == 1 && t == 1,
        "a step at a device position is one token of one sequence (got batch {b}, {t} tokens)"
    );
    let (q, k) = {
        let _t = span(Op::Rope);
        (
            rope.apply(q.reshape([1, 1, h, hd])),
            rope.apply(k.reshape([1, 1, kvh, hd])),
        )
    };
    let (kb, vb) = {
        let _t = span(Op::KvWrite);
        let (kb, vb) = cache.take();
        // [1, 1, kvh, hd] → [1, kvh, 1, hd]: a reshape, the token axis has length 1.
        let (k, v) = (k.reshape([1, kvh, 1, hd]), v.reshape([1, kvh, 1, hd]));
        (
            kb.select_assign(2, at.pos.clone(), k, IndexingUpdateOp::Assign),
            vb.select_assign(2, at.pos.clone(), v, IndexingUpdateOp::Assign),
        )
    };
    let _t = span(Op::Attention);
    let capacity = kb.dims()[2];
    let rep = h / kvh;
    // The `rep` query heads of a kv head as one block of queries: [1, kvh, rep, hd].
    let q = q.reshape([1, kvh, rep, hd]);
    let dtype = q.dtype();
    let scores = q
        .matmul(kb.clone().swap_dims(2, 3))
        .mul_scalar(1.0 / (hd as f64).sqrt())
        .mask_fill(
            at.hidden.clone().expand([1, kvh, rep, capacity]),
            f32::NEG_INFINITY,
        );
    // Softmax in f32, as the fused attention kernels accumulate: a bf16 sum over thousands of
    // keys would lose the small weights.
    let probs = burn::tensor::activation::softmax(scores.cast(DType::F32), 3).cast(dtype);
    let out = probs.matmul(vb.clone());
    cache.put(kb, vb);
    out.reshape([1, 1, h * hd])
}

/// `softmax(q·kᵀ/√d + bias)·v` through Burn's fused attention op (Flex: tiled online softmax
/// without a `[heads, queries, keys]` score tensor; Cube: flash kernels where they apply).
fn sdpa(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<4> {
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
