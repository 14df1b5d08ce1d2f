//! Property and behaviour tests of the public any4-core API (one test binary on purpose: each
//! integration-test binary costs a link).

use any4_core::pack::{pack, unpack};
use any4_core::rng::SplitMix64;
use any4_core::*;
use proptest::prelude::*;

fn gaussian(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..rows * cols)
        .map(|_| (r.next_gaussian() * 0.02) as f32)
        .collect()
}

/// Student-t with `nu` degrees of freedom (heavy tails, like real LLM weights).
fn student_t(rows: usize, cols: usize, nu: u32, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..rows * cols)
        .map(|_| (0.02 * r.next_student_t(nu)) as f32)
        .collect()
}

/// Activation means with a few outlier channels, as LLM activations have.
fn stats(cols: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..cols)
        .map(|j| {
            let v = r.next_gaussian() as f32 * 0.3;
            if j % 37 == 0 { v * 20.0 } else { v }
        })
        .collect()
}

fn cfg(f: Format) -> Any4Config {
    Any4Config::new(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pack_unpack_round_trip(rows in 1usize..6, k in 1usize..70, seed in any::<u64>()) {
        let mut r = SplitMix64::new(seed);
        let codes: Vec<u8> = (0..rows * k).map(|_| (r.next_u64() % 16) as u8).collect();
        let words = pack(&codes, rows, k);
        prop_assert_eq!(words.len(), rows * k.div_ceil(8));
        prop_assert_eq!(unpack(&words, rows, k), codes);
    }

    /// Every weight lies within half the largest table gap (or the distance from the domain's
    /// edge to the outermost entry) times its group scale.
    #[test]
    fn dequantize_error_is_bounded(
        rows in 1usize..5,
        cols in 16usize..300,
        seed in any::<u64>(),
        fi in 0usize..6,
        sym in any::<bool>(),
        g in prop::sample::select(vec![32usize, 64, 128, 0]),
    ) {
        let format = Format::ALL[fi];
        let scaling = if sym { Scaling::Symmetric } else { Scaling::Asymmetric };
        let group = if g == 0 { GroupSize::PER_ROW } else { GroupSize::new(g).unwrap() };
        let c = cfg(format).with_scaling(scaling).with_group_size(group).with_param_dtype(ParamDtype::F32);
        let w = student_t(rows, cols, 4, seed);
        let q = quantize_matrix(&w, [rows, cols], None, &c).unwrap();
        let deq = q.dequantize();
        let (lo, hi) = match levels::domain(format, scaling) {
            levels::Domain::Range { lo, hi } => (lo, hi),
            levels::Domain::Symmetric { bound } => (-bound, bound),
        };
        for row in 0..rows {
            let t = &q.row_table(row)[..format.levels()];
            let half_gap = t.windows(2).map(|p| (p[1] - p[0]) / 2.0).fold(0.0f32, f32::max);
            let edge = (t[0] - lo).max(hi - t[t.len() - 1]).max(0.0);
            for col in 0..cols {
                let gi = col / q.group_len();
                let s = q.scales()[row * q.groups() + gi];
                let bound = half_gap.max(edge) * s * (1.0 + 1e-4) + 1e-7;
                let e = (w[row * cols + col] - deq[row * cols + col]).abs();
                prop_assert!(e <= bound, "{format} row {row} col {col}: |e| = {e} > {bound}");
            }
        }
    }

    /// int4 via the table path is exactly asymmetric round-to-nearest on the stored scale/zero.
    #[test]
    fn int4_is_round_to_nearest(rows in 1usize..4, cols in 16usize..400, seed in any::<u64>()) {
        let w = gaussian(rows, cols, seed);
        let q = quantize_matrix(&w, [rows, cols], None, &cfg(Format::Int4)).unwrap();
        let deq = q.dequantize();
        for row in 0..rows {
            for col in 0..cols {
                let gi = row * q.groups() + col / q.group_len();
                let (s, z) = (q.scales()[gi], q.zeros()[gi]);
                let plain = ((w[row * cols + col] - z) / s).round().clamp(0.0, 15.0);
                prop_assert_eq!(q.code(row, col) as f32, plain);
                prop_assert_eq!(deq[row * cols + col], plain * s + z);
            }
        }
    }

    /// The fast CPU matmul equals dequantize-then-multiply in f64, for every format and M.
    #[test]
    fn matmul_matches_dequantized_reference(
        rows in 1usize..40,
        cols in 16usize..300,
        m in prop::sample::select(vec![1usize, 2, 3, 8]),
        fi in 0usize..6,
        seed in any::<u64>(),
    ) {
        let w = gaussian(rows, cols, seed);
        let q = quantize_matrix(&w, [rows, cols], None, &cfg(Format::ALL[fi]).with_group_size(GroupSize::new(32).unwrap())).unwrap();
        let deq = q.dequantize();
        let x = gaussian(m, cols, seed ^ 1);
        let y = q.matmul(&x, m).unwrap();
        for i in 0..m {
            for n in 0..rows {
                let exact: f64 = (0..cols).map(|j| x[i * cols + j] as f64 * deq[n * cols + j] as f64).sum();
                let scale: f64 = (0..cols).map(|j| (x[i * cols + j] as f64 * deq[n * cols + j] as f64).abs()).sum();
                let got = y[i * rows + n] as f64;
                prop_assert!((got - exact).abs() <= 1e-5 * scale + 1e-9, "m={i} n={n}: {got} vs {exact}");
            }
        }
    }
}

/// Checks one int8 kernel on one case: (1) within the worst-case bound of the two int8
/// roundings of the exact f32 result — a full int8 step of the centred table times `|x|·s`, plus
/// a full step of each activation block times the centred weight `|(t − mid)·s|`; (2) equal to
/// the portable kernel up to f32 summation order (same integers); (3) bit-identical with the
/// precomputed tables of `int8_tables` (the kernels' own table conversion matches it).
fn check_int8_kernel(
    kernel: Int8Kernel,
    q: &QuantizedMatrix,
    x: &[f32],
    m: usize,
) -> Result<(), String> {
    let (rows, cols) = (q.rows(), q.cols());
    let exact = q.matmul(x, m).unwrap();
    let fast = q.view().matmul_int8(x, m, kernel).unwrap();
    let portable = Int8Kernel::by_name("portable").unwrap();
    let reference = q.view().matmul_int8(x, m, portable).unwrap();
    let t8 = int8_tables(q.table()).unwrap();
    let pre = q
        .view()
        .with_int8_tables(&t8)
        .unwrap()
        .matmul_int8(x, m, kernel)
        .unwrap();
    let deq = q.dequantize();
    let name = kernel.name();
    for i in 0..m {
        let xs = &x[i * cols..(i + 1) * cols];
        for n in 0..rows {
            let t = q.row_table(n);
            let (lo, hi) = t
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let tstep = (hi - lo) / 255.0;
            let (mut bound, mut mag) = (0.0f32, 0.0f32);
            for j in 0..cols {
                let s = q.scales()[n * q.groups() + j / q.group_len()];
                let block = &xs[(j / 32 * 32).min(cols)..((j / 32 + 1) * 32).min(cols)];
                let xstep = block.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
                let centred = (t[q.code(n, j) as usize] - (lo + hi) / 2.0) * s;
                bound += xs[j].abs() * s * tstep + centred.abs() * xstep;
                mag += (deq[n * cols + j].abs() + s * (hi - lo)) * xs[j].abs();
            }
            let at = i * rows + n;
            let (a, b, r) = (fast[at], exact[at], reference[at]);
            if (a - b).abs() > bound * 1.01 + 1e-6 {
                return Err(format!(
                    "{name} m={i} n={n}: {a} vs exact {b} (bound {bound})"
                ));
            }
            if (a - r).abs() > 1e-5 * mag + 1e-7 {
                return Err(format!(
                    "{name} m={i} n={n}: {a} vs portable {r} (magnitude {mag})"
                ));
            }
            if pre[at].to_bits() != a.to_bits() {
                return Err(format!(
                    "{name} m={i} n={n}: {} with precomputed tables vs {a}",
                    pre[at]
                ));
            }
        }
    }
    Ok(())
}

/// Every int8 kernel this CPU runs is checked (see `check_int8_kernel`) on shapes that reach
/// each code path: K a multiple of 128 or not (padded last quad, unpaired block, f32 tail),
/// several chunks of rows, group sizes 32 / 64 / 128 / 256 / per-row, learned and shared
/// tables, M = 1, 3 and 6 (the AVX-512 kernels take activation rows four at a time: 6 is a full
/// pass and a partial one).
/// The list of kernels checked must hold every kernel the CPU's features allow (detected here
/// independently); kernels the CPU lacks are printed as not run.
#[test]
fn every_supported_int8_kernel_matches_the_reference() {
    let kernels = Int8Kernel::supported();
    let checked: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
    let not_run: Vec<&str> = Int8Kernel::all_names()
        .into_iter()
        .filter(|n| !checked.contains(n))
        .collect();
    let mut expected = vec!["portable"];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            expected.push("avx2");
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                expected.push("avx512-vnni");
                if has!("avx512vbmi") {
                    expected.push("avx512-vbmi");
                }
            }
        }
    }
    eprintln!("int8 kernels checked: {checked:?}; not run (this CPU lacks them): {not_run:?}");
    assert_eq!(checked, expected, "kernels checked vs the CPU's features");
    let mut cases = 0;
    // 41 rows: the batch-1 AVX-512 loop's chunks of 8 row pairs, the last partial and unpaired.
    for (rows, cols) in [
        (7, 512),
        (5, 200),
        (3, 96),
        (4, 1000),
        (2, 40),
        (3, 16),
        (41, 256),
    ] {
        for g in [32usize, 64, 128, 256, 0] {
            let group = if g == 0 {
                GroupSize::PER_ROW
            } else {
                GroupSize::new(g).unwrap()
            };
            for (fi, f) in [Format::Any4, Format::Int4].into_iter().enumerate() {
                let seed = (rows * cols + g + fi) as u64;
                let w = student_t(rows, cols, 4, seed);
                let q = quantize_matrix(&w, [rows, cols], None, &cfg(f).with_group_size(group))
                    .unwrap();
                for m in [1, 3, 6] {
                    let x = student_t(m, cols, 5, seed ^ 3);
                    for &kernel in &kernels {
                        check_int8_kernel(kernel, &q, &x, m).unwrap();
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 7 * 5 * 2 * 3 * kernels.len());
    // Precomputed tables of the wrong length are refused, naming them.
    let q = quantize_matrix(&student_t(4, 64, 4, 1), [4, 64], None, &cfg(Format::Any4)).unwrap();
    let err = q.view().with_int8_tables(&[0; 6]).unwrap_err().to_string();
    assert!(err.contains("int8 tables"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `check_int8_kernel` on random shapes for every supported kernel (the CPU's coverage is
    /// asserted by `every_supported_int8_kernel_matches_the_reference`), and the public
    /// `MatmulPrecision::Int8Activations` path equals the CPU's best kernel.
    #[test]
    fn int8_kernels_are_close_to_exact(
        rows in 1usize..24,
        cols in 16usize..700,
        m in prop::sample::select(vec![1usize, 2, 5]),
        fi in 0usize..6,
        g in prop::sample::select(vec![32usize, 64, 128, 0]),
        seed in any::<u64>(),
    ) {
        let group = if g == 0 { GroupSize::PER_ROW } else { GroupSize::new(g).unwrap() };
        let w = student_t(rows, cols, 4, seed);
        let q = quantize_matrix(&w, [rows, cols], None, &cfg(Format::ALL[fi]).with_group_size(group)).unwrap();
        let x = student_t(m, cols, 5, seed ^ 3);
        for kernel in Int8Kernel::supported() {
            if let Err(e) = check_int8_kernel(kernel, &q, &x, m) {
                prop_assert!(false, "{}", e);
            }
        }
        let public = q.view().matmul_with(&x, m, MatmulPrecision::Int8Activations).unwrap();
        let expected = match Int8Kernel::best() {
            Some(k) => q.view().matmul_int8(&x, m, k).unwrap(),
            None => q.matmul(&x, m).unwrap(),
        };
        prop_assert_eq!(public, expected);
    }
}

#[test]
fn any4_beats_int4_and_nf4_on_gaussian_and_student_t() {
    let (rows, cols) = (64, 512);
    let st = stats(cols, 11);
    for (name, w) in [
        ("gaussian", gaussian(rows, cols, 1)),
        ("student-t", student_t(rows, cols, 3, 2)),
    ] {
        let err = |f: Format| {
            let q = quantize_matrix(&w, [rows, cols], Some(&st), &cfg(f)).unwrap();
            q.reconstruction_error(&w, Some(&st)).unwrap().weighted_mse
        };
        let (any4, int4, nf4) = (err(Format::Any4), err(Format::Int4), err(Format::Nf4));
        assert!(any4 < int4, "{name}: any4 {any4} !< int4 {int4}");
        assert!(any4 < nf4, "{name}: any4 {any4} !< nf4 {nf4}");
        // Fewer levels cost accuracy: any2 > any3 > any4.
        let (any3, any2) = (err(Format::Any3), err(Format::Any2));
        assert!(any4 < any3 && any3 < any2, "{name}: {any4} {any3} {any2}");
    }
}

#[test]
fn exact_solver_is_no_worse_than_lloyd_on_a_matrix() {
    let (rows, cols) = (16, 256);
    let w = student_t(rows, cols, 3, 5);
    let st = stats(cols, 6);
    let c = cfg(Format::Any4).with_param_dtype(ParamDtype::F32);
    let lloyd = quantize_matrix(&w, [rows, cols], Some(&st), &c).unwrap();
    let exact =
        quantize_matrix(&w, [rows, cols], Some(&st), &c.with_solver(Solver::Exact)).unwrap();
    let e = |q: &QuantizedMatrix| q.reconstruction_error(&w, None).unwrap().mse;
    // Per-row optimality is in the weighted scaled domain; the plain MSE follows closely.
    assert!(
        e(&exact) <= e(&lloyd) * 1.02,
        "exact {} lloyd {}",
        e(&exact),
        e(&lloyd)
    );
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let (rows, cols) = (48, 320);
    let w = student_t(rows, cols, 4, 9);
    let st = stats(cols, 10);
    let x = gaussian(3, cols, 12);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let q = quantize_matrix(&w, [rows, cols], Some(&st), &cfg(Format::Any4)).unwrap();
            let y = q.matmul(&x, 3).unwrap();
            (q, y)
        })
    };
    let one = run(1);
    for t in [2, 3, 5] {
        assert_eq!(run(t), one, "{t} threads");
    }
}

/// The int8 path on a weight large enough to be split across threads (300 KB of codes, an
/// odd row count so one row has no pair), called from outside any pool (the caller works
/// alongside helpers), inside a one-thread pool (sequential) and inside a three-thread pool
/// (rayon's splitting): bit-identical, and within the reference checks of `check_int8_kernel`.
#[test]
fn int8_path_does_not_depend_on_threads() {
    let (rows, cols, m) = (601, 1024, 5);
    let w = student_t(rows, cols, 4, 31);
    let q = quantize_matrix(&w, [rows, cols], None, &cfg(Format::Int4)).unwrap();
    let x = gaussian(m, cols, 32);
    for kernel in Int8Kernel::supported() {
        let outside = q.view().matmul_int8(&x, m, kernel).unwrap();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let inside = pool.install(|| q.view().matmul_int8(&x, m, kernel).unwrap());
            assert!(
                inside
                    .iter()
                    .zip(&outside)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: {threads}-thread pool vs the calling thread",
                kernel.name()
            );
        }
    }
    let best = Int8Kernel::supported().pop().unwrap();
    check_int8_kernel(best, &q, &x, m).unwrap();
}

#[test]
fn short_last_group_uses_its_own_range() {
    // SmolLM2's K = 576 = 4.5 × 128: groups of 128, 128, 128, 128 and 64.
    let (rows, cols) = (3, 576);
    let mut w = gaussian(rows, cols, 21);
    for r in 0..rows {
        w[r * cols + 575] = 5.0; // an outlier only in the short group
    }
    let q = quantize_matrix(
        &w,
        [rows, cols],
        None,
        &cfg(Format::Int4).with_param_dtype(ParamDtype::F32),
    )
    .unwrap();
    assert_eq!(q.groups(), 5);
    for r in 0..rows {
        let last = &w[r * cols + 512..(r + 1) * cols];
        let mn = last.iter().copied().fold(f32::INFINITY, f32::min);
        assert_eq!(q.scales()[r * 5 + 4], (5.0 - mn) / 15.0);
        assert_eq!(q.zeros()[r * 5 + 4], mn);
        // Earlier groups are unaffected by the outlier.
        assert!(q.scales()[r * 5 + 3] < 0.1);
    }
}

#[test]
fn constant_rows_quantize_exactly() {
    let cols = 256;
    for f in Format::ALL {
        for (dtype, value) in [
            (ParamDtype::F32, 0.123_456_79f32),
            (ParamDtype::F16, 0.375),
            (ParamDtype::Bf16, -2.5),
        ] {
            let w: Vec<f32> = std::iter::repeat_n(value, cols)
                .chain(std::iter::repeat_n(0.0, cols))
                .collect();
            let c = cfg(f)
                .with_param_dtype(dtype)
                .with_scaling(Scaling::Asymmetric);
            let q = quantize_matrix(&w, [2, cols], None, &c).unwrap();
            assert_eq!(q.dequantize(), w, "{f} {dtype:?}");
        }
    }
}

#[test]
fn stored_parameters_are_representable_in_their_dtype() {
    let w = student_t(8, 256, 4, 31);
    for dtype in [ParamDtype::F16, ParamDtype::Bf16] {
        let q = quantize_matrix(
            &w,
            [8, 256],
            None,
            &cfg(Format::Any4).with_param_dtype(dtype),
        )
        .unwrap();
        for v in q.table().iter().chain(q.scales()).chain(q.zeros()) {
            assert_eq!(dtype.round(*v), *v);
        }
    }
}

#[test]
fn bits_per_weight_matches_the_paper() {
    let w = gaussian(64, 4096, 3);
    let q = quantize_matrix(&w, [64, 4096], None, &cfg(Format::Any4)).unwrap();
    assert_eq!(q.bits_per_weight(), 4.3125);
}

#[test]
fn from_parts_round_trips_and_validates() {
    let w = gaussian(4, 256, 8);
    let q = quantize_matrix(&w, [4, 256], None, &cfg(Format::Any3)).unwrap();
    let parts = || {
        (
            q.codes().to_vec(),
            q.table().to_vec(),
            q.scales().to_vec(),
            q.zeros().to_vec(),
        )
    };
    let (c, t, s, z) = parts();
    assert_eq!(
        QuantizedMatrix::from_parts(*q.config(), [4, 256], c, t, s, z).unwrap(),
        q
    );

    let (mut c, t, s, z) = parts();
    c[0] |= 0xF; // code 15 is outside any3's 8 levels
    assert!(matches!(
        QuantizedMatrix::from_parts(*q.config(), [4, 256], c, t, s, z),
        Err(Error::CodeOutOfRange {
            row: 0,
            col: 0,
            code: 15,
            levels: 8
        })
    ));
    let (c, t, mut s, z) = parts();
    s[3] = f32::NAN;
    assert!(matches!(
        QuantizedMatrix::from_parts(*q.config(), [4, 256], c, t, s, z),
        Err(Error::InvalidParameter {
            what: "scale",
            row: 1,
            index: 1,
            ..
        })
    ));
    let (c, t, s, mut z) = parts();
    z.pop();
    assert!(matches!(
        QuantizedMatrix::from_parts(*q.config(), [4, 256], c, t, s, z),
        Err(Error::ShapeMismatch {
            what: "zeros [rows, groups]",
            ..
        })
    ));
}

#[test]
fn config_serde_round_trip_and_validation() {
    let c = cfg(Format::Any4)
        .with_group_size(GroupSize::PER_ROW)
        .with_solver(Solver::Exact)
        .with_seed(42);
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Any4Config>(&json).unwrap(), c);
    assert!(json.contains("\"per-row\""), "{json}");
    let bad_group = json.replace("\"per-row\"", "100");
    assert!(serde_json::from_str::<Any4Config>(&bad_group).is_err());
    let bad_iter = json.replace("\"max_iter\":300", "\"max_iter\":0");
    assert_ne!(bad_iter, json);
    assert!(serde_json::from_str::<Any4Config>(&bad_iter).is_err());
    assert_eq!("NF4".parse::<Format>().unwrap(), Format::Nf4);
    assert_eq!("per-row".parse::<GroupSize>().unwrap(), GroupSize::PER_ROW);
    assert_eq!("64".parse::<GroupSize>().unwrap().size(), Some(64));
}

/// Every error variant is reachable through the public API, and names what is wrong.
#[test]
fn every_error_variant_is_reachable() {
    let w = gaussian(2, 32, 1);
    let c = cfg(Format::Any4);
    let mut nan = w.clone();
    nan[37] = f32::NAN;
    let e = quantize_matrix(&nan, [2, 32], None, &c).unwrap_err();
    assert!(
        matches!(e, Error::NonFiniteWeight { row: 1, col: 5, value } if value.is_nan()),
        "{e:?}"
    );
    assert!(e.to_string().contains("row 1, column 5"), "{e}");

    let mut st = vec![0.5f32; 32];
    st[3] = f32::INFINITY;
    assert!(matches!(
        quantize_matrix(&w, [2, 32], Some(&st), &c),
        Err(Error::NonFiniteStat { channel: 3, .. })
    ));
    assert!(matches!(
        GroupSize::new(100),
        Err(Error::UnsupportedGroupSize(100))
    ));
    assert!(matches!(
        quantize_matrix(&w[..16], [2, 8], None, &c),
        Err(Error::KTooSmall { k: 8 })
    ));
    assert!(matches!(
        quantize_matrix(&[], [0, 32], None, &c),
        Err(Error::NoRows)
    ));
    assert!(matches!(
        quantize_matrix(&w, [3, 32], None, &c),
        Err(Error::ShapeMismatch {
            expected: 96,
            got: 64,
            ..
        })
    ));
    assert!(matches!(
        quantize_matrix(&w, [2, 32], Some(&[1.0; 5]), &c),
        Err(Error::ShapeMismatch {
            expected: 32,
            got: 5,
            ..
        })
    ));
    assert!(matches!(
        KMeansConfig::default().with_max_iter(0),
        Err(Error::InvalidKMeans(_))
    ));
    assert!(matches!(
        KMeansConfig::default().with_tol(f32::NAN),
        Err(Error::InvalidKMeans(_))
    ));
    assert!(matches!(
        "any5".parse::<Format>(),
        Err(Error::UnknownName { kind: "format", .. })
    ));
    assert!(matches!(
        "q4".parse::<ParamDtype>(),
        Err(Error::UnknownName { kind: "dtype", .. })
    ));
    assert!(matches!(
        "median".parse::<Solver>(),
        Err(Error::UnknownName { .. })
    ));
    assert!(matches!(
        "skew".parse::<Scaling>(),
        Err(Error::UnknownName { .. })
    ));
    // A range too wide for f16 parameters overflows the stored scale: refused, not stored as inf.
    let huge: Vec<f32> = (0..32).map(|i| if i == 0 { -1e6 } else { 1e6 }).collect();
    assert!(matches!(
        quantize_matrix(&huge, [1, 32], None, &c),
        Err(Error::InvalidParameter {
            what: "scale",
            row: 0,
            index: 0,
            ..
        })
    ));
    let q = quantize_matrix(&w, [2, 32], None, &c).unwrap();
    assert!(matches!(
        q.matmul(&[1.0; 31], 1),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        dense_matmul(&[1.0; 32], 1, &w, 3, 32),
        Err(Error::ShapeMismatch { .. })
    ));
    // CodeOutOfRange and InvalidParameter from stored parts: see `from_parts_round_trips_and_validates`.
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The panel GEMM path (batches) computes the same product as the f32 reference, up to
    /// summation order: rows not a multiple of the 32-row panel, K across several 512-column
    /// panels with a short last one, every group size, M from 1 to 40.
    #[test]
    fn panel_gemm_matches_reference(
        rows in 1usize..80,
        cols_words in 2usize..170,
        m in 1usize..40,
        fi in 0usize..6,
        g in prop::sample::select(vec![32usize, 128, 512, 0]),
        seed in any::<u64>(),
    ) {
        let cols = cols_words * 8;
        let group = if g == 0 { GroupSize::PER_ROW } else { GroupSize::new(g).unwrap() };
        let w = student_t(rows, cols, 4, seed);
        let q = quantize_matrix(&w, [rows, cols], None, &cfg(Format::ALL[fi]).with_group_size(group)).unwrap();
        let x = student_t(m, cols, 5, seed ^ 7);
        let exact = q.matmul(&x, m).unwrap();
        let fast = q.view().matmul_panels(&x, m).unwrap();
        let deq = q.dequantize();
        for i in 0..m {
            for n in 0..rows {
                let scale: f32 = (0..cols).map(|j| (x[i * cols + j] * deq[n * cols + j]).abs()).sum();
                let (a, b) = (fast[i * rows + n], exact[i * rows + n]);
                prop_assert!((a - b).abs() <= 1e-5 * scale + 1e-6, "m={i} n={n}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn panel_gemm_refuses_a_wrong_activation_length() {
    let w = student_t(4, 64, 4, 1);
    let q = quantize_matrix(&w, [4, 64], None, &cfg(Format::Any4)).unwrap();
    assert!(q.view().matmul_panels(&[0.0; 63], 1).is_err());
    assert_eq!(q.view().matmul_panels(&[], 0).unwrap(), Vec::<f32>::new());
    for precision in [MatmulPrecision::Exact, MatmulPrecision::Int8Activations] {
        assert_eq!(
            q.view().matmul_with(&[], 0, precision).unwrap(),
            Vec::<f32>::new()
        );
    }
}
