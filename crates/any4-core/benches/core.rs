//! any4-core benches (divan): quantization time per format, and the CPU matmul at batch 1
//! against a dense f32 matvec of the same shape, in the same run.
//!
//! Run: `cargo xtask bench core` (or `cargo bench -p any4-core --bench core`).
//!
//! Cache honesty: a 4096×4096 any4 matrix (8.6 MB) fits this machine's 32 MB L3, its f32 twin
//! (64 MB) does not. The `*_cold` benches rotate over enough copies (> 128 MB in all) that every
//! call streams its weights from DRAM, as decode does; the plain ones show the cache-resident case.

use any4_core::rng::SplitMix64;
use any4_core::{
    Any4Config, Format, GptqConfig, Gram, GroupSize, HessianFactor, Int8Kernel, MatmulPrecision,
    QuantizedMatrix, QuantizedView, Solver, dense_matmul, int8_tables, quantize_gptq,
    quantize_matrix,
};
use divan::Bencher;

fn main() {
    divan::main();
}

fn student_t(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..rows * cols)
        .map(|_| (0.02 * r.next_student_t(4)) as f32)
        .collect()
}

fn stats(cols: usize) -> Vec<f32> {
    let mut r = SplitMix64::new(99);
    (0..cols).map(|_| r.next_gaussian() as f32).collect()
}

const K4096: usize = 4096;

#[divan::bench(
    args = ["any4-lloyd", "any4-exact", "int4", "nf4", "fp4"],
    sample_count = 3,
    sample_size = 1
)]
fn quantize_4096x4096(bencher: Bencher, which: &str) {
    let w = student_t(K4096, K4096, 1);
    let s = stats(K4096);
    let cfg = match which {
        "any4-lloyd" => Any4Config::new(Format::Any4),
        "any4-exact" => Any4Config::new(Format::Any4).with_solver(Solver::Exact),
        other => Any4Config::new(other.parse().expect("format name")),
    };
    bencher.bench(|| quantize_matrix(&w, [K4096, K4096], Some(&s), &cfg).expect("quantize"));
}

/// Calibration tokens of the GPTQ benches (rank-deficient at K = 4096: damping makes `H`
/// definite, as with a short calibration text).
const CALIB_TOKENS: usize = 512;

fn calibration_gram(k: usize) -> Gram {
    let x = student_t(CALIB_TOKENS, k, 5);
    let mut g = Gram::new(k, u64::MAX).expect("gram");
    g.accumulate(&x, CALIB_TOKENS).expect("accumulate");
    g
}

/// Recording 512 calibration tokens into a 4096-wide Gram matrix (f64).
#[divan::bench(sample_count = 3, sample_size = 1)]
fn gram_512x4096(bencher: Bencher) {
    let x = student_t(CALIB_TOKENS, K4096, 5);
    bencher.bench(|| {
        let mut g = Gram::new(K4096, u64::MAX).expect("gram");
        g.accumulate(&x, CALIB_TOKENS).expect("accumulate");
        g
    });
}

/// The dampened Cholesky factor error feedback runs on (once per distinct layer input).
#[divan::bench(sample_count = 3, sample_size = 1)]
fn gptq_factor_4096(bencher: Bencher) {
    let g = calibration_gram(K4096);
    bencher.bench(|| HessianFactor::new(&g, 0.01).expect("factor"));
}

/// Error feedback on a 4096 × 4096 layer (factor given; the budget is 10 s on 2 cores).
#[divan::bench(args = ["any4", "int4"], sample_count = 3, sample_size = 1)]
fn quantize_gptq_4096x4096(bencher: Bencher, which: &str) {
    let w = student_t(K4096, K4096, 1);
    let g = calibration_gram(K4096);
    let f = HessianFactor::new(&g, 0.01).expect("factor");
    let cfg = Any4Config::new(which.parse().expect("format name"));
    let mean = g.mean();
    bencher.bench(|| {
        quantize_gptq(
            &w,
            [K4096, K4096],
            Some(&mean),
            &f,
            &cfg,
            &GptqConfig::default(),
        )
        .expect("gptq")
    });
}

