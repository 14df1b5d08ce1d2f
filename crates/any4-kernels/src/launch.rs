//! Checked launch helpers: validate buffer sizes up front (typed [`Error`]), resolve a
//! [`Strategy`] to a kernel for the device and batch, look up the cached plan, launch.
//!
//! Nothing here synchronizes with the device or checks the stream after a launch: a matmul is
//! one or two kernel launches queued on the client, so calls chain without host round trips.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::activation::quantize_activations_kernel;
use crate::dequantize::dequantize_kernel;
use crate::error::{Error, Result};
use crate::gemm::{dense_matmul_kernel, gemm_kernel};
use crate::gemm_cmma::gemm_cmma_kernel;
use crate::gemv_exact::gemv_exact_kernel;
use crate::gemv_int8::gemv_int8_kernel;
use crate::layout::DeviceWeight;
use crate::plan::{self, Dtype, Plan, PlanKind};

use any4_core::DECODE_MAX_M;

/// Which kernels a matmul runs. `Auto` is the default; `Fallback` is valid everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Int8 GEMV for `M <= any4_core::DECODE_MAX_M` (the decode path), else the tensor-core GEMM where the
    /// device has it, else the SIMT GEMM.
    #[default]
    Auto,
    /// As `Auto`, with the exact GEMV (activations not rounded) for small batches.
    AutoExact,
    /// Int8 GEMV (activations quantized per block of 32); errors for `M > any4_core::DECODE_MAX_M`.
    GemvInt8,
    /// Exact GEMV (activations read as they are); errors for `M > any4_core::DECODE_MAX_M`.
    GemvExact,
    /// Tensor-core (cmma) GEMM; errors where the device has no matching cmma.
    TensorCore,
    /// SIMT GEMM, W tiles dequantized into shared memory.
    Simt,
    /// Dequantize to a dense `W`, then a naive dense matmul: slow, always valid.
    Fallback,
}

/// The concrete kernel path a [`Strategy`] takes (what the bench reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Activation quantization + int8 GEMV.
    GemvInt8,
    /// Exact GEMV.
    GemvExact,
    /// Tensor-core GEMM.
    TensorCore,
    /// SIMT GEMM.
    Simt,
    /// Dequantize + dense matmul.
    Fallback,
}

impl Path {
    /// Short name (`gemv-int8`, `gemv-exact`, `cmma`, `simt`, `fallback`).
    pub fn name(self) -> &'static str {
        match self {
            Path::GemvInt8 => "gemv-int8",
            Path::GemvExact => "gemv-exact",
            Path::TensorCore => "cmma",
            Path::Simt => "simt",
            Path::Fallback => "fallback",
        }
    }
}

/// The path `strategy` takes for a batch of `m` rows of `dtype` on `client`'s device.
pub fn resolve(client: &Client, strategy: Strategy, m: usize, dtype: Dtype) -> Result<Path> {
    let props = client.properties();
    let gemm = || {
        if plan::has_cmma(props, dtype) {
            Path::TensorCore
        } else {
            Path::Simt
        }
    };
    let small = m <= DECODE_MAX_M;
    let path = match strategy {
        Strategy::Auto if small => Path::GemvInt8,
        Strategy::AutoExact if small => Path::GemvExact,
        Strategy::Auto | Strategy::AutoExact => gemm(),
        Strategy::GemvInt8 | Strategy::GemvExact if !small => {
            return Err(Error::GemvBatchTooLarge {
                m,
                max: DECODE_MAX_M,
            });
        }
        Strategy::GemvInt8 => Path::GemvInt8,
        Strategy::GemvExact => Path::GemvExact,
        Strategy::TensorCore if !plan::has_cmma(props, dtype) => {
            return Err(Error::NoTensorCores(dtype.mma_operand().name()));
        }
        Strategy::TensorCore => Path::TensorCore,
        Strategy::Simt => Path::Simt,
        Strategy::Fallback => Path::Fallback,
    };
    Ok(path)
}

