//! Checked launch helpers: validate shapes and buffer sizes up front (typed [`KernelError`]),
//! pick a kernel by [`Strategy`], size cubes from the runtime's limits, then launch.
//!
//! Cube sizes adapt to the device: the CubeCL CPU runtime allows only as many units per cube as
//! there are cores (2 on the CI machine), a GPU up to 1024, so every kernel takes its cube shape
//! as compile-time parameters instead of hard-coding 256 threads.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::KernelError;
use crate::dequantize::dequantize_kernel;
use crate::gemm::{dense_matmul_kernel, gemm_kernel};
use crate::gemv::gemv_kernel;

/// Largest batch the GEMV kernel handles (one accumulator per batch row per unit).
pub const GEMV_MAX_M: usize = 8;

/// Shape of a quantized weight `W[N, K]` with groups of `group_size` input columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightShape {
    n: usize,
    k: usize,
    group_size: usize,
}

impl WeightShape {
    /// Validated shape. `group_size >= k` means one group per row (per-row scaling).
    pub fn new(n: usize, k: usize, group_size: usize) -> Result<Self, KernelError> {
        for (what, v) in [("N", n), ("K", k), ("group size", group_size)] {
            if v == 0 {
                return Err(KernelError::ZeroDimension { what });
            }
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
    /// Group size `G`.
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    /// `ceil(K/8)`: u32 code words per row.
    pub fn words_per_row(&self) -> usize {
        self.k.div_ceil(8)
    }
    /// `ceil(K/G)`: scale/zero entries per row.
    pub fn n_groups(&self) -> usize {
        self.k.div_ceil(self.group_size)
    }
    /// Element counts of `codes`, `table`, `scales`, `zeros`.
    pub fn lens(&self) -> [usize; 4] {
        let g = self.n * self.n_groups();
        [self.n * self.words_per_row(), self.n * 16, g, g]
    }
}

/// A device-resident any4 weight in the portable layout (see the crate docs).
#[derive(Debug, Clone)]
pub struct Any4Weight {
    /// `u32[N, ceil(K/8)]` packed codes.
    pub codes: Handle,
    /// `f32[N, 16]` per-row tables.
    pub table: Handle,
    /// `f32[N, ceil(K/G)]` group scales.
    pub scales: Handle,
    /// `f32[N, ceil(K/G)]` group zeros.
    pub zeros: Handle,
    shape: WeightShape,
}

const NAMES: [&str; 4] = ["codes", "table", "scales", "zeros"];

fn check_handle(name: &'static str, h: &Handle, elems: usize) -> Result<(), KernelError> {
    let expected_bytes = (elems * 4) as u64;
    let actual_bytes = h.size_in_used();
    if actual_bytes < expected_bytes {
        return Err(KernelError::BufferTooSmall {
            name,
            expected_bytes,
            actual_bytes,
        });
    }
    Ok(())
}

impl Any4Weight {
    /// Wraps existing device buffers, checking each is large enough for `shape`.
    pub fn from_handles(
        codes: Handle,
        table: Handle,
        scales: Handle,
        zeros: Handle,
        shape: WeightShape,
    ) -> Result<Self, KernelError> {
        for ((name, h), len) in NAMES
            .iter()
            .zip([&codes, &table, &scales, &zeros])
            .zip(shape.lens())
        {
            check_handle(name, h, len)?;
        }
        Ok(Self {
            codes,
            table,
            scales,
            zeros,
            shape,
        })
    }

    /// Uploads host buffers, checking their lengths against `shape`.
    pub fn upload(
        client: &Client,
        codes: &[u32],
        table: &[f32],
        scales: &[f32],
        zeros: &[f32],
        shape: WeightShape,
    ) -> Result<Self, KernelError> {
        let actual = [codes.len(), table.len(), scales.len(), zeros.len()];
        for ((name, expected), actual) in NAMES.iter().zip(shape.lens()).zip(actual) {
            if expected != actual {
                return Err(KernelError::LengthMismatch {
                    name,
                    expected,
                    actual,
                });
            }
        }
        Ok(Self {
            codes: client.create_from_slice(bytemuck::cast_slice(codes)),
            table: client.create_from_slice(bytemuck::cast_slice(table)),
            scales: client.create_from_slice(bytemuck::cast_slice(scales)),
            zeros: client.create_from_slice(bytemuck::cast_slice(zeros)),
            shape,
        })
    }

    /// The weight's shape.
    pub fn shape(&self) -> WeightShape {
        self.shape
    }
}

/// Which matmul kernel to run. `Auto` is the default; `Fallback` is valid everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// [`Strategy::Gemv`] for `M <= GEMV_MAX_M`, else [`Strategy::Gemm`].
    #[default]
    Auto,
    /// Split-K LUT GEMV (decode) with the [`gemv_plan`] layout; errors for `M > GEMV_MAX_M`.
    Gemv,
    /// GEMV with a caller-chosen layout (checked by [`GemvPlan::validate`]).
    GemvPlanned(GemvPlan),
    /// Tiled LUT GEMM with the W tile dequantized into shared memory (prefill).
    Gemm,
    /// Dequantize to a dense f32 `W`, then a naive dense matmul: slow, always valid.
    Fallback,
}

impl Strategy {
    /// The concrete kernel `Auto` resolves to for batch `m`.
    pub fn resolve(self, m: usize) -> Strategy {
        match self {
            Strategy::Auto if m <= GEMV_MAX_M => Strategy::Gemv,
            Strategy::Auto => Strategy::Gemm,
            s => s,
        }
    }
}

fn prev_pow2(v: usize) -> usize {
    if v == 0 {
        1
    } else {
        1 << (usize::BITS - 1 - v.leading_zeros())
    }
}

/// Units per cube for a 1-D kernel: a power of two within the device limits, at most `cap`.
fn units_1d(client: &Client, cap: usize) -> usize {
    let hw = &client.properties().hardware;
    prev_pow2(
        (hw.max_units_per_cube as usize)
            .min(hw.max_cube_dim.0 as usize)
            .min(cap),
    )
}

/// Cube count for `cubes` cubes indexed linearly by `CUBE_POS` (spills into Y past the X limit).
fn linear_cube_count(client: &Client, cubes: usize) -> Result<CubeCount, KernelError> {
    let (mx, my, _) = client.properties().hardware.max_cube_count;
    let mx = mx.min(65_535) as usize;
    let x = cubes.clamp(1, mx);
    let y = cubes.div_ceil(x);
    if y > my as usize {
        return Err(KernelError::GridTooLarge {
            axis: "y",
            cubes: y,
            limit: my,
        });
    }
    Ok(CubeCount::new_2d(x as u32, y as u32))
}

fn out_handle(client: &Client, elems: usize, elem_bytes: usize) -> Handle {
    client.empty(elems * elem_bytes)
}

/// Dequantizes to a dense row-major `f32[N, K]` buffer.
pub fn dequantize_f32(client: &Client, weight: &Any4Weight) -> Result<Handle, KernelError> {
    dequantize_as::<f32>(client, weight, 4)
}

/// Dequantizes to a dense row-major `f16[N, K]` buffer; `UnsupportedType` where the runtime
/// has no f16 (the table math is still f32, only the store is rounded).
pub fn dequantize_f16(client: &Client, weight: &Any4Weight) -> Result<Handle, KernelError> {
    let f16 = cubecl::ir::ElemType::Float(cubecl::ir::FloatKind::F16);
    if !client.properties().supports_type(f16) {
        return Err(KernelError::UnsupportedType("f16"));
    }
    dequantize_as::<half::f16>(client, weight, 2)
}

fn dequantize_as<F: Float + CubeElement>(
    client: &Client,
    weight: &Any4Weight,
    elem_bytes: usize,
) -> Result<Handle, KernelError> {
    let s = weight.shape;
    let out = out_handle(client, s.n * s.k, elem_bytes);
    let words = s.n * s.words_per_row();
    let units = units_1d(client, 256);
    let count = linear_cube_count(client, words.div_ceil(units))?;
    let [lc, lt, lsz, _] = s.lens();
    // SAFETY (lengths): every handle was checked against `s` at construction; `out` is new.
    unsafe {
        dequantize_kernel::launch::<F>(
            client,
            count,
            CubeDim::new_1d(units as u32),
            BufferArg::from_raw_parts(weight.codes.clone(), lc),
            BufferArg::from_raw_parts(weight.table.clone(), lt),
            BufferArg::from_raw_parts(weight.scales.clone(), lsz),
            BufferArg::from_raw_parts(weight.zeros.clone(), lsz),
            BufferArg::from_raw_parts(out.clone(), s.n * s.k),
            s.n,
            s.k,
            s.group_size,
        );
    }
    client.check(core::iter::once(&out))?;
    Ok(out)
}

/// `y[M, N] = x[M, K] · Wᵀ` into a new `f32[M, N]` buffer. `x` is row-major `f32[M, K]`.
pub fn matmul(
    client: &Client,
    weight: &Any4Weight,
    x: &Handle,
    m: usize,
    strategy: Strategy,
) -> Result<Handle, KernelError> {
    if m == 0 {
        return Err(KernelError::ZeroDimension { what: "M" });
    }
    let out = out_handle(client, m * weight.shape.n, 4);
    matmul_into(client, weight, x, m, &out, strategy)?;
    Ok(out)
}

/// `y[M, N] = x[M, K] · Wᵀ` written into `out` (`f32[M, N]`, at least `M·N·4` bytes).
pub fn matmul_into(
    client: &Client,
    weight: &Any4Weight,
    x: &Handle,
    m: usize,
    out: &Handle,
    strategy: Strategy,
) -> Result<(), KernelError> {
    let s = weight.shape;
    if m == 0 {
        return Err(KernelError::ZeroDimension { what: "M" });
    }
    check_handle("x", x, m * s.k)?;
    check_handle("out", out, m * s.n)?;
    match strategy.resolve(m) {
        Strategy::Gemv | Strategy::GemvPlanned(_) if m > GEMV_MAX_M => {
            return Err(KernelError::GemvBatchTooLarge { m, max: GEMV_MAX_M });
        }
        Strategy::Gemv => launch_gemv(client, weight, x, m, out, gemv_plan(client, s))?,
        Strategy::GemvPlanned(plan) => {
            plan.validate(client, s)?;
            launch_gemv(client, weight, x, m, out, plan)?
        }
        Strategy::Gemm => launch_gemm(client, weight, x, m, out)?,
        Strategy::Fallback | Strategy::Auto => launch_fallback(client, weight, x, m, out)?,
    }
    client.check(core::iter::once(out))?;
    Ok(())
}

/// How the GEMV kernel is laid out on a device for a shape. [`gemv_plan`] picks one;
/// [`Strategy::GemvPlanned`] runs a given one (benches, tuning) after [`GemvPlan::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemvPlan {
    /// u32 words per code load (`Vector<u32, V>`): 4, 2 or 1; must divide `ceil(K/8)`.
    pub vector_size: usize,
    /// Apply scale/zero once per code vector; only valid when no vector straddles a group.
    pub aligned: bool,
    /// Units splitting K for one row (`CUBE_DIM_X`, a power of two).
    pub threads_per_row: usize,
    /// Output rows per cube (`CUBE_DIM_Y`).
    pub rows_per_cube: usize,
    /// Reduce split-K partials with a plane sum; needs `threads_per_row` = the plane size.
    pub plane_reduce: bool,
}

