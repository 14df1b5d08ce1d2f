//! Where a forward's time goes: wall-clock totals per kind of op, behind the `op-timing` feature.
//!
//! The forward wraps each op in a [`span`]. With `op-timing` off (the default) a span is a
//! zero-sized value without `Drop`, so nothing is measured or stored and the hot path is
//! unchanged; with it on, each span adds its elapsed time to a global counter per [`Op`].
//!
//! What the totals mean depends on the backend: on Flex every op runs synchronously, so a span is
//! the op's full cost; on a GPU an op only enqueues work, so a span is its host-side cost (launch,
//! allocation, bookkeeping) — the per-token host overhead — and only [`Op::Sample`] (whose
//! readback waits for the device) includes device time.

/// The kinds of op a forward is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Token embedding lookup.
    Embed,
    /// RMSNorm (both of every layer, and the final one).
    Norm,
    /// The q, k and v projections.
    QkvProj,
    /// Rotary embedding of queries and keys.
    Rope,
    /// Writing new keys/values into the KV cache (and growing it).
    KvWrite,
    /// Scores, softmax and the weighted sum of values.
    Attention,
    /// The attention output projection.
    OProj,
    /// The MLP's gate, up and down projections (or a mixture of experts' routing and experts).
    MlpProj,
    /// `silu(gate) ⊙ up`.
    SiluMul,
    /// Residual additions.
    Residual,
    /// The LM head.
    Head,
    /// Choosing the next token and reading it back (the one sync per token).
    Sample,
    /// Per-forward setup: rotary tables, masks, cache bookkeeping.
    Setup,
    /// Launching a recorded decode step (host time of the replay call; see `decode_graph`).
    Replay,
}

impl Op {
    /// Every op, in report order.
    pub const ALL: [Op; 14] = [
        Op::Embed,
        Op::Norm,
        Op::QkvProj,
        Op::Rope,
        Op::KvWrite,
        Op::Attention,
        Op::OProj,
        Op::MlpProj,
        Op::SiluMul,
        Op::Residual,
        Op::Head,
        Op::Sample,
        Op::Setup,
        Op::Replay,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Embed => "embed",
            Op::Norm => "rms_norm",
            Op::QkvProj => "q/k/v proj",
            Op::Rope => "rope",
            Op::KvWrite => "kv write",
            Op::Attention => "attention",
            Op::OProj => "o proj",
            Op::MlpProj => "mlp proj",
            Op::SiluMul => "silu·mul",
            Op::Residual => "residual",
            Op::Head => "lm head",
            Op::Sample => "sample+readback",
            Op::Setup => "setup",
            Op::Replay => "graph replay",
        }
    }
}

/// Whether this build measures (the `op-timing` feature).
pub const ENABLED: bool = cfg!(feature = "op-timing");

#[cfg(feature = "op-timing")]
mod imp {
    use super::Op;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    static NANOS: [AtomicU64; Op::ALL.len()] = [const { AtomicU64::new(0) }; Op::ALL.len()];
    static CALLS: [AtomicU64; Op::ALL.len()] = [const { AtomicU64::new(0) }; Op::ALL.len()];

    /// A running measurement; adds its time when dropped.
    pub struct Span {
        op: Op,
        start: Instant,
    }

    impl Drop for Span {
        fn drop(&mut self) {
            let i = Op::ALL.iter().position(|&o| o == self.op).unwrap_or(0);
            NANOS[i].fetch_add(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn span(op: Op) -> Span {
        Span {
            op,
            start: Instant::now(),
        }
    }

    pub fn take() -> Vec<(Op, f64, u64)> {
        Op::ALL
            .iter()
            .enumerate()
            .map(|(i, &op)| {
                let ns = NANOS[i].swap(0, Ordering::Relaxed);
                (op, ns as f64 * 1e-9, CALLS[i].swap(0, Ordering::Relaxed))
            })
            .collect()
    }
}

#[cfg(not(feature = "op-timing"))]
mod imp {
    use super::Op;

    /// Nothing (the `op-timing` feature is off).
    pub struct Span;

    #[inline(always)]
    pub fn span(_: Op) -> Span {
        Span
    }

    pub fn take() -> Vec<(Op, f64, u64)> {
        Vec::new()
    }
}

pub use imp::Span;

/// Start timing one `op` (until the returned span is dropped).
#[inline(always)]
pub fn span(op: Op) -> Span {
    imp::span(op)
}

/// The totals since the last call — `(op, seconds, spans)` for every [`Op`] — and reset them.
/// Empty when the `op-timing` feature is off.
pub fn take() -> Vec<(Op, f64, u64)> {
    imp::take()
}
