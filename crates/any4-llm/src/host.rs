//! The decoder's small ops as host loops over f32 slices: the Flex fast path.
//!
//! On Flex a tensor's storage is ordinary memory, so the glue between the matmuls (RMSNorm, RoPE,
//! writing the KV cache, attention, SiLU·mul, residual adds) runs here as one loop each instead of
//! the 5–10 Burn ops (each a dispatch, an allocation and a pass over memory) it takes in tensor
//! form; that per-op cost, not arithmetic, is most of a small model's decode step on a CPU.
//! [`crate::ops`] routes here for f32 tensors on a plain (non-autodiff) Flex device and to the
//! equivalent Burn ops everywhere else; each kernel is tested against those ops.
//!
//! The arithmetic follows the Burn ops operation for operation (same f32 roundings) where that
//! is free; reductions (norm sums, attention dot products) differ only in summation order.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};

use crate::attention::AttnDims;

/// `fn $name(args) -> ret` calling `$inline(args)`, compiled for AVX2+FMA when the CPU has them:
/// the crate targets baseline x86-64, where these loops would vectorise only 4 wide. `$inline`
/// is `#[inline(always)]`, so its body (and what it inlines) takes the variant's features.
macro_rules! simd_variants {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $inline:ident) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $inline($($arg),*)
                }
                // SAFETY: both features were detected just above.
                return unsafe { avx2($($arg),*) };
            }
            $inline($($arg),*)
        }
    };
}

/// Whether `t` can take the host path: f32 on a plain Flex device.
pub(crate) fn eligible<const D: usize>(t: &Tensor<D>) -> bool {
    use burn::backend::DispatchDevice;
    t.dtype() == DType::F32
        && matches!(t.device().as_dispatch(), DispatchDevice::Flex(_))
        && crate::ops::host_kernels_enabled()
}

/// The Flex primitive of an [`eligible`] tensor, made contiguous (a view with an offset stays).
pub(crate) fn into_flex<const D: usize>(t: Tensor<D>) -> FlexTensor {
    let f = t
        .try_into_primitive::<Flex>()
        .unwrap_or_else(|e| panic!("host path on a tensor that is not Flex: {e:?}"));
    if f.is_contiguous() {
        f
    } else {
        f.to_contiguous()
    }
}

/// Back to a tensor.
pub(crate) fn from_flex<const D: usize>(t: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(t)
}

/// A fresh f32 tensor of `shape` holding `data`.
pub(crate) fn new_flex(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(data, shape))
}

/// The f32 values of a contiguous tensor (as [`into_flex`] returns), in row-major order.
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    let (a, b) = t
        .layout()
        .contiguous_offsets()
        .expect("into_flex returns contiguous tensors");
    &t.storage::<f32>()[a..b]
}

/// Mutable f32 values of a contiguous tensor (its storage is copied first if shared).
pub(crate) fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    let (a, b) = t
        .layout()
        .contiguous_offsets()
        .expect("into_flex returns contiguous tensors");
    &mut t.storage_mut::<f32>()[a..b]
}

/// `yᵢ = xᵢ / √(mean(x²) + ε) · γᵢ` per row of `d` (Burn's `RmsNorm`: mean in f32).
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss = sum_squares(row);
        let rms = (ss / d as f32 + eps).sqrt();
        for ((o, &x), &g) in o.iter_mut().zip(row).zip(gamma) {
            *o = x / rms * g;
        }
    }
}

fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>()
}

/// Rotate `x: [batch·t, heads, dim]` in place; token row `(b, i)` takes table row `i`.
///
/// `cos`/`sin`: `[t, dim]` with halves duplicated, `sin`'s first half negated (see
/// [`RopeTables`](crate::RopeTables)): `out₁ = x₁·cos + x₂·(−sin)`, `out₂ = x₂·cos + x₁·sin`,
/// the same products and sum as `x·cos + rotate_half(x)·sin`.
pub fn rope(x: &mut [f32], t: usize, heads: usize, cos: &[f32], sin: &[f32]) {
    let dim = cos.len() / t;
    let half = dim / 2;
    for (r, row) in x.chunks_exact_mut(heads * dim).enumerate() {
        let i = r % t;
        let (c, s) = (&cos[i * dim..i * dim + half], &sin[i * dim..(i + 1) * dim]);
        let (s1, s2) = s.split_at(half);
        for head in row.chunks_exact_mut(dim) {
            let (x1, x2) = head.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (x1[j], x2[j]);
                x1[j] = a * c[j] + b * s1[j];
                x2[j] = b * c[j] + a * s2[j];
            }
        }
    }
}

