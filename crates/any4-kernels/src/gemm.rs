//! Prefill-size (M > 8) lookup-table GEMM and the dense fallback matmul.
//!
//! [`gemm_kernel`](fn@gemm_kernel) computes one `tile_m × tile_n` output tile per cube. For each K tile it
//! stages `x[tile_m, tile_k]` and the **dequantized** `W[tile_n, tile_k]` in shared memory
//! (each code word is read once per cube and expanded to 8 weights; `word_groups`, when the
//! group size is a multiple of 8 — every size the format allows — reads one scale and zero per
//! word, which then never straddles a group), then every unit
//! accumulates its own `reg_m × reg_n` block of outputs in registers: per step of K it loads
//! `reg_m` activations and `reg_n` weights from shared memory for `reg_m · reg_n` multiply-adds
//! (the unblocked loop loaded two operands per multiply-add and ran at 0.2× Burn's matmul on
//! lavapipe). Out-of-range rows, columns and K tails are zero-padded in shared memory, so any
//! M, N and K are valid.
//!
//! Later step (not done here): replace the shared-memory FMA loop by CubeCL `cmma`
//! (tensor cores on CUDA, cooperative matrices on Vulkan) once the dequantized tile is in f16;
//! the staging code stays the same.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel; the
// kernels themselves are documented below.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Tiled LUT GEMM (see module docs). Launch with `CubeCount::new_2d(ceil(N/tile_n),
/// ceil(M/tile_m))` and `units` units per cube, where `units = (tile_m / reg_m) · (tile_n /
/// reg_n)` (see `crate::launch::gemm_tiles`) and `tile_k` is a multiple of 8; `word_groups`
/// only if `group_size` is a multiple of 8.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_kernel(
    codes: &[u32],
    table: &[f32],
    scales: &[f32],
    zeros: &[f32],
    x: &[f32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    group_size: usize,
    #[comptime] tile_m: usize,
    #[comptime] tile_n: usize,
    #[comptime] tile_k: usize,
    #[comptime] reg_m: usize,
    #[comptime] reg_n: usize,
    #[comptime] units: usize,
    #[comptime] word_groups: bool,
) {
    let words_per_tile = comptime!(tile_k / 8);
    let unit_cols = comptime!(tile_n / reg_n);
    let words_per_row = k.div_ceil(8);
    let n_groups = k.div_ceil(group_size);
    let m0 = CUBE_POS_Y as usize * tile_m;
    let n0 = CUBE_POS_X as usize * tile_n;
    let unit = UNIT_POS as usize;
    // This unit's block: rows r0..r0+reg_m, columns c0..c0+reg_n of the tile.
    let r0 = (unit / unit_cols) * reg_m;
    let c0 = (unit % unit_cols) * reg_n;

    let mut xs = Shared::<[f32]>::new_slice(comptime!(tile_m * tile_k));
    let mut ws = Shared::<[f32]>::new_slice(comptime!(tile_n * tile_k));

    let mut acc = Array::<f32>::new(comptime!(reg_m * reg_n));
    let mut xr = Array::<f32>::new(reg_m);
    let mut wr = Array::<f32>::new(reg_n);
    #[unroll]
    for i in 0..comptime!(reg_m * reg_n) {
        acc[i] = 0.0f32;
    }

    let n_ktiles = k.div_ceil(tile_k);
    for kt in 0..n_ktiles {
        let k0 = kt * tile_k;

        // Stage x[m0.., k0..] (zero-padded).
        for i in range_stepped(unit, comptime!(tile_m * tile_k), units) {
            let gm = m0 + i / tile_k;
            let gk = k0 + i % tile_k;
            let mut v = 0.0f32;
            if gm < m && gk < k {
                v = x[gm * k + gk];
            }
            xs[i] = v;
        }

        // Stage the dequantized W[n0.., k0..]: one code word → 8 weights (zero-padded).
        for i in range_stepped(unit, comptime!(tile_n * tile_k / 8), units) {
            let r = i / words_per_tile;
            let wi = i % words_per_tile;
            let gn = n0 + r;
            let word_col = k0 / 8 + wi;
            let valid = gn < n && word_col < words_per_row;
            let mut word = 0u32;
            let mut s = 0.0f32;
            let mut z = 0.0f32;
            if valid {
                word = codes[gn * words_per_row + word_col];
                if comptime!(word_groups) {
                    let g = gn * n_groups + (word_col * 8) / group_size;
                    s = scales[g];
                    z = zeros[g];
                }
            }
            #[unroll]
            for j in 0..8u32 {
                let gk = word_col * 8 + j as usize;
                let mut v = 0.0f32;
                if valid && gk < k {
                    let code = ((word >> (4 * j)) & 15u32) as usize;
                    if comptime!(word_groups) {
                        v = table[gn * 16 + code] * s + z;
                    } else {
                        let g = gn * n_groups + gk / group_size;
                        v = table[gn * 16 + code] * scales[g] + zeros[g];
                    }
                }
                ws[r * tile_k + wi * 8 + j as usize] = v;
            }
        }
        sync_cube();

        for kk in 0..tile_k {
            #[unroll]
            for a in 0..reg_m {
                xr[a] = xs[(r0 + a) * tile_k + kk];
            }
            #[unroll]
            for b in 0..reg_n {
                wr[b] = ws[(c0 + b) * tile_k + kk];
            }
            #[unroll]
            for a in 0..reg_m {
                #[unroll]
                for b in 0..reg_n {
                    acc[a * reg_n + b] += xr[a] * wr[b];
                }
            }
        }
        sync_cube();
    }

    #[unroll]
    for a in 0..reg_m {
        #[unroll]
        for b in 0..reg_n {
            let gm = m0 + r0 + a;
            let gn = n0 + c0 + b;
            if gm < m && gn < n {
                out[gm * n + gn] = acc[a * reg_n + b];
            }
        }
    }
}

/// Dense fallback `y[M, N] = x[M, K] · w[N, K]ᵀ`, one unit per output, f32 accumulation.
/// Slow but valid on every runtime; used after [`dequantize_kernel`](fn@crate::dequantize::dequantize_kernel).
#[cube(launch)]
pub fn dense_matmul_kernel(x: &[f32], w: &[f32], out: &mut [f32], m: usize, n: usize, k: usize) {
    let idx = ABSOLUTE_POS;
    if idx < m * n {
        let i = idx / n;
        let j = idx % n;
        let mut acc = 0.0f32;
        for l in 0..k {
            acc += x[i * k + l] * w[j * k + l];
        }
        out[idx] = acc;
    }
}
