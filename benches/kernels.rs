//! any4 matmul vs dense baselines, measured in the same process.
//!
//! `cargo xtask bench kernels [--backend flex|cpu|wgpu|cuda] [--shapes 4096x4096,...]
//! [--sizes 1024,4096] [--batch 1,4,16,64] [--dtype f32|f16|bf16] [--precision int8,exact]
//! [--calls N] [--repeats R] [--copies-mb MB] [--warmup-ms MS] [--json FILE]`
//! (or `cargo bench --bench kernels --features <backend>[,autotune] -- ...`).
//!
//! For every `N×K` weight and batch `M`: random any4 weights (per-row sorted tables, G = 128;
//! speed does not depend on the values) through [`Any4Linear`] as a Burn user runs it, with the
//! activations in `--dtype` (f16/bf16 on GPUs: no casts on either side), against
//! - Burn's dense `x.matmul(Wᵀ)` in the same dtype (`burn-autotune-<dtype>` when the bench is
//!   built with `autotune`, Burn's tuned kernels as its users get them; `burn-<dtype>` without);
//! - on CUDA, cuBLAS bf16 (`cublasGemmEx`, f32 accumulation, its own stream): `cublas-bf16`.
//!
//! Timing: each side first runs for at least `--warmup-ms` (100); then `--calls` (20) calls are
//! queued back to back, rotating over weight copies, and one device sync ends them (reduce the
//! last output on the device, read one value): µs per call = elapsed / calls; the median of
//! `--repeats` such runs is reported. Every side rotates over ≥ `--copies-mb` MB of weight copies
//! (512 on GPUs, 128 on CPU runtimes), more than any cache. GB/s is the weight bytes a call
//! streams (codes and pairs for any4) over its time.
//!
//! Before any timing the outputs are compared (the dense weight is the dequantized any4 weight):
//! a timing of a call that did not compute the product is worthless, so a mismatch beyond
//! `MAX_REL_DIFF` fails the run before results are written.

use clap::Parser;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use any4_burn::{Any4Linear, CpuMatmul};
use any4_core::QuantizedMatrix;
use any4_core::rng::SplitMix64;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// The GPU shapes (N × K).
const GPU_SHAPES: [(usize, usize); 6] = [
    (4096, 4096),
    (8192, 8192),
    (16384, 8192),
    (16384, 16384),
    (4096, 11008),
    (11008, 4096),
];
/// Largest accepted `max |a − b| / max |a|` between an any4 output and a baseline's: int8
/// activations (≤ 1e-2 of the natural scale) and bf16 rounding stay well below it.
const MAX_REL_DIFF: f64 = 3e-2;

struct Args {
    backend: String,
    shapes: Vec<(usize, usize)>,
    batches: Vec<usize>,
    dtype: DType,
    precisions: Vec<CpuMatmul>,
    calls: usize,
    repeats: usize,
    copies_mb: usize,
    warmup_ms: u64,
    json: Option<PathBuf>,
}

/// `any4 vs dense matmul on one backend, same run` (`cargo xtask bench kernels` passes these).
#[derive(Parser)]
struct Cli {
    /// Backend: flex, cpu, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Square shapes N = K (comma-separated).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Shapes N×K, e.g. 16384x8192 (comma-separated). Default with neither: 1024², 4096²
    /// (the six LLM shapes on cuda).
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    shapes: Vec<(usize, usize)>,
    /// Activation rows M (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    batch: Vec<usize>,
    /// Activation dtype: f32, f16 or bf16 (default: bf16 on cuda, f32 elsewhere).
    #[arg(long, value_parser = ["f32", "f16", "bf16"])]
    dtype: Option<String>,
    /// any4 precisions: int8 (the default path) and/or exact (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "int8,exact", value_parser = ["int8", "exact"])]
    precision: Vec<String>,
    /// Calls chained between two device syncs.
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Timed chains per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// MB of weight copies rotated through per side (default: 512 on GPUs, 128 on CPUs).
    #[arg(long)]
    copies_mb: Option<usize>,
    /// Warm-up before timing, in milliseconds.
    #[arg(long, default_value_t = 100)]
    warmup_ms: u64,
    /// Write the records here (and the table next to it as .md).
    #[arg(long)]
    json: Option<PathBuf>,
    /// `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `16384x8192` → `(16384, 8192)` (N × K).
fn parse_shape(v: &str) -> Result<(usize, usize), String> {
    let (n, k) = v
        .split_once(['x', '×'])
        .ok_or_else(|| format!("shape `{v}` is not N×K (e.g. 16384x8192)"))?;
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("not a number: `{t}`"))
    };
    Ok((num(n)?, num(k)?))
}

