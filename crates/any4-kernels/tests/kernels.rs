//! Kernel tests, written once and instantiated per runtime (`cpu`, `wgpu`, `cuda` features) by
//! `runtime_tests!`. References, computed on the host:
//! - any4-core's `QuantizedView::matmul` (the project's ground truth, f32 parameters): every path
//!   within the bounds (exact ≤ 1e-3, int8 ≤ 1e-2 of the output's natural scale);
//! - the device layout's own weights (`HostLayout::dequantize`, f16-rounded pairs) multiplied in
//!   f64: the exact paths within 1e-5 (only f32 summation order differs);
//! - the int8 path's arithmetic replayed on the host (activation blocks, int8 table, f64 sums):
//!   the int8 GEMV within 1e-5.

#![allow(missing_docs)]
// Without a runtime feature there is nothing to launch on: the binary is empty.
#![cfg(any(feature = "cpu", feature = "wgpu", feature = "cuda"))]

use any4_core::pack;
use any4_core::{GroupSize, QuantizedView};
use any4_kernels::cubecl::prelude::Client;
use any4_kernels::cubecl::server::Handle;
use any4_kernels::{DeviceWeight, Dtype, Error, HostLayout, Path, Strategy, WeightShape};
use half::{bf16, f16};

/// Exact paths vs any4-core (f16 pairs: ≤ 2^-11 relative per weight, the 1e-3 bound).
const TOL_EXACT_CORE: f64 = 1e-3;
/// Int8 path vs any4-core (activation and table rounding: the 1e-2 bound).
const TOL_INT8_CORE: f64 = 1e-2;
/// A kernel vs the replay of its own arithmetic (f32 sums in another order).
const TOL_SAME_MATH: f64 = 1e-5;

/// Batches exercised for every shape in f32 (GEMV up to 8, GEMM above, odd sizes for tails).
const BATCHES: [usize; 5] = [1, 3, 8, 16, 33];
/// Batches exercised in f16 / bf16 (one GEMV, one GEMM).
const BATCHES_HALF: [usize; 2] = [1, 16];

/// Small deterministic generator (splitmix64): same data on every runtime.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// A weight in any4-core's portable layout.
struct HostWeight {
    n: usize,
    k: usize,
    group: GroupSize,
    codes: Vec<u32>,
    table: Vec<f32>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
}

impl HostWeight {
    fn random(n: usize, k: usize, group: GroupSize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let raw: Vec<u8> = (0..n * k).map(|_| (rng.next_u64() % 16) as u8).collect();
        let ng = group.groups_for(k);
        Self {
            n,
            k,
            group,
            codes: pack::pack(&raw, n, k),
            table: rng.vec(n * 16, -8.0, 8.0),
            scales: rng.vec(n * ng, 0.01, 0.2),
            zeros: rng.vec(n * ng, -0.5, 0.5),
        }
    }
    fn view(&self) -> QuantizedView<'_> {
        QuantizedView::new(
            [self.n, self.k],
            self.group,
            &self.codes,
            &self.table,
            &self.scales,
            &self.zeros,
        )
        .expect("test weights match their dims")
    }
    fn layout(&self) -> HostLayout {
        HostLayout::from_view(&self.view()).expect("device layout")
    }
    fn upload(&self, client: &Client) -> DeviceWeight {
        DeviceWeight::upload(client, &self.view()).expect("upload")
    }
    fn with(&self, table: Vec<f32>, scales: Vec<f32>, zeros: Vec<f32>) -> Self {
        Self {
            codes: self.codes.clone(),
            table,
            scales,
            zeros,
            ..*self
        }
    }
}

/// `Σ_k |x|·|w|` per output: the scale errors are measured against.
fn natural_scale(w: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|l| (x[i * k + l] as f64 * w[j * k + l] as f64).abs())
                .sum();
        }
    }
    out
}

