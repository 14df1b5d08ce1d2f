//! The KV cache: each layer's keys and values in buffers allocated once and written in place.
//!
//! A layer holds two buffers `[batch, kv_heads, capacity, head_dim]`. A step writes its new
//! keys/values into the next free slots (`slice_assign`, in place while the buffer is not shared:
//! no concatenation, no copy of what is cached) and attends over a narrowed view of the filled
//! slots. Slot `s` holds position `base + s`. When a step does not fit, the positions still
//! needed are moved to the front of a new buffer of at least twice the capacity (or the same
//! capacity when a sliding window left most slots stale), so the cost per token stays O(1).
//!
//! The cache also owns the rotary tables on the device for positions `0..P` (grown the same
//! way), so a decode step takes a view of them instead of uploading two fresh tables.

use burn::tensor::{DType, Device, Tensor};

use crate::attention::StepContext;
use crate::rope::RopeTables;
use crate::timing::{Op, span};

/// Smallest capacity (slots, and rotary positions) allocated.
const MIN_CAPACITY: usize = 64;

/// Keys and values of every layer for the tokens processed so far (owned by the caller, so
/// several conversations can share one model).
///
/// With a sliding window `w` (Mistral), only the last `w − 1` positions are kept visible between
/// calls, and the buffers stay bounded (about `2w` slots) however long the generation runs.
/// Cloning a cache copies it on its next write (the buffers are shared until then).
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    /// Positions processed.
    len: usize,
    /// Position of the oldest key still visible (`> 0` once a sliding window dropped some).
    start: usize,
    /// Position held in slot 0.
    base: usize,
    /// Slots per buffer (0 before the first step).
    capacity: usize,
    /// Capacity the first step allocates at least (see [`KvCache::with_capacity`]).
    reserve: usize,
    /// Batch size of the sequences cached (fixed by the first step).
    batch: usize,
    /// Rotary tables for positions `0..rope.len()`.
    rope: Option<RopeTables>,
}

/// One layer's buffers, `[batch, kv_heads, capacity, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Take the buffers out (the caller writes them in place and puts them back).
    pub(crate) fn take(&mut self) -> (Tensor<4>, Tensor<4>) {
        self.kv
            .take()
            .expect("KV cache buffers are allocated by KvCache::begin before a layer runs")
    }

    /// Put the buffers back.
    pub(crate) fn put(&mut self, k: Tensor<4>, v: Tensor<4>) {
        self.kv = Some((k, v));
    }
}

/// The shape of the keys one step appends, as the cache needs it to allocate.
#[derive(Debug, Clone)]
pub(crate) struct StepShape {
    pub batch: usize,
    pub new: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    pub device: Device,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache whose buffers, once allocated, hold `positions` positions without growing
    /// (e.g. prompt + most new tokens).
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        KvCache {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
            start: 0,
            base: 0,
            capacity: 0,
            reserve: positions,
            batch: 0,
            rope: None,
        }
    }

    /// Tokens (positions) processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Positions still visible to the next token (fewer than [`len`](Self::len) once a sliding
    /// window moved past the oldest).
    pub fn cached(&self) -> usize {
        self.len - self.start
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots per buffer currently allocated (0 before the first step).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget everything (start a new sequence). The buffers are kept for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
        self.start = 0;
        self.base = 0;
    }

    /// Make room for a step of `shape.new` tokens and return the context the layers share.
    pub(crate) fn begin(
        &mut self,
        shape: &StepShape,
        inv_freq: &[f32],
        window: Option<usize>,
    ) -> StepContext {
        let _t = span(Op::Setup);
        let t = shape.new;
        if self.capacity > 0 && self.batch != shape.batch {
            assert!(
                self.is_empty(),
                "KV cache holds batch {} but the step has batch {} (clear it first)",
                self.batch,
                shape.batch
            );
            self.capacity = 0;
        }
        self.batch = shape.batch;
        if self.len - self.base + t > self.capacity {
            self.relocate(shape);
        }
        let end = self.len + t;
        if self.rope.as_ref().is_none_or(|r| r.len() < end) {
            let p = end
                .max(2 * self.rope.as_ref().map_or(0, RopeTables::len))
                .max(self.reserve)
                .max(MIN_CAPACITY);
            self.rope = Some(RopeTables::new(inv_freq, 0, p, &shape.device));
        }
        let rope = self.rope.as_ref().expect("built above").narrow(self.len, t);
        StepContext::with_rope(rope, self.start, self.len, t, window).in_cache(self.base)
    }

    /// Move the visible positions to slot 0 of buffers large enough for them and `shape.new`
    /// more: twice the old capacity (at least), or the same when that suffices for a window.
    fn relocate(&mut self, shape: &StepShape) {
        let _t = span(Op::KvWrite);
        let held = self.len - self.start;
        let need = held + shape.new;
        let capacity = if self.capacity >= need && held <= self.capacity / 2 {
            self.capacity
        } else {
            need.max(2 * self.capacity)
                .max(self.reserve)
                .max(MIN_CAPACITY)
        };
        let dims = [shape.batch, shape.kv_heads, capacity, shape.head_dim];
        let from = self.start - self.base;
        let fresh = |old: Option<Tensor<4>>| {
            let buf = Tensor::<4>::zeros(dims, (&shape.device, shape.dtype));
            match old {
                Some(old) if held > 0 => buf.slice_assign(
                    [
                        0..shape.batch,
                        0..shape.kv_heads,
                        0..held,
                        0..shape.head_dim,
                    ],
                    old.narrow(2, from, held),
                ),
                _ => buf,
            }
        };
        for layer in &mut self.layers {
            let (k, v) = match layer.kv.take() {
                Some((k, v)) => (Some(k), Some(v)),
                None => (None, None),
            };
            layer.put(fresh(k), fresh(v));
        }
        self.capacity = capacity;
        self.base = self.start;
    }

    /// Account for a finished step of `t` tokens; a sliding window `w` keeps the last `w − 1`
    /// positions visible.
    pub(crate) fn end(&mut self, t: usize, window: Option<usize>) {
        self.len += t;
        if let Some(w) = window {
            self.start = self.start.max(self.len - (w - 1).min(self.len));
        }
    }

    /// Ready the cache for single-token steps at device positions `len..end`
    /// ([`crate::decode_graph`]): slot `s` must hold position `s` up to `end` without moving
    /// (no growth, no sliding-window relocation on the way). Returns the rotary tables of
    /// positions `0..end` or more, or `None` when the buffers cannot serve those steps (then
    /// the ordinary steps do).
    pub(crate) fn device_steps(
        &mut self,
        end: usize,
        inv_freq: &[f32],
        device: &Device,
    ) -> Option<RopeTables> {
        if self.base != 0 || self.capacity < end || self.batch != 1 || self.is_empty() {
            return None;
        }
        if self.rope.as_ref().is_none_or(|r| r.len() < end) {
            self.rope = Some(RopeTables::new(inv_freq, 0, end, device));
        }
        self.rope.clone()
    }

    /// Check the cache was made for `layers` layers.
    pub(crate) fn check_layers(&self, layers: usize) {
        assert_eq!(
            self.layers.len(),
            layers,
            "KV cache made for a model with another layer count"
        );
    }
}