/// The runtime's plane size if it is fixed, a power of two, fits a cube row and has plane ops:
/// then a row of exactly that many units is one plane and can reduce with `plane_sum`.
fn fixed_plane(client: &Client) -> Option<usize> {
    let props = client.properties();
    let hw = &props.hardware;
    let size = hw.plane_size_max as usize;
    let ok = hw.plane_size_min == hw.plane_size_max
        && size.is_power_of_two()
        && size <= hw.max_units_per_cube as usize
        && size <= hw.max_cube_dim.0 as usize
        && props.features.plane.contains(cubecl::features::Plane::Ops);
    ok.then_some(size)
}

/// Plane size the automatic plan reduces with: a fixed plane of at least 4 lanes (a CPU "plane"
/// of 1 would mean no split-K at all).
fn reducing_plane(client: &Client) -> Option<usize> {
    fixed_plane(client).filter(|&size| size >= 4)
}

fn vector_aligned(shape: WeightShape, v: usize) -> bool {
    shape.group_size >= shape.k || shape.group_size.is_multiple_of(8 * v)
}

/// Chooses the GEMV layout for `shape` within `client`'s limits.
pub fn gemv_plan(client: &Client, shape: WeightShape) -> GemvPlan {
    let wpr = shape.words_per_row();
    let supported: Vec<usize> = client.io_optimized_vector_sizes(4).collect();
    // Widest code vector (≤ 4 words = 32 weights) that tiles a row; prefer one that never
    // straddles a group, so scale/zero are applied once per vector.
    let fits = |v: usize| wpr.is_multiple_of(v) && (v == 1 || supported.contains(&v));
    let candidates = [4usize, 2, 1];
    let (vector_size, aligned) = candidates
        .iter()
        .copied()
        .find(|&v| fits(v) && vector_aligned(shape, v))
        .map(|v| (v, true))
        .unwrap_or_else(|| {
            (
                candidates.into_iter().find(|&v| fits(v)).unwrap_or(1),
                false,
            )
        });

    let hw = &client.properties().hardware;
    let max_units = (hw.max_units_per_cube as usize).max(1);
    let (threads_per_row, plane_reduce) = match reducing_plane(client) {
        Some(plane) => (plane, true),
        // A plane of 1 (CPU runtime): cube barriers are thread barriers there, so no split-K.
        None if hw.plane_size_max <= 1 => (1, false),
        None => {
            let vecs_per_row = wpr / vector_size;
            let t = prev_pow2(max_units.min(hw.max_cube_dim.0 as usize).min(32))
                .min(vecs_per_row.next_power_of_two());
            (t, false)
        }
    };
    let rows_per_cube = prev_pow2(
        (128 / threads_per_row)
            .min(max_units / threads_per_row)
            .min(hw.max_cube_dim.1 as usize)
            .max(1),
    );
    GemvPlan {
        vector_size,
        aligned,
        threads_per_row,
        rows_per_cube,
        plane_reduce,
    }
}