/// f64 product with the device layout's weights.
fn layout_matmul(layout: &HostLayout, x: &[f32], m: usize) -> Vec<f64> {
    let (n, k) = (layout.shape.n(), layout.shape.k());
    let w = layout.dequantize();
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|l| x[i * k + l] as f64 * w[j * k + l] as f64)
                .sum();
        }
    }
    out
}

/// The int8 path's arithmetic on the host: activations per block of 32 (`d = max|x|/127`,
/// round ties to even), the layout's int8 tables and row factors, sums in f64.
fn int8_reference(layout: &HostLayout, x: &[f32], m: usize) -> Vec<f64> {
    let s = layout.shape;
    let (n, k, vpr, groups) = (s.n(), s.k(), s.vectors_per_row(), s.groups());
    let shift = s.group_shift();
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        // (q, d, Σx) per block.
        let blocks: Vec<([i32; 32], f64, f64)> = (0..vpr)
            .map(|b| {
                let xs: Vec<f32> = (0..32)
                    .map(|j| {
                        if b * 32 + j < k {
                            x[i * k + b * 32 + j]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let inv = 1.0 / d;
                let (d, inv) = if d > 0.0 && inv.is_finite() {
                    (d, inv)
                } else {
                    (0.0, 0.0)
                };
                let q = std::array::from_fn(|j| {
                    ((xs[j] * inv).round_ties_even() as i32).clamp(-127, 127)
                });
                (q, d as f64, xs.iter().map(|&v| v as f64).sum())
            })
            .collect();
        for row in 0..n {
            let t8: Vec<i32> = layout.table8[row * 4..row * 4 + 4]
                .iter()
                .flat_map(|w| w.to_le_bytes().map(|b| b as i8 as i32))
                .collect();
            let f = &layout.rows[row * 4..row * 4 + 4];
            let (mut a1, mut a2, mut a3) = (0.0f64, 0.0f64, 0.0f64);
            for (b, (q, d, xs)) in blocks.iter().enumerate() {
                let p = layout.params[row * groups + (b >> shift)];
                let sh = f16::from_bits(p as u16).to_f64();
                let zh = f16::from_bits((p >> 16) as u16).to_f64();
                let words = &layout.codes[row * vpr * 4 + b * 4..][..4];
                let dot: i32 = (0..32)
                    .map(|j| t8[((words[j / 8] >> (4 * (j % 8))) & 15) as usize] * q[j])
                    .sum();
                a1 += sh * d * dot as f64;
                a2 += sh * xs;
                a3 += zh * xs;
            }
            out[i * n + row] = f[0] as f64 * a1 + f[1] as f64 * a2 + f[3] as f64 * a3;
        }
    }
    out
}

fn assert_close(what: &str, got: &[f64], want: &[f64], scale: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g - w).abs() / s.max(1e-12);
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= tol,
        "{what}: relative error {:.3e} > {tol:.0e} at {i}: got {}, want {} (scale {})",
        worst.0,
        got[i],
        want[i],
        scale[i]
    );
}

fn upload_x(client: &Client, x: &[f32], dtype: Dtype) -> Handle {
    match dtype {
        Dtype::F32 => client.create_from_slice(bytemuck::cast_slice(x)),
        Dtype::F16 => {
            let v: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            client.create_from_slice(bytemuck::cast_slice(&v))
        }
        Dtype::BF16 => {
            let v: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            client.create_from_slice(bytemuck::cast_slice(&v))
        }
    }
}

/// `x` rounded to `dtype` (what the kernels see).
fn rounded(x: &[f32], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => x.to_vec(),
        Dtype::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        Dtype::BF16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
    }
}

fn read(client: &Client, h: Handle, dtype: Dtype) -> Vec<f64> {
    let bytes = client.read_one(h).expect("read back");
    match dtype {
        Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..])
            .into_iter()
            .map(f64::from)
            .collect(),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(&bytes[..])
            .into_iter()
            .map(|v| v.to_f64())
            .collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes[..])
            .into_iter()
            .map(|v| v.to_f64())
            .collect(),
    }
}

