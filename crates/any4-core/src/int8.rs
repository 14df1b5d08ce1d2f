//! The fast CPU decode path: int8 activations, int8 tables, integer dot products.
//!
//! Batch-1 decode is memory-bound only if the arithmetic keeps up with DRAM. The exact path
//! ([`MatmulPrecision::Exact`]) spends ~1 instruction per weight on the f32 lookup; this path
//! does 32 weights per `vpshufb`:
//! - activations are quantized per block of 32 to int8 with one f32 scale (`d = absmax / 127`,
//!   as llama.cpp's Q8 activations), and reordered within the block to the codes' nibble order
//!   (even positions, then odd), once per call;
//! - each row's table is centred (`mid` folded into the zero) and quantized to int8 with one
//!   scale (`max|t − mid| / 127`): a step of ≤ 1/17 of a 4-bit level on a `[0, 15]` table;
//! - 16 bytes of codes split into low/high nibbles, `vpshufb` looks up 32 table bytes, and
//!   `vpmaddubsw` + `vpmaddwd` give 8 int32 partial sums, scaled per block in f32.
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

/// Activations quantized per block of 32, reordered to nibble order within each block.
pub(crate) struct Q8Activations {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    /// Full blocks per activation row.
    pub blocks: usize,
}

pub(crate) fn quantize_activations(x: &[f32], m: usize, k: usize) -> Q8Activations {
    let blocks = k / BLOCK;
    let mut q = vec![0i8; m * blocks * BLOCK];
    let mut d = vec![0.0f32; m * blocks];
    for i in 0..m {
        for b in 0..blocks {
            let xs = &x[i * k + b * BLOCK..][..BLOCK];
            let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let out = &mut q[(i * blocks + b) * BLOCK..][..BLOCK];
            for t in 0..BLOCK / 2 {
                out[t] = round_i8(xs[2 * t] * inv);
                out[BLOCK / 2 + t] = round_i8(xs[2 * t + 1] * inv);
            }
            d[i * blocks + b] = scale;
        }
    }
    Q8Activations { q, d, blocks }
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

pub(crate) fn quantize_table(t: &[f32; 16]) -> Q8Table {
    let (lo, hi) = t
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mid = 0.5 * (lo + hi);
    let amax = t.iter().fold(0.0f32, |a, &v| a.max((v - mid).abs()));
    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    Q8Table {
        q: std::array::from_fn(|c| round_i8((t[c] - mid) / scale)),
        scale,
        mid,
    }
}

impl QuantizedView<'_> {
    /// `Σ_j (table[code_j] − mid) · x_j · s_g` over the full blocks of one row, int8 path.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn row_q8(&self, row: usize, t: &Q8Table, xq: &[i8], xd: &[f32]) -> f32 {
        let group_blocks = self.group_len() / BLOCK;
        let scales = self.row_scales(row);
        // SAFETY: only called after runtime detection of AVX2 and FMA (see `matmul_with`).
        unsafe { avx2::row_q8(self.row_codes(row), t, xq, xd, scales, group_blocks) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Q8Table};

    /// Full blocks only; `group_blocks` blocks share one scale.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_q8(
        words: &[u32],
        t: &Q8Table,
        xq: &[i8],
        xd: &[f32],
        scales: &[f32],
        group_blocks: usize,
    ) -> f32 {
        let blocks = xd.len();
        assert!(
            words.len() * 8 >= blocks * BLOCK && xq.len() == blocks * BLOCK,
            "row_q8: lengths"
        );
        assert!(scales.len() * group_blocks >= blocks, "row_q8: scales");
        // SAFETY: every load below stays within `words[..4 * blocks]`, `xq[..32 * blocks]`,
        // `t.q` (16 bytes), all checked above.
        unsafe {
            let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(t.q.as_ptr() as *const __m128i));
            let nibble = _mm_set1_epi8(0x0F);
            let ones = _mm256_set1_epi16(1);
            let mut total = _mm256_setzero_ps();
            let mut b = 0;
            let mut g = 0;
            while b < blocks {
                let end = (b + group_blocks).min(blocks);
                let mut acc = _mm256_setzero_ps();
                while b < end {
                    let bytes = _mm_loadu_si128(words.as_ptr().add(4 * b) as *const __m128i);
                    let lo = _mm_and_si128(bytes, nibble);
                    let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
                    let w8 = _mm256_shuffle_epi8(lut, _mm256_set_m128i(hi, lo));
                    let x8 = _mm256_loadu_si256(xq.as_ptr().add(BLOCK * b) as *const __m256i);
                    let p16 =
                        _mm256_maddubs_epi16(_mm256_sign_epi8(w8, w8), _mm256_sign_epi8(x8, w8));
                    let p32 = _mm256_madd_epi16(p16, ones);
                    acc = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(p32),
                        _mm256_set1_ps(*xd.get_unchecked(b)),
                        acc,
                    );
                    b += 1;
                }
                total = _mm256_fmadd_ps(acc, _mm256_set1_ps(scales[g] * t.scale), total);
                g += 1;
            }
            let s = _mm_add_ps(
                _mm256_castps256_ps128(total),
                _mm256_extractf128_ps(total, 1),
            );
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }
}
