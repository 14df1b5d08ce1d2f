//! The AVX-512 int8 kernels (VNNI, optionally VBMI).
//!
//! One step reads 64 bytes of codes: 128 weights, 4 blocks of 32, one block per 128-bit lane
//! (the low nibbles of a lane are the block's even positions, the high nibbles its odd ones).
//! Activation layout (`q_stride = quads · 128`): per quad of blocks, 64 bytes of even positions
//! `[b0, b1, b2, b3]` (16 each) then 64 bytes of odd positions, zero-padded to a whole quad, so
//! the two nibble vectors line up with two 64-byte activation loads.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and adds groups of 4 into int32 lanes (lane `l`
//! of a quad's sum belongs to block `l / 4`). The table goes in unsigned, `u = q + 128`, looked
//! up with `vpshufb` on the nibbles (`avx512-vnni`) or with VBMI's `vpermb` (`avx512-vbmi`:
//! `vpermb` reads 6 index bits, and the 16-byte table broadcast to 64 bytes repeats every 16, so
//! the high nibble's neighbouring bits need no mask). `Σ u·xq = Σ q·xq + 128 · Σ xq`: the
//! second term is precomputed per lane (`corr = −128 · Σ xq`) and seeds the accumulator, so the
//! int32 result is exactly the signed dot. Lanes are converted to f32 and scaled by the block's
//! `d` and the group's `s` (one FMA per quad, two accumulators to hide its latency).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use std::ops::Range;

use super::{Acts, BLOCK, PARAMS_AHEAD, RowRef, Weights, block_step};

/// Software prefetch distance in quads (64 bytes each) along a row's codes: 4 KB, the same
/// position in the next row, which the same task reads next. Measured on the 2-core EPYC VM
/// (16384 × 8192 from DRAM, one thread): ~3.3 ms without, ~3.0 ms with (1–4 KB all help a
/// little; the hardware prefetcher does most of it).
const PREFETCH: usize = 64;
/// Blocks per 64-byte step.
const QUAD: usize = 4;

/// `(Σ z·xs, Σ s·xs)` over the groups of a row, 16 lanes (the last load masked).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
#[inline]
pub fn zero_terms_avx512(z: &[f32], s: &[f32], xs: &[f32]) -> (f32, f32) {
    let n = xs.len();
    assert!(z.len() >= n && s.len() >= n, "zero_terms: lengths");
    // SAFETY: loads stay within the first `n` elements of each slice (the last one masked).
    unsafe {
        let (mut az, mut as_) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut g = 0;
        while g < n {
            let mask: u16 = if n - g >= 16 {
                u16::MAX
            } else {
                (1u16 << (n - g)) - 1
            };
            let x = _mm512_maskz_loadu_ps(mask, xs.as_ptr().add(g));
            az = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, z.as_ptr().add(g)), x, az);
            as_ = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, s.as_ptr().add(g)), x, as_);
            g += 16;
        }
        (_mm512_reduce_add_ps(az), _mm512_reduce_add_ps(as_))
    }
}

/// Quantize `x: [m, k]` into the quad layout (module docs); same integers as the portable
/// quantizer.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
pub fn quantize_acts(x: &[f32], m: usize, k: usize, group: usize, a: &mut Acts) {
    let blocks = k / BLOCK;
    let quads = blocks.div_ceil(QUAD);
    a.reset(
        m,
        blocks,
        k.div_ceil(group),
        quads * QUAD * BLOCK,
        quads * 16,
    );
    a.corr.resize(m * quads * 16, 0);
    for i in 0..m {
        let q = &mut a.q[i * a.q_stride..][..a.q_stride];
        let dv = &mut a.dv[i * a.dv_stride..][..a.dv_stride];
        // Padding blocks of the last quad: zero activations and scales.
        dv[blocks * 4..].fill(0.0);
        if !blocks.is_multiple_of(QUAD) {
            let last = &mut q[(quads - 1) * 128..];
            last[(blocks % QUAD) * 16..64].fill(0);
            last[64 + (blocks % QUAD) * 16..].fill(0);
        }
        for b in 0..blocks {
            let xs: &[f32; BLOCK] = x[i * k + b * BLOCK..][..BLOCK].try_into().expect("block");
            let at = (b / QUAD) * 128 + (b % QUAD) * 16;
            // SAFETY: AVX-512 is enabled; `quantize_block` reads `xs` and writes 16 bytes at
            // `at` and at `at + 64`, both within this quad of `q`.
            let d = unsafe { quantize_block(xs, q[at..at + 80].as_mut_ptr()) };
            a.d[i * blocks + b] = d;
            dv[b * 4..b * 4 + 4].fill(d);
        }
        let corr = &mut a.corr[i * quads * 16..][..quads * 16];
        for (j, c) in corr.chunks_exact_mut(16).enumerate() {
            // SAFETY: reads the 128 bytes of quad `j`, writes 16 int32.
            unsafe {
                let lo = _mm512_loadu_si512(q.as_ptr().add(j * 128) as *const _);
                let hi = _mm512_loadu_si512(q.as_ptr().add(j * 128 + 64) as *const _);
                let k128 = _mm512_set1_epi8(i8::MIN);
                let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, lo);
                let s = _mm512_dpbusd_epi32(s, k128, hi);
                _mm512_storeu_si512(
                    c.as_mut_ptr() as *mut _,
                    _mm512_sub_epi32(_mm512_setzero_si512(), s),
                );
            }
        }
    }
    a.group_sums(x, k, group);
}

