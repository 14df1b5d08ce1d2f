//! The inner loops of the f32 CPU path: table-lookup dot products, table-lookup decoding (the
//! panel GEMM's dequantization) and plain dot products.
//!
//! On x86-64 with AVX2+FMA the 16-entry table lives in two 8-lane registers; eight codes are
//! expanded with one variable shift, looked up with two `vpermps` and a blend, and multiplied
//! into the activations with FMA: the table lookup costs ~4 instructions per 8 weights and never
//! touches memory. With AVX-512F the whole table fits one register and `vpermps` reads 4 index
//! bits, so 16 codes take a `vpermd` (spread two words over 16 lanes), a `vpsrlvd` and one
//! `vpermps`. Elsewhere a portable loop with 8 independent accumulators (which LLVM vectorises)
//! is used. Dot products agree up to f32 summation order; decoding is bit-identical on every
//! path (`v · s + z` as a rounded multiply then a rounded add, never fused).

use crate::pack::code;

/// Instruction set chosen once per call of a public routine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The fastest path this CPU supports.
    pub fn detect() -> Isa {
        *Isa::supported()
            .last()
            .expect("portable is always supported")
    }

    /// Every path this CPU supports, portable first.
    pub fn supported() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                out.push(Isa::Avx2);
                if has!("avx512f") {
                    out.push(Isa::Avx512);
                }
            }
        }
        out
    }

    /// `Σ_j table[code_j] · x_j` over the first `x.len()` codes of `words`.
    #[inline]
    pub fn lut_dot(self, words: &[u32], table: &[f32; 16], x: &[f32]) -> f32 {
        match self {
            Isa::Portable => lut_dot_portable(words, table, x),
            // SAFETY: `Avx2` is only constructed after runtime detection of AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::lut_dot(words, table, x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::lut_dot(words, table, x) },
        }
    }

    /// Write `table[code_j]` for the first `out.len()` codes of `words`.
    #[inline]
    pub fn lut_decode(self, words: &[u32], table: &[f32; 16], out: &mut [f32]) {
        match self {
            Isa::Portable => lut_decode_portable(words, table, out),
            // SAFETY: see `lut_dot`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::lut_decode(words, table, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::lut_decode::<false>(words, table, 0.0, 0.0, out) },
        }
    }

    /// Write `table[code_j] · s + z` (multiply and add rounded separately) for the first
    /// `out.len()` codes of `words`.
    #[inline]
    pub fn lut_decode_affine(
        self,
        words: &[u32],
        table: &[f32; 16],
        s: f32,
        z: f32,
        out: &mut [f32],
    ) {
        match self {
            // SAFETY: see `lut_dot`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::lut_decode::<true>(words, table, s, z, out) },
            _ => {
                self.lut_decode(words, table, out);
                affine(out, s, z);
            }
        }
    }

    /// `Σ a_j · b_j`.
    #[inline]
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Isa::Portable => dot_portable(a, b),
            // SAFETY: see `lut_dot`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::dot(a, b) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::dot(a, b) },
        }
    }
}

