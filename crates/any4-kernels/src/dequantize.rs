//! Dequantization: the device layout → a dense `W[N, K]` in f32, f16 or bf16.
//!
//! One unit per u32 code word (8 weights): the word, its group's (scale, zero) pair and the row
//! factors are read once, the 8 nibbles looked up in the row's f32 table and written as
//! `t[c] · ŝ·2^es + ẑ·2^ez` (see [`crate::layout`]). The building block of the always-valid
//! fallback (dequantize, then a dense matmul) and of the backward pass (`dx = dy · W`).

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

use crate::lookup::f16_bits_to_f32;

/// `out[n, k] = w[n, k]` as `F`. Launch `ceil(N · 4V / units)` units (linear cube count).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn dequantize_kernel<F: Float>(
    codes: &[u32],
    params: &[u32],
    table: &[f32],
    rows: &[Vector<f32, Const<4>>],
    out: &mut [F],
    n: usize,
    k: usize,
    vpr: usize,
    groups: usize,
    wshift: usize,
    #[comptime] native_f16: bool,
) {
    let idx = ABSOLUTE_POS;
    let words_per_row = vpr * 4;
    if idx < n * words_per_row {
        let row = idx / words_per_row;
        let word_col = idx % words_per_row;
        let col0 = word_col * 8;
        if col0 < k {
            let word = codes[idx];
            let pair = params[row * groups + (word_col >> wshift)];
            let f = rows[row];
            let s = f16_bits_to_f32(pair, native_f16) * f.extract(2usize);
            let z = f16_bits_to_f32(pair >> 16u32, native_f16) * f.extract(3usize);
            #[unroll]
            for j in 0..8u32 {
                let col = col0 + j as usize;
                if col < k {
                    let code = (word >> (4 * j)) & 15u32;
                    out[row * k + col] = F::cast_from(table[row * 16 + code as usize] * s + z);
                }
            }
        }
    }
}
