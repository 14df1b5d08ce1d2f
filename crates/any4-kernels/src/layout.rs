//! The device layout of an any4 weight, built once on the host from the portable layout
//! (any4-core's [`QuantizedView`], which stays the checkpoint format) and uploaded.
//!
//! For `W[N, K]` with groups of `G` input columns (`G` a multiple of 32, or `G >= K`: one group
//! per row), `V = ceil(K/32)` code vectors per row:
//!
//! | buffer | type, shape | content |
//! |---|---|---|
//! | `codes` | `u32[N, 4V]` | the portable nibbles (lowest first), each row zero-padded to a multiple of 32 weights, so a row is `V` 16-byte vectors and a warp reads 32 consecutive vectors per load |
//! | `params` | `u32[N, ceil(K/G)]` | one (scale, zero) pair per group: `f16(s / 2^es)` in the low half, `f16(z / 2^ez)` in the high half |
//! | `table` | `f32[N, 16]` | each row's table (shared int4/nf4/fp4 tables expanded) |
//! | `table8` | `u32[N, 4]` | the table as int8: `q[c] = round((t[c] - mid) / T8)`, 16 bytes |
//! | `rows` | `f32[N, 4]` | `(T8 · 2^es, mid · 2^es, 2^es, 2^ez)` |
//!
//! The power-of-two row factors `2^es = ` the smallest power of two `>= max |s|` of the row (and
//! `2^ez` for the zeros) bring every pair into `[-1, 1]` before the f16 rounding: dividing by a
//! power of two is exact, f16 keeps 11 significant bits there (relative error `<= 2^-11`), and no
//! scale can overflow or lose precision to f16's range, whatever the model's magnitudes. Each
//! output needs the factors once, not per weight:
//!
//! `y[m, n] = 2^es · Σ_g ŝ_g · Σ_{k∈g} t[c_k] · x_k  +  2^ez · Σ_g ẑ_g · Σ_{k∈g} x_k` (exact path),
//! `y[m, n] = Σ_g ŝ_g · (T8·2^es · Σ_b d_b · Σ_k q[c_k]·xq_k + mid·2^es · Σ_{k∈g} x_k) + 2^ez · Σ_g ẑ_g · Σ_{k∈g} x_k`
//! (int8 path, activations `x ≈ d_b · xq` per block `b` of 32).
//!
//! The int8 table is the CPU int8 path's ([`int8_table`]: 256 even steps between the table's
//! extremes, `q ∈ [−128, 127]`), so the GPU int8 path quantizes weights exactly as the CPU one.

use any4_core::QuantizedView;
use cubecl::prelude::*;
use cubecl::server::Handle;
use half::f16;

use crate::error::{Error, Result};

/// Weights per code vector (16 bytes of nibbles).
pub const VECTOR_WEIGHTS: usize = 32;

/// Shape of a quantized weight `W[N, K]` with groups of `group_size` input columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightShape {
    n: usize,
    k: usize,
    group_size: usize,
}

impl WeightShape {
    /// Validated shape. `group_size >= k` means one group per row; otherwise it must be a
    /// power of two of at least 32 (every size any4-core produces), so a code vector's group is
    /// a shift, not a division.
    pub fn new(n: usize, k: usize, group_size: usize) -> Result<Self> {
        for (what, v) in [("N", n), ("K", k), ("group size", group_size)] {
            if v == 0 {
                return Err(Error::ZeroDimension { what });
            }
        }
        if group_size < k && !(group_size >= VECTOR_WEIGHTS && group_size.is_power_of_two()) {
            return Err(Error::UnsupportedGroupSize { group_size, k });
        }
        Ok(Self { n, k, group_size })
    }
    /// Output rows `N`.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input columns `K`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Group size `G` as given (`>= K`: per row).
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    /// `ceil(K/32)`: code vectors per row.
    pub fn vectors_per_row(&self) -> usize {
        self.k.div_ceil(VECTOR_WEIGHTS)
    }
    /// `ceil(K/G)`: (scale, zero) pairs per row.
    pub fn groups(&self) -> usize {
        self.k.div_ceil(self.group_size.min(self.k))
    }
    /// The group of code vector `v` is `v >> group_shift()` (31 for per-row groups: every
    /// vector index is below 2^31).
    pub fn group_shift(&self) -> usize {
        if self.group_size >= self.k {
            31
        } else {
            (self.group_size / VECTOR_WEIGHTS).trailing_zeros() as usize
        }
    }
    /// The group of u32 code word `w` (8 weights) is `w >> word_group_shift()`.
    pub fn word_group_shift(&self) -> usize {
        (self.group_shift() + 2).min(31)
    }
    /// Bytes of weight data a matmul streams (codes and pairs).
    pub fn streamed_bytes(&self) -> usize {
        self.n * (self.vectors_per_row() * 16 + self.groups() * 4)
    }
}