/// Output rounding of `dtype` relative to the natural scale (an f16 output rounds to 2^-11 of
/// its own magnitude, which is at most the natural scale).
fn output_tol(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 0.0,
        Dtype::F16 => 1.0 / 2048.0,
        Dtype::BF16 => 1.0 / 256.0,
    }
}

/// The dtypes the runtime supports (f32 always).
fn dtypes(client: &Client) -> Vec<Dtype> {
    let props = client.properties();
    [Dtype::F32, Dtype::F16, Dtype::BF16]
        .into_iter()
        .filter(|&d| props.supports_type(d.elem()))
        .collect()
}

/// One strategy per distinct kernel path valid for `m` on this device (`Auto` and `AutoExact`
/// resolve to one of these; `errors` checks the resolution).
fn strategies(client: &Client, m: usize, dtype: Dtype) -> Vec<Strategy> {
    let mut s = vec![Strategy::Simt, Strategy::Fallback];
    if m <= any4_core::DECODE_MAX_M {
        s.extend([Strategy::GemvInt8, Strategy::GemvExact]);
    }
    if any4_kernels::resolve(client, Strategy::TensorCore, m, dtype).is_ok() {
        s.push(Strategy::TensorCore);
    }
    s
}

/// Every strategy, batch and supported dtype against the references.
fn check_matmul(client: &Client, n: usize, k: usize, group: GroupSize, seed: u64) {
    let host = HostWeight::random(n, k, group, seed);
    let layout = host.layout();
    let weight = DeviceWeight::upload_layout(client, &layout);
    let w_core = host.view().dequantize();
    let mut rng = Rng(seed ^ 0xA5A5);
    for dtype in dtypes(client) {
        let batches: &[usize] = if dtype == Dtype::F32 {
            &BATCHES
        } else {
            &BATCHES_HALF
        };
        for &m in batches {
            let x = rounded(&rng.vec(m * k, -1.0, 1.0), dtype);
            let core: Vec<f64> = host
                .view()
                .matmul(&x, m)
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let same_math = layout_matmul(&layout, &x, m);
            let scale = natural_scale(&w_core, &x, m, n, k);
            let xh = upload_x(client, &x, dtype);
            for strategy in strategies(client, m, dtype) {
                let path = any4_kernels::resolve(client, strategy, m, dtype).unwrap();
                let y = any4_kernels::matmul(client, &weight, &xh, m, dtype, strategy)
                    .unwrap_or_else(|e| panic!("{strategy:?} M={m} {dtype:?}: {e}"));
                let got = read(client, y, dtype);
                let what = format!("N={n} K={k} G={group} M={m} {dtype:?} {strategy:?} ({path:?})");
                let out = output_tol(dtype);
                match path {
                    Path::GemvInt8 => {
                        let replay = int8_reference(&layout, &x, m);
                        assert_close(&what, &got, &replay, &scale, TOL_SAME_MATH + out);
                        assert_close(&what, &got, &core, &scale, TOL_INT8_CORE);
                    }
                    Path::TensorCore => {
                        // Operands rounded to f16/bf16 (2^-11 / 2^-8 per factor).
                        let tol = if dtype == Dtype::BF16 {
                            1e-2
                        } else {
                            TOL_EXACT_CORE
                        };
                        assert_close(&what, &got, &same_math, &scale, tol + out);
                    }
                    _ => {
                        assert_close(&what, &got, &same_math, &scale, TOL_SAME_MATH + out);
                        assert_close(&what, &got, &core, &scale, TOL_EXACT_CORE + out);
                    }
                }
            }
        }
    }
}