/// One block: 16 even positions to `out`, 16 odd ones to `out + 64`; returns `d`.
///
/// # Safety
/// AVX-512F; `out .. out + 80` writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn quantize_block(xs: &[f32; BLOCK], out: *mut i8) -> f32 {
    // SAFETY: loads read the 32 floats of `xs`; stores per the contract.
    unsafe {
        let v0 = _mm512_loadu_ps(xs.as_ptr());
        let v1 = _mm512_loadu_ps(xs.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let (d, inv) = block_step(amax);
        let vi = _mm512_set1_ps(inv);
        let c0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vi));
        let c1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vi));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let ev = _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(c0, even, c1));
        let od = _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(c0, odd, c1));
        _mm_storeu_si128(out as *mut __m128i, ev);
        _mm_storeu_si128(out.add(64) as *mut __m128i, od);
        d
    }
}

/// `Σ_g s_g Σ_{b∈g} d_b Σ_{j∈b} q[code_j] · xq_j` over the full blocks of `R` weight rows (1
/// or 2) and `MI` activation rows `i0 .. i0 + MI` of `a` (quad layout, `MI` ≤ 4): `out[r][i]`.
/// `group_blocks` blocks share one scale; `vbmi` picks the `vpermb` lookup.
///
/// Two weight rows far apart in memory are read as two concurrent streams and share the
/// activation loads; several activation rows (batched decode) share each code load and lookup.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VNNI and FMA, and AVX-512 VBMI when `vbmi`.
pub unsafe fn rows_dot<const R: usize, const MI: usize>(
    vbmi: bool,
    rows: [RowRef<'_>; R],
    a: &Acts,
    i0: usize,
    group_blocks: usize,
) -> [[f32; MI]; R] {
    let blocks = a.blocks;
    if blocks == 0 {
        return [[0.0; MI]; R];
    }
    let groups = rows[0].scales.len();
    for r in &rows {
        assert!(
            group_blocks > 0 && r.words.len() * 8 >= blocks * BLOCK,
            "rows_dot: lengths"
        );
        assert!(
            r.scales.len() == groups && groups * group_blocks >= blocks,
            "rows_dot: scales"
        );
    }
    assert!(
        a.q.len() >= (i0 + MI) * a.q_stride
            && a.corr.len() >= (i0 + MI) * a.dv_stride
            && a.dv.len() >= (i0 + MI) * a.dv_stride,
        "rows_dot: activations"
    );
    let lanes = group_blocks < QUAD && groups > 1;
    // SAFETY: the caller guarantees the CPU features; lengths are checked above.
    unsafe {
        match (vbmi, lanes) {
            (true, true) => rows_vbmi::<R, MI, true>(rows, a, i0, group_blocks),
            (true, false) => rows_vbmi::<R, MI, false>(rows, a, i0, group_blocks),
            (false, true) => rows_vnni::<R, MI, true>(rows, a, i0, group_blocks),
            (false, false) => rows_vnni::<R, MI, false>(rows, a, i0, group_blocks),
        }
    }
}

/// The loop of [`rows_dot`], generated once per lookup instruction (`$vbmi`) so that each copy
/// (closures included) is compiled with its target features. `LANES`: groups shorter than a
/// quad (32 or 64), so the scale differs per lane; otherwise every quad lies in one group (or
/// the row is one group).
///
/// # Safety
/// As [`rows_dot`], with lengths checked by it.
macro_rules! rows_kernel {
    ($name:ident, $features:literal, $vbmi:literal) => {
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $name<const R: usize, const MI: usize, const LANES: bool>(
            rows: [RowRef<'_>; R],
            a: &Acts,
            i0: usize,
            group_blocks: usize,
        ) -> [[f32; MI]; R] {
            let blocks = a.blocks;
            let quads = blocks.div_ceil(QUAD);
            let full = blocks / QUAD;
            let groups = rows[0].scales.len();
            // SAFETY: code loads read `words[..16 · blocks]` bytes of each row (the last quad
            // masked to its full blocks; prefetches may point past it and never fault);
            // activation loads read quad `j < quads` of rows `i0 .. i0 + MI`; scale loads stay
            // within (or are masked to) `scales`; all checked by `rows_dot`.
            unsafe {
                let xq: [*const i8; MI] =
                    std::array::from_fn(|i| a.q.as_ptr().add((i0 + i) * a.q_stride));
                let dv: [*const f32; MI] =
                    std::array::from_fn(|i| a.dv.as_ptr().add((i0 + i) * a.dv_stride));
                let corr: [*const i32; MI] =
                    std::array::from_fn(|i| a.corr.as_ptr().add((i0 + i) * a.dv_stride));
                let codes: [*const u8; R] =
                    std::array::from_fn(|r| rows[r].words.as_ptr() as *const u8);
                let scales: [*const f32; R] = std::array::from_fn(|r| rows[r].scales.as_ptr());
                let lut: [__m512i; R] = std::array::from_fn(|r| {
                    _mm512_broadcast_i32x4(_mm_xor_si128(
                        _mm_loadu_si128(rows[r].q.as_ptr() as *const __m128i),
                        _mm_set1_epi8(i8::MIN),
                    ))
                });
                let nib = _mm512_set1_epi8(0x0F);
                let tail_mask: u64 = (1u64 << ((blocks % QUAD) * 16)) - 1;
                // Lane l of a quad → its scale among the quad's first: (l / 4) / group_blocks.
                let sidx = if group_blocks == 1 {
                    _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                } else {
                    _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                };
                let per_quad = (QUAD / group_blocks.max(1)).max(1);
                // Group sizes are powers of two, so quad `j`'s group is `j >> shift` (one
                // group: 0).
                let shift = if groups == 1 {
                    u64::BITS - 1
                } else {
                    (group_blocks / QUAD).max(1).trailing_zeros()
                };
                let scale = |r: usize, j: usize| -> __m512 {
                    if LANES {
                        let first = j * per_quad;
                        let n = (groups - first).min(per_quad);
                        let s = _mm512_maskz_loadu_ps((1u16 << n) - 1, scales[r].add(first));
                        _mm512_permutexvar_ps(sidx, s)
                    } else {
                        _mm512_set1_ps(*scales[r].add(j >> shift))
                    }
                };
                // Quad `j` (`masked`: the last, partial one): `t[r][i] += s · d_b · Σ q·xq`
                // per lane, for every weight row `r` and activation row `i`.
                let quad = |t: &mut [[__m512; MI]; R], j: usize, masked: bool| {
                    for r in 0..R {
                        // `wrapping_add`: may point past the buffer; a prefetch never faults.
                        _mm_prefetch::<_MM_HINT_T0>(
                            codes[r].wrapping_add(64 * (j + PREFETCH)) as *const i8
                        );
                        let bytes = if masked {
                            _mm512_maskz_loadu_epi8(tail_mask, codes[r].add(64 * j) as *const i8)
                        } else {
                            _mm512_loadu_si512(codes[r].add(64 * j) as *const _)
                        };
                        let hi = _mm512_srli_epi16(bytes, 4);
                        let (wl, wh) = if $vbmi {
                            (
                                _mm512_permutexvar_epi8(bytes, lut[r]),
                                _mm512_permutexvar_epi8(hi, lut[r]),
                            )
                        } else {
                            (
                                _mm512_shuffle_epi8(lut[r], _mm512_and_si512(bytes, nib)),
                                _mm512_shuffle_epi8(lut[r], _mm512_and_si512(hi, nib)),
                            )
                        };
                        let s = scale(r, j);
                        for i in 0..MI {
                            let c = _mm512_loadu_si512(corr[i].add(16 * j) as *const _);
                            let xl = _mm512_loadu_si512(xq[i].add(128 * j) as *const _);
                            let xh = _mm512_loadu_si512(xq[i].add(128 * j + 64) as *const _);
                            let acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, wl, xl), wh, xh);
                            let d = _mm512_loadu_ps(dv[i].add(16 * j));
                            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), d);
                            t[r][i] = _mm512_fmadd_ps(f, s, t[r][i]);
                        }
                    }
                };
                // Two accumulators per (row, activation row) hide the FMA latency.
                let zero = [[_mm512_setzero_ps(); MI]; R];
                let (mut t0, mut t1) = (zero, zero);
                let mut j = 0;
                while j + 2 <= full {
                    quad(&mut t0, j, false);
                    quad(&mut t1, j + 1, false);
                    j += 2;
                }
                if j < full {
                    quad(&mut t0, j, false);
                }
                if full < quads {
                    quad(&mut t1, full, true);
                }
                std::array::from_fn(|r| {
                    std::array::from_fn(|i| _mm512_reduce_add_ps(_mm512_add_ps(t0[r][i], t1[r][i])))
                })
            }
        }
    };
}