simd_variants! {
    /// `g ← silu(g) ⊙ u` with `silu(x) = x·σ(x)`, `σ(x) = 1 / (1 + e^{−x})` ([`exp`]).
    pub fn silu_mul(g: &mut [f32], u: &[f32]) = silu_mul_inline
}

#[inline(always)]
fn silu_mul_inline(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let x = *g;
        *g = x * (1.0 / (1.0 + exp(-x))) * u;
    }
}

simd_variants! {
    /// `x ← exp(x − max)` over `x`; returns `Σ x` afterwards (softmax numerators and their sum).
    fn exp_shifted(x: &mut [f32], max: f32) -> f32 = exp_shifted_inline
}

#[inline(always)]
fn exp_shifted_inline(x: &mut [f32], max: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `eˣ` in f32 arithmetic that vectorises (libm's `expf` is a call per element, which made it
/// the largest cost of prefill's softmax and SiLU).
///
/// `x = n·ln2 + r` with `n = round(x·log₂e)` and `|r| ≤ ln2/2` (`ln2` split in a high part exact
/// in f32 and a low correction); `eʳ` by its degree-7 Taylor polynomial (remainder
/// `r⁸/8! < 3·10⁻⁹` relative); `2ⁿ` assembled in the exponent bits. Inputs are clamped to
/// `[−87.3, 88.3]`, where `eˣ` and `2ⁿ` are normal f32s (below, the result is ≈ 1.2·10⁻³⁸
/// instead of a subnormal or 0; above, ≈ 2·10³⁸ instead of up to `f32::MAX` or ∞: softmax
/// only takes `x ≤ 0`, SiLU's `1/(1 + e⁻ˣ)` is then 0 either way). Within 2 ulp of the
/// correctly rounded value (tested).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer in f32.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `x ← x + y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// Where keys and values are: element offset of `(batch b, kv head g, slot 0)` is
/// `b·batch + g·head`, consecutive slots `slot` apart, each slot `head_dim` contiguous values.
///
/// The KV cache `[batch, kv_heads, capacity, head_dim]` is `(kvh·cap·hd, cap·hd, hd)`; keys fresh
/// from the projection `[batch, t, kv_heads·head_dim]` are `(t·kvh·hd, hd, kvh·hd)`.
#[derive(Debug, Clone, Copy)]
pub struct KvLayout {
    /// Stride between batch rows.
    pub batch: usize,
    /// Stride between kv heads.
    pub head: usize,
    /// Stride between slots (positions).
    pub slot: usize,
}

/// Attention work (multiply-adds) below which one thread does it all: waking the pool costs more.
const PARALLEL_MACS: usize = 1 << 20;
/// Queries per block in the GEMM form (prefill).
const QUERY_BLOCK: usize = 64;
/// Up to this many queries per head, the dot-product loop; above, GEMM blocks.
const LOOP_MAX_T: usize = 4;

/// `out = softmax(q·kᵀ/√d)·v` per query head, over the slots `visible(i)` query `i` sees;
/// query head `h` reads kv head `h / (heads / kv_heads)`.
///
/// `q`, `out`: `[batch, t, heads, head_dim]`. Masking is by index (no mask tensor); a query
/// seeing no key gets zeros.
///
/// Up to [`LOOP_MAX_T`] queries (decode), one task per (batch, head) with a dot-product loop per
/// query. Longer (prefill), one task per (batch, kv head, block of [`QUERY_BLOCK`] queries)
/// doing all `heads / kv_heads` query heads of that kv head as one GEMM pair: the keys and
/// values are packed once for the group instead of once per head, and the tasks (24 for a
/// 512-token SmolLM2 prompt rather than 9 heads) balance across threads.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    layout: KvLayout,
    dims: AttnDims,
    visible: &(dyn Fn(usize) -> std::ops::Range<usize> + Sync),
    out: &mut [f32],
) {
    let AttnDims {
        batch,
        t,
        heads,
        kv_heads,
        head_dim: hd,
    } = dims;
    let rep = heads / kv_heads;
    let keys: usize = (0..t).map(|i| visible(i).len()).sum();
    let macs = 2 * batch * heads * keys * hd;
    let kv_head = |b: usize, g: usize| {
        let base = b * layout.batch + g * layout.head;
        KvHead {
            k: &k[base..],
            v: &v[base..],
            slot: layout.slot,
            hd,
        }
    };
    let row = |b: usize, i: usize, h: usize| ((b * t + i) * heads + h) * hd;
    if t <= LOOP_MAX_T {
        // Task (b, h): `t` rows of `hd`, query by query.
        let task = |bh: usize| {
            let (b, h) = (bh / heads, bh % heads);
            let kv = kv_head(b, h / rep);
            let mut o = vec![0f32; t * hd];
            for (i, o) in o.chunks_exact_mut(hd).enumerate() {
                attend_one(&kv, &q[row(b, i, h)..][..hd], visible(i), o);
            }
            o
        };
        let results = run_tasks(batch * heads, macs, task);
        for (bh, o) in results.iter().enumerate() {
            let (b, h) = (bh / heads, bh % heads);
            for (i, o) in o.chunks_exact(hd).enumerate() {
                out[row(b, i, h)..][..hd].copy_from_slice(o);
            }
        }
        return;
    }
    // Task (b, g, block): rows `(r, i)` for the group's heads `g·rep + r` and the block's queries.
    let blocks = t.div_ceil(QUERY_BLOCK);
    let span = |task: usize| {
        let (bg, blk) = (task / blocks, task % blocks);
        let i0 = blk * QUERY_BLOCK;
        (bg / kv_heads, bg % kv_heads, i0..(i0 + QUERY_BLOCK).min(t))
    };
    let task = |task: usize| {
        let (b, g, qs) = span(task);
        let q_row = |r: usize, i: usize| &q[row(b, i, g * rep + r)..][..hd];
        kv_head(b, g).attend_block(qs, rep, &q_row, visible)
    };
    let results = run_tasks(batch * kv_heads * blocks, macs, task);
    for (task, o) in results.iter().enumerate() {
        let (b, g, qs) = span(task);
        let m = qs.len();
        for (n, o) in o.chunks_exact(hd).enumerate() {
            let (r, i) = (n / m, qs.start + n % m);
            out[row(b, i, g * rep + r)..][..hd].copy_from_slice(o);
        }
    }
}

/// `task(0..n)` in order, on the rayon pool when the work (`macs`) pays for waking it.
fn run_tasks(
    n: usize,
    macs: usize,
    task: impl Fn(usize) -> Vec<f32> + Sync + Send,
) -> Vec<Vec<f32>> {
    if macs < PARALLEL_MACS {
        return (0..n).map(task).collect();
    }
    use rayon::prelude::*;
    (0..n).into_par_iter().map(task).collect()
}

/// The keys and values of one (batch, kv head).
struct KvHead<'a> {
    k: &'a [f32],
    v: &'a [f32],
    slot: usize,
    hd: usize,
}

