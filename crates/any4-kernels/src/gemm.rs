//! Prefill-size (M > 8) GEMM on SIMT units: the fallback where tensor cores (cmma) are absent,
//! and the dense fallback matmul.
//!
//! [`gemm_kernel`](fn@gemm_kernel) computes one `tile_m × tile_n` output tile per cube. For each
//! K tile of 32 it stages `x[tile_m, 32]` and the **dequantized** `W[tile_n, 32]` in shared memory,
//! both K-major (`xs[kk][m]`, `ws[kk][n]`): each code word is read once per cube and expanded to
//! 8 weights with its group's pair, through the tile rows' tables (staged in shared memory once). Unit `(ur, uc)` owns rows `ur + a·unit_rows` and columns
//! `uc + b·unit_cols` of the tile (interleaved, not blocked): the units of a warp read
//! consecutive `ws` words (no bank conflicts) and one `xs` word (a broadcast), and store
//! consecutive outputs. Out-of-range rows, columns and K tails are zero-padded, so any M, N, K
//! are valid.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

use crate::lookup::f16_bits_to_f32;

/// Tiled LUT GEMM (see the module docs). Launch `CubeCount::new_2d(ceil(N/tile_n),
/// ceil(M/tile_m))` with `units = (tile_m / reg_m) · (tile_n / reg_n)` units.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_kernel<F: Float>(
    codes: &[u32],
    params: &[u32],
    table: &[f32],
    rows: &[Vector<f32, Const<4>>],
    x: &[F],
    out: &mut [F],
    m: usize,
    n: usize,
    k: usize,
    vpr: usize,
    groups: usize,
    wshift: usize,
    #[comptime] tile_m: usize,
    #[comptime] tile_n: usize,
    #[comptime] reg_m: usize,
    #[comptime] reg_n: usize,
    #[comptime] units: usize,
    #[comptime] native_f16: bool,
) {
    let tile_k = comptime!(32usize);
    let unit_cols = comptime!(tile_n / reg_n);
    let unit_rows = comptime!(tile_m / reg_m);
    let words_per_row = vpr * 4;
    let m0 = CUBE_POS_Y as usize * tile_m;
    let n0 = CUBE_POS_X as usize * tile_n;
    let unit = UNIT_POS as usize;
    let ur = unit / unit_cols;
    let uc = unit % unit_cols;

    let mut xs = Shared::<[f32]>::new_slice(comptime!(tile_m * tile_k));
    let mut ws = Shared::<[f32]>::new_slice(comptime!(tile_n * tile_k));
    // The tile rows' tables, once (rows past N read zeros).
    let mut lut = Shared::<[f32]>::new_slice(comptime!(tile_n * 16));
    for i in range_stepped(unit, comptime!(tile_n * 16), units) {
        let gn = n0 + i / 16;
        let mut t = 0.0f32;
        if gn < n {
            t = table[gn * 16 + i % 16];
        }
        lut[i] = t;
    }
    sync_cube();
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
        // x[m0.., k0..] → xs[kk][r], zero-padded.
        for i in range_stepped(unit, comptime!(tile_m * tile_k), units) {
            let r = i / tile_k;
            let kk = i % tile_k;
            let gm = m0 + r;
            let gk = k0 + kk;
            let mut v = 0.0f32;
            if gm < m && gk < k {
                v = f32::cast_from(x[gm * k + gk]);
            }
            xs[kk * tile_m + r] = v;
        }
        // W[n0.., k0..] dequantized → ws[kk][r]; one code word = 8 weights of one group.
        for i in range_stepped(unit, comptime!(tile_n * 4), units) {
            let r = i / 4;
            let wi = i % 4;
            let gn = n0 + r;
            let word_col = k0 / 8 + wi;
            let mut word = 0u32;
            let mut s = 0.0f32;
            let mut z = 0.0f32;
            if gn < n {
                word = codes[gn * words_per_row + word_col];
                let pair = params[gn * groups + (word_col >> wshift)];
                let f = rows[gn];
                s = f16_bits_to_f32(pair, native_f16) * f.extract(2usize);
                z = f16_bits_to_f32(pair >> 16u32, native_f16) * f.extract(3usize);
            }
            // Rows past N: zero table, scale and zero, so zero weights.
            let trow = (r * 16) as u32;
            #[unroll]
            for j in 0..8u32 {
                let v = lut[(((word >> (4 * j)) & 15u32) | trow) as usize] * s + z;
                ws[(wi * 8 + j as usize) * tile_n + r] = v;
            }
        }
        sync_cube();

        for kk in 0..tile_k {
            #[unroll]
            for a in 0..reg_m {
                xr[a] = xs[kk * tile_m + ur + a * unit_rows];
            }
            #[unroll]
            for b in 0..reg_n {
                wr[b] = ws[kk * tile_n + uc + b * unit_cols];
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
            let gm = m0 + ur + a * unit_rows;
            let gn = n0 + uc + b * unit_cols;
            if gm < m && gn < n {
                out[gm * n + gn] = F::cast_from(acc[a * reg_n + b]);
            }
        }
    }
}

/// Dense `y[M, N] = x[M, K] · w[N, K]ᵀ`, one unit per output, f32 accumulation: slow but valid
/// everywhere; used after [`dequantize_kernel`](fn@crate::dequantize::dequantize_kernel).
#[cube(launch_unchecked)]
pub fn dense_matmul_kernel<F: Float>(
    x: &[F],
    w: &[F],
    out: &mut [F],
    m: usize,
    n: usize,
    k: usize,
) {
    let idx = ABSOLUTE_POS;
    if idx < m * n {
        let i = idx / n;
        let j = idx % n;
        let mut acc = 0.0f32;
        for l in 0..k {
            acc += f32::cast_from(x[i * k + l]) * f32::cast_from(w[j * k + l]);
        }
        out[idx] = F::cast_from(acc);
    }
}