/// Enough copies of `bytes_each` to exceed 128 MB (4× this machine's L3).
fn copies_for(bytes_each: usize) -> usize {
    (128usize << 20).div_ceil(bytes_each).max(1)
}

struct Shapes {
    n: usize,
    k: usize,
}

const SHAPES: [(usize, usize); 2] = [(4096, 4096), (16384, 8192)];

fn shape(i: usize) -> Shapes {
    let (n, k) = SHAPES[i];
    Shapes { n, k }
}

fn quantized(n: usize, k: usize) -> QuantizedMatrix {
    let w = student_t(n, k, 2);
    quantize_matrix(&w, [n, k], None, &Any4Config::new(Format::Int4)).expect("quantize")
}

/// Batch-1 matmul, any4 layout (an int4 table costs the same as a learned one: same kernel).
#[divan::bench(args = [0, 1], sample_count = 20)]
fn matvec_any4(bencher: Bencher, i: usize) {
    let Shapes { n, k } = shape(i);
    let q = quantized(n, k);
    let x = student_t(1, k, 3);
    bencher.bench(|| q.matmul(&x, 1).expect("matmul"));
}

/// Dense f32 matvec of the same shape (same threading and SIMD).
#[divan::bench(args = [0, 1], sample_count = 20)]
fn matvec_dense_f32(bencher: Bencher, i: usize) {
    let Shapes { n, k } = shape(i);
    let w = student_t(n, k, 2);
    let x = student_t(1, k, 3);
    bencher.bench(|| dense_matmul(&x, 1, &w, n, k).expect("matmul"));
}

/// As `matvec_any4`, rotating over copies so every call reads its weights from DRAM.
#[divan::bench(args = [0, 1], sample_count = 20)]
fn matvec_any4_cold(bencher: Bencher, i: usize) {
    bench_cold(bencher, i, MatmulPrecision::Exact);
}

/// Batch-1 any4 matmul over enough weight copies that every call streams from DRAM.
fn bench_cold(bencher: Bencher, i: usize, precision: MatmulPrecision) {
    let Shapes { n, k } = shape(i);
    let q = quantized(n, k);
    let copies = copies_for(n * k / 2);
    let qs: Vec<QuantizedMatrix> = (0..copies).map(|_| q.clone()).collect();
    let x = student_t(1, k, 3);
    let mut next = 0;
    bencher.bench_local(|| {
        next = (next + 1) % copies;
        qs[next]
            .view()
            .matmul_with(&x, 1, precision)
            .expect("matmul")
    });
}

/// As `matvec_dense_f32`, rotating over copies so every call reads its weights from DRAM.
#[divan::bench(args = [0, 1], sample_count = 20)]
fn matvec_dense_f32_cold(bencher: Bencher, i: usize) {
    let Shapes { n, k } = shape(i);
    let w = student_t(n, k, 2);
    let copies = copies_for(n * k * 4);
    let ws: Vec<Vec<f32>> = (0..copies).map(|_| w.clone()).collect();
    let x = student_t(1, k, 3);
    let mut next = 0;
    bencher.bench_local(|| {
        next = (next + 1) % copies;
        dense_matmul(&x, 1, &ws[next], n, k).expect("matmul")
    });
}

/// `"<shape>/<kernel>"` for 1024² and the two shapes above, every SIMD int8 kernel this CPU
/// runs (the shapes of the per-call overhead comparison with the kernels bench through Burn).
fn int8_cases() -> Vec<&'static str> {
    let mut cases = Vec::new();
    for (n, k) in [(1024, 1024)].into_iter().chain(SHAPES) {
        for kernel in Int8Kernel::supported() {
            if kernel.name() != "portable" {
                cases.push(&*Box::leak(
                    format!("{n}x{k}/{}", kernel.name()).into_boxed_str(),
                ));
            }
        }
    }
    cases
}

