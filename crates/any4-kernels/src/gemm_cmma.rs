//! Prefill-size (M > 8) GEMM on tensor cores through CubeCL's cooperative matrices (`cmma`,
//! WMMA on CUDA): `H` (f16 or bf16) operands, f32 accumulation.
//!
//! A cube is `warps` planes and computes a `tile_m × 16·warps` output tile: plane `p` owns the
//! 16 output columns `16p..16p+16` and `tile_m / 16` accumulators (16 × 16 each) down the rows.
//! Per K tile of 32:
//! - every unit holds its share of the **next** tile in registers (code words with their group
//!   pair, activations) while the tensor cores work on the current one (the global loads of
//!   tile `t + 1` are in flight during the `mma` of tile `t`: register double-buffering);
//! - the W tile is dequantized through the row's table (`t[c]·ŝ·2^es + ẑ·2^ez`, rounded to `H`)
//!   into shared memory as `ws[n][k]`, the activations as `xs[m][k]`; both rows are padded from
//!   32 to 40 elements (80 bytes), so the 16 rows a fragment load touches start in different bank
//!   groups; the tile rows' f32 tables are staged in shared memory once, before the K loop;
//! - two `k = 16` steps: `A = xs[16i.., kk..]` (row-major), `B = ws[16p.., kk..]` read as the
//!   column-major `K × N` matrix `Wᵀ`, `acc_i += A · B`.
//!
//! The accumulators go through shared memory (f32) to the output, so rows past M and columns past
//! N are never written and the output takes the activation dtype `F`. Tails in K are zero-padded.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

use crate::lookup::f16_bits_to_f32;

/// Row stride of the shared tiles (32 + 8 padding elements).
const STRIDE: usize = 40;

