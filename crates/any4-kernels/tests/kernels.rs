//! Kernel tests, written once and instantiated per runtime (`cpu`, `wgpu`, `cuda` features) by
//! `runtime_tests!`. Every kernel is compared with any4-core's CPU implementation
//! (`QuantizedView::dequantize` / `matmul`, the project's ground truth) on seeded random data.

#![allow(missing_docs)]
// Without a runtime feature there is nothing to launch on: the binary is empty.
#![cfg(any(feature = "cpu", feature = "wgpu", feature = "cuda"))]

use any4_core::pack;
use any4_core::{GroupSize, QuantizedView};
use any4_kernels::cubecl::prelude::Client;
use any4_kernels::cubecl::server::Handle;
use any4_kernels::{Any4Weight, KernelError, Strategy, WeightShape};

/// Allowed error relative to the output's natural scale `Σ_k |x|·(|table·scale| + |zero|)`:
/// f32 sums of up to ~600 terms in different orders (and the per-group factoring of the GEMV)
/// stay far below this; a wrong code, table entry or group is off by O(1) of that scale.
const REL_TOL: f32 = 1e-4;

/// Batches exercised for every shape.
const BATCHES: [usize; 6] = [1, 2, 3, 8, 16, 33];

/// Small deterministic generator (splitmix64): no dev-dependency, same data on every runtime.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// `[N, K]` with groups of `group_size` (`>= K`: one group per row), as the kernels take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    n: usize,
    k: usize,
    group_size: usize,
}

impl Dims {
    fn n_groups(&self) -> usize {
        self.k.div_ceil(self.group_size)
    }
    /// any4-core's group for these dims, `None` for a size it refuses (e.g. 12, see `dense`).
    fn core_group(&self) -> Option<GroupSize> {
        if self.group_size >= self.k {
            Some(GroupSize::PER_ROW)
        } else {
            GroupSize::new(self.group_size).ok()
        }
    }
}

/// Host-side quantized weight in the portable layout.
struct HostWeight {
    shape: Dims,
    codes: Vec<u32>,
    table: Vec<f32>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
}

impl HostWeight {
    fn random(n: usize, k: usize, g: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let shape = Dims {
            n,
            k,
            group_size: g,
        };
        let raw: Vec<u8> = (0..n * k).map(|_| (rng.next_u64() % 16) as u8).collect();
        let ng = shape.n_groups();
        Self {
            shape,
            codes: pack::pack(&raw, n, k),
            table: rng.vec(n * 16, -8.0, 8.0),
            scales: rng.vec(n * ng, 0.01, 0.2),
            zeros: rng.vec(n * ng, -0.5, 0.5),
        }
    }