impl KvHead<'_> {
    fn key(&self, j: usize) -> &[f32] {
        &self.k[j * self.slot..][..self.hd]
    }
    fn value(&self, j: usize) -> &[f32] {
        &self.v[j * self.slot..][..self.hd]
    }

    /// One query: scores, softmax, weighted sum of values into `out`. Inlined into
    /// [`attend_one`]'s instruction-set variants, so its loops vectorise for each.
    #[inline(always)]
    fn attend_one_inline(&self, q: &[f32], slots: std::ops::Range<usize>, out: &mut [f32]) {
        out.fill(0.0);
        if slots.is_empty() {
            return;
        }
        let scale = 1.0 / (self.hd as f32).sqrt();
        let mut p: Vec<f32> = slots.clone().map(|j| dot(q, self.key(j)) * scale).collect();
        let max = p.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let sum = exp_shifted_inline(&mut p, max);
        for (j, &p) in slots.zip(&p) {
            axpy(p, self.value(j), out);
        }
        let inv = 1.0 / sum;
        out.iter_mut().for_each(|o| *o *= inv);
    }

    /// Queries `qs` of `rep` query heads sharing these keys: `S = Q·Kᵀ` and `O = P·V` as GEMMs
    /// with `rep·|qs|` rows over the union of the block's visible slots, each row masked to its
    /// query's own slots. `q_row(r, i)`: query `i` of head `r`. Returns `O`, rows `(r, i)`
    /// (head-major), `hd` wide.
    fn attend_block<'q>(
        &self,
        qs: std::ops::Range<usize>,
        rep: usize,
        q_row: &dyn Fn(usize, usize) -> &'q [f32],
        visible: &(dyn Fn(usize) -> std::ops::Range<usize> + Sync),
    ) -> Vec<f32> {
        let hd = self.hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let (qm, m) = (qs.len(), rep * qs.len());
        let mut ob = vec![0f32; m * hd];
        let lo = qs.clone().map(|i| visible(i).start).min().unwrap_or(0);
        let hi = qs.clone().map(|i| visible(i).end).max().unwrap_or(0);
        if hi <= lo {
            return ob;
        }
        let n = hi - lo;
        let mut qb = vec![0f32; m * hd];
        for (x, dst) in qb.chunks_exact_mut(hd).enumerate() {
            dst.copy_from_slice(q_row(x / qm, qs.start + x % qm));
        }
        let mut s = vec![0f32; m * n];
        // SAFETY: S is m × n (row stride n), Q m × hd (row stride hd), Kᵀ hd × n read from the
        // key slots lo..hi (column j at slot lo + j), all in bounds of their slices.
        unsafe {
            gemm::gemm(
                m,
                n,
                hd,
                s.as_mut_ptr(),
                1,
                n as isize,
                false,
                qb.as_ptr(),
                1,
                hd as isize,
                self.k[lo * self.slot..].as_ptr(),
                self.slot as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let mut inv = vec![0f32; m];
        for (x, row) in s.chunks_exact_mut(n).enumerate() {
            let vis = visible(qs.start + x % qm);
            let a = vis.start.max(lo) - lo;
            let b = vis.end.min(hi).max(a + lo) - lo;
            let max = row[a..b].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            row[..a].fill(0.0);
            row[b..].fill(0.0);
            let sum = exp_shifted(&mut row[a..b], max);
            inv[x] = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        }
        // SAFETY: O is m × hd, P m × n (row stride n), V n × hd from slots lo..hi.
        unsafe {
            gemm::gemm(
                m,
                hd,
                n,
                ob.as_mut_ptr(),
                1,
                hd as isize,
                false,
                s.as_ptr(),
                1,
                n as isize,
                self.v[lo * self.slot..].as_ptr(),
                1,
                self.slot as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (o, inv) in ob.chunks_exact_mut(hd).zip(inv) {
            o.iter_mut().for_each(|x| *x *= inv);
        }
        ob
    }
}

simd_variants! {
    /// [`KvHead::attend_one_inline`] (decode's attention is mostly its dot products).
    fn attend_one(kv: &KvHead<'_>, q: &[f32], slots: std::ops::Range<usize>, out: &mut [f32]) = attend_one_call
}

#[inline(always)]
fn attend_one_call(kv: &KvHead<'_>, q: &[f32], slots: std::ops::Range<usize>, out: &mut [f32]) {
    kv.attend_one_inline(q, slots, out)
}

/// `Σ aᵢ·bᵢ` with 8 independent accumulators (vectorised by LLVM).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y ← y + a·x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`exp`] against f64 `exp` over the whole clamped range and around 0.
    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.3 {
            for v in [x, x * 1e-3] {
                let want = (v as f64).exp();
                let ulp = (want as f32).abs() * f32::EPSILON;
                worst = worst.max((exp(v) as f64 - want).abs() / ulp as f64);
            }
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1.3e-38 && exp(f32::NEG_INFINITY) > 0.0);
        assert!(exp(100.0).is_finite());
    }
}