/// See the module docs. Launch `CubeCount::new_2d(ceil(N / (16·warps)), ceil(M / tile_m))` with
/// `CubeDim::new_2d(32, warps)`; `tile_m` is 16, 32 or 64.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_cmma_kernel<F: Float, Op: Float>(
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
    #[comptime] warps: usize,
    #[comptime] native_f16: bool,
) {
    let tile_n = comptime!(16 * warps);
    let units = comptime!(32 * warps);
    let m_frags = comptime!(tile_m / 16);
    // Per unit and K tile: code words (tile_n · 4 in all) and activations (tile_m · 32).
    let words_per_unit = comptime!(tile_n * 4 / units);
    let xs_per_unit = comptime!(tile_m * 32 / units);
    let unit = UNIT_POS as usize;
    let plane = UNIT_POS_Y as usize;
    let m0 = CUBE_POS_Y as usize * tile_m;
    let n0 = CUBE_POS_X as usize * tile_n;
    let words_per_row = vpr * 4;

    let mut xs = Shared::<[Op]>::new_aligned_slice(comptime!(tile_m * STRIDE), 16usize);
    let mut ws = Shared::<[Op]>::new_aligned_slice(comptime!(tile_n * STRIDE), 16usize);

    // The tile rows' tables, once: every K tile's dequantization looks up shared memory, not
    // global memory (rows past N read zeros).
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

    let mut accs = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..m_frags {
        accs.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0f32,
        ));
    }

    // Registers of the tile being prefetched.
    let mut words = Array::<u32>::new(words_per_unit);
    let mut pairs = Array::<u32>::new(words_per_unit);
    let mut xv = Array::<f32>::new(xs_per_unit);

    let n_ktiles = k.div_ceil(32usize);
    // Prefetch tile 0.
    #[unroll]
    for j in 0..words_per_unit {
        let i = unit + j * units;
        let gn = n0 + i / 4;
        let word_col = i % 4;
        let mut w = 0u32;
        let mut p = 0u32;
        if gn < n {
            w = codes[gn * words_per_row + word_col];
            p = params[gn * groups + (word_col >> wshift)];
        }
        words[j] = w;
        pairs[j] = p;
    }
    #[unroll]
    for j in 0..xs_per_unit {
        let i = unit + j * units;
        let gm = m0 + i / 32;
        let gk = i % 32;
        let mut v = 0.0f32;
        if gm < m && gk < k {
            v = f32::cast_from(x[gm * k + gk]);
        }
        xv[j] = v;
    }

    for kt in 0..n_ktiles {
        // Registers → shared: dequantize the W words, convert the activations.
        #[unroll]
        for j in 0..words_per_unit {
            let i = unit + j * units;
            let r = i / 4;
            let wi = i % 4;
            let gn = n0 + r;
            let mut s = 0.0f32;
            let mut z = 0.0f32;
            if gn < n {
                let f = rows[gn];
                s = f16_bits_to_f32(pairs[j], native_f16) * f.extract(2usize);
                z = f16_bits_to_f32(pairs[j] >> 16u32, native_f16) * f.extract(3usize);
            }
            // Rows past N have zero tables, scales and zeros: their weights are 0.
            let w = words[j];
            let trow = (r * 16) as u32;
            #[unroll]
            for e in 0..8u32 {
                let v = lut[(((w >> (4 * e)) & 15u32) | trow) as usize] * s + z;
                ws[r * STRIDE + wi * 8 + e as usize] = Op::cast_from(v);
            }
        }
        #[unroll]
        for j in 0..xs_per_unit {
            let i = unit + j * units;
            xs[(i / 32) * STRIDE + i % 32] = Op::cast_from(xv[j]);
        }
        sync_cube();

        // Prefetch tile kt + 1 while the tensor cores work on kt.
        if kt + 1 < n_ktiles {
            let k1 = (kt + 1) * 32;
            #[unroll]
            for j in 0..words_per_unit {
                let i = unit + j * units;
                let gn = n0 + i / 4;
                let word_col = k1 / 8 + i % 4;
                let mut w = 0u32;
                let mut p = 0u32;
                if gn < n {
                    w = codes[gn * words_per_row + word_col];
                    p = params[gn * groups + (word_col >> wshift)];
                }
                words[j] = w;
                pairs[j] = p;
            }
            #[unroll]
            for j in 0..xs_per_unit {
                let i = unit + j * units;
                let gm = m0 + i / 32;
                let gk = k1 + i % 32;
                let mut v = 0.0f32;
                if gm < m && gk < k {
                    v = f32::cast_from(x[gm * k + gk]);
                }
                xv[j] = v;
            }
        }

        #[unroll]
        for kk in 0..2usize {
            let b_start = plane * 16 * STRIDE + kk * 16;
            let b = cmma::Matrix::<Op>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::ColMajor,
                &ws[b_start..b_start + 15 * STRIDE + 16],
                STRIDE as u32,
            );
            #[unroll]
            for i in 0..m_frags {
                let a_start = i * 16 * STRIDE + kk * 16;
                let a = cmma::Matrix::<Op>::from_slice(
                    cmma::MatrixIdent::A,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::RowMajor,
                    &xs[a_start..a_start + 15 * STRIDE + 16],
                    STRIDE as u32,
                );
                let acc = accs.index(i);
                cmma::execute(&a, &b, acc, acc);
            }
        }
        sync_cube();
    }

    // Accumulators → shared f32 (the plane's 16 columns) → the output, within bounds.
    let mut cs = Shared::<[f32]>::new_aligned_slice(comptime!(tile_m * tile_n), 16usize);
    #[unroll]
    for i in 0..m_frags {
        let start = i * 16 * tile_n + plane * 16;
        cmma::store(
            &mut cs[start..start + 15 * tile_n + 16],
            accs.index(i),
            tile_n as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
    sync_cube();
    for i in range_stepped(unit, comptime!(tile_m * tile_n), units) {
        let gm = m0 + i / tile_n;
        let gn = n0 + i % tile_n;
        if gm < m && gn < n {
            out[gm * n + gn] = F::cast_from(cs[i]);
        }
    }
}
