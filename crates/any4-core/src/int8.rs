//! The fast CPU decode path: int8 activations, int8 tables, integer dot products.
//!
//! Batch-1 decode is memory-bound only if the arithmetic keeps up with DRAM. The exact path
//! ([`MatmulPrecision::Exact`]) spends ~1 instruction per weight on the f32 lookup; this path
//! does 32 weights per `vpshufb`:
//! - activations are quantized per block of 32 to int8 with one f32 scale (`d = absmax / 127`,
//!   as llama.cpp's Q8 activations), and reordered to the codes' nibble order once per call: per
//!   pair of blocks `(b, b+1)`, 64 bytes `[b even, b+1 even, b odd, b+1 odd]` (16 each), so one
//!   32-byte load of codes (64 weights) feeds two `vpshufb`s with no lane shuffling; a trailing
//!   unpaired block is `[even, odd]`;
//! - each row's table is centred (`mid` folded into the zero) and quantized to int8 with one
//!   scale (`max|t − mid| / 127`): a step of ≤ 1/17 of a 4-bit level on a `[0, 15]` table;
//! - 32 bytes of codes split into low/high nibbles, two `vpshufb` look up 64 table bytes, and
//!   `vpmaddubsw` + `vpmaddwd` give 8 int32 partial sums (4 per block), scaled per block in f32.
//!   Measured on the 2-core Zen 3 VM: ~10 vector µops per 32 weights instead of ~14 with one
//!   block per 16-byte load (which needed a `vinserti128` and one scale FMA per block).
//!
//! Error: relative output error ~0.5% (int8 rounding of `x` and of the table), far below the 4-bit
//! quantization error itself; tests bound it.

use crate::view::QuantizedView;

/// Activation block length of the int8 path.
pub const BLOCK: usize = 32;

/// How the CPU matmul treats activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 activations and tables, f32 accumulation: the reference.
    #[default]
    Exact,
    /// int8 activations (per block of 32) and int8 tables, int32 dot products: ~4× fewer
    /// instructions per weight. Falls back to `Exact` on CPUs without AVX2.
    Int8Activations,
}

/// Activations quantized per block of 32, in the pair layout of the module docs.
pub(crate) struct Q8Activations {
    pub q: Vec<i8>,
    /// One scale per block.
    pub d: Vec<f32>,
    /// Per pair of blocks, 8 lanes `[d_b ×4, d_{b+1} ×4]` (the order of the int32 sums).
    pub d8: Vec<f32>,
    /// Full blocks per activation row.
    pub blocks: usize,
}

impl Q8Activations {
    /// Pairs of blocks per activation row.
    pub fn pairs(&self) -> usize {
        self.blocks / 2
    }
}

pub(crate) fn quantize_activations(x: &[f32], m: usize, k: usize) -> Q8Activations {
    let blocks = k / BLOCK;
    let pairs = blocks / 2;
    let mut q = vec![0i8; m * blocks * BLOCK];
    let mut d = vec![0.0f32; m * blocks];
    let mut d8 = vec![0.0f32; m * pairs * 8];
    const HALF: usize = BLOCK / 2;
    for i in 0..m {
        let row_q = &mut q[i * blocks * BLOCK..][..blocks * BLOCK];
        for b in 0..blocks {
            let xs = &x[i * k + b * BLOCK..][..BLOCK];
            let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            // A block of ~1e-37 values would overflow `1/scale` and round to -128, which the
            // `vpsignb` trick cannot negate: treat it (and an all-zero block) as zero.
            let inv = 1.0 / scale;
            let (scale, inv) = if scale > 0.0 && inv.is_finite() {
                (scale, inv)
            } else {
                (0.0, 0.0)
            };
            // Where this block's even and odd positions go (see the module docs).
            let (even, odd) = if b / 2 < pairs {
                let base = (b / 2) * 2 * BLOCK + (b % 2) * HALF;
                (base, base + BLOCK)
            } else {
                (b * BLOCK, b * BLOCK + HALF)
            };
            for t in 0..HALF {
                row_q[even + t] = round_i8(xs[2 * t] * inv);
                row_q[odd + t] = round_i8(xs[2 * t + 1] * inv);
            }
            d[i * blocks + b] = scale;
            if b / 2 < pairs {
                let lanes = &mut d8[(i * pairs + b / 2) * 8 + (b % 2) * 4..][..4];
                lanes.fill(scale);
            }
        }
    }
    Q8Activations { q, d, d8, blocks }
}

/// `v.round() as i8` for |v| ≤ 127.5 without a libm call: `f32::round` is not inlined on
/// baseline x86-64, and this runs 16 times per weight row in batch-1 decode.
#[inline(always)]
fn round_i8(v: f32) -> i8 {
    // Half away from zero, like `f32::round`; `as` truncates toward zero and saturates.
    (v + 0.5f32.copysign(v)) as i8
}

/// A row's table as int8: `table[c] ≈ mid + scale · q[c]`.
pub(crate) struct Q8Table {
    pub q: [i8; 16],
    pub scale: f32,
    pub mid: f32,
}

