//! The fast CPU decode path: int8 activations, int8 tables, integer dot products.
//!
//! Batch-1 decode is memory-bound only if the arithmetic keeps up with DRAM. The exact path
//! ([`MatmulPrecision::Exact`]) spends ~1 instruction per weight on the f32 lookup; this path
//! looks up 32–64 weights per instruction and multiplies them with integer dot products.
//!
//! ## Numerics (shared by every kernel, and by any other int8 implementation of the format)
//! - **Tables** ([`int8_table`]): each row's 16-entry table `t` is mapped onto 256 even steps
//!   between its extremes: `scale = (max t − min t) / 255`, `u[c] = round((t[c] − min t) / scale)`
//!   in `[0, 255]` (ties to even), stored centred as `q[c] = u[c] − 128` in `[−128, 127]` with
//!   `mid = min t + 128 · scale`, so `t[c] ≈ mid + scale · q[c]` with an error ≤ `scale / 2`
//!   (≤ 1/30 of a level of a `[0, 15]` table). A constant table gets `scale = 0`, `mid = min t`.
//! - **Activations**: per block of [`BLOCK`] = 32 consecutive inputs, `d = max|x| / 127` and
//!   `xq = round(x / d)` in `[−127, 127]` (ties to even; a block whose `1/d` overflows counts as
//!   zero), as llama.cpp's Q8 activations.
//! - **Row result**: with `s_g`, `z_g` the row's group scale and zero and `Σ_g x` the exact f32 sum
//!   of the activations of group `g`,
//!   `y = scale · Σ_g s_g Σ_{b∈g} d_b Σ_{j∈b} q[code_j] · xq_j  +  Σ_g (z_g + s_g · mid) · Σ_g x`
//!   `    + Σ_{tail j} s_g · (t[code_j] − mid) · x_j`:
//!   the block dots are exact in int32; `mid` is folded into the zero term, so the activation
//!   rounding error is weighted by the centred `|t − mid| ≤ range / 2`; the `cols mod 32` tail
//!   columns use the exact f32 table.
//!
//! Error: relative output error ~0.5% (the two int8 roundings), far below the 4-bit quantization
//! error itself; tests bound it by the worst case of both roundings.
//!
//! ## Kernels ([`Int8Kernel`], chosen at run time)
//! - `portable`: scalar integer code, the reference the SIMD kernels are tested against;
//! - `avx2` ([`avx2`]): `vpshufb` on 32 bytes of codes (64 weights) and the
//!   `vpsignb`/`vpmaddubsw`/`vpmaddwd` idiom on the signed table;
//! - `avx512-vnni`, `avx512-vbmi` ([`avx512`]): 64 bytes of codes (128 weights, 4 blocks) per
//!   step, the table looked up unsigned (`u = q + 128`, `vpshufb` or VBMI's `vpermb`) and
//!   multiplied with `vpdpbusd` (unsigned × signed); the `−128 · Σ xq` correction that turns
//!   `u` back into `q` is precomputed per activation block and seeds the accumulator.

mod avx2;
mod avx512;
mod driver;
mod portable;
mod split;

pub use driver::Int8Kernel;

use crate::error::{Error, Result};
use crate::quantize::TABLE_LEN;

/// Activation block length of the int8 path.
pub const BLOCK: usize = 32;

/// How the CPU matmul treats activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 activations and tables, f32 accumulation: the reference.
    #[default]
    Exact,
    /// int8 activations (per block of 32) and int8 tables, int32 dot products: ~4× fewer
    /// instructions per weight, on the fastest SIMD [`Int8Kernel`] of the CPU. Falls back to
    /// `Exact` on CPUs without one (no AVX2).
    Int8Activations,
}

/// One row's table in int8 form: `t[c] ≈ mid + scale · q[c]` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int8Table {
    /// Centred codes in `[−128, 127]`; `q[c] as u8 ^ 0x80` is the unsigned form `u[c]`.
    pub q: [i8; TABLE_LEN],
    /// Step between consecutive int8 values (0 for a constant table).
    pub scale: f32,
    /// The table value of `q = 0`: `min t + 128 · scale`.
    pub mid: f32,
}

