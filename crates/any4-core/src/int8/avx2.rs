//! The AVX2 int8 kernel.
//!
//! Activation layout (`q_stride = blocks · 32`): per pair of blocks `(b, b+1)`, 64 bytes
//! `[b even, b+1 even, b odd, b+1 odd]` (16 each), so one 32-byte load of codes (64 weights)
//! splits into low nibbles (even positions) and high nibbles (odd positions) that line up with
//! two 32-byte activation loads, with no lane shuffling; a trailing unpaired block is
//! `[even, odd]`. `dv` holds per pair 8 lanes `[d_b ×4, d_{b+1} ×4]` (the order of the sums).
//!
//! Two `vpshufb` look up 64 table bytes; `vpmaddubsw` needs one unsigned operand, so the signed
//! table goes in as `|q|` and the activations take its sign (`vpsignb`): `|q| ≤ 128` and
//! `|xq| ≤ 127` keep each pair sum within i16 (2 · 128 · 127 < 2¹⁵). `vpmaddwd` widens to 8
//! int32 partial sums (4 per block), scaled per block in f32. Measured on a 2-core Zen 3 VM:
//! ~10 vector µops per 32 weights.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use std::ops::Range;

use super::{Acts, BLOCK, Int8Table, PARAMS_AHEAD, Weights, block_step, table_step, zero_terms};

/// [`super::int8_table`] in 16 lanes, bit-identical (`cvtps2dq` rounds ties to even, as
/// `round_even`): called once per weight row per call when the tables are not precomputed.
#[target_feature(enable = "avx2,fma")]
pub fn int8_table(t: &[f32; 16]) -> Int8Table {
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
        let (scale, inv) = table_step(lo, hi);
        let (vl, vi) = (_mm256_set1_ps(lo), _mm256_set1_ps(inv));
        let (zero, top, off) = (
            _mm256_setzero_si256(),
            _mm256_set1_epi32(255),
            _mm256_set1_epi32(128),
        );
        let u = |v| {
            let r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(v, vl), vi));
            _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(r, zero), top), off)
        };
        let (qa, qb) = (u(a), u(b));
        // i32 → i16 (per 128-bit lane: a0–3 b0–3 | a4–7 b4–7), restore order, → i8.
        let p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qa, qb), 0b11_01_10_00);
        let p8 = _mm_packs_epi16(
            _mm256_castsi256_si128(p16),
            _mm256_extracti128_si256(p16, 1),
        );
        let mut q = [0i8; 16];
        _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, p8);
        Int8Table {
            q,
            scale,
            mid: lo + 128.0 * scale,
        }
    }
}

/// `(Σ z·xs, Σ s·xs)` over the groups of a row, 8 lanes and a scalar tail.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub fn zero_terms_avx2(z: &[f32], s: &[f32], xs: &[f32]) -> (f32, f32) {
    let n = xs.len();
    assert!(z.len() >= n && s.len() >= n, "zero_terms: lengths");
    let full = n / 8 * 8;
    // SAFETY: loads stay within the first `full` elements of each slice.
    let (vz, vs) = unsafe {
        let (mut az, mut as_) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for g in (0..full).step_by(8) {
            let x = _mm256_loadu_ps(xs.as_ptr().add(g));
            az = _mm256_fmadd_ps(_mm256_loadu_ps(z.as_ptr().add(g)), x, az);
            as_ = _mm256_fmadd_ps(_mm256_loadu_ps(s.as_ptr().add(g)), x, as_);
        }
        (hsum(az), hsum(as_))
    };
    let (tz, ts) = zero_terms(&z[full..n], &s[full..n], &xs[full..]);
    (vz + tz, vs + ts)
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only; callers run with AVX2 enabled.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

/// Quantize `x: [m, k]` into the pair layout (module docs); same integers as the portable
/// quantizer.
#[target_feature(enable = "avx2,fma")]
pub fn quantize_acts(x: &[f32], m: usize, k: usize, group: usize, a: &mut Acts) {
    let blocks = k / BLOCK;
    let pairs = blocks / 2;
    a.reset(m, blocks, k.div_ceil(group), blocks * BLOCK, pairs * 8);
    const HALF: usize = BLOCK / 2;
    for i in 0..m {
        for b in 0..blocks {
            let xs: &[f32; BLOCK] = x[i * k + b * BLOCK..][..BLOCK].try_into().expect("block");
            // SAFETY: AVX2 is enabled; loads read `xs` (32 floats).
            let (r, d) = unsafe { quantize_block(xs) };
            // Where this block's even and odd positions go.
            let (even, odd) = if b / 2 < pairs {
                let base = (b / 2) * 2 * BLOCK + (b % 2) * HALF;
                (base, base + BLOCK)
            } else {
                (b * BLOCK, b * BLOCK + HALF)
            };
            let q = &mut a.q[i * a.q_stride..][..blocks * BLOCK];
            let (ev, od): ([i8; HALF], [i8; HALF]) = {
                let mut bytes = [0i8; BLOCK];
                // SAFETY: stores 32 bytes into `bytes`.
                unsafe { _mm256_storeu_si256(bytes.as_mut_ptr() as *mut __m256i, r) };
                (
                    bytes[..HALF].try_into().expect("16"),
                    bytes[HALF..].try_into().expect("16"),
                )
            };
            q[even..even + HALF].copy_from_slice(&ev);
            q[odd..odd + HALF].copy_from_slice(&od);
            a.d[i * blocks + b] = d;
            if b / 2 < pairs {
                a.dv[i * a.dv_stride + (b / 2) * 8 + (b % 2) * 4..][..4].fill(d);
            }
        }
    }
    a.group_sums(x, k, group);
}

