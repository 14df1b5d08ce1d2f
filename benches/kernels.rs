//! any4 matmul vs the dense matmul of the same backend and dtype, measured in the same run.
//!
//! `cargo xtask bench kernels [--backend flex|cpu|wgpu|cuda] [--sizes 1024,4096]
//! [--shapes 16384x8192] [--batch 1,16] [--dtype f32|f16|bf16] [--repeats N] [--json FILE]` (or
//! `cargo bench --bench kernels --features <backend> -- ...`).
//!
//! `--dtype` is the activation and dense-weight dtype (f16/bf16: the GPU baseline; the any4 side
//! takes the activation in that dtype and returns its output in it, as `Any4Linear` does).
//!
//! For every square size `K = N` (and every `N×K` shape) and batch `M`: random any4 weights (per-row learned-style tables,
//! per-group scales: kernel speed does not depend on the values) through `QLinear`'s any4 path,
//! against `x.matmul(W)` with a dense f32 `W` as `nn::Linear` does. Each timed call is synced
//! (its output read back) and the median of the repeats is reported. Before timing, both outputs
//! are compared (the dense `W` is the dequantized any4 weight): a timing of a call that did not
//! compute the product is worthless, so a mismatch fails the run.
//!
//! Cache honesty: both sides rotate over enough weight copies (> 128 MB each, 4× this CPU's L3
//! and 2× a data-centre GPU's L2) that every timed call streams its weights from memory, as real
//! decode does; when memory limits the copies (large dense weights), the table says so.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use any4_burn::Any4Linear;
use any4_core::rng::SplitMix64;
use any4_core::{Any4Config, Format, GroupSize, QuantizedMatrix};
use burn::tensor::{DType, Tensor, TensorData};

/// Bytes each side's rotation should exceed.
const ROTATION_BYTES: usize = 128 << 20;
/// Upper bound on the memory all copies of one side may take.
const MAX_COPY_BYTES: usize = 3 << 30;

struct Args {
    backend: String,
    /// `(n, k)` weight shapes: every `--sizes` square, then every `--shapes N×K`.
    shapes: Vec<(usize, usize)>,
    batches: Vec<usize>,
    repeats: usize,
    json: Option<PathBuf>,
    dtype: DType,
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("not a number: `{v}`"))
        })
        .collect()
}

/// `16384x8192,4096x11008` → `[(16384, 8192), (4096, 11008)]` (N × K).
fn parse_shapes(s: &str) -> Result<Vec<(usize, usize)>, String> {
    s.split(',')
        .map(|v| {
            let (n, k) = v
                .split_once(['x', '×'])
                .ok_or_else(|| format!("shape `{v}` is not N×K (e.g. 16384x8192)"))?;
            let num = |t: &str| {
                t.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("not a number: `{t}`"))
            };
            Ok((num(n)?, num(k)?))
        })
        .collect()
}

