//! Prefill-size (M > 8) lookup-table GEMM and the dense fallback matmul.
//!
//! [`gemm_kernel`](fn@gemm_kernel) computes one `tile_m × tile_n` output tile per cube. For each K tile it
//! stages `x[tile_m, tile_k]` and the **dequantized** `W[tile_n, tile_k]` in shared memory
//! (each code word is read once per cube and expanded to 8 weights), then every unit
//! accumulates its `tile_m·tile_n / units` outputs in f32. Out-of-range rows, columns and
//! K tails are zero-padded in shared memory, so any M, N and K are valid.
//!
//! Later step (not done here): replace the shared-memory FMA loop by CubeCL `cmma`
//! (tensor cores on CUDA, cooperative matrices on Vulkan) once the dequantized tile is in f16,
//! with register blocking; the staging code stays the same.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel; the
// kernels themselves are documented below.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Tiled LUT GEMM (see module docs). Launch with `CubeCount::new_2d(ceil(N/tile_n),
/// ceil(M/tile_m))` and `units` units per cube; `tile_m·tile_n` must be a multiple of `units`
/// and `tile_k` a multiple of 8.
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
    #[comptime] units: usize,
) {
    let per_unit = comptime!(tile_m * tile_n / units);
    let words_per_tile = comptime!(tile_k / 8);
    let words_per_row = k.div_ceil(8);
    let n_groups = k.div_ceil(group_size);
    let m0 = CUBE_POS_Y as usize * tile_m;
    let n0 = CUBE_POS_X as usize * tile_n;
    let unit = UNIT_POS as usize;

    let mut xs = Shared::<[f32]>::new_slice(comptime!(tile_m * tile_k));
    let mut ws = Shared::<[f32]>::new_slice(comptime!(tile_n * tile_k));

    let mut acc = Array::<f32>::new(per_unit);
    #[unroll]
    for i in 0..per_unit {
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
            let mut word = 0u32;
            if gn < n && word_col < words_per_row {
                word = codes[gn * words_per_row + word_col];
            }
            #[unroll]
            for j in 0..8u32 {
                let gk = word_col * 8 + j as usize;
                let mut v = 0.0f32;
                if gn < n && gk < k {
                    let g = gn * n_groups + gk / group_size;
                    let code = ((word >> (4 * j)) & 15u32) as usize;
                    v = table[gn * 16 + code] * scales[g] + zeros[g];
                }
                ws[r * tile_k + wi * 8 + j as usize] = v;
            }
        }
        sync_cube();

        for kk in 0..tile_k {
            #[unroll]
            for i in 0..per_unit {
                let idx = unit + i * units;
                let r = idx / tile_n;
                let c = idx % tile_n;
                acc[i] += xs[r * tile_k + kk] * ws[c * tile_k + kk];
            }
        }
        sync_cube();
    }

    #[unroll]
    for i in 0..per_unit {
        let idx = unit + i * units;
        let gm = m0 + idx / tile_n;
        let gn = n0 + idx % tile_n;
        if gm < m && gn < n {
            out[gm * n + gn] = acc[i];
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
