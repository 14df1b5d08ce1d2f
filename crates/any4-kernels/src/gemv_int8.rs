//! Decode-time (M ≤ 8) GEMV with int8 activations and the rows' int8 tables: the default GPU
//! path, the numerics of the CPU int8 path (see [`crate::layout`] for the formula).
//!
//! Layout on the device: a row is `lanes` units (a warp on CUDA); lane `l` reads code vectors
//! `l, l + lanes, …` (16 bytes each, so one warp load is 512 contiguous bytes), `unroll` (2 or
//! 4) per iteration so that many loads are in flight before any arithmetic. Per 16-byte vector (32 weights,
//! one activation block, inside one group): 8 [`lookup8()`] halves give the weights' int8 table
//! entries, 8 `dp4a` per batch row multiply them with the block's int8 activations, and the block
//! sum is scaled once: `a1 += ŝ · d_b · dot`, `a2 += ŝ · Σx_b`, `a3 += ẑ · Σx_b`; the row factors
//! `(T8·2^es, mid·2^es, 2^ez)` combine the three at the end, then the lanes are reduced.
//! The activations' padding (last block of a row) is zero, so the zero-padded codes add nothing.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

use crate::lookup::{f16_bits_to_f32, lookup8};
use crate::reduce::{Reduce, reduce_lanes};

/// One code vector `v` of the row: lookups shared by the `m` batch rows.
#[cube]
#[allow(clippy::too_many_arguments)]
fn int8_vector(
    c: Vector<u32, Const<4>>,
    v: usize,
    pair: u32,
    t: Vector<u32, Const<4>>,
    xq: &[Vector<u32, Const<4>>],
    xd: &[Vector<f32, Const<2>>],
    vpr: usize,
    bit3: u32,
    a1: &mut Array<f32>,
    a2: &mut Array<f32>,
    a3: &mut Array<f32>,
    #[comptime] m: usize,
    #[comptime] prmt: bool,
    #[comptime] native_f16: bool,
) {
    let s = f16_bits_to_f32(pair, native_f16);
    let z = f16_bits_to_f32(pair >> 16u32, native_f16);
    let (t0, t1, t2, t3) = (
        t.extract(0usize),
        t.extract(1usize),
        t.extract(2usize),
        t.extract(3usize),
    );
    // Table bytes of weights 4j..4j+4, j = 0..8.
    let mut wb = Array::<u32>::new(8usize);
    #[unroll]
    for w in 0..4usize {
        let (lo, hi) = lookup8(c.extract(w), bit3, t0, t1, t2, t3, prmt);
        wb[2 * w] = lo;
        wb[2 * w + 1] = hi;
    }
    #[unroll]
    for mm in 0..m {
        let xa = xq[(mm * vpr + v) * 2];
        let xb = xq[(mm * vpr + v) * 2 + 1];
        let mut dot = 0i32;
        #[unroll]
        for j in 0..4usize {
            dot = dp4a(
                i32::reinterpret(wb[j]),
                i32::reinterpret(xa.extract(j)),
                dot,
            );
        }
        #[unroll]
        for j in 0..4usize {
            dot = dp4a(
                i32::reinterpret(wb[4 + j]),
                i32::reinterpret(xb.extract(j)),
                dot,
            );
        }
        let dd = xd[mm * vpr + v];
        let xs = dd.extract(1usize);
        a1[mm] += s * (dd.extract(0usize) * f32::cast_from(dot));
        a2[mm] += s * xs;
        a3[mm] += z * xs;
    }
}

/// See the module docs. Launch `ceil(N / rows_per_cube)` cubes (linear, see
/// `launch::linear_cube_count`) of `CubeDim::new_2d(lanes, rows_per_cube)`; `xq`/`xd` from
/// [`quantize_activations_kernel`](crate::activation::quantize_activations_kernel()).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemv_int8_kernel<F: Float>(
    codes: &[Vector<u32, Const<4>>],
    params: &[u32],
    table8: &[Vector<u32, Const<4>>],
    rows: &[Vector<f32, Const<4>>],
    xq: &[Vector<u32, Const<4>>],
    xd: &[Vector<f32, Const<2>>],
    out: &mut [F],
    n: usize,
    vpr: usize,
    groups: usize,
    gshift: usize,
    bit3: u32,
    #[comptime] m: usize,
    #[comptime] lanes: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] unroll: usize,
    #[comptime] reduce: Reduce,
    #[comptime] prmt: bool,
    #[comptime] native_f16: bool,
) {
    let lane = UNIT_POS_X as usize;
    let row = CUBE_POS * rows_per_cube + UNIT_POS_Y as usize;
    let mut a1 = Array::<f32>::new(m);
    let mut a2 = Array::<f32>::new(m);
    let mut a3 = Array::<f32>::new(m);
    #[unroll]
    for mm in 0..m {
        a1[mm] = 0.0f32;
        a2[mm] = 0.0f32;
        a3[mm] = 0.0f32;
    }
    let mut factors = Vector::<f32, Const<4>>::empty().fill(0.0f32);
    if row < n {
        let t = table8[row];
        factors = rows[row];
        let code_row = row * vpr;
        let pair_row = row * groups;
        let mut v = lane;
        // `unroll` vectors per lane and iteration: all their loads issue before the lookups.
        while v + (unroll - 1) * lanes < vpr {
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
                int8_vector(
                    cs[u],
                    v + u * lanes,
                    ps[u],
                    t,
                    xq,
                    xd,
                    vpr,
                    bit3,
                    &mut a1,
                    &mut a2,
                    &mut a3,
                    m,
                    prmt,
                    native_f16,
                );
            }
            v += unroll * lanes;
        }
        while v < vpr {
            let c0 = codes[code_row + v];
            let p0 = params[pair_row + (v >> gshift)];
            int8_vector(
                c0, v, p0, t, xq, xd, vpr, bit3, &mut a1, &mut a2, &mut a3, m, prmt, native_f16,
            );
            v += lanes;
        }
    }
    let mut part = Array::<f32>::new(m);
    #[unroll]
    for mm in 0..m {
        part[mm] = factors.extract(0usize) * a1[mm]
            + factors.extract(1usize) * a2[mm]
            + factors.extract(3usize) * a3[mm];
    }
    let total = reduce_lanes(&part, m, lanes, rows_per_cube, reduce);
    if lane == 0 && row < n {
        #[unroll]
        for mm in 0..m {
            out[mm * n + row] = F::cast_from(total[mm]);
        }
    }
}