fn parse_args() -> Result<Args, String> {
    let mut sizes = None;
    let mut shapes = Vec::new();
    let mut a = Args {
        backend: "flex".into(),
        shapes: Vec::new(),
        batches: vec![1, 4, 16, 64],
        repeats: 15,
        json: None,
        dtype: DType::F32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--backend" => a.backend = val()?,
            "--sizes" => sizes = Some(parse_list(&val()?)?),
            "--shapes" => shapes = parse_shapes(&val()?)?,
            "--batch" => a.batches = parse_list(&val()?)?,
            "--repeats" => a.repeats = val()?.parse().map_err(|_| "--repeats needs a number")?,
            "--json" => a.json = Some(val()?.into()),
            "--dtype" => {
                a.dtype = match val()?.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype `{other}`: f32, f16 or bf16")),
                }
            }
            "--bench" => {} // passed by `cargo bench`
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let sizes = match sizes {
        Some(s) => s,
        None if shapes.is_empty() => vec![1024, 4096],
        None => Vec::new(),
    };
    a.shapes = sizes.into_iter().map(|s| (s, s)).chain(shapes).collect();
    if let Some(&(n, k)) = a
        .shapes
        .iter()
        .find(|&&(n, k)| n == 0 || k == 0 || k % 8 != 0)
    {
        return Err(format!(
            "shape {n}×{k}: N and K must be positive, K a multiple of 8"
        ));
    }
    if a.repeats == 0 || a.batches.contains(&0) {
        return Err("--repeats and every --batch must be at least 1".into());
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

/// Random weights in the any4 layout: codes, a 16-entry ascending table per row, group params.
fn random_any4(n: usize, k: usize, seed: u64) -> QuantizedMatrix {
    let mut r = SplitMix64::new(seed);
    let cfg = Any4Config::new(Format::Any4).with_group_size(GroupSize::G128);
    let groups = cfg.group_size().groups_for(k);
    let codes = (0..n * k.div_ceil(8))
        .map(|_| r.next_u64() as u32)
        .collect();
    let table = (0..n)
        .flat_map(|_| {
            let mut t: Vec<f32> = (0..16)
                .map(|_| half::f16::from_f64(r.next_f64() * 15.0).to_f32())
                .collect();
            t.sort_by(f32::total_cmp);
            t
        })
        .collect();
    let scales = (0..n * groups)
        .map(|_| 1e-3 + r.next_f64() as f32 * 1e-3)
        .collect();
    let zeros = (0..n * groups)
        .map(|_| -0.01 * r.next_f64() as f32)
        .collect();
    QuantizedMatrix::from_parts(cfg, [n, k], codes, table, scales, zeros).expect("consistent parts")
}

fn copies(bytes_each: usize) -> (usize, bool) {
    let want = ROTATION_BYTES.div_ceil(bytes_each).max(1);
    let fit = (MAX_COPY_BYTES / bytes_each).max(1);
    (want.min(fit), want <= fit || bytes_each > ROTATION_BYTES)
}

/// Median wall time of `f` over `repeats` calls after 3 warm-ups, in microseconds.
fn median_us(repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Wait for the call: reduce the output on the device and read that one value back.
///
/// Reading matters: on the Cube backends `into_data` returns lazily-read bytes, and a result
/// dropped unread was measured at 30 µs for a 4096² matvec that takes 280 ms on lavapipe when
/// read (the first wgpu table of 2026-11-29 was such an artefact). The sum depends on every
/// output value, so the whole product is computed, while the host copies one number instead of
/// `M × N` (on a GPU a full readback would dwarf the kernel).
fn sync(y: Tensor<2>) {
    let s = y.sum().into_data().convert::<f32>();
    std::hint::black_box(s.try_to_vec::<f32>().unwrap_or_default());
}

/// `max |a − b| / max |a|` over two outputs of the same shape.
fn rel_diff(a: Tensor<2>, b: Tensor<2>) -> f64 {
    let to_vec = |t: Tensor<2>| {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default()
    };
    let (a, b) = (to_vec(a), to_vec(b));
    // `f64::max` skips NaN: a non-finite output must fail the check, not vanish from it.
    if a.len() != b.len() || a.is_empty() || !a.iter().chain(&b).all(|v| v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    if scale > 0.0 { diff / scale } else { diff }
}

/// Largest accepted [`rel_diff`] between the dense and the any4 output: f32 accumulation in
/// different orders (and int8 activations on the CPU decode path) stay well below it.
const MAX_REL_DIFF: f64 = 2e-2;

struct Record {
    m: usize,
    k: usize,
    n: usize,
    dense_us: f64,
    any4_us: f64,
    cold: bool,
    rel_diff: f64,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench kernels: {e}");
            std::process::exit(2);
        }
    };
    let dev = match any4_burn::device_from_name(&args.backend) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench kernels: {e}");
            std::process::exit(2);
        }
    };
    let mut records = Vec::new();
    for &(n, k) in &args.shapes {
        let q = random_any4(n, k, (n * 31 + k) as u64);
        let (qa, cold_a) = copies(n * k / 2);
        let (qd, cold_d) = copies(n * k * if args.dtype == DType::F32 { 4 } else { 2 });
        let any4: Vec<Any4Linear> = (0..qa)
            .map(|_| Any4Linear::from_quantized(&q, None, &dev))
            .collect();
        let dense_w = q.dequantize();
        let dense: Vec<Tensor<2>> = (0..qd)
            .map(|_| {
                let data = TensorData::new(dense_w.clone(), [n, k]).convert_dtype(args.dtype);
                Tensor::<2>::from_data(data, (&dev, args.dtype)).transpose()
            })
            .collect();
        drop(dense_w);
        for &m in &args.batches {
            let mut r = SplitMix64::new(7);
            let xv: Vec<f32> = (0..m * k).map(|_| r.next_gaussian() as f32).collect();
            let x = Tensor::<2>::from_data(
                TensorData::new(xv, [m, k]).convert_dtype(args.dtype),
                (&dev, args.dtype),
            );
            let rel_diff = rel_diff(
                x.clone().matmul(dense[0].clone()),
                any4[0].forward(x.clone()),
            );
            let mut i = 0;
            let dense_us = median_us(args.repeats, || {
                i = (i + 1) % dense.len();
                sync(x.clone().matmul(dense[i].clone()));
            });
            let any4_us = median_us(args.repeats, || {
                i = (i + 1) % any4.len();
                sync(any4[i].forward(x.clone()));
            });
            records.push(Record {
                m,
                k,
                n,
                dense_us,
                any4_us,
                cold: cold_a && cold_d,
                rel_diff,
            });
            eprintln!(
                "  {n}x{k} m={m}: dense {dense_us:.0} µs, any4 {any4_us:.0} µs, output rel. diff {rel_diff:.1e}"
            );
        }
    }
    let device_name = format!("{dev:?}");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "backend `{}` ({device_name}), {} activations and dense weights, any4 G=128\n",
        args.backend,
        dtype_name(args.dtype)
    );
    let _ = writeln!(
        table,
        "| M | N × K | dense µs | any4 µs | speed-up | weights from memory | output rel. diff |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|");
    for r in &records {
        let _ = writeln!(
            table,
            "| {} | {} × {} | {:.0} | {:.0} | {:.2}× | {} | {:.1e} |",
            r.m,
            r.n,
            r.k,
            r.dense_us,
            r.any4_us,
            r.dense_us / r.any4_us,
            if r.cold {
                "yes"
            } else {
                "partly (copies limited by RAM)"
            },
            r.rel_diff
        );
    }
    println!("{table}");
    if let Some(r) = records
        .iter()
        .find(|r| r.rel_diff.is_nan() || r.rel_diff > MAX_REL_DIFF)
    {
        eprintln!(
            "bench kernels: dense and any4 outputs differ ({:.1e} > {MAX_REL_DIFF:.0e}) at M = {}, {}×{}: the timings above are not trustworthy",
            r.rel_diff, r.m, r.n, r.k
        );
        std::process::exit(1);
    }
    if let Some(path) = &args.json {
        let json: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({"backend": args.backend, "device": device_name, "dtype": dtype_name(args.dtype),
                    "format": "any4", "m": r.m, "k": r.k, "n": r.n, "dense_us": r.dense_us,
                    "any4_us": r.any4_us, "speedup": r.dense_us / r.any4_us, "weights_from_memory": r.cold,
                    "output_rel_diff": r.rel_diff})
            })
            .collect();
        let text = serde_json::to_string_pretty(&json).expect("json");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("bench kernels: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        let md = path.with_extension("md");
        if let Err(e) = std::fs::write(&md, &table) {
            eprintln!("bench kernels: cannot write {}: {e}", md.display());
            std::process::exit(1);
        }
    }
}
