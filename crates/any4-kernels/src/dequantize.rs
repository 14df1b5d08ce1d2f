//! Dequantization kernel: codes + per-row table + per-group scale/zero → dense `W[N, K]`.
//!
//! One unit per u32 code word (8 weights): the word is read once and its 8 nibbles are looked
//! up, scaled and written. This is the building block of the always-valid fallback
//! (dequantize, then a dense matmul) and the way to hand a dense weight to other code.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel; the
// kernels themselves are documented below.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// `out[n*K + k] = table[n*16 + code(n,k)] * scales[n*G_n + k/G] + zeros[n*G_n + k/G]`,
/// written as `F` (f32 or f16). Units past `N * ceil(K/8)` do nothing.
#[cube(launch)]
pub fn dequantize_kernel<F: Float>(
    codes: &[u32],
    table: &[f32],
    scales: &[f32],
    zeros: &[f32],
    out: &mut [F],
    n: usize,
    k: usize,
    group_size: usize,
) {
    let words_per_row = k.div_ceil(8);
    let n_groups = k.div_ceil(group_size);
    let idx = ABSOLUTE_POS;
    if idx < n * words_per_row {
        let row = idx / words_per_row;
        let word_col = idx % words_per_row;
        let word = codes[idx];
        #[unroll]
        for j in 0..8u32 {
            let col = word_col * 8 + j as usize;
            if col < k {
                let code = ((word >> (4 * j)) & 15u32) as usize;
                let g = row * n_groups + col / group_size;
                let v = table[row * 16 + code] * scales[g] + zeros[g];
                out[row * k + col] = F::cast_from(v);
            }
        }
    }
}