    /// any4-core's view of this weight, when it accepts the group size.
    fn view(&self) -> Option<QuantizedView<'_>> {
        let Dims { n, k, .. } = self.shape;
        let group = self.shape.core_group()?;
        let view = QuantizedView::new(
            [n, k],
            group,
            &self.codes,
            &self.table,
            &self.scales,
            &self.zeros,
        );
        Some(view.expect("test weights match their dims"))
    }

    fn code(&self, row: usize, col: usize) -> usize {
        let wpr = pack::words_per_row(self.shape.k);
        pack::code(&self.codes[row * wpr..(row + 1) * wpr], col) as usize
    }

    /// int4 as a table: every row's table is 0..15.
    fn int4(n: usize, k: usize, g: usize, seed: u64) -> Self {
        let mut w = Self::random(n, k, g, seed);
        w.table = (0..n * 16).map(|i| (i % 16) as f32).collect();
        w
    }

    fn upload(&self, client: &Client) -> Any4Weight {
        let s = WeightShape::new(self.shape.n, self.shape.k, self.shape.group_size).unwrap();
        Any4Weight::upload(
            client,
            &self.codes,
            &self.table,
            &self.scales,
            &self.zeros,
            s,
        )
        .unwrap()
    }

    /// Dense `W[N, K]`: any4-core's `dequantize`. any4-core only accepts the group sizes a
    /// quantizer produces (32..1024, per row), while the kernels take any `G`; the unaligned
    /// G = 12 cases (code vectors straddling groups, the GEMV's per-weight scaling path) keep
    /// this one-line definition `w = table[code]·scale[k/G] + zero[k/G]` as their reference.
    fn dense(&self) -> Vec<f32> {
        if let Some(view) = self.view() {
            return view.dequantize();
        }
        let Dims { n, k, group_size } = self.shape;
        let ng = self.shape.n_groups();
        (0..n * k)
            .map(|i| {
                let (row, col) = (i / k, i % k);
                let g = row * ng + col / group_size;
                self.table[row * 16 + self.code(row, col)] * self.scales[g] + self.zeros[g]
            })
            .collect()
    }

    /// `y[M, N] = x · Wᵀ`: any4-core's `QuantizedView::matmul`, or its dense matmul over
    /// [`dense`](Self::dense) for group sizes any4-core refuses.
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let Dims { n, k, .. } = self.shape;
        match self.view() {
            Some(view) => view.matmul(x, m),
            None => any4_core::dense_matmul(x, m, &self.dense(), n, k),
        }
        .expect("x is m × k")
    }

    /// Per output `(m, n)`: `Σ_k |x|·(|table·scale| + |zero|)`, the scale errors are relative to.
    fn output_scale(&self, x: &[f32], m: usize) -> Vec<f32> {
        let Dims { n, k, group_size } = self.shape;
        let ng = self.shape.n_groups();
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for l in 0..k {
                    let g = j * ng + l / group_size;
                    let t = self.table[j * 16 + self.code(j, l)];
                    acc += x[i * k + l].abs() * ((t * self.scales[g]).abs() + self.zeros[g].abs());
                }
                out[i * n + j] = acc;
            }
        }
        out
    }
}

fn read_f32(client: &Client, h: Handle) -> Vec<f32> {
    let bytes = client.read_one(h).expect("read back");
    bytemuck::pod_collect_to_vec(&bytes[..])
}

fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g - w).abs() / s.max(1e-12);
        // A NaN output must be reported (and fail): it sticks once recorded.
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= REL_TOL,
        "{what}: relative error {:.3e} > {REL_TOL:.0e} at {i}: got {}, want {} (scale {})",
        worst.0,
        got[i],
        want[i],
        scale[i]
    );
}

fn strategies(m: usize) -> Vec<Strategy> {
    let mut s = vec![Strategy::Auto, Strategy::Gemm, Strategy::Fallback];
    if m <= any4_kernels::GEMV_MAX_M {
        s.push(Strategy::Gemv);
    }
    s
}

/// Every strategy, every batch in `BATCHES`, against the reference.
fn check_matmul(client: &Client, n: usize, k: usize, g: usize, seed: u64) {
    let host = HostWeight::random(n, k, g, seed);
    let weight = host.upload(client);
    let mut rng = Rng(seed ^ 0xA5A5);
    for m in BATCHES {
        let x = rng.vec(m * k, -1.0, 1.0);
        let want = host.matmul(&x, m);
        let scale = host.output_scale(&x, m);
        let xh = client.create_from_slice(bytemuck::cast_slice(&x));
        for strategy in strategies(m) {
            let y = any4_kernels::matmul(client, &weight, &xh, m, strategy)
                .unwrap_or_else(|e| panic!("{strategy:?} M={m}: {e}"));
            let got = read_f32(client, y);
            assert_close(
                &format!("N={n} K={k} G={g} M={m} {strategy:?}"),
                &got,
                &want,
                &scale,
            );
        }
    }
}

fn check_dequantize(client: &Client, n: usize, k: usize, g: usize) {
    let host = HostWeight::random(n, k, g, 7);
    let weight = host.upload(client);
    let want = host.dense();
    let got = read_f32(
        client,
        any4_kernels::dequantize_f32(client, &weight).unwrap(),
    );
    // One multiply-add per weight: exact up to fused-vs-separate rounding.
    let scale: Vec<f32> = want.iter().map(|w| w.abs().max(1.0)).collect();
    assert_close("dequantize f32", &got, &want, &scale);

    match any4_kernels::dequantize_f16(client, &weight) {
        Ok(h) => {
            let bytes = client.read_one(h).expect("read back");
            let got: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes[..]);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let tol = 1e-3 * w.abs().max(1.0); // f16 has an 11-bit mantissa
                assert!(
                    (g.to_f32() - w).abs() <= tol,
                    "dequantize f16 at {i}: {g} vs {w}"
                );
            }
        }
        Err(KernelError::UnsupportedType(t)) => eprintln!("dequantize_f16 skipped: no {t}"),
        Err(e) => panic!("dequantize_f16: {e}"),
    }
}