/// Round to nearest, ties to even, for `|v| < 2²²`, without a libm call (`f32::round_ties_even`
/// is one on baseline x86-64): adding and removing `1.5 · 2²³` leaves the integer part rounded
/// in the default rounding mode, exactly as the SIMD kernels' `cvtps2dq` does.
#[inline(always)]
pub(crate) fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// The int8 form of one 16-entry table (the numerics of the module docs). Deterministic: every
/// kernel's own table conversion gives bit-identical results (tests check it).
pub fn int8_table(t: &[f32; TABLE_LEN]) -> Int8Table {
    let (mut lo, mut hi) = (t[0], t[0]);
    for &v in &t[1..] {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (scale, inv) = table_step(lo, hi);
    Int8Table {
        q: std::array::from_fn(|c| {
            // `as` saturates (and maps NaN to 0): u stays in [0, 255] for any input.
            (round_even((t[c] - lo) * inv) as i32).clamp(0, 255) as i8 ^ i8::MIN
        }),
        scale,
        mid: lo + 128.0 * scale,
    }
}

/// `(scale, 1 / scale)` of a table spanning `[lo, hi]`; `(0, 0)` when constant or so narrow
/// that `1 / scale` overflows (then every `u` is 0 and `mid = lo`).
#[inline(always)]
pub(crate) fn table_step(lo: f32, hi: f32) -> (f32, f32) {
    let scale = (hi - lo) / 255.0;
    let inv = 1.0 / scale;
    if scale > 0.0 && inv.is_finite() {
        (scale, inv)
    } else {
        (0.0, 0.0)
    }
}

/// `(d, 1 / d)` of an activation block with `max|x| = amax`; `(0, 0)` for an all-zero block or
/// one so small that `1 / d` overflows (it would round to −128).
#[inline(always)]
pub(crate) fn block_step(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let inv = 1.0 / d;
    if d > 0.0 && inv.is_finite() {
        (d, inv)
    } else {
        (0.0, 0.0)
    }
}

/// Words per row of packed int8 tables ([`int8_tables`]): words 0–3 hold the 16 codes `q`
/// (word `w` holds `q[4w .. 4w + 4]`, lowest byte first: the row's 16 bytes in little-endian
/// order are `q[0..16]`), word 4 the f32 bits of `scale`, word 5 those of `mid`. One integer
/// buffer, so a dtype cast of a model's float parameters can never round `scale` or `mid`.
pub const INT8_TABLE_WORDS: usize = 6;

impl Int8Table {
    /// The packed form (see [`INT8_TABLE_WORDS`]).
    pub fn to_words(&self) -> [u32; INT8_TABLE_WORDS] {
        let b = self.q.map(|v| v as u8);
        let word =
            |w: usize| u32::from_le_bytes([b[4 * w], b[4 * w + 1], b[4 * w + 2], b[4 * w + 3]]);
        [
            word(0),
            word(1),
            word(2),
            word(3),
            self.scale.to_bits(),
            self.mid.to_bits(),
        ]
    }

    /// Read the packed form back.
    pub fn from_words(w: &[u32; INT8_TABLE_WORDS]) -> Int8Table {
        Int8Table {
            q: std::array::from_fn(|c| w[c / 4].to_le_bytes()[c % 4] as i8),
            scale: f32::from_bits(w[4]),
            mid: f32::from_bits(w[5]),
        }
    }
}

/// [`int8_table`] of every row of a `[table_rows, 16]` f32 table buffer (the portable layout),
/// packed `[table_rows, INT8_TABLE_WORDS]`: built once with a weight, so that calls skip the
/// per-row conversion (pass it to
/// [`QuantizedView::with_int8_tables`](crate::QuantizedView::with_int8_tables)). Errors if the
/// length is not a positive multiple of 16.
pub fn int8_tables(table: &[f32]) -> Result<Vec<u32>> {
    if table.is_empty() || !table.len().is_multiple_of(TABLE_LEN) {
        return Err(Error::ShapeMismatch {
            what: "table [table_rows, 16]",
            expected: table.len().div_ceil(TABLE_LEN).max(1) * TABLE_LEN,
            got: table.len(),
        });
    }
    Ok(table
        .chunks_exact(TABLE_LEN)
        .flat_map(|t| int8_table(t.try_into().expect("chunks of 16")).to_words())
        .collect())
}

/// `(Σ z_g · xs_g, Σ s_g · xs_g)`: the zero term of a row, portable, with 8 independent
/// accumulators (a single reduction chain over 64 groups cost ~0.3 ms per 16384-row call).
#[inline(always)]
pub(crate) fn zero_terms(z: &[f32], s: &[f32], xs: &[f32]) -> (f32, f32) {
    let (mut az, mut as_) = ([0.0f32; 8], [0.0f32; 8]);
    let n = xs.len() / 8 * 8;
    for ((zc, sc), xc) in z[..n]
        .chunks_exact(8)
        .zip(s[..n].chunks_exact(8))
        .zip(xs[..n].chunks_exact(8))
    {
        for l in 0..8 {
            az[l] = zc[l].mul_add(xc[l], az[l]);
            as_[l] = sc[l].mul_add(xc[l], as_[l]);
        }
    }
    let (mut tz, mut ts) = (az.iter().sum::<f32>(), as_.iter().sum::<f32>());
    for g in n..xs.len() {
        tz += z[g] * xs[g];
        ts += s[g] * xs[g];
    }
    (tz, ts)
}

/// One weight row as the kernels read it: packed codes, int8 table codes, group scales.
#[derive(Clone, Copy)]
pub(crate) struct RowRef<'a> {
    pub words: &'a [u32],
    pub q: &'a [i8; 16],
    pub scales: &'a [f32],
}