impl GemvPlan {
    /// Checks the plan against the shape and the device; `InvalidPlan` names the broken rule.
    pub fn validate(&self, client: &Client, shape: WeightShape) -> Result<(), KernelError> {
        let hw = &client.properties().hardware;
        let fail = |rule: &'static str| Err(KernelError::InvalidPlan { plan: *self, rule });
        let (v, t, r) = (self.vector_size, self.threads_per_row, self.rows_per_cube);
        if ![1, 2, 4].contains(&v) || !shape.words_per_row().is_multiple_of(v) {
            return fail("vector_size must be 1, 2 or 4 and divide ceil(K/8)");
        }
        if v > 1 && !client.io_optimized_vector_sizes(4).any(|s| s == v) {
            return fail("vector_size not supported by the runtime");
        }
        if self.aligned && !vector_aligned(shape, v) {
            return fail("aligned needs 8 * vector_size to divide the group size (or G >= K)");
        }
        if !t.is_power_of_two() || r == 0 {
            return fail("threads_per_row must be a power of two and rows_per_cube > 0");
        }
        if t > hw.max_cube_dim.0 as usize
            || r > hw.max_cube_dim.1 as usize
            || t * r > hw.max_units_per_cube as usize
        {
            return fail("cube exceeds the runtime's limits");
        }
        if self.plane_reduce && fixed_plane(client) != Some(t) {
            return fail("plane_reduce needs threads_per_row == the runtime's fixed plane size");
        }
        Ok(())
    }
}