/// int4 encoded as a table (0..15). Negating table and zeros must negate W, hence y, exactly;
/// negating table and scales must leave y exactly unchanged. A kernel that used the code as the
/// value (ignoring the table) fails both.
fn check_adversarial(client: &Client) {
    let (n, k, g) = (40, 256, 64);
    let host = HostWeight::int4(n, k, g, 11);
    let mut rng = Rng(99);
    for m in [1usize, 3, 16] {
        let x = rng.vec(m * k, -1.0, 1.0);
        let xh = client.create_from_slice(bytemuck::cast_slice(&x));
        let want = host.matmul(&x, m);
        let scale = host.output_scale(&x, m);
        for strategy in strategies(m) {
            let run = |w: &HostWeight| {
                let y = any4_kernels::matmul(client, &w.upload(client), &xh, m, strategy).unwrap();
                read_f32(client, y)
            };
            let base = run(&host);
            assert_close(&format!("int4 M={m} {strategy:?}"), &base, &want, &scale);

            let neg = HostWeight {
                table: host.table.iter().map(|t| -t).collect(),
                zeros: host.zeros.iter().map(|z| -z).collect(),
                codes: host.codes.clone(),
                scales: host.scales.clone(),
                shape: host.shape,
            };
            let negated = run(&neg);
            for (i, (a, b)) in base.iter().zip(&negated).enumerate() {
                assert_eq!(
                    *a, -*b,
                    "M={m} {strategy:?}: -table,-zero must negate y exactly at {i}"
                );
            }

            let both = HostWeight {
                table: host.table.iter().map(|t| -t).collect(),
                scales: host.scales.iter().map(|s| -s).collect(),
                codes: host.codes.clone(),
                zeros: host.zeros.clone(),
                shape: host.shape,
            };
            let same = run(&both);
            for (i, (a, b)) in base.iter().zip(&same).enumerate() {
                assert_eq!(
                    a, b,
                    "M={m} {strategy:?}: -table,-scale must keep y exactly at {i}"
                );
            }
        }
    }
}

fn check_errors(client: &Client) {
    assert!(matches!(
        WeightShape::new(0, 8, 8),
        Err(KernelError::ZeroDimension { what: "N" })
    ));
    assert!(matches!(
        WeightShape::new(8, 8, 0),
        Err(KernelError::ZeroDimension { .. })
    ));
    let host = HostWeight::random(16, 64, 32, 3);
    let shape = WeightShape::new(16, 64, 32).unwrap();
    let short = &host.codes[1..];
    let err = Any4Weight::upload(client, short, &host.table, &host.scales, &host.zeros, shape);
    assert!(
        matches!(err, Err(KernelError::LengthMismatch { name: "codes", .. })),
        "{err:?}"
    );

    let weight = host.upload(client);
    let x = client.create_from_slice(bytemuck::cast_slice(&vec![0.0f32; 9 * 64]));
    let err = any4_kernels::matmul(client, &weight, &x, 9, Strategy::Gemv);
    assert!(
        matches!(err, Err(KernelError::GemvBatchTooLarge { m: 9, .. })),
        "{err:?}"
    );
    let err = any4_kernels::matmul(client, &weight, &x, 10, Strategy::Auto);
    assert!(
        matches!(err, Err(KernelError::BufferTooSmall { name: "x", .. })),
        "{err:?}"
    );
    let err = any4_kernels::matmul(client, &weight, &x, 0, Strategy::Auto);
    assert!(
        matches!(err, Err(KernelError::ZeroDimension { what: "M" })),
        "{err:?}"
    );
    let small = client.create_from_slice(bytemuck::cast_slice(&[0u32; 4]));
    let err = Any4Weight::from_handles(
        small,
        weight.table.clone(),
        weight.scales.clone(),
        weight.zeros.clone(),
        shape,
    );
    assert!(
        matches!(err, Err(KernelError::BufferTooSmall { name: "codes", .. })),
        "{err:?}"
    );
}