/// One weight matrix as the int8 kernels read it: a [`QuantizedView`](crate::QuantizedView)'s
/// buffers with its packed int8 tables.
pub(crate) struct Weights<'a> {
    pub rows: usize,
    pub words_per_row: usize,
    pub codes: &'a [u32],
    /// Packed int8 tables ([`INT8_TABLE_WORDS`] per table row); one shared row when `shared`.
    pub t8: &'a [u32],
    pub shared: bool,
    pub groups: usize,
    /// Activation blocks per group (at least 1).
    pub group_blocks: usize,
    pub scales: &'a [f32],
    pub zeros: &'a [f32],
}

/// Rows ahead of use whose parameters [`Weights::prefetch`] asks for.
pub(crate) const PARAMS_AHEAD: usize = 4;

impl Weights<'_> {
    /// Row `r`'s codes, int8 table and scales, and its `(scale, mid, zeros)`. The table is
    /// borrowed in place (copying `Int8Table`s through arrays stalled on store forwarding:
    /// ~20% of a decode GEMV with 576-wide rows).
    #[inline(always)]
    pub fn row(&self, r: usize) -> (RowRef<'_>, f32, f32, &[f32]) {
        const W: usize = INT8_TABLE_WORDS;
        let t = if self.shared { 0 } else { r * W };
        let t8: &[u32; W] = self.t8[t..t + W].try_into().expect("6 words");
        let g = r * self.groups..(r + 1) * self.groups;
        (
            RowRef {
                words: &self.codes[r * self.words_per_row..][..self.words_per_row],
                q: bytemuck::cast_slice::<u32, i8>(&t8[..4])
                    .try_into()
                    .expect("16 bytes"),
                scales: &self.scales[g.clone()],
            },
            f32::from_bits(t8[4]),
            f32::from_bits(t8[5]),
            &self.zeros[g],
        )
    }

    /// Ask for the parameters of row `r` (if it exists) ahead of use: the int8 table, scales
    /// and zeros are three short streams beside the codes, which the hardware prefetcher does
    /// not run ahead of when rows are short (576 inputs: 288 bytes of codes a row); without
    /// this each row of a SmolLM2 projection started with a DRAM miss (perf: ~40% of the call).
    #[inline(always)]
    pub fn prefetch(&self, r: usize) {
        #[cfg(target_arch = "x86_64")]
        if r < self.rows {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let t = if self.shared { 0 } else { r * INT8_TABLE_WORDS };
            for p in [
                self.t8[t..].as_ptr() as *const i8,
                self.scales[r * self.groups..].as_ptr() as *const i8,
                self.zeros[r * self.groups..].as_ptr() as *const i8,
            ] {
                // SAFETY: a prefetch never faults; SSE is baseline on x86-64.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
            }
        }
    }
}