fn launch_gemv(
    client: &Client,
    weight: &Any4Weight,
    x: &Handle,
    m: usize,
    out: &Handle,
    plan: GemvPlan,
) -> Result<(), KernelError> {
    let s = weight.shape;
    let (vec, tpr, rpc) = (plan.vector_size, plan.threads_per_row, plan.rows_per_cube);
    let count = linear_cube_count(client, s.n.div_ceil(rpc))?;
    let [lc, lt, lsz, _] = s.lens();
    // SAFETY (lengths): handles were checked against the shape; `codes` holds `lc / vec` vectors.
    unsafe {
        gemv_kernel::launch(
            client,
            count,
            CubeDim::new_2d(tpr as u32, rpc as u32),
            vec,
            BufferArg::from_raw_parts(weight.codes.clone(), lc / vec),
            BufferArg::from_raw_parts(weight.table.clone(), lt),
            BufferArg::from_raw_parts(weight.scales.clone(), lsz),
            BufferArg::from_raw_parts(weight.zeros.clone(), lsz),
            BufferArg::from_raw_parts(x.clone(), m * s.k),
            BufferArg::from_raw_parts(out.clone(), m * s.n),
            s.n,
            s.k,
            s.group_size,
            m,
            tpr,
            rpc,
            plan.aligned,
            plan.plane_reduce,
        );
    }
    Ok(())
}