/// The device layout as host vectors (see the module docs), before upload.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLayout {
    /// `u32[N, 4V]`.
    pub codes: Vec<u32>,
    /// `u32[N, groups]` f16 pairs.
    pub params: Vec<u32>,
    /// `f32[N, 16]`.
    pub table: Vec<f32>,
    /// `u32[N, 4]` int8 tables.
    pub table8: Vec<u32>,
    /// `f32[N, 4]` row factors.
    pub rows: Vec<f32>,
    /// The shape.
    pub shape: WeightShape,
}

/// A row's table as int8, `t[c] ≈ mid + scale · q[c]`: the CPU int8 path's table numerics.
///
/// `scale = (max t − min t) / 255`, `u[c] = round((t[c] − min t) / scale)` in `[0, 255]` (ties to
/// even), `q[c] = u[c] − 128`, `mid = min t + 128 · scale`; a constant table (or one so narrow
/// that `1 / scale` overflows) gets `scale = 0`, `mid = min t`. This is any4-core's
/// `int8_table` on the CPU branch (same operations in the same order, so bit-identical); once
/// that function is public on main, this one becomes a call to it.
pub fn int8_table(t: &[f32; 16]) -> ([i8; 16], f32, f32) {
    let (mut lo, mut hi) = (t[0], t[0]);
    for &v in &t[1..] {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let scale = (hi - lo) / 255.0;
    let inv = 1.0 / scale;
    let (scale, inv) = if scale > 0.0 && inv.is_finite() {
        (scale, inv)
    } else {
        (0.0, 0.0)
    };
    // Ties to even by the 1.5 · 2^23 trick, as the CPU code (and `cvtps2dq`) rounds.
    const MAGIC: f32 = 12_582_912.0;
    let q = std::array::from_fn(|c| {
        let u = (((t[c] - lo) * inv + MAGIC) - MAGIC) as i32;
        u.clamp(0, 255) as u8 as i8 ^ i8::MIN
    });
    (q, scale, lo + 128.0 * scale)
}

/// The smallest power of two `>= max |v|` (1 when all are zero), as an f32.
fn pow2_bound(values: &[f32]) -> f32 {
    let amax = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        return 1.0;
    }
    let bits = amax.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    if exp == 0 {
        // Subnormal maximum: 2^-126 bounds it.
        return f32::from_bits(1 << 23);
    }
    let e = exp - 127 + i32::from(bits & 0x7f_ffff != 0);
    // |v| < 2^128 for finite v, and e <= 128 only when amax > 2^127: clamp to the largest.
    f32::from_bits(((e.min(127) + 127) as u32) << 23)
}

impl HostLayout {
    /// Builds the device layout of `view` on the host.
    pub fn from_view(view: &QuantizedView<'_>) -> Result<Self> {
        let (n, k) = (view.rows(), view.cols());
        let shape = WeightShape::new(n, k, view.group_len())?;
        let (vpr, groups) = (shape.vectors_per_row(), shape.groups());
        let mut out = HostLayout {
            codes: vec![0; n * vpr * 4],
            params: Vec::with_capacity(n * groups),
            table: Vec::with_capacity(n * 16),
            table8: Vec::with_capacity(n * 4),
            rows: Vec::with_capacity(n * 4),
            shape,
        };
        for row in 0..n {
            let words = view.row_codes(row);
            out.codes[row * vpr * 4..][..words.len()].copy_from_slice(words);
            let (scales, zeros, table) = (
                view.row_scales(row),
                view.row_zeros(row),
                view.row_table(row),
            );
            for (name, vals) in [("table", &table[..]), ("scales", scales), ("zeros", zeros)] {
                if let Some(&value) = vals.iter().find(|v| !v.is_finite()) {
                    return Err(Error::NotFinite { name, row, value });
                }
            }
            let (rs, rz) = (pow2_bound(scales), pow2_bound(zeros));
            out.params.extend(scales.iter().zip(zeros).map(|(&s, &z)| {
                let hs = f16::from_f32(s / rs).to_bits() as u32;
                let hz = f16::from_f32(z / rz).to_bits() as u32;
                hs | (hz << 16)
            }));
            out.table.extend_from_slice(table);
            let (q, t8, mid) = int8_table(table);
            out.table8.extend(
                q.chunks(4)
                    .map(|b| u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])),
            );
            out.rows.extend([t8 * rs, mid * rs, rs, rz]);
        }
        Ok(out)
    }

    /// `w[n, k]` as the device kernels see it (f16-rounded pairs): the reference the exact
    /// kernels are held to, `table[c] · ŝ · 2^es + ẑ · 2^ez`.
    pub fn dequantize(&self) -> Vec<f32> {
        let s = self.shape;
        let (vpr, groups, g) = (s.vectors_per_row(), s.groups(), s.group_size.min(s.k));
        let mut w = Vec::with_capacity(s.n * s.k);
        for row in 0..s.n {
            let [_, _, rs, rz] = self.rows[row * 4..][..4] else {
                unreachable!("4 factors per row")
            };
            for col in 0..s.k {
                let word = self.codes[row * vpr * 4 + col / 8];
                let c = ((word >> (4 * (col % 8))) & 15) as usize;
                let p = self.params[row * groups + col / g];
                let sh = f16::from_bits(p as u16).to_f32();
                let zh = f16::from_bits((p >> 16) as u16).to_f32();
                w.push(self.table[row * 16 + c] * (sh * rs) + zh * rz);
            }
        }
        w
    }
}