rows_kernel!(rows_vnni, "avx512f,avx512bw,avx512vnni,fma", false);
rows_kernel!(
    rows_vbmi,
    "avx512f,avx512bw,avx512vnni,avx512vbmi,fma",
    true
);

/// Batch 1, `cols` a multiple of [`BLOCK`]: for each `p` in `units`, rows `p` and `p + half`
/// (`p` alone when `p + half ≥ rows`) against activation row 0, written to `out[row]`. One
/// target-feature context for the whole loop, so the row kernel, the zero terms and the
/// bookkeeping inline into it (called row by row they cost as much as the kernel itself on
/// 576-wide rows).
///
/// # Safety
/// The CPU features of [`rows_dot`] (VBMI when `vbmi`); `out` valid for `g.rows` writes, the
/// indices of these rows written by no one else meanwhile; `a` quantized by [`quantize_acts`]
/// for this matrix, with one activation row.
pub(crate) unsafe fn gemv_units(
    vbmi: bool,
    g: &Weights<'_>,
    a: &Acts,
    units: Range<usize>,
    half: usize,
    out: *mut f32,
) {
    assert!(
        a.blocks > 0
            && g.group_blocks > 0
            && g.words_per_row * 8 >= a.blocks * BLOCK
            && g.groups * g.group_blocks >= a.blocks
            && a.groups == g.groups
            && a.q.len() >= a.q_stride
            && a.corr.len() >= a.dv_stride
            && a.dv.len() >= a.dv_stride,
        "gemv_units: lengths"
    );
    let lanes = g.group_blocks < QUAD && g.groups > 1;
    // SAFETY: forwarded contract; the lengths `rows_dot` checks are checked above (and
    // `Weights::row` slices each row's buffers).
    unsafe {
        match (vbmi, lanes) {
            (true, true) => gemv_vbmi::<true>(g, a, units, half, out),
            (true, false) => gemv_vbmi::<false>(g, a, units, half, out),
            (false, true) => gemv_vnni::<true>(g, a, units, half, out),
            (false, false) => gemv_vnni::<false>(g, a, units, half, out),
        }
    }
}