/// Tile shape of [`gemm_kernel`]: a `tile_m × tile_n` output tile per cube, `reg_m × reg_n`
/// outputs per unit, `units = (tile_m / reg_m) · (tile_n / reg_n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmTiles {
    pub tile_m: usize,
    pub tile_n: usize,
    pub tile_k: usize,
    pub reg_m: usize,
    pub reg_n: usize,
    pub units: usize,
}

/// Tiles for `max_units` units per cube (a power of two) and a batch of `m` rows.
///
/// With ≥ 64 units: 1024 outputs per cube, 32 × 32, or 16 × 64 when `m ≤ 16` so a small batch
/// does not pay for padded rows; each unit then holds `1024 / units` accumulators (4 with 256
/// units, as 2 × 2). On small cubes (the CubeCL CPU runtime) one unit per cube and an 8 × 8
/// tile held whole in registers: its `sync_cube` is then free, while a 2-unit cube pays a
/// thread barrier twice per K tile.
pub(crate) fn gemm_tiles(max_units: usize, m: usize) -> GemmTiles {
    if max_units < 64 {
        return GemmTiles {
            tile_m: 8,
            tile_n: 8,
            tile_k: 32,
            reg_m: 8,
            reg_n: 8,
            units: 1,
        };
    }
    let units = max_units.min(256);
    let (tile_m, tile_n) = if m <= 16 { (16, 64) } else { (32, 32) };
    let per_unit = tile_m * tile_n / units; // 4, 8 or 16
    let reg_m = if per_unit >= 16 { 4 } else { 2 };
    GemmTiles {
        tile_m,
        tile_n,
        tile_k: 32,
        reg_m,
        reg_n: per_unit / reg_m,
        units,
    }
}