fn check_handle(name: &'static str, h: &Handle, bytes: usize) -> Result<()> {
    let actual_bytes = h.size_in_used();
    if actual_bytes < bytes as u64 {
        return Err(Error::BufferTooSmall {
            name,
            expected_bytes: bytes as u64,
            actual_bytes,
        });
    }
    Ok(())
}

fn check_dtype(client: &Client, dtype: Dtype) -> Result<()> {
    if plan::supports(client.properties(), dtype) {
        Ok(())
    } else {
        Err(Error::UnsupportedType(dtype.name()))
    }
}

/// Cube count for `cubes` cubes indexed linearly by `CUBE_POS` (spills into Y past 65535).
fn linear_cube_count(client: &Client, cubes: usize) -> Result<CubeCount> {
    let (mx, my, _) = client.properties().hardware.max_cube_count;
    let mx = mx.min(65_535) as usize;
    let x = cubes.clamp(1, mx);
    let y = cubes.div_ceil(x);
    if y > my as usize {
        return Err(Error::GridTooLarge {
            axis: "y",
            cubes: y,
            limit: my,
        });
    }
    Ok(CubeCount::new_2d(x as u32, y as u32))
}

fn grid_2d(client: &Client, x: usize, y: usize) -> Result<CubeCount> {
    let (mx, my, _) = client.properties().hardware.max_cube_count;
    for (axis, cubes, limit) in [("x (N tiles)", x, mx), ("y (M tiles)", y, my)] {
        if cubes > limit.min(65_535) as usize {
            return Err(Error::GridTooLarge { axis, cubes, limit });
        }
    }
    Ok(CubeCount::new_2d(x as u32, y as u32))
}

/// Runs `$body` with `$F` the Rust type of `$dtype`.
macro_rules! with_float {
    ($dtype:expr, $F:ident, $body:expr) => {
        match $dtype {
            Dtype::F32 => {
                type $F = f32;
                $body
            }
            Dtype::F16 => {
                type $F = half::f16;
                $body
            }
            Dtype::BF16 => {
                type $F = half::bf16;
                $body
            }
        }
    };
}

/// `y[M, N] = x[M, K] · Wᵀ` into a new `[M, N]` buffer of `dtype` (the activations' dtype).
pub fn matmul(
    client: &Client,
    weight: &DeviceWeight,
    x: &Handle,
    m: usize,
    dtype: Dtype,
    strategy: Strategy,
) -> Result<Handle> {
    if m == 0 {
        return Err(Error::ZeroDimension { what: "M" });
    }
    let out = client.empty(m * weight.shape().n() * dtype.size());
    matmul_into(client, weight, x, m, dtype, &out, strategy)?;
    Ok(out)
}

/// `y[M, N] = x[M, K] · Wᵀ` written into `out` (`[M, N]` of `dtype`, at least `M·N` elements);
/// `x` is row-major `[M, K]` of `dtype`. Queues the kernels and returns.
pub fn matmul_into(
    client: &Client,
    weight: &DeviceWeight,
    x: &Handle,
    m: usize,
    dtype: Dtype,
    out: &Handle,
    strategy: Strategy,
) -> Result<()> {
    let s = weight.shape();
    if m == 0 {
        return Err(Error::ZeroDimension { what: "M" });
    }
    check_dtype(client, dtype)?;
    check_handle("x", x, m * s.k() * dtype.size())?;
    check_handle("out", out, m * s.n() * dtype.size())?;
    match resolve(client, strategy, m, dtype)? {
        Path::GemvInt8 => launch_gemv_int8(client, weight, x, m, dtype, out, false),
        Path::GemvExact => launch_gemv_exact(client, weight, x, m, dtype, out),
        Path::TensorCore => launch_cmma(client, weight, x, m, dtype, out),
        Path::Simt => launch_simt(client, weight, x, m, dtype, out),
        Path::Fallback => {
            let w = dequantize(client, weight, dtype)?;
            launch_dense(client, &w, x, out, (m, s.n(), s.k()), dtype)
        }
    }
}