/// The loop of [`gemv_units`], per lookup instruction (see [`rows_kernel`]).
macro_rules! gemv_kernel {
    ($name:ident, $rows:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const LANES: bool>(
            g: &Weights<'_>,
            a: &Acts,
            units: Range<usize>,
            half: usize,
            out: *mut f32,
        ) {
            let xs = &a.xsum[..a.groups];
            for p in units {
                g.prefetch(p + PARAMS_AHEAD);
                g.prefetch(p + half + PARAMS_AHEAD);
                let q = p + half;
                // SAFETY (both arms): the contract of `gemv_units`; rows in bounds.
                unsafe {
                    if q < g.rows {
                        let ((r0, s0, m0, z0), (r1, s1, m1, z1)) = (g.row(p), g.row(q));
                        let [[d0], [d1]] = $rows::<2, 1, LANES>([r0, r1], a, 0, g.group_blocks);
                        let (zx0, sx0) = zero_terms_avx512(z0, r0.scales, xs);
                        let (zx1, sx1) = zero_terms_avx512(z1, r1.scales, xs);
                        *out.add(p) = s0 * d0 + zx0 + m0 * sx0;
                        *out.add(q) = s1 * d1 + zx1 + m1 * sx1;
                    } else {
                        let (r0, s0, m0, z0) = g.row(p);
                        let [[d0]] = $rows::<1, 1, LANES>([r0], a, 0, g.group_blocks);
                        let (zx0, sx0) = zero_terms_avx512(z0, r0.scales, xs);
                        *out.add(p) = s0 * d0 + zx0 + m0 * sx0;
                    }
                }
            }
        }
    };
}

gemv_kernel!(gemv_vnni, rows_vnni, "avx512f,avx512bw,avx512vnni,fma");
gemv_kernel!(
    gemv_vbmi,
    rows_vbmi,
    "avx512f,avx512bw,avx512vnni,avx512vbmi,fma"
);
