//! What a device can do and how each kernel is laid out on it, decided from the runtime's
//! properties and cached per (device, shape, batch, dtype, kernel).
//!
//! Cube shapes adapt to the device: the CubeCL CPU runtime allows as many units per cube as
//! there are cores (2 on the CI machine) and has planes of one unit, lavapipe has no plane
//! operations, CUDA has 32-lane warps with shuffles — so every kernel takes its cube shape and
//! reduction as compile-time parameters.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cubecl::features::Plane;
use cubecl::ir::{DeviceProperties, ElemType, FloatKind, features::MmaConfig};

use crate::layout::WeightShape;
use crate::reduce::Reduce;

/// Element type of activations and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// f32.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
    /// The CubeCL element type.
    pub fn elem(self) -> ElemType {
        ElemType::Float(match self {
            Dtype::F32 => FloatKind::F32,
            Dtype::F16 => FloatKind::F16,
            Dtype::BF16 => FloatKind::BF16,
        })
    }
    /// Lower-case name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
        }
    }
    /// The tensor-core operand type for these activations: bf16 for bf16, else f16.
    pub fn mma_operand(self) -> Dtype {
        if self == Dtype::BF16 {
            Dtype::BF16
        } else {
            Dtype::F16
        }
    }
}

/// Whether the runtime is CUDA through CubeCL's C++ backend (inline PTX available).
pub fn is_cuda(props: &DeviceProperties) -> bool {
    props.identity.fingerprint.starts_with("ptx_sm")
}

/// Whether the runtime stores and converts `dtype`.
pub fn supports(props: &DeviceProperties, dtype: Dtype) -> bool {
    props.supports_type(dtype.elem())
}

/// Whether the (scale, zero) pairs are converted by the runtime's own f16 → f32 conversion
/// (CUDA) rather than decoded with integer operations (exact either way).
///
/// Only on CUDA: wgpu's WGSL compiler (naga 30) rejects the `bitcast<vec2<f16>>` element access
/// the native path generates, and the CPU runtime converts f16 in software.
pub fn native_f16(props: &DeviceProperties) -> bool {
    is_cuda(props) && supports(props, Dtype::F16)
}

/// Whether the device has the 16×16×16 cooperative matrices the tensor-core GEMM uses for
/// activations of `dtype`.
pub fn has_cmma(props: &DeviceProperties, dtype: Dtype) -> bool {
    let h = dtype.mma_operand().elem();
    props.features.matmul.cmma.contains(&MmaConfig {
        a_type: h,
        b_type: h,
        cd_type: ElemType::Float(FloatKind::F32),
        m: 16,
        k: 16,
        n: 16,
    })
}

/// Layout of a GEMV launch (int8 or exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemvPlan {
    /// Units per output row (`CUBE_DIM_X`, a power of two).
    pub lanes: usize,
    /// Output rows per cube (`CUBE_DIM_Y`).
    pub rows_per_cube: usize,
    /// How the lanes of a row combine their sums.
    pub reduce: Reduce,
    /// `prmt.b32` through inline PTX (CUDA) instead of the portable byte select.
    pub prmt: bool,
    /// Native f16 → f32 conversion of the (scale, zero) pairs.
    pub native_f16: bool,
    /// Activation elements per load (exact path; divides K and 32).
    pub x_vector: usize,
    /// Code vectors per lane and loop iteration (loads in flight): on CUDA 4 when every lane
    /// has at least 4 vectors, else 2; 2 on lavapipe, 1 on the CPU runtime.
    pub unroll: usize,
}

/// Tile shape of the SIMT GEMM: `tile_m × tile_n` per cube, `reg_m × reg_n` outputs per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimtTiles {
    /// Output rows (batch) per cube.
    pub tile_m: usize,
    /// Output columns per cube.
    pub tile_n: usize,
    /// Rows per unit.
    pub reg_m: usize,
    /// Columns per unit.
    pub reg_n: usize,
    /// Units per cube.
    pub units: usize,
}

/// Tile shape of the tensor-core GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmmaTiles {
    /// Output rows per cube (16, 32 or 64).
    pub tile_m: usize,
    /// Planes per cube (each owns 16 output columns).
    pub warps: usize,
}

fn prev_pow2(v: usize) -> usize {
    if v == 0 {
        1
    } else {
        1 << (usize::BITS - 1 - v.leading_zeros())
    }
}

/// Largest power-of-two units per cube within the device limits, at most `cap`.
pub fn units_1d(props: &DeviceProperties, cap: usize) -> usize {
    let hw = &props.hardware;
    prev_pow2(
        (hw.max_units_per_cube as usize)
            .min(hw.max_cube_dim.0 as usize)
            .min(cap),
    )
}