/// The int8 GEMV with the portable byte select instead of CUDA's `prmt` (where the plan would
/// use it): the two must agree bit for bit, which the kernel tests check on CUDA. Same contract
/// as [`matmul_into`] with [`Strategy::GemvInt8`].
pub fn matmul_int8_portable_into(
    client: &Client,
    weight: &DeviceWeight,
    x: &Handle,
    m: usize,
    dtype: Dtype,
    out: &Handle,
) -> Result<()> {
    let s = weight.shape();
    if m == 0 {
        return Err(Error::ZeroDimension { what: "M" });
    }
    resolve(client, Strategy::GemvInt8, m, dtype)?;
    check_dtype(client, dtype)?;
    check_handle("x", x, m * s.k() * dtype.size())?;
    check_handle("out", out, m * s.n() * dtype.size())?;
    launch_gemv_int8(client, weight, x, m, dtype, out, true)
}

/// Buffer argument over a whole handle of `len` elements.
///
/// SAFETY (for callers): `len` elements of the kernel's element type fit in `h` — every call
/// below passes lengths derived from the shape the handle was checked or created against.
unsafe fn arg(h: &Handle, len: usize) -> BufferArg {
    unsafe { BufferArg::from_raw_parts(h.clone(), len) }
}

fn launch_gemv_int8(
    client: &Client,
    weight: &DeviceWeight,
    x: &Handle,
    m: usize,
    dtype: Dtype,
    out: &Handle,
    portable: bool,
) -> Result<()> {
    let s = weight.shape();
    let props = client.properties();
    let Plan::Gemv(mut p) = plan::cached(props, s, m, dtype, PlanKind::Gemv) else {
        unreachable!("a GEMV key holds a GEMV plan")
    };
    p.prmt &= !portable;
    let (n, vpr) = (s.n(), s.vectors_per_row());
    let blocks = m * vpr;
    let xq = client.empty(blocks * 32);
    let xd = client.empty(blocks * 8);
    launch_activations(client, x, &xq, &xd, m, s.k(), dtype, false)?;
    let count = linear_cube_count(client, n.div_ceil(p.rows_per_cube))?;
    // SAFETY: the weight buffers were created for `s` (N·V code vectors, N·groups pairs, N
    // tables and row factors); every index the kernel forms is below those bounds for
    // `row < N` (guarded) and `v < V`; `out` holds M·N elements (checked).
    unsafe {
        with_float!(dtype, F, {
            gemv_int8_kernel::launch_unchecked::<F>(
                client,
                count,
                CubeDim::new_2d(p.lanes as u32, p.rows_per_cube as u32),
                arg(&weight.codes, n * vpr),
                arg(&weight.params, n * s.groups()),
                arg(&weight.table8, n),
                arg(&weight.rows, n),
                arg(&xq, 2 * blocks),
                arg(&xd, blocks),
                arg(out, m * n),
                n,
                vpr,
                s.groups(),
                s.group_shift(),
                0x8888_8888u32,
                m,
                p.lanes,
                p.rows_per_cube,
                p.unroll,
                p.reduce,
                p.prmt,
                p.native_f16,
            )
        });
    }
    Ok(())
}

/// Activation blocks of 32: int8 values and `(d, Σx)` into `xq` / `xd`, or only `(0, Σx)` into
/// `xd` with `sums_only` (`xq` is then not written).
#[allow(clippy::too_many_arguments)]
fn launch_activations(
    client: &Client,
    x: &Handle,
    xq: &Handle,
    xd: &Handle,
    m: usize,
    k: usize,
    dtype: Dtype,
    sums_only: bool,
) -> Result<()> {
    let vpr = k.div_ceil(32);
    let blocks = m * vpr;
    let units = plan::units_1d(client.properties(), 128);
    let count = linear_cube_count(client, blocks.div_ceil(units))?;
    // SAFETY: `x` holds M·K elements (checked by the callers), `xq` 2·M·V 16-byte vectors (or
    // is not written), `xd` M·V pairs; the kernel guards `idx < blocks` and `col < K`.
    unsafe {
        with_float!(dtype, F, {
            quantize_activations_kernel::launch_unchecked::<F>(
                client,
                count,
                CubeDim::new_1d(units as u32),
                arg(x, m * k),
                arg(xq, if sums_only { 1 } else { 2 * blocks }),
                arg(xd, blocks),
                k,
                vpr,
                blocks,
                sums_only,
            )
        });
    }
    Ok(())
}

