//! CUDA C++ source of every kernel as it would run on an H200, without a device (feature
//! `cuda-source`; `cargo xtask sass` compiles it with nvcc and reads the machine code).
//!
//! Each kernel is defined exactly as a launch defines it (the kernel struct with the plan's
//! comptime parameters, on [`h200_properties`](crate::plan::h200_properties) with the element
//! types and tensor-core configurations cubecl-cuda registers for sm_90) and compiled by
//! cubecl-cpp's CUDA compiler, the code NVRTC receives at run time. No LLVM is involved.

use std::sync::Arc;

use cubecl::frontend::BufferCompilationArg;
use cubecl::ir::{DeviceProperties, ElemType, FloatKind, TargetProperties, features::MmaConfig};
use cubecl::prelude::*;
use cubecl::{Compiler, CubeKernel};
use cubecl_cpp::shared::{CompilationOptions, CppCompiler, CppSupportedFeatures};
use half::{bf16, f16};

use crate::layout::WeightShape;
use crate::plan::{Dtype, cmma_tiles, gemv_plan, h200_properties, simt_tiles, units_1d};

/// One generated kernel and what the SASS reader needs to interpret its main loop.
#[derive(Debug, Clone)]
pub struct KernelSource {
    /// File stem, e.g. `gemv-int8-f16-m1`.
    pub name: String,
    /// CUDA C++ source as NVRTC would receive it.
    pub source: String,
    /// Weights one thread handles per iteration of the kernel's main loop as written (before
    /// any unrolling by nvcc).
    pub weights_per_iter: usize,
    /// 128-bit global loads per iteration as written (codes and activations): the SASS reader
    /// divides the loop's `LDG.*.128` count by this to find nvcc's unroll factor.
    pub loads128_per_iter: usize,
    /// Tensor-core instructions (`HMMA`) per iteration as written, for loops without 128-bit
    /// loads (a 16×16×16 f16 `mma` is two `HMMA.16816` on sm_90).
    pub hmma_per_iter: usize,
    /// One-line description for the report.
    pub what: String,
}

/// The H200 description with what cubecl-cuda registers for sm_90 (types, 16×16×16 f16/bf16
/// cooperative matrices with f32 accumulators).
pub fn cuda_properties() -> DeviceProperties {
    let mut props = h200_properties();
    cubecl_cpp::register_supported_types(&mut props);
    for h in [FloatKind::F16, FloatKind::BF16] {
        let h = ElemType::Float(h);
        props.features.matmul.cmma.insert(MmaConfig {
            a_type: h,
            b_type: h,
            cd_type: ElemType::Float(FloatKind::F32),
            m: 16,
            k: 16,
            n: 16,
        });
    }
    props
}

fn compile<K: CubeKernel>(kernel: &K) -> String {
    let opts = CompilationOptions {
        warp_size: 32,
        supports_features: CppSupportedFeatures {
            grid_constants: true,
            clusters: true,
            fast_math: true,
            fast_tanh: true,
            elect_sync: true,
            dp4a: true,
        },
        amd_wmma: None,
    };
    CppCompiler::<cubecl_cpp::target::Cuda>::default()
        .compile(kernel.define(), &opts)
        .unwrap_or_else(|e| panic!("kernel does not compile to CUDA C++: {e}"))
        .to_string()
}

fn settings(dim: CubeDim) -> KernelSettings {
    KernelSettings::new(dim.into(), ExecutionMode::Unchecked, AddressType::U32)
}

fn buf() -> BufferCompilationArg {
    BufferCompilationArg { inplace: None }
}

