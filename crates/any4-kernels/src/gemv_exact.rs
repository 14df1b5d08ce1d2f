//! Decode-time (M ≤ 8) GEMV that reads the activations as they are (f32, f16 or bf16) and
//! accumulates in f32: the exact path (no activation rounding), every group size and `K`.
//!
//! The row's f32 table sits in shared memory (16 words in 16 distinct banks: a warp's 32 lookups
//! of one row never conflict). Lane `l` of a row takes code vectors `l, l + lanes, …` (coalesced
//! 16-byte loads, two in flight per iteration); per vector (32 weights, inside one group) it
//! accumulates `Σ t[c]·x` and `Σ x` per batch row, then `a1 += ŝ·Σ t·x`, `a3 += ẑ·Σx`; the row
//! factors give `y = 2^es·a1 + 2^ez·a3` (see [`crate::layout`]). Activations are read as vectors
//! of `XV` elements (`XV` divides `K`, so every vector lies in one row). When `K % 32 ≠ 0` the
//! row's last code vector is partial: one lane handles it after the main loop, reading only the
//! activation vectors below `K`.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

use crate::lookup::f16_bits_to_f32;
use crate::reduce::{Reduce, reduce_lanes};

/// One code vector `v` (32 weights from column `32v`); `valid` activation vectors of it are read
/// (`32 / XV` for a full vector).
#[cube]
#[allow(clippy::too_many_arguments)]
fn exact_vector<F: Float, XV: Size>(
    c: Vector<u32, Const<4>>,
    v: usize,
    pair: u32,
    lut: &[f32],
    lut_base: u32,
    x: &[Vector<F, XV>],
    xrow: usize,
    xd: &[Vector<f32, Const<2>>],
    vpr: usize,
    valid: usize,
    a1: &mut Array<f32>,
    a3: &mut Array<f32>,
    #[comptime] m: usize,
    #[comptime] tail: bool,
    #[comptime] native_f16: bool,
) {
    let xv = XV::value();
    let per_vector = comptime!(32 / xv);
    let s = f16_bits_to_f32(pair, native_f16);
    let z = f16_bits_to_f32(pair >> 16u32, native_f16);
    let mut st = Array::<f32>::new(m);
    #[unroll]
    for mm in 0..m {
        st[mm] = 0.0f32;
    }
    let x0 = v * per_vector;
    #[unroll]
    for q in 0..per_vector {
        if !tail || q < valid {
            #[unroll]
            for mm in 0..m {
                let xs = x[mm * xrow + x0 + q];
                #[unroll]
                for e in 0..xv {
                    let i = comptime!(q * xv + e);
                    let word = c.extract(comptime!(i / 8));
                    // The row's table starts at a multiple of 16: OR, not add (one LOP3).
                    let idx = ((word >> comptime!(4 * (i % 8)) as u32) & 15u32) | lut_base;
                    let t = lut[idx as usize];
                    st[mm] += t * f32::cast_from(xs.extract(e));
                }
            }
        }
    }
    #[unroll]
    for mm in 0..m {
        a1[mm] += s * st[mm];
        a3[mm] += z * xd[mm * vpr + v].extract(1usize);
    }
}

/// See the module docs. Launch like [`gemv_int8_kernel`](crate::gemv_int8::gemv_int8_kernel());
/// `x` holds `M · K / XV` vectors (`xrow = K / XV` per row).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemv_exact_kernel<F: Float, XV: Size>(
    codes: &[Vector<u32, Const<4>>],
    params: &[u32],
    table: &[f32],
    rows: &[Vector<f32, Const<4>>],
    x: &[Vector<F, XV>],
    xd: &[Vector<f32, Const<2>>],
    out: &mut [F],
    n: usize,
    k: usize,
    vpr: usize,
    groups: usize,
    gshift: usize,
    #[comptime] m: usize,
    #[comptime] lanes: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] unroll: usize,
    #[comptime] reduce: Reduce,
    #[comptime] has_tail: bool,
    #[comptime] native_f16: bool,
) {
    let xv = XV::value();
    let lane = UNIT_POS_X as usize;
    let local_row = UNIT_POS_Y as usize;
    let row = CUBE_POS * rows_per_cube + local_row;
    let xrow = k / xv;

    // The cube's tables into shared memory (rows past N read nothing), then one barrier.
    let mut lut = Shared::<[f32]>::new_slice(comptime!(rows_per_cube * 16));
    for i in range_stepped(
        UNIT_POS as usize,
        comptime!(rows_per_cube * 16),
        CUBE_DIM as usize,
    ) {
        let r = CUBE_POS * rows_per_cube + i / 16;
        let mut t = 0.0f32;
        if r < n {
            t = table[r * 16 + i % 16];
        }
        lut[i] = t;
    }
    sync_cube();

    let mut a1 = Array::<f32>::new(m);
    let mut a3 = Array::<f32>::new(m);
    #[unroll]
    for mm in 0..m {
        a1[mm] = 0.0f32;
        a3[mm] = 0.0f32;
    }
    let mut factors = Vector::<f32, Const<4>>::empty().fill(0.0f32);
    if row < n {
        factors = rows[row];
        let lut_base = (local_row * 16) as u32;
        let code_row = row * vpr;
        let pair_row = row * groups;
        let mut full = vpr;
        if has_tail {
            full = vpr - 1;
        }
        let mut v = lane;
        // `unroll` vectors per lane and iteration: all their code loads issue first.
        while v + (unroll - 1) * lanes < full {
            let mut cs = Array::<Vector<u32, Const<4>>>::new(unroll);
            let mut ps = Array::<u32>::new(unroll);
            #[unroll]
            for u in 0..unroll {
                let vu = v + u * lanes;
                cs[u] = codes[code_row + vu];
                ps[u] = params[pair_row + (vu >> gshift)];
            }
            #[unroll]
            for u in 0..unroll {
                exact_vector::<F, XV>(
                    cs[u],
                    v + u * lanes,
                    ps[u],
                    &lut,
                    lut_base,
                    x,
                    xrow,
                    xd,
                    vpr,
                    0,
                    &mut a1,
                    &mut a3,
                    m,
                    false,
                    native_f16,
                );
            }
            v += unroll * lanes;
        }
        while v < full {
            let c0 = codes[code_row + v];
            let p0 = params[pair_row + (v >> gshift)];
            exact_vector::<F, XV>(
                c0, v, p0, &lut, lut_base, x, xrow, xd, vpr, 0, &mut a1, &mut a3, m, false,
                native_f16,
            );
            v += lanes;
        }
        if has_tail && lane == full % lanes {
            // The partial last vector: only its activation vectors below K exist.
            let valid = (k - full * 32) / xv;
            let c0 = codes[code_row + full];
            let p0 = params[pair_row + (full >> gshift)];
            exact_vector::<F, XV>(
                c0, full, p0, &lut, lut_base, x, xrow, xd, vpr, valid, &mut a1, &mut a3, m, true,
                native_f16,
            );
        }
    }
    let mut part = Array::<f32>::new(m);
    #[unroll]
    for mm in 0..m {
        part[mm] = factors.extract(2usize) * a1[mm] + factors.extract(3usize) * a3[mm];
    }
    let total = reduce_lanes(&part, m, lanes, rows_per_cube, reduce);
    if lane == 0 && row < n {
        #[unroll]
        for mm in 0..m {
            out[mm * n + row] = F::cast_from(total[mm]);
        }
    }
}