fn launch_gemm(
    client: &Client,
    weight: &Any4Weight,
    x: &Handle,
    m: usize,
    out: &Handle,
) -> Result<(), KernelError> {
    let s = weight.shape;
    let t = gemm_tiles(units_1d(client, 256), m);
    let (mx, my, _) = client.properties().hardware.max_cube_count;
    let (cx, cy) = (s.n.div_ceil(t.tile_n), m.div_ceil(t.tile_m));
    if cx > mx.min(65_535) as usize {
        return Err(KernelError::GridTooLarge {
            axis: "x (N tiles)",
            cubes: cx,
            limit: mx,
        });
    }
    if cy > my.min(65_535) as usize {
        return Err(KernelError::GridTooLarge {
            axis: "y (M tiles)",
            cubes: cy,
            limit: my,
        });
    }
    let [lc, lt, lsz, _] = s.lens();
    // SAFETY (lengths): handles were checked against the shape.
    unsafe {
        gemm_kernel::launch(
            client,
            CubeCount::new_2d(cx as u32, cy as u32),
            CubeDim::new_1d(t.units as u32),
            BufferArg::from_raw_parts(weight.codes.clone(), lc),
            BufferArg::from_raw_parts(weight.table.clone(), lt),
            BufferArg::from_raw_parts(weight.scales.clone(), lsz),
            BufferArg::from_raw_parts(weight.zeros.clone(), lsz),
            BufferArg::from_raw_parts(x.clone(), m * s.k),
            BufferArg::from_raw_parts(out.clone(), m * s.n),
            m,
            s.n,
            s.k,
            s.group_size,
            t.tile_m,
            t.tile_n,
            t.tile_k,
            t.reg_m,
            t.reg_n,
            t.units,
            s.group_size.is_multiple_of(8),
        );
    }
    Ok(())
}

fn launch_fallback(
    client: &Client,
    weight: &Any4Weight,
    x: &Handle,
    m: usize,
    out: &Handle,
) -> Result<(), KernelError> {
    let s = weight.shape;
    let w = dequantize_f32(client, weight)?;
    launch_dense(client, &w, x, out, m, s.n, s.k)
}

/// Dense `out[M, N] = x[M, K] · w[N, K]ᵀ` (all f32, row-major) with the naive fallback kernel:
/// the baseline the LUT kernels are compared with, and the second half of
/// [`Strategy::Fallback`].
pub fn dense_matmul_into(
    client: &Client,
    w: &Handle,
    x: &Handle,
    out: &Handle,
    (m, n, k): (usize, usize, usize),
) -> Result<(), KernelError> {
    for (what, v) in [("M", m), ("N", n), ("K", k)] {
        if v == 0 {
            return Err(KernelError::ZeroDimension { what });
        }
    }
    check_handle("w", w, n * k)?;
    check_handle("x", x, m * k)?;
    check_handle("out", out, m * n)?;
    launch_dense(client, w, x, out, m, n, k)?;
    client.check(core::iter::once(out))?;
    Ok(())
}

fn launch_dense(
    client: &Client,
    w: &Handle,
    x: &Handle,
    out: &Handle,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(), KernelError> {
    let units = units_1d(client, 256);
    let count = linear_cube_count(client, (m * n).div_ceil(units))?;
    // SAFETY (lengths): callers checked `w` (N·K), `x` (M·K) and `out` (M·N).
    unsafe {
        dense_matmul_kernel::launch(
            client,
            count,
            CubeDim::new_1d(units as u32),
            BufferArg::from_raw_parts(x.clone(), m * k),
            BufferArg::from_raw_parts(w.clone(), n * k),
            BufferArg::from_raw_parts(out.clone(), m * n),
            m,
            n,
            k,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::gemm_tiles;

    /// Every unit owns one `reg_m × reg_n` block and the blocks cover the tile exactly.
    #[test]
    fn gemm_tiles_cover_the_tile() {
        for units in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] {
            for m in [1, 8, 16, 17, 33, 256] {
                let t = gemm_tiles(units, m);
                assert!(t.units <= units, "{t:?}");
                assert_eq!(t.tile_m % t.reg_m, 0, "{t:?}");
                assert_eq!(t.tile_n % t.reg_n, 0, "{t:?}");
                assert_eq!(
                    (t.tile_m / t.reg_m) * (t.tile_n / t.reg_n),
                    t.units,
                    "{t:?}"
                );
                assert_eq!(t.tile_k % 8, 0, "{t:?}");
            }
        }
    }
}