/// The GEMV plan for `shape`, activations of `dtype` (the x vector width only matters for the
/// exact kernel).
pub fn gemv_plan(props: &DeviceProperties, shape: WeightShape, dtype: Dtype) -> GemvPlan {
    let hw = &props.hardware;
    let max_units = (hw.max_units_per_cube as usize).max(1);
    let plane = hw.plane_size_max as usize;
    let plane_ops = hw.plane_size_min == hw.plane_size_max
        && plane.is_power_of_two()
        && props.features.plane.contains(Plane::Ops);
    let vpr = shape.vectors_per_row();
    let (lanes, reduce) = if hw.plane_size_max <= 1 || max_units < 4 {
        // CPU runtime: a unit per row; cube barriers are thread barriers there.
        (1, Reduce::None)
    } else {
        let lanes = prev_pow2(32.min(max_units).min(hw.max_cube_dim.0 as usize))
            .min(vpr.next_power_of_two());
        let reduce = if lanes == 1 {
            Reduce::None
        } else if plane_ops && lanes <= plane {
            Reduce::Plane
        } else {
            Reduce::Shared
        };
        (lanes, reduce)
    };
    let rows_per_cube = prev_pow2(
        (128 / lanes)
            .min(max_units / lanes)
            .min(hw.max_cube_dim.1 as usize)
            .max(1),
    );
    let elem = dtype.size();
    let widest = (16 / elem).min(32);
    let x_vector = props
        .io_optimized_vector_sizes(elem)
        .find(|&v| v <= widest && shape.k().is_multiple_of(v) && 32 % v == 0)
        .unwrap_or(1);
    // Loads in flight matter on GPUs with fast planes; elsewhere (the CPU runtime, lavapipe)
    // smaller kernels compile faster and run as fast.
    let unroll = match reduce {
        Reduce::None => 1,
        Reduce::Shared => 2,
        Reduce::Plane if vpr >= 4 * lanes => 4,
        Reduce::Plane => 2,
    };
    GemvPlan {
        lanes,
        rows_per_cube,
        unroll,
        reduce,
        prmt: is_cuda(props),
        native_f16: native_f16(props),
        x_vector,
    }
}

/// SIMT GEMM tiles for a batch of `m` rows.
///
/// With ≥ 64 units: 1024 outputs per cube, 32 × 32, or 16 × 64 when `m ≤ 16`; each unit holds
/// `1024 / units` accumulators. On small cubes (the CubeCL CPU runtime) one unit per cube and
/// an 8 × 8 tile in registers: its `sync_cube` is then free.
pub fn simt_tiles(props: &DeviceProperties, m: usize) -> SimtTiles {
    let max_units = units_1d(props, 256);
    if max_units < 64 {
        return SimtTiles {
            tile_m: 8,
            tile_n: 8,
            reg_m: 8,
            reg_n: 8,
            units: 1,
        };
    }
    let units = max_units;
    let (tile_m, tile_n) = if m <= 16 { (16, 64) } else { (32, 32) };
    let per_unit = tile_m * tile_n / units;
    let reg_m = if per_unit >= 16 {
        4
    } else if per_unit >= 2 {
        2
    } else {
        1
    };
    SimtTiles {
        tile_m,
        tile_n,
        reg_m,
        reg_n: per_unit / reg_m,
        units,
    }
}

/// Tensor-core tiles for a batch of `m` rows: 16 rows per fragment, up to 4 fragments.
pub fn cmma_tiles(m: usize) -> CmmaTiles {
    let tile_m = if m <= 16 {
        16
    } else if m <= 32 {
        32
    } else {
        64
    };
    CmmaTiles { tile_m, warps: 4 }
}

/// An H200-like device description (sm_90: 132 SMs, 32-lane warps with shuffles, 1024 units
/// per cube), without element types or tensor-core configurations: what the offline CUDA source
/// generator (feature `cuda-source`) plans for, and what the plan tests use.
pub fn h200_properties() -> DeviceProperties {
    use cubecl::ir::{DeviceIdentity, HardwareProperties, MemoryDeviceProperties, VectorSize};
    let hardware = HardwareProperties {
        load_width: 128,
        vector_register_count: None,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 1024,
        max_shared_memory_size: 232_448,
        max_cube_count: (i32::MAX as u32, 65_535, 65_535),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(132),
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: Some(8),
        num_cpu_cores: None,
        last_level_cache_size: None,
        max_vector_size: VectorSize::MAX,
        cube_mma_reserved_shared_memory: 0,
    };
    let mut props = DeviceProperties::new(
        Default::default(),
        MemoryDeviceProperties::new(1 << 30, 512),
        hardware,
        cubecl::profile::TimingMethod::Device,
        DeviceIdentity {
            name: "NVIDIA H200 (offline description)".into(),
            fingerprint: "ptx_sm90".into(),
            physical: None,
        },
    );
    props.features.plane.insert(Plane::Ops);
    props
}

/// Which kernel a cached plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PlanKind {
    Gemv,
    Simt,
    Cmma,
}

/// A cached plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Gemv(GemvPlan),
    Simt(SimtTiles),
    Cmma(CmmaTiles),
}

type Key = (String, WeightShape, usize, Dtype, PlanKind);

/// The plan for a launch, computed once per (device, shape, batch, dtype, kernel).
pub(crate) fn cached(
    props: &DeviceProperties,
    shape: WeightShape,
    m: usize,
    dtype: Dtype,
    kind: PlanKind,
) -> Plan {
    static CACHE: OnceLock<Mutex<HashMap<Key, Plan>>> = OnceLock::new();
    let key = (props.identity.fingerprint.clone(), shape, m, dtype, kind);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().expect("plan cache").get(&key) {
        return *p;
    }
    let plan = match kind {
        PlanKind::Gemv => Plan::Gemv(gemv_plan(props, shape, dtype)),
        PlanKind::Simt => Plan::Simt(simt_tiles(props, m)),
        PlanKind::Cmma => Plan::Cmma(cmma_tiles(m)),
    };
    cache.lock().expect("plan cache").insert(key, plan);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit owns one `reg_m × reg_n` block and the blocks cover the tile exactly.
    #[test]
    fn simt_tiles_cover_the_tile() {
        for m in [9, 16, 17, 33, 256] {
            for units in [1usize, 2, 64, 128, 256] {
                let mut props = h200_properties();
                props.hardware.max_units_per_cube = units as u32;
                let t = simt_tiles(&props, m);
                assert_eq!(t.tile_m % t.reg_m, 0, "{t:?}");
                assert_eq!(t.tile_n % t.reg_n, 0, "{t:?}");
                assert_eq!(
                    (t.tile_m / t.reg_m) * (t.tile_n / t.reg_n),
                    t.units,
                    "{t:?}"
                );
            }
        }
    }
}
