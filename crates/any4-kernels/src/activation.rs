//! Activation quantization for the int8 GEMV: `x[M, K]` (f32 / f16 / bf16) → int8 blocks of 32.
//!
//! Per block `b` of 32 activations of a row (the last block of a row zero-padded):
//! `d_b = max |x| / 127`, `xq = round(x · (1 / d_b))` ties to even (the CPU int8 path's
//! activation rounding), and the exact f32 block sum `Σ x` (the zero and table-centre terms use
//! the unrounded activations). Unlike the CPU, a row's last partial block (`K % 32 ≠ 0`) is
//! quantized too (zero-padded) instead of taking the f32 table: no LLM shape has such a K. A block of zeros, or one whose `1 / d_b` overflows, is stored as
//! zeros with `d_b = 0`. One unit per block; the kernel is `M · K / 32` units, a few µs.

// `#[cube(launch)]` generates an undocumented module and kernel struct per kernel.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// `xq[m, 2b..2b+2]`: the block's 32 int8 values as two 16-byte vectors; `xd[m, b] = (d_b, Σx)`.
/// With `sums_only` (the exact GEMV's block sums) only `xd[m, b] = (0, Σx)` is written.
/// Launch `ceil(M · V / units)` cubes of `units` units, `V = ceil(K / 32)`.
#[cube(launch_unchecked)]
pub fn quantize_activations_kernel<F: Float>(
    x: &[F],
    xq: &mut [Vector<u32, Const<4>>],
    xd: &mut [Vector<f32, Const<2>>],
    k: usize,
    vectors_per_row: usize,
    blocks: usize,
    #[comptime] sums_only: bool,
) {
    let idx = ABSOLUTE_POS;
    if idx < blocks {
        let row = idx / vectors_per_row;
        let b = idx % vectors_per_row;
        let col0 = b * 32;
        let base = row * k + col0;
        let mut vals = Array::<f32>::new(32usize);
        let mut amax = 0.0f32;
        let mut sum = 0.0f32;
        #[unroll]
        for j in 0..32usize {
            let mut v = 0.0f32;
            if col0 + j < k {
                v = f32::cast_from(x[base + j]);
            }
            vals[j] = v;
            amax = f32::max(amax, f32::abs(v));
            sum += v;
        }
        if comptime!(!sums_only) {
            let mut d = amax / 127.0f32;
            let mut inv = 1.0f32 / d;
            if !(d > 0.0f32 && inv < 3.0e38f32) {
                d = 0.0f32;
                inv = 0.0f32;
            }
            let mut words = Array::<u32>::new(8usize);
            #[unroll]
            for w in 0..8usize {
                let mut word = 0u32;
                #[unroll]
                for j in 0..4usize {
                    // `round` is ties-to-even on CUDA (`rint`) and WGSL, as on the CPU.
                    let q = i32::clamp(
                        i32::cast_from(f32::round(vals[w * 4 + j] * inv)),
                        -127i32,
                        127i32,
                    );
                    word |= (u32::reinterpret(q) & 255u32) << (8 * j as u32);
                }
                words[w] = word;
            }
            let mut lo = Vector::<u32, Const<4>>::empty();
            let mut hi = Vector::<u32, Const<4>>::empty();
            #[unroll]
            for w in 0..4usize {
                lo.insert(w, words[w]);
                hi.insert(w, words[w + 4]);
            }
            xq[idx * 2] = lo;
            xq[idx * 2 + 1] = hi;
            let mut dd = Vector::<f32, Const<2>>::empty();
            dd.insert(0usize, d);
            dd.insert(1usize, sum);
            xd[idx] = dd;
        } else {
            let mut dd = Vector::<f32, Const<2>>::empty();
            dd.insert(0usize, 0.0f32);
            dd.insert(1usize, sum);
            xd[idx] = dd;
        }
    }
}