fn launch_gemv_exact(
    client: &Client,
    weight: &DeviceWeight,
    x: &Handle,
    m: usize,
    dtype: Dtype,
    out: &Handle,
) -> Result<()> {
    let s = weight.shape();
    let props = client.properties();
    let Plan::Gemv(p) = plan::cached(props, s, m, dtype, PlanKind::Gemv) else {
        unreachable!("a GEMV key holds a GEMV plan")
    };
    let (n, k, vpr) = (s.n(), s.k(), s.vectors_per_row());
    let xd = client.empty(m * vpr * 8);
    let unused = client.empty(16);
    launch_activations(client, x, &unused, &xd, m, k, dtype, true)?;
    let count = linear_cube_count(client, n.div_ceil(p.rows_per_cube))?;
    let xv = p.x_vector;
    // SAFETY: as for the int8 GEMV; `x` holds M·K elements = M·K/XV vectors (XV divides K), and
    // the kernel reads activation vectors below K only (partial last code vector guarded).
    unsafe {
        with_float!(dtype, F, {
            gemv_exact_kernel::launch_unchecked::<F>(
                client,
                count,
                CubeDim::new_2d(p.lanes as u32, p.rows_per_cube as u32),
                xv,
                arg(&weight.codes, n * vpr),
                arg(&weight.params, n * s.groups()),
                arg(&weight.table, n * 16),
                arg(&weight.rows, n),
                arg(x, m * k / xv),
                arg(&xd, m * vpr),
                arg(out, m * n),
                n,
                k,
                vpr,
                s.groups(),
                s.group_shift(),
                m,
                p.lanes,
                p.rows_per_cube,
                p.unroll,
                p.reduce,
                !k.is_multiple_of(32),
                p.native_f16,
            )
        });
    }
    Ok(())
}

fn launch_simt(
    client: &Client,
    weight: &DeviceWeight,
    x: &Handle,
    m: usize,
    dtype: Dtype,
    out: &Handle,
) -> Result<()> {
    let s = weight.shape();
    let props = client.properties();
    let Plan::Simt(t) = plan::cached(props, s, m, dtype, PlanKind::Simt) else {
        unreachable!("a SIMT key holds SIMT tiles")
    };
    let (n, k, vpr) = (s.n(), s.k(), s.vectors_per_row());
    let count = grid_2d(client, n.div_ceil(t.tile_n), m.div_ceil(t.tile_m))?;
    let native_f16 = plan::native_f16(props);
    // SAFETY: weight buffers sized for `s`, `x` M·K and `out` M·N elements (checked); the
    // kernel zero-pads rows ≥ N, batch rows ≥ M and columns ≥ K.
    unsafe {
        with_float!(dtype, F, {
            gemm_kernel::launch_unchecked::<F>(
                client,
                count,
                CubeDim::new_1d(t.units as u32),
                arg(&weight.codes, n * vpr * 4),
                arg(&weight.params, n * s.groups()),
                arg(&weight.table, n * 16),
                arg(&weight.rows, n),
                arg(x, m * k),
                arg(out, m * n),
                m,
                n,
                k,
                vpr,
                s.groups(),
                s.word_group_shift(),
                t.tile_m,
                t.tile_n,
                t.reg_m,
                t.reg_n,
                t.units,
                native_f16,
            )
        });
    }
    Ok(())
}