/// `v ← v · s + z`, not fused (the reference rounding).
#[inline(always)]
fn affine(out: &mut [f32], s: f32, z: f32) {
    for v in out.iter_mut() {
        *v = *v * s + z;
    }
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = xa[l].mul_add(xb[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn lut_dot_portable(words: &[u32], table: &[f32; 16], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = x.len() / 8;
    for (w, xs) in words[..full].iter().zip(x.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += table[((w >> (4 * l)) & 0xF) as usize] * xs[l];
        }
    }
    let tail: f32 = (full * 8..x.len())
        .map(|j| table[code(words, j) as usize] * x[j])
        .sum();
    acc.iter().sum::<f32>() + tail
}

fn lut_decode_portable(words: &[u32], table: &[f32; 16], out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = table[code(words, j) as usize];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{dot_portable, lut_decode_portable, lut_dot_portable};

    /// Table values for the 8 codes of `word`.
    #[inline(always)]
    unsafe fn lookup8(word: u32, lo: __m256, hi: __m256) -> __m256 {
        // SAFETY: register-only intrinsics; callers run with AVX2 enabled.
        unsafe {
            let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
            let idx = _mm256_and_si256(
                _mm256_srlv_epi32(_mm256_set1_epi32(word as i32), shifts),
                _mm256_set1_epi32(0xF),
            );
            // vpermps uses the low 3 bits of each index; bit 3 picks the upper half of the table.
            let from_lo = _mm256_permutevar8x32_ps(lo, idx);
            let from_hi = _mm256_permutevar8x32_ps(hi, idx);
            let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
            _mm256_blendv_ps(from_lo, from_hi, upper)
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only intrinsics; callers run with AVX2 enabled.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn lut_dot(words: &[u32], table: &[f32; 16], x: &[f32]) -> f32 {
        let full = x.len() / 8;
        assert!(words.len() >= full, "lut_dot: not enough code words");
        // SAFETY (whole body): loads stay within `table` (16 floats), `words[..full]` and
        // `x[..8 * full]`, all checked above.
        unsafe {
            let lo = _mm256_loadu_ps(table.as_ptr());
            let hi = _mm256_loadu_ps(table.as_ptr().add(8));
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut w = 0;
            while w + 2 <= full {
                let v0 = lookup8(*words.get_unchecked(w), lo, hi);
                let v1 = lookup8(*words.get_unchecked(w + 1), lo, hi);
                acc0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x.as_ptr().add(8 * w)), acc0);
                acc1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x.as_ptr().add(8 * w + 8)), acc1);
                w += 2;
            }
            if w < full {
                let v0 = lookup8(*words.get_unchecked(w), lo, hi);
                acc0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x.as_ptr().add(8 * w)), acc0);
            }
            let tail = lut_dot_portable(&words[full..], table, &x[8 * full..]);
            hsum(_mm256_add_ps(acc0, acc1)) + tail
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn lut_decode(words: &[u32], table: &[f32; 16], out: &mut [f32]) {
        let full = out.len() / 8;
        assert!(words.len() >= full, "lut_decode: not enough code words");
        // SAFETY: reads `table` (16), `words[..full]`; writes `out[..8 * full]`.
        unsafe {
            let lo = _mm256_loadu_ps(table.as_ptr());
            let hi = _mm256_loadu_ps(table.as_ptr().add(8));
            for w in 0..full {
                let v = lookup8(*words.get_unchecked(w), lo, hi);
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * w), v);
            }
        }
        lut_decode_portable(&words[full..], table, &mut out[8 * full..]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // Same code as the portable loop; compiled with AVX2+FMA enabled, LLVM vectorises it.
        dot_portable(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{affine, dot_portable, lut_decode_portable, lut_dot_portable};

    /// Table values for the 16 codes of `words[w..w + 2]`.
    #[inline(always)]
    unsafe fn lookup16(words: *const u32, table: __m512) -> __m512 {
        // SAFETY: reads two words; register intrinsics; callers run with AVX-512F.
        unsafe {
            let pair = _mm_loadl_epi64(words as *const __m128i);
            let spread = _mm512_permutexvar_epi32(
                _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                _mm512_castsi128_si512(pair),
            );
            let shifts =
                _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
            // vpermps reads the low 4 bits of each index: the other bits need no mask.
            _mm512_permutexvar_ps(_mm512_srlv_epi32(spread, shifts), table)
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn lut_dot(words: &[u32], table: &[f32; 16], x: &[f32]) -> f32 {
        let full = x.len() / 16;
        assert!(words.len() >= 2 * full, "lut_dot: not enough code words");
        // SAFETY: loads stay within `table` (16), `words[..2 * full]`, `x[..16 * full]`.
        unsafe {
            let t = _mm512_loadu_ps(table.as_ptr());
            let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut w = 0;
            while w + 2 <= full {
                let v0 = lookup16(words.as_ptr().add(2 * w), t);
                let v1 = lookup16(words.as_ptr().add(2 * w + 2), t);
                acc0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x.as_ptr().add(16 * w)), acc0);
                acc1 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x.as_ptr().add(16 * w + 16)), acc1);
                w += 2;
            }
            if w < full {
                let v0 = lookup16(words.as_ptr().add(2 * w), t);
                acc0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x.as_ptr().add(16 * w)), acc0);
            }
            let tail = lut_dot_portable(&words[2 * full..], table, &x[16 * full..]);
            _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail
        }
    }

    /// `table[code]`, times `s` plus `z` when `AFFINE`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn lut_decode<const AFFINE: bool>(
        words: &[u32],
        table: &[f32; 16],
        s: f32,
        z: f32,
        out: &mut [f32],
    ) {
        let full = out.len() / 16;
        assert!(words.len() >= 2 * full, "lut_decode: not enough code words");
        // SAFETY: reads `table` (16), `words[..2 * full]`; writes `out[..16 * full]`.
        unsafe {
            let t = _mm512_loadu_ps(table.as_ptr());
            let (vs, vz) = (_mm512_set1_ps(s), _mm512_set1_ps(z));
            for w in 0..full {
                let mut v = lookup16(words.as_ptr().add(2 * w), t);
                if AFFINE {
                    v = _mm512_add_ps(_mm512_mul_ps(v, vs), vz);
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * w), v);
            }
        }
        let tail = &mut out[16 * full..];
        lut_decode_portable(&words[2 * full..], table, tail);
        if AFFINE {
            affine(tail, s, z);
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_portable(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::pack_row;

    #[test]
    fn every_isa_agrees_with_scalar_lookup() {
        let table: [f32; 16] = std::array::from_fn(|i| (i as f32 - 7.5) * 0.37);
        for k in [1usize, 7, 8, 9, 16, 23, 64, 133] {
            let codes: Vec<u8> = (0..k).map(|j| ((j * 7 + 3) % 16) as u8).collect();
            let mut words = vec![0u32; k.div_ceil(8)];
            pack_row(&codes, &mut words);
            let x: Vec<f32> = (0..k).map(|j| ((j % 11) as f32 - 5.0) * 0.1).collect();
            let expect: f32 = codes
                .iter()
                .zip(&x)
                .map(|(&c, x)| table[c as usize] * x)
                .sum();
            for isa in Isa::supported() {
                let got = isa.lut_dot(&words, &table, &x);
                assert!(
                    (got - expect).abs() <= 1e-4 * (1.0 + expect.abs()),
                    "{isa:?} k={k}"
                );
                let mut dec = vec![0.0; k];
                isa.lut_decode(&words, &table, &mut dec);
                let plain: Vec<f32> = codes.iter().map(|&c| table[c as usize]).collect();
                assert_eq!(dec, plain, "{isa:?} k={k}");
                let d = isa.dot(&dec, &x);
                assert!(
                    (d - expect).abs() <= 1e-4 * (1.0 + expect.abs()),
                    "{isa:?} k={k}"
                );
                let (s, z) = (0.37f32, -1.3f32);
                isa.lut_decode_affine(&words, &table, s, z, &mut dec);
                let affine: Vec<f32> = plain.iter().map(|&v| v * s + z).collect();
                assert_eq!(dec, affine, "{isa:?} k={k}");
            }
        }
        let isas: Vec<String> = Isa::supported().iter().map(|i| format!("{i:?}")).collect();
        let not_run: Vec<&str> = ["Portable", "Avx2", "Avx512"]
            .into_iter()
            .filter(|n| !isas.iter().any(|i| i == n))
            .collect();
        eprintln!(
            "f32 lookup paths checked: {isas:?}; not run (this CPU or target lacks them): {not_run:?}"
        );
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let expected = 1
                + usize::from(has!("avx2") && has!("fma"))
                + usize::from(has!("avx2") && has!("fma") && has!("avx512f"));
            assert_eq!(isas.len(), expected, "paths checked vs the CPU's features");
        }
    }
}