fn check_plans(client: &Client) {
    let plan = |n, k, g| any4_kernels::gemv_plan(client, WeightShape::new(n, k, g).unwrap());
    let props = client.properties();
    eprintln!(
        "plane sizes {}..={}, plane features {:?}, max units/cube {}, vector sizes {:?}",
        props.hardware.plane_size_min,
        props.hardware.plane_size_max,
        props.features.plane,
        props.hardware.max_units_per_cube,
        client.io_optimized_vector_sizes(4).collect::<Vec<_>>()
    );
    let p = plan(96, 576, 128);
    eprintln!("gemv plan K=576 G=128: {p:?}");
    assert!(p.aligned && 72 % p.vector_size == 0);
    assert!(
        plan(33, 100, 100).aligned,
        "one group per row is always aligned"
    );
    assert!(!plan(35, 100, 12).aligned, "G=12 straddles every code word");
    assert_eq!(
        plan(35, 100, 12).vector_size,
        1,
        "13 words per row only tile by 1"
    );
    let p = plan(4096, 4096, 128);
    eprintln!("gemv plan K=4096 G=128: {p:?}");
    assert!(p.threads_per_row.is_power_of_two() && p.rows_per_cube >= 1);
}

/// Every valid GEMV layout (vector width, per-vector vs per-weight scaling, split-K width,
/// shared-memory vs plane reduction) must agree with the reference.
fn check_gemv_plans_explicit(client: &Client) {
    let (n, k, g) = (77, 576, 128);
    let host = HostWeight::random(n, k, g, 21);
    let weight = host.upload(client);
    let shape = weight.shape();
    let auto = any4_kernels::gemv_plan(client, shape);
    let mut rng = Rng(5);
    let mut ran = 0;
    for m in [1usize, 3] {
        let x = rng.vec(m * k, -1.0, 1.0);
        let xh = client.create_from_slice(bytemuck::cast_slice(&x));
        let want = host.matmul(&x, m);
        let scale = host.output_scale(&x, m);
        for vector_size in [1, 2, 4] {
            for aligned in [false, true] {
                for threads_per_row in [1, 2, 32] {
                    for plane_reduce in [false, true] {
                        let plan = any4_kernels::GemvPlan {
                            vector_size,
                            aligned,
                            threads_per_row,
                            rows_per_cube: 2,
                            plane_reduce,
                        };
                        if plan.validate(client, shape).is_err() {
                            continue;
                        }
                        let strategy = Strategy::GemvPlanned(plan);
                        let y = any4_kernels::matmul(client, &weight, &xh, m, strategy).unwrap();
                        let got = read_f32(client, y);
                        assert_close(&format!("M={m} {plan:?}"), &got, &want, &scale);
                        ran += 1;
                    }
                }
            }
        }
    }
    eprintln!("explicit GEMV plans run: {ran} (auto plan {auto:?})");
    assert!(ran >= 6, "too few valid plans ({ran})");

    let bad = any4_kernels::GemvPlan {
        aligned: true,
        vector_size: 1,
        ..auto
    };
    let w12 = HostWeight::random(8, 96, 12, 1).upload(client);
    let x = client.create_from_slice(bytemuck::cast_slice(&[0.0f32; 96]));
    let err = any4_kernels::matmul(client, &w12, &x, 1, Strategy::GemvPlanned(bad));
    assert!(
        matches!(err, Err(KernelError::InvalidPlan { .. })),
        "{err:?}"
    );
}