fn parse_args() -> Result<Args, String> {
    let c = Cli::parse();
    let gpu = matches!(c.backend.as_str(), "cuda" | "wgpu");
    let dtype = match c.dtype.as_deref() {
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some(_) => DType::F32,
        None if c.backend == "cuda" => DType::BF16,
        None => DType::F32,
    };
    let shapes: Vec<(usize, usize)> = match (c.sizes.is_empty(), c.shapes.is_empty()) {
        (true, true) if c.backend == "cuda" => GPU_SHAPES.to_vec(),
        (true, true) => vec![(1024, 1024), (4096, 4096)],
        _ => c.sizes.iter().map(|&s| (s, s)).chain(c.shapes).collect(),
    };
    let a = Args {
        shapes,
        batches: c.batch,
        dtype,
        precisions: c
            .precision
            .iter()
            .map(|p| {
                if p == "exact" {
                    CpuMatmul::Exact
                } else {
                    CpuMatmul::Auto
                }
            })
            .collect(),
        calls: c.calls,
        repeats: c.repeats,
        copies_mb: c.copies_mb.unwrap_or(if gpu { 512 } else { 128 }),
        warmup_ms: c.warmup_ms,
        json: c.json,
        backend: c.backend,
    };
    if let Some(&(n, k)) = a
        .shapes
        .iter()
        .find(|&&(n, k)| n == 0 || k == 0 || k % 8 != 0)
    {
        return Err(format!(
            "shape {n}×{k}: N and K must be positive, K a multiple of 8"
        ));
    }
    if a.repeats == 0 || a.calls == 0 || a.batches.contains(&0) || a.precisions.is_empty() {
        return Err(
            "--repeats, --calls, --precision and every --batch must be non-empty / >= 1".into(),
        );
    }
    Ok(a)
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// Wait for everything queued before `y`: reduce it on the device and read that one value.
///
/// Reading matters: on the Cube backends `into_data` returns lazily-read bytes, and a result
/// dropped unread does not wait for the kernel. The sum depends on every output value; the host
/// copies one number instead of `M × N`.
fn sync(y: Tensor<2>) {
    let s = y.sum().into_data().convert::<f32>();
    std::hint::black_box(s.try_to_vec::<f32>().unwrap_or_default());
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// `max |a − b| / max |a|`; infinite when either holds a non-finite value or the lengths differ.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() || !a.iter().chain(b).all(|v| v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    if scale > 0.0 { diff / scale } else { diff }
}

/// Median µs per call of `call` (which queues one call and returns its output): warm-up, then
/// `repeats` runs of `calls` chained calls ending in one sync.
fn time_chained(args: &Args, mut call: impl FnMut() -> Tensor<2>) -> f64 {
    let start = Instant::now();
    while start.elapsed().as_millis() < args.warmup_ms as u128 {
        let mut last = call();
        for _ in 1..args.calls {
            last = call();
        }
        sync(last);
    }
    let mut runs: Vec<f64> = (0..args.repeats)
        .map(|_| {
            let t = Instant::now();
            let mut last = call();
            for _ in 1..args.calls {
                last = call();
            }
            sync(last);
            t.elapsed().as_secs_f64() * 1e6 / args.calls as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

struct Record {
    precision: &'static str,
    path: &'static str,
    baseline: String,
    m: usize,
    n: usize,
    k: usize,
    any4_us: f64,
    baseline_us: f64,
    gbps: f64,
    baseline_gbps: f64,
    rel_diff: f64,
}

/// A baseline for one (shape, batch): its name, µs per call and weight bytes per call.
struct Baseline {
    name: String,
    us: f64,
    bytes: usize,
    output: Vec<f32>,
}

#[cfg(feature = "cuda")]
fn cublas(
    args: &Args,
    w: &[f32],
    x: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Result<Baseline, String> {
    let copies = (args.copies_mb << 20).div_ceil(n * k * 2).max(1);
    let mut b = any4_kernels::cublas::CublasBf16::new(0, w, x, (m, n, k), copies)?;
    b.call()?;
    b.sync()?;
    let output = b.output()?;
    let mut runs = (0..args.repeats)
        .map(|_| b.time_us(args.calls, args.warmup_ms))
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by(f64::total_cmp);
    Ok(Baseline {
        name: "cublas-bf16".into(),
        us: runs[runs.len() / 2],
        bytes: n * k * 2,
        output,
    })
}

/// Burn's dense matmul on `dev` in `args.dtype` over rotating copies of `w`.
fn burn_dense(
    args: &Args,
    dev: &Device,
    w: &[f32],
    x: &Tensor<2>,
    (n, k): (usize, usize),
) -> Baseline {
    let bytes = n * k * if args.dtype == DType::F32 { 4 } else { 2 };
    let copies = (args.copies_mb << 20).div_ceil(bytes).max(1);
    let dense: Vec<Tensor<2>> = (0..copies)
        .map(|_| {
            let data = TensorData::new(w.to_vec(), [n, k]).convert_dtype(args.dtype);
            Tensor::<2>::from_data(data, (dev, args.dtype)).transpose()
        })
        .collect();
    let output = to_vec(x.clone().matmul(dense[0].clone()));
    let mut i = 0;
    let us = time_chained(args, || {
        i = (i + 1) % dense.len();
        x.clone().matmul(dense[i].clone())
    });
    let tuned = if cfg!(feature = "autotune") {
        "autotune-"
    } else {
        ""
    };
    Baseline {
        name: format!("burn-{tuned}{}", dtype_name(args.dtype)),
        us,
        bytes,
        output,
    }
}

/// The kernel the any4 side runs for `m` rows: on Cube backends the kernels' own resolution of
/// the strategy the Cube extension passes (`Auto`, or `AutoExact` for [`CpuMatmul::Exact`]) on
/// this device, so the record says which path ran (tensor cores or the SIMT fallback); on Flex
/// the CPU path (int8 or exact GEMV up to 8 rows, the f32 panel GEMM above).
fn kernel_path(args: &Args, m: usize, precision: CpuMatmul) -> &'static str {
    use any4_kernels::cubecl::Device as CubeDevice;
    let exact = precision == CpuMatmul::Exact;
    let device = match args.backend.as_str() {
        "cuda" => CubeDevice::cuda(0),
        "wgpu" => CubeDevice::wgpu(Default::default()),
        "cpu" => CubeDevice::cpu(),
        _ if m > any4_core::DECODE_MAX_M => return "flex-gemm",
        _ if exact => return "flex-exact",
        _ => return "flex-int8",
    };
    let strategy = if exact {
        any4_kernels::Strategy::AutoExact
    } else {
        any4_kernels::Strategy::Auto
    };
    let dtype = match args.dtype {
        DType::F16 => any4_kernels::Dtype::F16,
        DType::BF16 => any4_kernels::Dtype::BF16,
        _ => any4_kernels::Dtype::F32,
    };
    let path = device.map_err(|e| e.to_string()).and_then(|d| {
        any4_kernels::resolve(&d.client(), strategy, m, dtype).map_err(|e| e.to_string())
    });
    path.map(any4_kernels::Path::name).unwrap_or_else(|e| {
        eprintln!("bench kernels: {} device: {e}", args.backend);
        std::process::exit(2)
    })
}

fn main() {
    let fail = |e: String| -> ! {
        eprintln!("bench kernels: {e}");
        std::process::exit(2)
    };
    let args = parse_args().unwrap_or_else(|e| fail(e));
    let dev = any4_burn::device_from_name(&args.backend).unwrap_or_else(|e| fail(e.to_string()));
    let mut records = Vec::new();
    for &(n, k) in &args.shapes {
        let q = QuantizedMatrix::random(n, k, (n * 31 + k) as u64);
        let w = q.dequantize();
        let any4_bytes = n * k / 2 + n * k.div_ceil(128) * 4;
        let copies = (args.copies_mb << 20).div_ceil(n * k / 2).max(1);
        let mut any4: Vec<Any4Linear> = (0..copies)
            .map(|_| Any4Linear::from_quantized(&q, None, &dev))
            .collect();
        for &m in &args.batches {
            let mut r = SplitMix64::new(7);
            let xv: Vec<f32> = (0..m * k).map(|_| r.next_gaussian() as f32).collect();
            let x = Tensor::<2>::from_data(
                TensorData::new(xv.clone(), [m, k]).convert_dtype(args.dtype),
                (&dev, args.dtype),
            );
            // Baselines first (their outputs are the mismatch check's reference).
            #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
            let mut baselines = vec![burn_dense(&args, &dev, &w, &x, (n, k))];
            #[cfg(feature = "cuda")]
            if args.backend == "cuda" {
                let xr = to_vec(x.clone());
                baselines.push(cublas(&args, &w, &xr, (m, n, k)).unwrap_or_else(|e| fail(e)));
            }
            let mut seen = std::collections::HashSet::new();
            for &precision in &args.precisions {
                let path = kernel_path(&args, m, precision);
                // Above 8 rows both precisions run the same exact GEMM: time it once.
                let pname = match path {
                    "gemv-int8" | "flex-int8" => "int8",
                    _ => "exact",
                };
                if !seen.insert(path) {
                    continue;
                }
                any4.iter_mut().for_each(|l| l.cpu = precision);
                let y = to_vec(any4[0].forward(x.clone()));
                let mut i = 0;
                let any4_us = time_chained(&args, || {
                    i = (i + 1) % any4.len();
                    any4[i].forward(x.clone())
                });
                for b in &baselines {
                    let rd = rel_diff(&b.output, &y);
                    if rd.is_nan() || rd > MAX_REL_DIFF {
                        fail(format!(
                            "any4 ({path}) and {} outputs differ ({rd:.1e} > {MAX_REL_DIFF:.0e}) at M = {m}, {n}×{k}: nothing written",
                            b.name
                        ));
                    }
                    eprintln!(
                        "  {n}x{k} m={m} {pname:5} ({path}): any4 {any4_us:.2} µs, {} {:.2} µs, {:.2}×, rel. diff {rd:.1e}",
                        b.name,
                        b.us,
                        b.us / any4_us
                    );
                    records.push(Record {
                        precision: pname,
                        path,
                        baseline: b.name.clone(),
                        m,
                        n,
                        k,
                        any4_us,
                        baseline_us: b.us,
                        gbps: any4_bytes as f64 / any4_us / 1e3,
                        baseline_gbps: b.bytes as f64 / b.us / 1e3,
                        rel_diff: rd,
                    });
                }
            }
        }
    }
    let device_name = format!("{dev:?}");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "backend `{}` ({device_name}), {} activations, any4 G=128; µs per call over {} chained calls \
         (median of {}), ≥ {} MB of weight copies per side, ≥ {} ms warm-up\n",
        args.backend,
        dtype_name(args.dtype),
        args.calls,
        args.repeats,
        args.copies_mb,
        args.warmup_ms
    );
    let _ = writeln!(
        table,
        "| M | N × K | precision (path) | baseline | any4 µs | baseline µs | speed-up | any4 GB/s | baseline GB/s | rel. diff |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &records {
        let _ = writeln!(
            table,
            "| {} | {} × {} | {} ({}) | {} | {:.2} | {:.2} | {:.2}× | {:.0} | {:.0} | {:.1e} |",
            r.m,
            r.n,
            r.k,
            r.precision,
            r.path,
            r.baseline,
            r.any4_us,
            r.baseline_us,
            r.baseline_us / r.any4_us,
            r.gbps,
            r.baseline_gbps,
            r.rel_diff
        );
    }
    println!("{table}");
    if let Some(path) = &args.json {
        let json: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({"backend": args.backend, "device": device_name,
                    "dtype": dtype_name(args.dtype), "precision": r.precision, "path": r.path,
                    "baseline": r.baseline, "m": r.m, "n": r.n, "k": r.k,
                    "any4_us": (r.any4_us * 100.0).round() / 100.0,
                    "baseline_us": (r.baseline_us * 100.0).round() / 100.0,
                    "speedup": r.baseline_us / r.any4_us, "gbps": r.gbps,
                    "baseline_gbps": r.baseline_gbps, "output_rel_diff": r.rel_diff,
                    "calls": args.calls, "copies_mb": args.copies_mb})
            })
            .collect();
        let text = serde_json::to_string_pretty(&json).expect("json");
        for (p, body) in [(path.clone(), text), (path.with_extension("md"), table)] {
            if let Err(e) = std::fs::write(&p, body) {
                eprintln!("bench kernels: cannot write {}: {e}", p.display());
                std::process::exit(1);
            }
        }
    }
}