/// One block → `[16 even positions, 16 odd positions]` as int8, and its scale `d`.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block(xs: &[f32; BLOCK]) -> (__m256i, f32) {
    // SAFETY: loads read the 32 floats of `xs`.
    unsafe {
        let p = xs.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let m01 = _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs));
        let m23 = _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs));
        let mx = _mm256_max_ps(m01, m23);
        let mx = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        let mx = _mm_max_ps(mx, _mm_movehl_ps(mx, mx));
        let amax = _mm_cvtss_f32(_mm_max_ss(mx, _mm_shuffle_ps(mx, mx, 1)));
        let (d, inv) = block_step(amax);
        let vi = _mm256_set1_ps(inv);
        let c = |v| _mm256_cvtps_epi32(_mm256_mul_ps(v, vi));
        // packs: per lane [0–3, 8–11, 16–19, 24–27 | 4–7, 12–15, 20–23, 28–31] (dwords).
        let b8 = _mm256_packs_epi16(
            _mm256_packs_epi32(c(v[0]), c(v[1])),
            _mm256_packs_epi32(c(v[2]), c(v[3])),
        );
        let nat = _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // Per lane: 8 even positions, then 8 odd; then gather the evens of both lanes.
        let eo = _mm256_shuffle_epi8(
            nat,
            _mm256_setr_epi8(
                0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1,
                3, 5, 7, 9, 11, 13, 15,
            ),
        );
        (_mm256_permute4x64_epi64(eo, 0b11_01_10_00), d)
    }
}

/// `Σ_g s_g Σ_{b∈g} d_b Σ_{j∈b} q[code_j] · xq_j` over the full blocks of one row, for
/// activation row `i` of `a` (pair layout); `group_blocks` blocks share one scale.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn row_dot(
    words: &[u32],
    q: &[i8; 16],
    a: &Acts,
    i: usize,
    scales: &[f32],
    group_blocks: usize,
) -> f32 {
    let blocks = a.blocks;
    if blocks == 0 {
        return 0.0;
    }
    let pairs = blocks / 2;
    let xq = &a.q[i * a.q_stride..][..blocks * BLOCK];
    let xd = &a.d[i * blocks..][..blocks];
    let xd8 = &a.dv[i * a.dv_stride..][..pairs * 8];
    assert!(
        group_blocks > 0 && words.len() * 8 >= blocks * BLOCK,
        "row_dot: lengths"
    );
    assert!(scales.len() * group_blocks >= blocks, "row_dot: scales");
    // SAFETY: every load below stays within `words[..4 * blocks]`, `xq[..32 * blocks]`,
    // `xd8[..8 * pairs]`, `xd[..blocks]`, `scales[..(blocks - 1) / group_blocks + 1]` and
    // `q` (16 bytes), all checked above.
    unsafe {
        let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(q.as_ptr() as *const __m128i));
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
            let plo = _mm256_maddubs_epi16(_mm256_sign_epi8(wlo, wlo), _mm256_sign_epi8(xlo, wlo));
            let phi = _mm256_maddubs_epi16(_mm256_sign_epi8(whi, whi), _mm256_sign_epi8(xhi, whi));
            let p32 = _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones));
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
        sum
    }
}

/// Batch 1, `cols` a multiple of [`BLOCK`]: every row in `rows` against activation row 0,
/// written to `out[row]`, in one target-feature context so that the row kernel and the zero
/// terms inline into the loop (see `avx512::gemv_units`), each row's parameters prefetched
/// [`PARAMS_AHEAD`] rows ahead.
///
/// # Safety
/// AVX2 and FMA; `out` valid for `g.rows` writes, the indices of `rows` written by no one
/// else meanwhile; `a` quantized by [`quantize_acts`] for this matrix, with one activation row.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv_rows(g: &Weights<'_>, a: &Acts, rows: Range<usize>, out: *mut f32) {
    assert!(
        a.groups == g.groups && a.xsum.len() >= a.groups,
        "gemv_rows: activations"
    );
    let xs = &a.xsum[..a.groups];
    for r in rows {
        g.prefetch(r + PARAMS_AHEAD);
        let (row, scale, mid, zeros) = g.row(r);
        // SAFETY: the contract above; `row_dot` checks its lengths.
        unsafe {
            let dot = row_dot(row.words, row.q, a, 0, row.scales, g.group_blocks);
            let (zx, sx) = zero_terms_avx2(zeros, row.scales, xs);
            *out.add(r) = scale * dot + zx + mid * sx;
        }
    }
}