/// Rough timings (not a benchmark: kernels are JIT-compiled, so the numbers do not depend on the
/// Rust profile). `cargo test --features wgpu -- --ignored --nocapture timing`.
fn report_timing(client: &Client) {
    use std::time::Instant;
    let (n, k, g) = (4096, 4096, 128);
    let host = HostWeight::random(n, k, g, 1);
    let weight = host.upload(client);
    let dense = any4_kernels::dequantize_f32(client, &weight).unwrap();
    let sync = || any4_kernels::cubecl::future::block_on(client.sync()).unwrap();
    for m in [1usize, 8, 16] {
        let x = client.create_from_slice(bytemuck::cast_slice(&Rng(2).vec(m * k, -1.0, 1.0)));
        let out = client.empty(m * n * 4);
        let time = |f: &dyn Fn()| {
            f();
            sync();
            let iters = 5;
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            sync();
            t.elapsed().as_secs_f64() * 1e3 / iters as f64
        };
        let lut = time(&|| {
            any4_kernels::matmul_into(client, &weight, &x, m, &out, Strategy::Auto).unwrap()
        });
        let base =
            time(&|| any4_kernels::dense_matmul_into(client, &dense, &x, &out, (m, n, k)).unwrap());
        eprintln!("N=K={n} G={g} M={m}: any4 Auto {lut:.2} ms, naive dense f32 {base:.2} ms");
    }
}

macro_rules! runtime_tests {
    ($name:ident, $client:expr) => {
        mod $name {
            use super::*;

            fn client() -> Option<Client> {
                $client
            }

            macro_rules! case {
                ($test:ident, $body:expr) => {
                    #[test]
                    fn $test() {
                        let Some(client) = client() else {
                            // The GPU check (bench/gpu/run.sh) sets this: there a missing device
                            // is a failure, not a skip.
                            assert!(
                                std::env::var_os("ANY4_REQUIRE_DEVICE").is_none(),
                                "{}: no device, and ANY4_REQUIRE_DEVICE is set",
                                stringify!($name)
                            );
                            eprintln!("{}: no device, skipped", stringify!($name));
                            return;
                        };
                        #[allow(clippy::redundant_closure_call)]
                        ($body)(&client);
                    }
                };
            }

            case!(square_128_g32, |c: &Client| check_matmul(
                c, 128, 128, 32, 1
            ));
            case!(non_square_200x256_g64, |c: &Client| check_matmul(
                c, 200, 256, 64, 2
            ));
            case!(n_not_tile_multiple_77, |c: &Client| check_matmul(
                c, 77, 128, 32, 3
            ));
            case!(short_last_group_k576_g128, |c: &Client| check_matmul(
                c, 96, 576, 128, 4
            ));
            case!(per_row_group_k576, |c: &Client| check_matmul(
                c, 64, 576, 576, 5
            ));
            case!(k_not_multiple_of_8_per_row, |c: &Client| check_matmul(
                c, 33, 100, 100, 6
            ));
            case!(unaligned_groups_g12_k100, |c: &Client| check_matmul(
                c, 35, 100, 12, 7
            ));
            case!(dequantize_k576_g128, |c: &Client| check_dequantize(
                c, 50, 576, 128
            ));
            case!(dequantize_k100_g12, |c: &Client| check_dequantize(
                c, 9, 100, 12
            ));
            case!(adversarial_int4_negation, check_adversarial);
            case!(shape_errors, check_errors);
            case!(gemv_plans, check_plans);
            case!(gemv_plans_explicit, check_gemv_plans_explicit);

            #[test]
            #[ignore = "timing report, run by hand"]
            fn timing_4096() {
                if let Some(client) = client() {
                    report_timing(&client);
                }
            }
        }
    };
}

#[cfg(feature = "cpu")]
runtime_tests!(
    cpu,
    Some(
        any4_kernels::cubecl::Device::cpu()
            .expect("cpu runtime")
            .client()
    )
);

#[cfg(feature = "wgpu")]
runtime_tests!(
    wgpu,
    Some(
        any4_kernels::cubecl::Device::wgpu(Default::default())
            .expect("wgpu device (lavapipe: apt-get install mesa-vulkan-drivers)")
            .client()
    )
);

#[cfg(feature = "cuda")]
runtime_tests!(
    cuda,
    any4_kernels::cubecl::Device::cuda(0)
        .ok()
        .map(|d| d.client())
);