/// An any4 weight on a device in the kernels' layout (see the module docs): what every kernel
/// of this crate reads. Build it once per weight and device ([`DeviceWeight::upload`]).
#[derive(Debug, Clone)]
pub struct DeviceWeight {
    pub(crate) codes: Handle,
    pub(crate) params: Handle,
    pub(crate) table: Handle,
    pub(crate) table8: Handle,
    pub(crate) rows: Handle,
    shape: WeightShape,
}

impl DeviceWeight {
    /// Builds the layout of `view` on the host and uploads it.
    pub fn upload(client: &Client, view: &QuantizedView<'_>) -> Result<Self> {
        Ok(Self::upload_layout(client, &HostLayout::from_view(view)?))
    }

    /// Uploads a layout built with [`HostLayout::from_view`].
    pub fn upload_layout(client: &Client, layout: &HostLayout) -> Self {
        let mut weight = Self::upload_layout_without_codes(client, layout);
        weight.codes = client.create_from_slice(bytemuck::cast_slice(&layout.codes));
        weight
    }

    /// Uploads a layout's pairs and tables and takes `codes` as its code buffer: a buffer
    /// holding the portable codes (`u32[N, ceil(K/8)]`) when `K` is a multiple of 32, in which
    /// case they are the device codes already (no copy). Errors if `K % 32 ≠ 0` or the buffer
    /// is smaller than `N · K / 2` bytes.
    pub fn upload_layout_with_codes(
        client: &Client,
        layout: &HostLayout,
        codes: Handle,
    ) -> Result<Self> {
        let s = layout.shape;
        if !s.k().is_multiple_of(VECTOR_WEIGHTS) {
            return Err(Error::LengthMismatch {
                name: "codes (shared buffers need K % 32 = 0)",
                expected: s.n() * s.vectors_per_row() * 4,
                actual: s.n() * s.k().div_ceil(8),
            });
        }
        let expected_bytes = (s.n() * s.vectors_per_row() * 16) as u64;
        if codes.size_in_used() < expected_bytes {
            return Err(Error::BufferTooSmall {
                name: "codes",
                expected_bytes,
                actual_bytes: codes.size_in_used(),
            });
        }
        let mut weight = Self::upload_layout_without_codes(client, layout);
        weight.codes = codes;
        Ok(weight)
    }

    fn upload_layout_without_codes(client: &Client, layout: &HostLayout) -> Self {
        Self {
            codes: client.empty(16),
            params: client.create_from_slice(bytemuck::cast_slice(&layout.params)),
            table: client.create_from_slice(bytemuck::cast_slice(&layout.table)),
            table8: client.create_from_slice(bytemuck::cast_slice(&layout.table8)),
            rows: client.create_from_slice(bytemuck::cast_slice(&layout.rows)),
            shape: layout.shape,
        }
    }

    /// The weight's shape.
    pub fn shape(&self) -> WeightShape {
        self.shape
    }

    /// Device bytes the layout occupies.
    pub fn bytes(&self) -> u64 {
        [
            &self.codes,
            &self.params,
            &self.table,
            &self.table8,
            &self.rows,
        ]
        .iter()
        .map(|h| h.size_in_used())
        .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_bound_is_a_tight_power_of_two() {
        assert_eq!(pow2_bound(&[0.0, -0.0]), 1.0);
        assert_eq!(pow2_bound(&[0.5]), 0.5);
        assert_eq!(pow2_bound(&[-0.3, 0.2]), 0.5);
        assert_eq!(pow2_bound(&[3.0]), 4.0);
        assert_eq!(pow2_bound(&[1e-40]), f32::from_bits(1 << 23));
        assert_eq!(pow2_bound(&[f32::MAX]), 2f32.powi(127));
        for v in [1e-30f32, 7.5e-3, 1.0, 123.4, 6.5e4, 3e30] {
            let b = pow2_bound(&[v]);
            assert!(b >= v && b / 2.0 < v, "{v} → {b}");
        }
    }

    #[test]
    fn int8_table_matches_the_cpu_formula() {
        let t: [f32; 16] = std::array::from_fn(|i| i as f32);
        let (q, scale, mid) = int8_table(&t);
        assert_eq!((scale, mid), (15.0 / 255.0, 128.0 * (15.0 / 255.0)));
        assert_eq!((q[0], q[15]), (-128, 127));
        for (c, &v) in t.iter().enumerate() {
            assert!(
                (mid + scale * q[c] as f32 - v).abs() <= scale / 2.0 + 1e-6,
                "code {c}"
            );
        }
        let (q, scale, mid) = int8_table(&[2.5; 16]);
        assert_eq!((q, scale, mid), ([-128; 16], 0.0, 2.5));
    }
}