/// Per-call activations in the layout of the kernel that quantized them (see each kernel).
/// Reused across calls through a thread-local, so a call allocates only its output.
#[derive(Debug, Default)]
pub(crate) struct Acts {
    /// Full blocks per activation row.
    pub blocks: usize,
    /// Groups per activation row (of the weight's group size).
    pub groups: usize,
    /// Quantized activations, `q_stride` bytes per activation row.
    pub q: Vec<i8>,
    pub q_stride: usize,
    /// Block scales `d`, one per block, `blocks` per activation row.
    pub d: Vec<f32>,
    /// Block scales repeated in the kernel's lane order, `dv_stride` per activation row.
    pub dv: Vec<f32>,
    pub dv_stride: usize,
    /// AVX-512 only: per lane, `−128 · Σ xq` of the bytes that feed it (same stride as `dv`).
    pub corr: Vec<i32>,
    /// `[m, groups]`: exact f32 sums of the activations of each group (tail columns included).
    pub xsum: Vec<f32>,
}

impl Acts {
    /// Size the buffers (contents are overwritten by the quantizers).
    fn reset(&mut self, m: usize, blocks: usize, groups: usize, q_stride: usize, dv_stride: usize) {
        self.blocks = blocks;
        self.groups = groups;
        self.q_stride = q_stride;
        self.dv_stride = dv_stride;
        self.q.resize(m * q_stride, 0);
        self.d.resize(m * blocks, 0.0);
        self.dv.resize(m * dv_stride, 0.0);
        self.xsum.clear();
        self.xsum.resize(m * groups, 0.0);
    }

    /// Exact f32 group sums of `x: [m, k]` (the columns past the full blocks included).
    #[inline(always)]
    fn group_sums(&mut self, x: &[f32], k: usize, group: usize) {
        for (xm, xs) in x
            .chunks_exact(k)
            .zip(self.xsum.chunks_exact_mut(self.groups))
        {
            for (c, s) in xm.chunks(group).zip(xs.iter_mut()) {
                *s = sum8(c);
            }
        }
    }
}

/// `Σ v` with 8 accumulators (vectorised where inlined into SIMD code).
#[inline(always)]
pub(crate) fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The table numerics: error within half a step, extremes exact, constant and tiny tables.
    #[test]
    fn int8_table_is_within_half_a_step() {
        let mut r = SplitMix64::new(3);
        for case in 0..2000 {
            let mut t: [f32; 16] = std::array::from_fn(|_| (r.next_f64() * 30.0 - 10.0) as f32);
            if case % 7 == 0 {
                t = [2.5; 16];
            }
            if case % 11 == 0 {
                // A range so narrow that `1 / scale` overflows: treated as constant.
                t = [0.0; 16];
                t[3] = 1e-38;
            }
            let t8 = int8_table(&t);
            let (lo, hi) = t
                .iter()
                .fold((t[0], t[0]), |(a, b), &v| (a.min(v), b.max(v)));
            for (c, (&tc, &qc)) in t.iter().zip(&t8.q).enumerate() {
                let back = t8.mid + t8.scale * qc as f32;
                let tol = if t8.scale > 0.0 {
                    t8.scale * 0.5 + 1e-6 * (lo.abs() + hi.abs())
                } else {
                    hi - lo
                };
                assert!((back - tc).abs() <= tol, "case {case} code {c}");
            }
            if t8.scale > 0.0 {
                let min = t.iter().position(|&v| v == lo).unwrap();
                let max = t.iter().position(|&v| v == hi).unwrap();
                assert_eq!((t8.q[min], t8.q[max]), (-128, 127), "case {case}");
            } else {
                assert_eq!(t8.mid, lo, "case {case}");
            }
        }
    }

    #[test]
    fn int8_tables_pack_every_row() {
        assert!(int8_tables(&[0.0; 15]).is_err());
        assert!(int8_tables(&[]).is_err());
        let t: Vec<f32> = (0..32).map(|i| (i as f32 - 9.0) * 0.7).collect();
        let words = int8_tables(&t).unwrap();
        assert_eq!(words.len(), 2 * INT8_TABLE_WORDS);
        for r in 0..2 {
            let t8 = int8_table(t[16 * r..16 * r + 16].try_into().unwrap());
            let w: &[u32; INT8_TABLE_WORDS] = words[r * 6..r * 6 + 6].try_into().unwrap();
            assert_eq!(Int8Table::from_words(w), t8);
            assert_eq!(w[0] & 0xFF, t8.q[0] as u8 as u32, "lowest byte first");
        }
    }
}
