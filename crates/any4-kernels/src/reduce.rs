//! Combining the split-K partial sums of the `lanes` units that share an output row.

// `#[cube]` functions expand into undocumented helper items.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// How a row's lanes combine their partial sums (comptime kernel parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduce {
    /// One lane per row: nothing to combine (the CPU runtime).
    None,
    /// Butterfly of `plane_shuffle_xor` within a plane: needs plane operations and `lanes`
    /// consecutive units of one plane per row (CUDA).
    Plane,
    /// Tree in shared memory with cube barriers: portable (wgpu without subgroup operations).
    Shared,
}

/// `total[mm] = Σ_lanes acc[mm]` for the `lanes` units `UNIT_POS_X` of row `UNIT_POS_Y`; valid at
/// lane 0 (every lane with [`Reduce::Plane`]). Every unit of the cube must call it.
#[cube]
pub fn reduce_lanes(
    acc: &Array<f32>,
    #[comptime] m: usize,
    #[comptime] lanes: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] mode: Reduce,
) -> Array<f32> {
    let mut total = Array::<f32>::new(m);
    if comptime!(mode == Reduce::None) {
        #[unroll]
        for mm in 0..m {
            total[mm] = acc[mm];
        }
    } else if comptime!(mode == Reduce::Plane) {
        {
            let steps = comptime!(lanes.trailing_zeros() as usize);
            #[unroll]
            for mm in 0..m {
                let mut v = acc[mm];
                #[unroll]
                for i in 0..steps {
                    v += plane_shuffle_xor(v, comptime!((lanes >> (i + 1)) as u32));
                }
                total[mm] = v;
            }
        }
    } else {
        {
            let lane = UNIT_POS_X as usize;
            let mut red = Shared::<[f32]>::new_slice(comptime!(rows_per_cube * lanes * m));
            let base = (UNIT_POS_Y as usize * lanes + lane) * m;
            #[unroll]
            for mm in 0..m {
                red[base + mm] = acc[mm];
            }
            sync_cube();
            // Comptime strides, halved each step: every unit reaches each barrier.
            let steps = comptime!(lanes.trailing_zeros() as usize);
            #[unroll]
            for i in 0..steps {
                let stride = comptime!(lanes >> (i + 1));
                if lane < stride {
                    #[unroll]
                    for mm in 0..m {
                        red[base + mm] += red[base + stride * m + mm];
                    }
                }
                sync_cube();
            }
            #[unroll]
            for mm in 0..m {
                total[mm] = red[base + mm];
            }
        }
    }
    total
}
