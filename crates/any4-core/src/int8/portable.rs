//! The portable int8 kernel: plain integer code in the natural activation order. It is the
//! reference the SIMD kernels are tested against (same integers, f32 sums in another order).

use super::{Acts, BLOCK, block_step, round_even};
use crate::pack::code;

/// Quantize `x: [m, k]` per block of 32 in natural order (`q_stride = blocks · 32`).
pub fn quantize_acts(x: &[f32], m: usize, k: usize, group: usize, a: &mut Acts) {
    let blocks = k / BLOCK;
    a.reset(m, blocks, k.div_ceil(group), blocks * BLOCK, 0);
    for i in 0..m {
        for b in 0..blocks {
            let xs = &x[i * k + b * BLOCK..][..BLOCK];
            let amax = xs.iter().fold(0.0f32, |acc, v| acc.max(v.abs()));
            let (d, inv) = block_step(amax);
            let q = &mut a.q[i * a.q_stride + b * BLOCK..][..BLOCK];
            for (qj, &xj) in q.iter_mut().zip(xs) {
                *qj = round_even(xj * inv) as i8;
            }
            a.d[i * blocks + b] = d;
        }
    }
    a.group_sums(x, k, group);
}

/// `Σ_g s_g Σ_{b∈g} d_b Σ_{j∈b} q[code_j] · xq_j` over the full blocks of one row, for
/// activation row `i`; `group_blocks` blocks share one scale.
pub fn row_dot(
    words: &[u32],
    q: &[i8; 16],
    a: &Acts,
    i: usize,
    scales: &[f32],
    group_blocks: usize,
) -> f32 {
    let xq = &a.q[i * a.q_stride..][..a.blocks * BLOCK];
    let d = &a.d[i * a.blocks..][..a.blocks];
    let mut acc = 0.0f32;
    for (b, (xb, &db)) in xq.chunks_exact(BLOCK).zip(d).enumerate() {
        let dot: i32 = xb
            .iter()
            .enumerate()
            .map(|(t, &xj)| q[code(words, b * BLOCK + t) as usize] as i32 * xj as i32)
            .sum();
        acc += scales[b / group_blocks] * (db * dot as f32);
    }
    acc
}
