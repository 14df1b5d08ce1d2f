//! Fixed tables (int4, nf4, fp4) and the scaled domain each format's group scaling targets.
//!
//! Convention (ours, documented in the checkpoint schema): tables hold values in the *scaled
//! domain* and `w ≈ table[code] · scale + zero`. With asymmetric scaling a group's `[min, max]`
//! maps onto the domain `[lo, hi]`: `scale = (max − min) / (hi − lo)`, `zero = min − lo · scale`.
//! For int4 and anyN `lo = 0`, so `zero = min` and a constant group dequantizes to exactly `min`.
//! With symmetric scaling `[−absmax, absmax]` maps onto `[−L, L]`: `scale = absmax / L`,
//! `zero = 0`.

use crate::config::{Format, Scaling};

/// The 16 NormalFloat levels of QLoRA (quantiles of N(0, 1) normalised to `[-1, 1]`, with an
/// exact zero), in ascending order.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The e2m1 (OCP FP4) values in ascending order; `-0` and `+0` are both present, so one of the
/// 16 codes is redundant, as in the hardware format.
pub const FP4_E2M1: [f32; 16] = [
    -6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
];

/// Where a group's values land after scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Domain {
    /// Asymmetric: `[min, max]` ↦ `[lo, hi]`.
    Range {
        /// Image of the group minimum.
        lo: f32,
        /// Image of the group maximum.
        hi: f32,
    },
    /// Symmetric: `[−absmax, absmax]` ↦ `[−bound, bound]`.
    Symmetric {
        /// Image of the group absmax.
        bound: f32,
    },
}

/// The scaled domain of `format` under `scaling`.
pub fn domain(format: Format, scaling: Scaling) -> Domain {
    let levels = format.levels() as f32;
    match (format, scaling) {
        (Format::Nf4, Scaling::Asymmetric) => Domain::Range { lo: -1.0, hi: 1.0 },
        (Format::Nf4, Scaling::Symmetric) => Domain::Symmetric { bound: 1.0 },
        (Format::Fp4, Scaling::Asymmetric) => Domain::Range { lo: -6.0, hi: 6.0 },
        (Format::Fp4, Scaling::Symmetric) => Domain::Symmetric { bound: 6.0 },
        // int4 and anyN: integer grid 0..2^N-1, or ±(2^(N-1) - 1) when symmetric.
        (_, Scaling::Asymmetric) => Domain::Range {
            lo: 0.0,
            hi: levels - 1.0,
        },
        (_, Scaling::Symmetric) => Domain::Symmetric {
            bound: (levels / 2.0 - 1.0).max(1.0),
        },
    }
}

/// The fixed table of a non-learned format under `scaling`, ascending; `None` for anyN.
pub fn fixed_table(format: Format, scaling: Scaling) -> Option<[f32; 16]> {
    match format {
        Format::Nf4 => Some(NF4),
        Format::Fp4 => Some(FP4_E2M1),
        Format::Int4 => {
            // Asymmetric: 0..15. Symmetric: -8..7 (the grid's natural two's-complement range).
            let offset = match scaling {
                Scaling::Asymmetric => 0.0,
                Scaling::Symmetric => -8.0,
            };
            Some(std::array::from_fn(|i| i as f32 + offset))
        }
        Format::Any4 | Format::Any3 | Format::Any2 => None,
    }
}

/// Index of the entry of an ascending `table` nearest to `v`; ties go to the upper entry, which
/// for an integer grid is round-half-up, i.e. `f32::round` on non-negative values.
#[inline]
pub fn nearest(table: &[f32], v: f32) -> usize {
    // Count midpoints ≤ v: a branch-free linear scan beats a binary search at 16 entries.
    let mut idx = 0;
    for w in table.windows(2) {
        idx += usize::from(v >= 0.5 * (w[0] + w[1]));
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_ascending() {
        for f in Format::ALL {
            for s in [Scaling::Asymmetric, Scaling::Symmetric] {
                if let Some(t) = fixed_table(f, s) {
                    assert!(t.windows(2).all(|w| w[0] <= w[1]), "{f} {s:?}");
                }
            }
        }
    }

    #[test]
    fn nearest_matches_round_half_up_on_int_grid() {
        let t = fixed_table(Format::Int4, Scaling::Asymmetric).unwrap();
        for i in 0..=1500 {
            let v = i as f32 / 100.0;
            assert_eq!(nearest(&t, v), v.round() as usize, "v = {v}");
        }
        assert_eq!(nearest(&t, -3.0), 0);
        assert_eq!(nearest(&t, 99.0), 15);
    }
}