/// One weight as a learned any4 layer holds it: per-row tables (int4 codes and scales, its
/// shared table repeated), plus the int8 tables built once, as the Burn weight stores them.
struct Layer {
    shape: [usize; 2],
    codes: Vec<u32>,
    table: Vec<f32>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
    int8: Vec<u32>,
}

impl Layer {
    fn new(n: usize, k: usize) -> Layer {
        let q = quantized(n, k);
        let table = q.table_per_row();
        Layer {
            shape: [n, k],
            codes: q.codes().to_vec(),
            int8: int8_tables(&table).expect("tables"),
            table,
            scales: q.scales().to_vec(),
            zeros: q.zeros().to_vec(),
        }
    }

    fn view(&self) -> QuantizedView<'_> {
        QuantizedView::new(
            self.shape,
            GroupSize::G128,
            &self.codes,
            &self.table,
            &self.scales,
            &self.zeros,
        )
        .and_then(|v| v.with_int8_tables(&self.int8))
        .expect("view")
    }
}

fn parse_case(case: &str) -> (usize, usize, Int8Kernel) {
    let (shape, kernel) = case.split_once('/').expect("shape/kernel");
    let (n, k) = shape.split_once('x').expect("NxK");
    (
        n.parse().expect("N"),
        k.parse().expect("K"),
        Int8Kernel::by_name(kernel).expect("supported kernel"),
    )
}

/// The int8 decode path per kernel, per-row tables with precomputed int8 tables, weights
/// cache-resident where they fit.
#[divan::bench(args = int8_cases(), sample_count = 30)]
fn matvec_int8(bencher: Bencher, case: &str) {
    let (n, k, kernel) = parse_case(case);
    let layer = Layer::new(n, k);
    let x = student_t(1, k, 3);
    bencher.bench(|| layer.view().matmul_int8(&x, 1, kernel).expect("matmul"));
}

/// As `matvec_int8`, rotating over copies so every call streams its weights from DRAM (decode).
#[divan::bench(args = int8_cases(), sample_count = 30)]
fn matvec_int8_cold(bencher: Bencher, case: &str) {
    let (n, k, kernel) = parse_case(case);
    let layer = Layer::new(n, k);
    let copies: Vec<Layer> = (0..copies_for(n * k / 2))
        .map(|_| Layer {
            shape: layer.shape,
            codes: layer.codes.clone(),
            table: layer.table.clone(),
            scales: layer.scales.clone(),
            zeros: layer.zeros.clone(),
            int8: layer.int8.clone(),
        })
        .collect();
    let x = student_t(1, k, 3);
    let mut next = 0;
    bencher.bench_local(|| {
        next = (next + 1) % copies.len();
        copies[next]
            .view()
            .matmul_int8(&x, 1, kernel)
            .expect("matmul")
    });
}

/// The public int8 path (`MatmulPrecision::Int8Activations`: the best kernel, tables converted
/// per call), from DRAM.
#[divan::bench(args = [0, 1], sample_count = 20)]
fn matvec_any4_int8_cold(bencher: Bencher, i: usize) {
    bench_cold(bencher, i, MatmulPrecision::Int8Activations);
}

/// As `matvec_any4_int8_cold` (one shared table, converted per call) with a chosen kernel: the
/// `/avx2` cases are what an AVX2-only CPU runs, comparable with earlier runs of that bench.
#[divan::bench(args = int8_cases(), sample_count = 20)]
fn matvec_int8_shared_cold(bencher: Bencher, case: &str) {
    let (n, k, kernel) = parse_case(case);
    let q = quantized(n, k);
    let copies = copies_for(n * k / 2);
    let qs: Vec<QuantizedMatrix> = (0..copies).map(|_| q.clone()).collect();
    let x = student_t(1, k, 3);
    let mut next = 0;
    bencher.bench_local(|| {
        next = (next + 1) % copies;
        qs[next].view().matmul_int8(&x, 1, kernel).expect("matmul")
    });
}
