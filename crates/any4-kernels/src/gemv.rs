//! Decode-time (M = 1..=8) lookup-table GEMV: `y[m, n] = Σ_k x[m, k] · w[n, k]`.
//!
//! Decode is memory-bound, so the kernel streams each code word exactly once:
//! - a cube holds `rows_per_cube` output rows (`CUBE_DIM_Y`) and `threads_per_row` units per row
//!   (`CUBE_DIM_X`, a power of two) that split K (split-K);
//! - codes are read as `Vector<u32, V>` (V words = 8·V weights per load);
//! - the 16-entry tables of the cube's rows are staged once in shared memory, so a lookup is a
//!   shared-memory read, not a global one;
//! - when a code vector never straddles a group (`aligned`: 8·V divides G), the scale and zero are
//!   applied once per vector through `Σ_k w·x = s·Σ table[c]·x + z·Σ x` instead of per weight;
//!   otherwise (e.g. per-row groups with K % 8 ≠ 0) each weight is dequantized on its own;
//! - with one unit per row (the CPU runtime's choice) there is no split-K and no barrier at all;
//! - the split-K partial sums are combined by a plane (warp/subgroup) sum when the row's units
//!   are exactly one plane (`plane_reduce`), else by a shared-memory tree reduction (portable:
//!   the CPU runtime has planes of size 1);
//! - accumulation is f32 throughout.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel; the
// kernels themselves are documented below.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// See the module docs. `m` (batch, 1..=8), `threads_per_row` and `rows_per_cube` are compile-time
/// and must match the launch's `CubeDim::new_2d(threads_per_row, rows_per_cube)`.
/// `codes` holds `ceil(K/8) / V` vectors per row (the launcher picks V dividing `ceil(K/8)`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn gemv_kernel<V: Size>(
    codes: &[Vector<u32, V>],
    table: &[f32],
    scales: &[f32],
    zeros: &[f32],
    x: &[f32],
    out: &mut [f32],
    n: usize,
    k: usize,
    group_size: usize,
    #[comptime] m: usize,
    #[comptime] threads_per_row: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] aligned: bool,
    #[comptime] plane_reduce: bool,
) {
    let vec_size = V::value();
    let words_per_row = k.div_ceil(8);
    let vecs_per_row = words_per_row / vec_size;
    let n_groups = k.div_ceil(group_size);

    let lane = UNIT_POS_X as usize;
    let local_row = UNIT_POS_Y as usize;
    let row = CUBE_POS * rows_per_cube + local_row;

    // Stage the tables of this cube's rows in shared memory (rows past N read nothing).
    let mut lut = Shared::<[f32]>::new_slice(comptime!(rows_per_cube * 16));
    if comptime!(threads_per_row > 1) {
        // Cooperative copy, then a barrier: a row's table is read by all its units.
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
    } else if row < n {
        // One unit per row (CPU runtime): each unit copies and reads only its own row's table,
        // so no barrier is needed (barriers are what is expensive on a CPU).
        #[unroll]
        for i in 0..16usize {
            lut[local_row * 16 + i] = table[row * 16 + i];
        }
    }

    let mut acc = Array::<f32>::new(m);
    #[unroll]
    for mm in 0..m {
        acc[mm] = 0.0f32;
    }

    if row < n {
        let lut_base = local_row * 16;
        for v in range_stepped(lane, vecs_per_row, threads_per_row) {
            let words = codes[row * vecs_per_row + v];
            let k0 = v * vec_size * 8;
            if aligned {
                // The whole vector lies in one group: Σ table·x and Σ x, then scale once.
                let g = row * n_groups + k0 / group_size;
                let s = scales[g];
                let z = zeros[g];
                let mut sum_tx = Array::<f32>::new(m);
                let mut sum_x = Array::<f32>::new(m);
                #[unroll]
                for mm in 0..m {
                    sum_tx[mm] = 0.0f32;
                    sum_x[mm] = 0.0f32;
                }
                #[unroll]
                for w in 0..vec_size {
                    let word = words.extract(w);
                    #[unroll]
                    for j in 0..8u32 {
                        let col = k0 + w * 8 + j as usize;
                        if col < k {
                            let t = lut[lut_base + ((word >> (4 * j)) & 15u32) as usize];
                            #[unroll]
                            for mm in 0..m {
                                let xv = x[mm * k + col];
                                sum_tx[mm] += t * xv;
                                sum_x[mm] += xv;
                            }
                        }
                    }
                }
                #[unroll]
                for mm in 0..m {
                    acc[mm] += s * sum_tx[mm] + z * sum_x[mm];
                }
            } else {
                // Groups may change inside the vector: dequantize each weight.
                #[unroll]
                for w in 0..vec_size {
                    let word = words.extract(w);
                    #[unroll]
                    for j in 0..8u32 {
                        let col = k0 + w * 8 + j as usize;
                        if col < k {
                            let g = row * n_groups + col / group_size;
                            let t = lut[lut_base + ((word >> (4 * j)) & 15u32) as usize];
                            let wv = t * scales[g] + zeros[g];
                            #[unroll]
                            for mm in 0..m {
                                acc[mm] += wv * x[mm * k + col];
                            }
                        }
                    }
                }
            }
        }
    }

    if comptime!(threads_per_row == 1) {
        // No split-K: the unit holds the whole sum.
        if row < n {
            #[unroll]
            for mm in 0..m {
                out[mm * n + row] = acc[mm];
            }
        }
    } else if plane_reduce {
        // The row's `threads_per_row` units are one whole plane: one plane sum per batch row.
        // Called by every unit (uniform control flow), written by lane 0.
        #[unroll]
        for mm in 0..m {
            let total = plane_sum(acc[mm]);
            if lane == 0 && row < n {
                out[mm * n + row] = total;
            }
        }
    } else {
        // Split-K reduction over the `threads_per_row` lanes of each row, in shared memory.
        let mut red = Shared::<[f32]>::new_slice(comptime!(rows_per_cube * threads_per_row * m));
        let base = (local_row * threads_per_row + lane) * m;
        #[unroll]
        for mm in 0..m {
            red[base + mm] = acc[mm];
        }
        sync_cube();
        // Runtime stride (uniform across the cube), halved each step: every unit reaches each sync.
        let mut stride = CUBE_DIM_X as usize / 2;
        while stride > 0 {
            if lane < stride {
                let other = base + stride * m;
                #[unroll]
                for mm in 0..m {
                    red[base + mm] += red[other + mm];
                }
            }
            sync_cube();
            stride /= 2;
        }

        if lane == 0 && row < n {
            #[unroll]
            for mm in 0..m {
                out[mm * n + row] = red[base + mm];
            }
        }
    }
}