fn check_dequantize(client: &Client, n: usize, k: usize, group: GroupSize) {
    let host = HostWeight::random(n, k, group, 7);
    let layout = host.layout();
    let weight = DeviceWeight::upload_layout(client, &layout);
    let want: Vec<f64> = layout.dequantize().into_iter().map(f64::from).collect();
    let core: Vec<f64> = host
        .view()
        .dequantize()
        .into_iter()
        .map(f64::from)
        .collect();
    for dtype in dtypes(client) {
        let got = read(
            client,
            any4_kernels::dequantize(client, &weight, dtype).unwrap(),
            dtype,
        );
        let scale: Vec<f64> = want.iter().map(|w| w.abs().max(1.0)).collect();
        let tol = 1e-6 + output_tol(dtype);
        assert_close(&format!("dequantize {dtype:?}"), &got, &want, &scale, tol);
        // |t·s| + |z| per weight bounds the f16-pair rounding.
        assert_close(
            &format!("dequantize {dtype:?} vs core"),
            &got,
            &core,
            &scale,
            2e-3 + tol,
        );
    }
}

/// Scales spanning 2^-30..1 within a row: the small ones are f16 subnormals after the row's
/// power-of-two normalization, so the pairs' decoding covers the subnormal range.
fn check_wide_range_scales(client: &Client) {
    let (n, k) = (8, 256);
    let mut host = HostWeight::random(n, k, GroupSize::new(32).unwrap(), 13);
    for (i, s) in host.scales.iter_mut().enumerate() {
        *s *= 2f32.powi(-((i % 8) as i32) * 4);
    }
    let layout = host.layout();
    let weight = DeviceWeight::upload_layout(client, &layout);
    let want: Vec<f64> = layout.dequantize().into_iter().map(f64::from).collect();
    let got = read(
        client,
        any4_kernels::dequantize(client, &weight, Dtype::F32).unwrap(),
        Dtype::F32,
    );
    let scale: Vec<f64> = want.iter().map(|w| w.abs().max(1e-30)).collect();
    assert_close("wide-range scales", &got, &want, &scale, 1e-6);
}

/// int4 as a table (0..15). Negating table and zeros must negate y, negating table and scales
/// must leave y unchanged: exactly on the exact paths (every operation is sign-symmetric), within
/// the int8 bound on the int8 path (its table steps start at the table's minimum, so `−t` is
/// quantized on a shifted grid). A kernel that used the code as the value (ignoring the table)
/// fails both.
fn check_adversarial(client: &Client) {
    let (n, k) = (40, 256);
    let mut host = HostWeight::random(n, k, GroupSize::new(64).unwrap(), 11);
    host.table = (0..n * 16).map(|i| (i % 16) as f32).collect();
    let neg = |v: &[f32]| v.iter().map(|t| -t).collect::<Vec<_>>();
    let negated = host.with(neg(&host.table), host.scales.clone(), neg(&host.zeros));
    let both = host.with(neg(&host.table), neg(&host.scales), host.zeros.clone());
    let mut rng = Rng(99);
    for m in [1usize, 3, 16] {
        let x = rng.vec(m * k, -1.0, 1.0);
        let xh = upload_x(client, &x, Dtype::F32);
        let w_core = host.view().dequantize();
        let scale = natural_scale(&w_core, &x, m, n, k);
        let want: Vec<f64> = host
            .view()
            .matmul(&x, m)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        for strategy in strategies(client, m, Dtype::F32) {
            let run = |w: &HostWeight| {
                let y =
                    any4_kernels::matmul(client, &w.upload(client), &xh, m, Dtype::F32, strategy)
                        .unwrap();
                read(client, y, Dtype::F32)
            };
            let base = run(&host);
            let what = format!("int4 M={m} {strategy:?}");
            assert_close(&what, &base, &want, &scale, TOL_INT8_CORE);
            let (neg_y, same_y) = (run(&negated), run(&both));
            if strategy == Strategy::GemvInt8 {
                let minus: Vec<f64> = want.iter().map(|v| -v).collect();
                let w = format!("{what} -table,-zero");
                assert_close(&w, &neg_y, &minus, &scale, TOL_INT8_CORE);
                let w = format!("{what} -table,-scale");
                assert_close(&w, &same_y, &want, &scale, TOL_INT8_CORE);
                continue;
            }
            for (i, (a, b)) in base.iter().zip(&neg_y).enumerate() {
                assert_eq!(
                    *a, -b,
                    "M={m} {strategy:?}: -table,-zero must negate y exactly at {i}"
                );
            }
            for (i, (a, b)) in base.iter().zip(&same_y).enumerate() {
                assert_eq!(
                    a, b,
                    "M={m} {strategy:?}: -table,-scale must keep y exactly at {i}"
                );
            }
        }
    }
}