fn launch_cmma(
    client: &Client,
    weight: &DeviceWeight,
    x: &Handle,
    m: usize,
    dtype: Dtype,
    out: &Handle,
) -> Result<()> {
    let s = weight.shape();
    let props = client.properties();
    let Plan::Cmma(t) = plan::cached(props, s, m, dtype, PlanKind::Cmma) else {
        unreachable!("a cmma key holds cmma tiles")
    };
    let (n, k, vpr) = (s.n(), s.k(), s.vectors_per_row());
    let count = grid_2d(client, n.div_ceil(16 * t.warps), m.div_ceil(t.tile_m))?;
    let native_f16 = plan::native_f16(props);
    macro_rules! go {
        ($F:ty, $H:ty) => {
            // SAFETY: as for the SIMT GEMM.
            unsafe {
                gemm_cmma_kernel::launch_unchecked::<$F, $H>(
                    client,
                    count,
                    CubeDim::new_2d(32, t.warps as u32),
                    arg(&weight.codes, n * vpr * 4),
                    arg(&weight.params, n * s.groups()),
                    arg(&weight.table, n * 16),
                    arg(&weight.rows, n),
                    arg(x, m * k),
                    arg(out, m * n),
                    m,
                    n,
                    k,
                    vpr,
                    s.groups(),
                    s.word_group_shift(),
                    t.tile_m,
                    t.warps,
                    native_f16,
                )
            }
        };
    }
    match dtype {
        Dtype::F32 => go!(f32, half::f16),
        Dtype::F16 => go!(half::f16, half::f16),
        Dtype::BF16 => go!(half::bf16, half::bf16),
    }
    Ok(())
}

/// Dequantizes to a dense row-major `[N, K]` buffer of `dtype`.
pub fn dequantize(client: &Client, weight: &DeviceWeight, dtype: Dtype) -> Result<Handle> {
    check_dtype(client, dtype)?;
    let s = weight.shape();
    let props = client.properties();
    let out = client.empty(s.n() * s.k() * dtype.size());
    let words = s.n() * s.vectors_per_row() * 4;
    let units = plan::units_1d(props, 256);
    let count = linear_cube_count(client, words.div_ceil(units))?;
    let native_f16 = plan::native_f16(props);
    // SAFETY: weight buffers sized for `s`; `out` is new with N·K elements; the kernel guards
    // `idx < N·4V` and `col < K`.
    unsafe {
        with_float!(dtype, F, {
            dequantize_kernel::launch_unchecked::<F>(
                client,
                count,
                CubeDim::new_1d(units as u32),
                arg(&weight.codes, words),
                arg(&weight.params, s.n() * s.groups()),
                arg(&weight.table, s.n() * 16),
                arg(&weight.rows, s.n()),
                arg(&out, s.n() * s.k()),
                s.n(),
                s.k(),
                s.vectors_per_row(),
                s.groups(),
                s.word_group_shift(),
                native_f16,
            )
        });
    }
    Ok(out)
}

/// Dense `out[M, N] = x[M, K] · w[N, K]ᵀ` (row-major, all `dtype`) with the naive fallback
/// kernel: the second half of [`Strategy::Fallback`].
pub fn dense_matmul_into(
    client: &Client,
    w: &Handle,
    x: &Handle,
    out: &Handle,
    (m, n, k): (usize, usize, usize),
    dtype: Dtype,
) -> Result<()> {
    for (what, v) in [("M", m), ("N", n), ("K", k)] {
        if v == 0 {
            return Err(Error::ZeroDimension { what });
        }
    }
    check_dtype(client, dtype)?;
    let e = dtype.size();
    check_handle("w", w, n * k * e)?;
    check_handle("x", x, m * k * e)?;
    check_handle("out", out, m * n * e)?;
    launch_dense(client, w, x, out, (m, n, k), dtype)
}

fn launch_dense(
    client: &Client,
    w: &Handle,
    x: &Handle,
    out: &Handle,
    (m, n, k): (usize, usize, usize),
    dtype: Dtype,
) -> Result<()> {
    let units = plan::units_1d(client.properties(), 256);
    let count = linear_cube_count(client, (m * n).div_ceil(units))?;
    // SAFETY: callers checked `w` (N·K), `x` (M·K) and `out` (M·N); the kernel guards M·N.
    unsafe {
        with_float!(dtype, F, {
            dense_matmul_kernel::launch_unchecked::<F>(
                client,
                count,
                CubeDim::new_1d(units as u32),
                arg(x, m * k),
                arg(w, n * k),
                arg(out, m * n),
                m,
                n,
                k,
            )
        });
    }
    Ok(())
}