/// Scalar reference of [`avx2::quantize_table`] (the int8 path only runs with AVX2).
#[cfg(test)]
pub(crate) fn quantize_table(t: &[f32; 16]) -> Q8Table {
    // Runs once per weight row per call: on narrow rows (K = 128) it cost as much as the row's
    // dot product, so no second pass for `max |t − mid|` (it is `(hi − lo) / 2`) and a multiply
    // by the reciprocal instead of 16 divisions.
    let (mut lo, mut hi) = (t[0], t[0]);
    for &v in &t[1..] {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let mid = 0.5 * (lo + hi);
    let amax = 0.5 * (hi - lo);
    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    Q8Table {
        // |t − mid| ≤ amax up to rounding, and `round_i8` saturates at ±127.5 → ±127.
        q: std::array::from_fn(|c| round_i8((t[c] - mid) * inv)),
        scale,
        mid,
    }
}

impl QuantizedView<'_> {
    /// `Σ_j (table[code_j] − mid) · x_j · s_g` over the full blocks of one row, int8 path
    /// (the table's int8 scale applied); `i` picks the activation row.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA (`matmul_with` checks before taking the int8 path).
    #[cfg(target_arch = "x86_64")]
    pub(crate) unsafe fn row_q8(
        &self,
        row: usize,
        t: &Q8Table,
        q: &Q8Activations,
        i: usize,
    ) -> f32 {
        let (blocks, pairs) = (q.blocks, q.pairs());
        let xq = &q.q[i * blocks * BLOCK..][..blocks * BLOCK];
        let xd = &q.d[i * blocks..][..blocks];
        let xd8 = &q.d8[i * pairs * 8..][..pairs * 8];
        let group_blocks = self.group_len() / BLOCK;
        let scales = self.row_scales(row);
        // SAFETY: the caller guarantees AVX2 and FMA.
        unsafe { avx2::row_q8(self.row_codes(row), t, xq, xd, xd8, scales, group_blocks) }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Q8Table};

    /// [`super::quantize_table`] in 16 lanes (rounding half to even instead of away from zero,
    /// which only moves exact ties): called once per weight row per call, it was 15% of the
    /// embedded tiny model's any4 decode time in scalar SSE code.
    #[target_feature(enable = "avx2,fma")]
    pub fn quantize_table(t: &[f32; 16]) -> Q8Table {
        // SAFETY: loads and stores stay within the 16-element arrays.
        unsafe {
            let a = _mm256_loadu_ps(t.as_ptr());
            let b = _mm256_loadu_ps(t.as_ptr().add(8));
            let (mn, mx) = (_mm256_min_ps(a, b), _mm256_max_ps(a, b));
            let mn = _mm_min_ps(_mm256_castps256_ps128(mn), _mm256_extractf128_ps(mn, 1));
            let mx = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            let mn = _mm_min_ps(mn, _mm_movehl_ps(mn, mn));
            let mx = _mm_max_ps(mx, _mm_movehl_ps(mx, mx));
            let lo = _mm_cvtss_f32(_mm_min_ss(mn, _mm_shuffle_ps(mn, mn, 1)));
            let hi = _mm_cvtss_f32(_mm_max_ss(mx, _mm_shuffle_ps(mx, mx, 1)));
            let mid = 0.5 * (lo + hi);
            let amax = 0.5 * (hi - lo);
            let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            let (vm, vi) = (_mm256_set1_ps(mid), _mm256_set1_ps(1.0 / scale));
            let qa = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(a, vm), vi));
            let qb = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(b, vm), vi));
            // i32 → i16 (per 128-bit lane: a0–3 b0–3 | a4–7 b4–7), restore order, → i8.
            let p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qa, qb), 0b11_01_10_00);
            let p8 = _mm_packs_epi16(
                _mm256_castsi256_si128(p16),
                _mm256_extracti128_si256(p16, 1),
            );
            let mut q = [0i8; 16];
            _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, p8);
            Q8Table { q, scale, mid }
        }
    }

    /// Full blocks only; `group_blocks` blocks share one scale. `xq`, `xd`, `xd8` are one
    /// activation row in the layout of [`super::quantize_activations`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_q8(
        words: &[u32],
        t: &Q8Table,
        xq: &[i8],
        xd: &[f32],
        xd8: &[f32],
        scales: &[f32],
        group_blocks: usize,
    ) -> f32 {
        let blocks = xd.len();
        if blocks == 0 {
            return 0.0;
        }
        let pairs = blocks / 2;
        assert!(
            group_blocks > 0
                && words.len() * 8 >= blocks * BLOCK
                && xq.len() == blocks * BLOCK
                && xd8.len() == pairs * 8,
            "row_q8: lengths"
        );
        assert!(scales.len() * group_blocks >= blocks, "row_q8: scales");
        // SAFETY: every load below stays within `words[..4 * blocks]`, `xq[..32 * blocks]`,
        // `xd8[..8 * pairs]`, `xd[..blocks]`, `scales[..(blocks - 1) / group_blocks + 1]` and
        // `t.q` (16 bytes), all checked above.
        unsafe {
            let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(t.q.as_ptr() as *const __m128i));
            let nibble = _mm256_set1_epi8(0x0F);
            let ones = _mm256_set1_epi16(1);
            // Blocks 2p and 2p+1 → 8 f32 lanes (4 partial sums each), times their `d`.
            let pair = |p: usize| {
                let bytes = _mm256_loadu_si256(words.as_ptr().add(8 * p) as *const __m256i);
                let lo = _mm256_and_si256(bytes, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
                let (wlo, whi) = (_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
                let x = xq.as_ptr().add(2 * BLOCK * p);
                let xlo = _mm256_loadu_si256(x as *const __m256i);
                let xhi = _mm256_loadu_si256(x.add(BLOCK) as *const __m256i);
                // |w| · sign(x, w): vpmaddubsw takes one unsigned operand.
                let plo =
                    _mm256_maddubs_epi16(_mm256_sign_epi8(wlo, wlo), _mm256_sign_epi8(xlo, wlo));
                let phi =
                    _mm256_maddubs_epi16(_mm256_sign_epi8(whi, whi), _mm256_sign_epi8(xhi, whi));
                let p32 =
                    _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones));
                _mm256_mul_ps(
                    _mm256_cvtepi32_ps(p32),
                    _mm256_loadu_ps(xd8.as_ptr().add(8 * p)),
                )
            };
            let mut total = _mm256_setzero_ps();
            if group_blocks.is_multiple_of(2) {
                // Pairs never straddle a group: accumulate a group, then scale it once.
                let group_pairs = group_blocks / 2;
                let (mut p, mut g) = (0, 0);
                while p < pairs {
                    let end = (p + group_pairs).min(pairs);
                    let mut acc = _mm256_setzero_ps();
                    while p < end {
                        acc = _mm256_add_ps(acc, pair(p));
                        p += 1;
                    }
                    total = _mm256_fmadd_ps(acc, _mm256_set1_ps(*scales.get_unchecked(g)), total);
                    g += 1;
                }
            } else {
                // Group of 32 (or an odd per-row block count): each half of a pair has its scale.
                for p in 0..pairs {
                    let s = _mm256_set_m128(
                        _mm_set1_ps(*scales.get_unchecked((2 * p + 1) / group_blocks)),
                        _mm_set1_ps(*scales.get_unchecked(2 * p / group_blocks)),
                    );
                    total = _mm256_fmadd_ps(pair(p), s, total);
                }
            }
            let mut sum = {
                let s = _mm_add_ps(
                    _mm256_castps256_ps128(total),
                    _mm256_extractf128_ps(total, 1),
                );
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
            };
            if !blocks.is_multiple_of(2) {
                // The unpaired last block, laid out `[even, odd]`.
                let b = blocks - 1;
                let bytes = _mm_loadu_si128(words.as_ptr().add(4 * b) as *const __m128i);
                let nib = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(bytes, nib);
                let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), nib);
                let w8 = _mm256_shuffle_epi8(lut, _mm256_set_m128i(hi, lo));
                let x8 = _mm256_loadu_si256(xq.as_ptr().add(BLOCK * b) as *const __m256i);
                let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w8, w8), _mm256_sign_epi8(x8, w8));
                let p32 = _mm256_madd_epi16(p16, ones);
                let v = _mm_add_epi32(
                    _mm256_castsi256_si128(p32),
                    _mm256_extracti128_si256(p32, 1),
                );
                let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
                let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b10_11_00_01));
                sum += _mm_cvtsi128_si32(v) as f32
                    * xd.get_unchecked(b)
                    * scales.get_unchecked(b / group_blocks);
            }
            sum * t.scale
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The AVX2 table quantizer agrees with the scalar reference: same scale and centre, codes
    /// within one step (they differ only on exact ties: half-even vs half-away rounding).
    #[test]
    fn avx2_table_matches_scalar() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut r = SplitMix64::new(3);
        for case in 0..2000 {
            let mut t: [f32; 16] = std::array::from_fn(|_| (r.next_f64() * 30.0 - 10.0) as f32);
            if case % 7 == 0 {
                t = [2.5; 16]; // constant table: scale falls back to 1
            }
            t.sort_by(f32::total_cmp);
            let (a, b) = (quantize_table(&t), unsafe { avx2::quantize_table(&t) });
            assert_eq!((a.scale, a.mid), (b.scale, b.mid), "case {case}");
            for c in 0..16 {
                assert!(
                    (a.q[c] as i32 - b.q[c] as i32).abs() <= 1,
                    "case {case} code {c}"
                );
                // Not a soundness matter (|−128| reads as unsigned 128 and 2·128·127 fits i16):
                // the table stays within ±127 by construction.
                assert!(b.q[c] > i8::MIN, "case {case}: table code -128");
            }
        }
    }
}