/// The int8 GEMV with CUDA's byte permute and with the portable byte select agree bit for bit
/// (on other runtimes both calls take the portable select).
fn check_int8_portable_identical(client: &Client) {
    let (n, k) = (96, 576);
    let host = HostWeight::random(n, k, GroupSize::G128, 17);
    let weight = host.upload(client);
    let mut rng = Rng(3);
    for m in [1usize, 5, 8] {
        let x = rng.vec(m * k, -2.0, 2.0);
        let xh = upload_x(client, &x, Dtype::F32);
        let a =
            any4_kernels::matmul(client, &weight, &xh, m, Dtype::F32, Strategy::GemvInt8).unwrap();
        let b = client.empty(m * n * 4);
        any4_kernels::matmul_int8_portable_into(client, &weight, &xh, m, Dtype::F32, &b).unwrap();
        let (a, b) = (read(client, a, Dtype::F32), read(client, b, Dtype::F32));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "M={m}: prmt and portable lookups differ at {i}"
            );
        }
    }
}

fn check_errors(client: &Client) {
    assert!(matches!(
        WeightShape::new(0, 8, 8),
        Err(Error::ZeroDimension { what: "N" })
    ));
    assert!(matches!(
        WeightShape::new(8, 8, 0),
        Err(Error::ZeroDimension { .. })
    ));
    assert!(matches!(
        WeightShape::new(8, 256, 96),
        Err(Error::UnsupportedGroupSize { group_size: 96, .. })
    ));
    assert!(
        WeightShape::new(8, 100, 100).is_ok(),
        "per-row groups of any K"
    );
    let host = HostWeight::random(16, 64, GroupSize::new(32).unwrap(), 3);
    let weight = host.upload(client);
    let x = client.create_from_slice(bytemuck::cast_slice(&vec![0.0f32; 9 * 64]));
    let err = any4_kernels::matmul(client, &weight, &x, 9, Dtype::F32, Strategy::GemvInt8);
    assert!(
        matches!(err, Err(Error::GemvBatchTooLarge { m: 9, .. })),
        "{err:?}"
    );
    let err = any4_kernels::matmul(client, &weight, &x, 10, Dtype::F32, Strategy::Auto);
    assert!(
        matches!(err, Err(Error::BufferTooSmall { name: "x", .. })),
        "{err:?}"
    );
    let err = any4_kernels::matmul(client, &weight, &x, 0, Dtype::F32, Strategy::Auto);
    assert!(
        matches!(err, Err(Error::ZeroDimension { what: "M" })),
        "{err:?}"
    );
    let small = client.empty(16);
    let err = any4_kernels::matmul_into(client, &weight, &x, 2, Dtype::F32, &small, Strategy::Auto);
    assert!(
        matches!(err, Err(Error::BufferTooSmall { name: "out", .. })),
        "{err:?}"
    );
    let mut bad = host.with(host.table.clone(), host.scales.clone(), host.zeros.clone());
    bad.zeros[5] = f32::NAN;
    let err = DeviceWeight::upload(client, &bad.view());
    assert!(
        matches!(
            err,
            Err(Error::NotFinite {
                name: "zeros",
                row: 2,
                ..
            })
        ),
        "{err:?}"
    );
    for dtype in [Dtype::F16, Dtype::BF16] {
        if !client.properties().supports_type(dtype.elem()) {
            let err = any4_kernels::matmul(client, &weight, &x, 1, dtype, Strategy::Auto);
            assert!(matches!(err, Err(Error::UnsupportedType(_))), "{err:?}");
        }
    }
    let resolve = |s, m| any4_kernels::resolve(client, s, m, Dtype::F32).unwrap();
    assert_eq!(resolve(Strategy::Auto, 8), Path::GemvInt8);
    assert_eq!(resolve(Strategy::AutoExact, 1), Path::GemvExact);
    let gemm = resolve(Strategy::Auto, 9);
    assert!(matches!(gemm, Path::TensorCore | Path::Simt), "{gemm:?}");
    assert_eq!(resolve(Strategy::AutoExact, 9), gemm);
    let tc = any4_kernels::resolve(client, Strategy::TensorCore, 16, Dtype::F16);
    let has = any4_kernels::plan::has_cmma(client.properties(), Dtype::F16);
    assert_eq!(tc.is_ok(), has, "{tc:?}");
    if !has {
        assert!(matches!(tc, Err(Error::NoTensorCores(_))), "{tc:?}");
    }
}