/// Every kernel for a `shape` weight (the bench's 8192 × 8192, G = 128 by default) at the
/// plans an H200 gets.
pub fn sources(shape: WeightShape) -> Vec<KernelSource> {
    let props = Arc::new(cuda_properties());
    let target = Arc::new(TargetProperties::default());
    let mut out = Vec::new();

    // Activation quantization.
    {
        let units = units_1d(&props, 128);
        let k =
            crate::activation::quantize_activations_kernel::QuantizeActivationsKernel::<f16>::new(
                settings(CubeDim::new_1d(units as u32)),
                props.clone(),
                target.clone(),
                buf(),
                buf(),
                buf(),
                (),
                (),
                (),
                false,
            );
        out.push(KernelSource {
            name: "quantize-activations-f16".into(),
            source: compile(&k),
            weights_per_iter: 32,
            loads128_per_iter: 0,
            hmma_per_iter: 0,
            what: "activations → int8 blocks of 32 (one unit per block, no loop)".into(),
        });
    }

    // Int8 GEMV: M = 1 and 4 with the CUDA byte permute, M = 1 with the portable select.
    for (m, prmt) in [(1usize, true), (4, true), (1, false)] {
        let p = gemv_plan(&props, shape, Dtype::F16);
        let k = crate::gemv_int8::gemv_int8_kernel::GemvInt8Kernel::<f16>::new(
            settings(CubeDim::new_2d(p.lanes as u32, p.rows_per_cube as u32)),
            props.clone(),
            target.clone(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            (),
            (),
            (),
            (),
            (),
            m,
            p.lanes,
            p.rows_per_cube,
            p.unroll,
            p.reduce,
            prmt && p.prmt,
            p.native_f16,
        );
        let suffix = if prmt { "" } else { "-portable" };
        out.push(KernelSource {
            name: format!("gemv-int8-f16-m{m}{suffix}"),
            source: compile(&k),
            weights_per_iter: 32 * p.unroll,
            // The code vectors + 2 activation vectors per code vector and batch row.
            loads128_per_iter: p.unroll * (1 + 2 * m),
            hmma_per_iter: 0,
            what: format!(
                "int8 GEMV, M = {m}, {} lanes × {} rows per cube, {} vectors in flight, {}",
                p.lanes,
                p.rows_per_cube,
                p.unroll,
                if prmt {
                    "prmt.b32"
                } else {
                    "portable byte select"
                }
            ),
        });
    }

    // Exact GEMV at f16, bf16 and f32 activations.
    for (dtype, m) in [
        (Dtype::F16, 1usize),
        (Dtype::F16, 4),
        (Dtype::BF16, 1),
        (Dtype::F32, 1),
    ] {
        let p = gemv_plan(&props, shape, dtype);
        let xv = p.x_vector;
        let has_tail = !shape.k().is_multiple_of(32);
        macro_rules! exact {
            ($F:ty) => {
                crate::gemv_exact::gemv_exact_kernel::GemvExactKernel::<$F>::new(
                    settings(CubeDim::new_2d(p.lanes as u32, p.rows_per_cube as u32)),
                    props.clone(),
                    target.clone(),
                    buf(),
                    buf(),
                    buf(),
                    buf(),
                    buf(),
                    buf(),
                    buf(),
                    (),
                    (),
                    (),
                    (),
                    (),
                    xv,
                    m,
                    p.lanes,
                    p.rows_per_cube,
                    p.unroll,
                    p.reduce,
                    has_tail,
                    p.native_f16,
                )
            };
        }
        let source = match dtype {
            Dtype::F16 => compile(&exact!(f16)),
            Dtype::BF16 => compile(&exact!(bf16)),
            Dtype::F32 => compile(&exact!(f32)),
        };
        out.push(KernelSource {
            name: format!("gemv-exact-{}-m{m}", dtype.name()),
            source,
            weights_per_iter: 32 * p.unroll,
            loads128_per_iter: p.unroll * (1 + m * 32 / xv),
            hmma_per_iter: 0,
            what: format!(
                "exact GEMV, {} activations in vectors of {xv}, M = {m}",
                dtype.name()
            ),
        });
    }

    // Tensor-core GEMM (M = 16 and 64) and the SIMT GEMM (M = 16).
    for m in [16usize, 64] {
        let t = cmma_tiles(m);
        let k = crate::gemm_cmma::gemm_cmma_kernel::GemmCmmaKernel::<f16, f16>::new(
            settings(CubeDim::new_2d(32, t.warps as u32)),
            props.clone(),
            target.clone(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            (),
            (),
            (),
            (),
            (),
            (),
            t.tile_m,
            t.warps,
            true,
        );
        out.push(KernelSource {
            name: format!("gemm-cmma-f16-m{m}"),
            source: compile(&k),
            // A K tile of 32 for the cube's 16·warps rows, over 32·warps units: 16 weights.
            weights_per_iter: 16,
            loads128_per_iter: 0,
            hmma_per_iter: 2 * 2 * t.tile_m / 16,
            what: format!(
                "tensor-core GEMM, {} × {} tile, K step 32",
                t.tile_m,
                16 * t.warps
            ),
        });
    }
    {
        let t = simt_tiles(&props, 16);
        let k = crate::gemm::gemm_kernel::GemmKernel::<f16>::new(
            settings(CubeDim::new_1d(t.units as u32)),
            props.clone(),
            target.clone(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            (),
            (),
            (),
            (),
            (),
            (),
            t.tile_m,
            t.tile_n,
            t.reg_m,
            t.reg_n,
            t.units,
            true,
        );
        out.push(KernelSource {
            name: "gemm-simt-f16-m16".into(),
            source: compile(&k),
            weights_per_iter: 0,
            loads128_per_iter: 0,
            hmma_per_iter: 0,
            what: format!(
                "SIMT GEMM, {} × {} tile, {} units",
                t.tile_m, t.tile_n, t.units
            ),
        });
    }
    {
        let units = units_1d(&props, 256);
        let k = crate::dequantize::dequantize_kernel::DequantizeKernel::<f16>::new(
            settings(CubeDim::new_1d(units as u32)),
            props.clone(),
            target.clone(),
            buf(),
            buf(),
            buf(),
            buf(),
            buf(),
            (),
            (),
            (),
            (),
            (),
            true,
        );
        out.push(KernelSource {
            name: "dequantize-f16".into(),
            source: compile(&k),
            weights_per_iter: 8,
            loads128_per_iter: 0,
            hmma_per_iter: 0,
            what: "dequantize to f16 (one unit per code word, no loop)".into(),
        });
    }
    out
}