fn report_device(client: &Client) {
    let props = client.properties();
    let shape = WeightShape::new(4096, 4096, 128).unwrap();
    eprintln!(
        "device {:?}: planes {}..={}, plane features {:?}, max units/cube {}, dtypes {:?}, cmma f16 {}, gemv plan {:?}",
        props.identity.name,
        props.hardware.plane_size_min,
        props.hardware.plane_size_max,
        props.features.plane,
        props.hardware.max_units_per_cube,
        dtypes(client),
        any4_kernels::plan::has_cmma(props, Dtype::F16),
        any4_kernels::plan::gemv_plan(props, shape, Dtype::F32),
    );
    let auto = any4_kernels::resolve(client, Strategy::Auto, 16, Dtype::F16);
    eprintln!("M = 16 f16 takes {auto:?}");
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
                        // A runtime compiled in must have its device: a missing one fails
                        // (a skip that passes would hide a broken GPU check).
                        let client = client().unwrap_or_else(|| {
                            panic!(
                                "{}: no device for a runtime this build was compiled for; build \
                                 without its feature to leave these tests out",
                                stringify!($name)
                            )
                        });
                        #[allow(clippy::redundant_closure_call)]
                        ($body)(&client);
                    }
                };
            }

            case!(non_square_200x256_g64, |c: &Client| check_matmul(
                c,
                200,
                256,
                GroupSize::new(64).unwrap(),
                2
            ));
            case!(n_not_tile_multiple_77, |c: &Client| check_matmul(
                c,
                77,
                128,
                GroupSize::new(32).unwrap(),
                3
            ));
            case!(short_last_group_k576_g128, |c: &Client| check_matmul(
                c,
                96,
                576,
                GroupSize::G128,
                4
            ));
            case!(per_row_group_k576, |c: &Client| check_matmul(
                c,
                64,
                576,
                GroupSize::PER_ROW,
                5
            ));
            case!(k_not_multiple_of_32_per_row, |c: &Client| check_matmul(
                c,
                33,
                100,
                GroupSize::PER_ROW,
                6
            ));
            case!(dequantize_k576_g128, |c: &Client| check_dequantize(
                c,
                50,
                576,
                GroupSize::G128
            ));
            case!(dequantize_k100_per_row, |c: &Client| check_dequantize(
                c,
                9,
                100,
                GroupSize::PER_ROW
            ));
            case!(wide_range_scales, check_wide_range_scales);
            case!(adversarial_int4_negation, check_adversarial);
            case!(int8_prmt_matches_portable, check_int8_portable_identical);
            case!(errors, check_errors);
            case!(device_report, report_device);
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
