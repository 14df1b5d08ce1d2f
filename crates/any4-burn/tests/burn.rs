//! any4-burn behaviour tests (one test binary: each costs a link).
//!
//! Flex-specific tests come first; `backend_tests!` then instantiates the same checks for every
//! compiled-in backend: Flex always, the CubeCL CPU runtime with the `cpu` feature, wgpu (Mesa
//! lavapipe in CI) with the `wgpu` feature.

use any4_burn::*;
use any4_core::rng::SplitMix64;
use any4_core::{Any4Config, Format, GroupSize, QuantizedMatrix, Scaling, quantize_matrix};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

#[path = "burn/error_feedback.rs"]
mod error_feedback;

fn device() -> Device {
    Device::flex()
}

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.next_gaussian() as f32 * scale).collect()
}

fn tensor2(v: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), &device())
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Named tolerance: f32 sums of a few hundred products in different orders.
const F32_SUM_TOL: f32 = 1e-5;

/// Exact CPU precision, so outputs can be compared bit for bit with any4-core.
fn layer_of(q: &QuantizedMatrix) -> Any4Linear {
    let mut l = Any4Linear::from_quantized(q, None, &device());
    l.cpu = CpuMatmul::Exact;
    l
}

#[test]
fn flex_extension_matches_core_and_portable_paths() {
    for format in Format::ALL {
        for (rows, cols, group) in [
            (128, 128, 128),
            (200, 256, 32),
            (33, 576, 128),
            (17, 160, 0),
        ] {
            let g = if group == 0 {
                GroupSize::PER_ROW
            } else {
                GroupSize::new(group).unwrap()
            };
            let w = randn(rows * cols, rows as u64, 0.05);
            let q = quantize_matrix(
                &w,
                [rows, cols],
                None,
                &Any4Config::new(format).with_group_size(g),
            )
            .unwrap();
            let layer = layer_of(&q);
            assert_eq!(route(&device()), Route::Extension);
            for m in [1usize, 2, 3, 8, 16, 33] {
                let x = randn(m * cols, 7 + m as u64, 1.0);
                let expect = q.matmul(&x, m).unwrap();
                let got = to_vec(layer.forward(tensor2(x.clone(), [m, cols])));
                assert_eq!(
                    got, expect,
                    "{format} {rows}x{cols} g{group} m{m}: extension != core"
                );
                let portable = to_vec(
                    tensor2(x, [m, cols]).matmul(layer.weight().dequantize_portable().transpose()),
                );
                assert!(
                    max_rel_diff(&portable, &expect) < F32_SUM_TOL,
                    "{format} {rows}x{cols} m{m}: portable path"
                );
            }
            // The default (Auto) takes the int8 path for decode-sized batches: close, not equal.
            let mut auto = layer_of(&q);
            auto.cpu = CpuMatmul::Auto;
            let x = randn(cols, 77, 1.0);
            let fast = to_vec(auto.forward(tensor2(x.clone(), [1, cols])));
            let fast_core = q
                .view()
                .matmul_with(&x, 1, any4_core::MatmulPrecision::Int8Activations)
                .unwrap();
            assert_eq!(fast, fast_core, "{format}: Auto at M = 1 is the int8 path");
            // Auto: f32 lookup path up to M = 32, then one dequantization + the dense GEMM.
            for m in [24, 65] {
                let xb = randn(m * cols, 78, 1.0);
                let big = to_vec(auto.forward(tensor2(xb.clone(), [m, cols])));
                assert!(
                    max_rel_diff(&big, &q.matmul(&xb, m).unwrap()) < F32_SUM_TOL,
                    "{format}: Auto at M = {m}"
                );
            }
            assert!(
                max_rel_diff(&fast, &q.matmul(&x, 1).unwrap()) < 0.05,
                "{format}: int8 path far from exact"
            );
            // Dequantize: extension and portable paths both equal the core reference exactly.
            assert_eq!(to_vec(layer.weight().dequantize()), q.dequantize());
            assert_eq!(to_vec(layer.weight().dequantize_portable()), q.dequantize());
        }
    }
}

#[test]
fn three_dimensional_inputs_and_bias() {
    let (rows, cols) = (48, 256);
    let w = randn(rows * cols, 1, 0.05);
    let q = quantize_matrix(&w, [rows, cols], None, &Any4Config::new(Format::Any4)).unwrap();
    let bias = Tensor::<1>::from_data(TensorData::new(randn(rows, 2, 1.0), [rows]), &device());
    let layer = Any4Linear::from_quantized(&q, Some(bias.clone()), &device());
    let x = Tensor::<3>::from_data(
        TensorData::new(randn(2 * 5 * cols, 3, 1.0), [2, 5, cols]),
        &device(),
    );
    let y = layer.forward(x.clone());
    assert_eq!(y.dims(), [2, 5, rows]);
    let expect = x
        .reshape([10, cols])
        .matmul(layer.weight().dequantize().transpose())
        + bias.unsqueeze();
    assert!(max_rel_diff(&to_vec(y.reshape([10, rows])), &to_vec(expect)) < F32_SUM_TOL);
}

/// A kernel that ignored the table would not flip sign: encode int4 as a table, negate table,
/// scales and zeros, and the output must negate exactly.
#[test]
fn negated_table_and_scales_negate_the_output() {
    let (rows, cols) = (64, 256);
    let w = randn(rows * cols, 5, 0.05);
    let q = quantize_matrix(&w, [rows, cols], None, &Any4Config::new(Format::Int4)).unwrap();
    let neg = |v: &[f32]| v.iter().map(|x| -x).collect::<Vec<_>>();
    let flipped = QuantizedMatrix::from_parts(
        *q.config(),
        q.shape(),
        q.codes().to_vec(),
        neg(q.table()),
        neg(q.scales()),
        neg(q.zeros()),
    )
    .unwrap();
    let x = randn(3 * cols, 6, 1.0);
    let a = to_vec(layer_of(&q).forward(tensor2(x.clone(), [3, cols])));
    let b = to_vec(layer_of(&flipped).forward(tensor2(x, [3, cols])));
    // Scales negated *and* table negated: table·scale keeps its sign, zero flips. So compare
    // against the expectation computed independently, then check the full negation case.
    let both = QuantizedMatrix::from_parts(
        *q.config(),
        q.shape(),
        q.codes().to_vec(),
        neg(q.table()),
        q.scales().to_vec(),
        neg(q.zeros()),
    )
    .unwrap();
    let c = to_vec(layer_of(&both).forward(tensor2(randn(3 * cols, 6, 1.0), [3, cols])));
    for (x, y) in a.iter().zip(&c) {
        assert_eq!(*y, -*x, "table and zeros negated must negate the output");
    }
    assert_ne!(a, b, "negating the scales as well must change the output");
}

#[test]
fn gradient_flows_to_the_activation() {
    let ad = Device::flex().autodiff();
    let (rows, cols) = (32, 128);
    let w = randn(rows * cols, 9, 0.05);
    let q = quantize_matrix(&w, [rows, cols], None, &Any4Config::new(Format::Any4)).unwrap();
    let layer = Any4Linear::from_quantized(&q, None, &ad);
    let x = Tensor::<2>::from_data(TensorData::new(randn(4 * cols, 10, 1.0), [4, cols]), &ad)
        .require_grad();
    let y = layer.forward(x.clone());
    let grads =
        (y * Tensor::<2>::from_data(TensorData::new(randn(4 * rows, 11, 1.0), [4, rows]), &ad))
            .sum()
            .backward();
    let gx = to_vec(x.grad(&grads).expect("x has a gradient"));
    // dx = dy · W with dy the random weights above.
    let dy = randn(4 * rows, 11, 1.0);
    let deq = q.dequantize();
    let mut expect = vec![0.0f32; 4 * cols];
    for i in 0..4 {
        for n in 0..rows {
            for k in 0..cols {
                expect[i * cols + k] += dy[i * rows + n] * deq[n * cols + k];
            }
        }
    }
    assert!(max_rel_diff(&gx, &expect) < F32_SUM_TOL, "gradient");
}

#[test]
fn to_quantized_round_trips() {
    let w = randn(40 * 192, 12, 0.05);
    let q = quantize_matrix(
        &w,
        [40, 192],
        None,
        &Any4Config::new(Format::Any3).with_group_size(GroupSize::new(64).unwrap()),
    )
    .unwrap();
    assert_eq!(layer_of(&q).to_quantized().unwrap(), q);
}

/// A two-layer MLP written once over `QLinear`.
#[derive(Module, Debug)]
struct Mlp {
    up: QLinear,
    down: QLinear,
    lm_head: QLinear,
}
impl_qlinear_container!(Mlp { up, down, lm_head });

impl Mlp {
    fn new(seed: u64) -> Self {
        let lin = |o: usize, i: usize, s: u64| {
            QLinear::from_hf(
                tensor2(randn(o * i, s, (1.0 / i as f32).sqrt()), [o, i]),
                None,
            )
        };
        Mlp {
            up: lin(256, 128, seed),
            down: lin(128, 256, seed + 1),
            lm_head: lin(64, 128, seed + 2),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = burn::tensor::activation::gelu(self.up.forward(x));
        self.lm_head.forward(self.down.forward(h))
    }
}

/// Activations with a per-channel offset so that calibration statistics matter.
fn calib_input(m: usize, k: usize, seed: u64) -> Tensor<2> {
    let offsets = randn(k, 99, 2.0);
    let mut v = randn(m * k, seed, 1.0);
    for (i, x) in v.iter_mut().enumerate() {
        *x += offsets[i % k];
    }
    tensor2(v, [m, k])
}

#[test]
fn calibrator_records_channel_means() {
    let mut mlp = Mlp::new(1);
    let x = calib_input(16, 128, 2);
    let mut cal = Calibrator::new();
    cal.attach(&mut mlp, |_| true);
    assert!(matches!(mlp.up, QLinear::Calibrating(_)));
    let _ = mlp.forward(x.clone());
    let _ = mlp.forward(x.clone());
    let stats = cal.detach(&mut mlp);
    assert!(matches!(mlp.up, QLinear::Dense(_)));
    assert_eq!(stats.len(), 3);
    assert_eq!(stats.tokens("up"), Some(32));
    let xs = to_vec(x);
    let mean = stats.mean("up").unwrap();
    for j in 0..128 {
        let m: f32 = (0..16).map(|i| xs[i * 128 + j]).sum::<f32>() / 16.0;
        assert!((mean[j] - m).abs() < 1e-5, "channel {j}");
    }
}

#[test]
fn pass_skips_excluded_layers_and_stays_close() {
    let x = calib_input(24, 128, 3);
    let dense = Mlp::new(4);
    let y_dense = to_vec(dense.forward(x.clone()));
    let mut errs = Vec::new();
    for format in [Format::Int4, Format::Nf4, Format::Any4] {
        let mut model = Mlp::new(4);
        let mut cal = Calibrator::new();
        cal.attach(&mut model, |_| true);
        let _ = model.forward(x.clone());
        let stats = cal.detach(&mut model);
        let cfg = QuantizeConfig::new(Any4Config::new(format).with_scaling(Scaling::Asymmetric));
        let (model, report) = quantize_model(model, &cfg, Some(&stats)).unwrap();
        assert!(model.up.is_quantized() && model.down.is_quantized());
        assert!(
            !model.lm_head.is_quantized(),
            "lm_head is excluded by default"
        );
        assert_eq!(report.skipped, vec!["lm_head".to_string()]);
        assert_eq!(report.layers.len(), 2);
        let y = to_vec(model.forward(x.clone()));
        let err: f32 = y
            .iter()
            .zip(&y_dense)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            / y_dense.iter().map(|b| b * b).sum::<f32>();
        assert!(err < 0.02, "{format}: relative output error {err}");
        errs.push(err);
    }
    assert!(
        errs[2] <= errs[0],
        "any4 {} should not be worse than int4 {}",
        errs[2],
        errs[0]
    );
}

#[test]
fn pass_reports_missing_statistics_and_bad_patterns() {
    let model = Mlp::new(5);
    let empty = CalibrationStats::default();
    let err = quantize_model(model, &QuantizeConfig::default(), Some(&empty)).unwrap_err();
    assert!(
        matches!(err, Error::MissingStats(ref p) if p == "up"),
        "{err}"
    );
    assert!(matches!(
        QuantizeConfig::default().exclude(""),
        Err(Error::Pattern(_))
    ));
    // NaN weights name the layer.
    let mut model = Mlp::new(6);
    let mut w = randn(256 * 128, 7, 0.1);
    w[5] = f32::NAN;
    model.up = QLinear::from_hf(tensor2(w, [256, 128]), None);
    let err = quantize_model(model, &QuantizeConfig::default(), None).unwrap_err();
    assert!(
        err.to_string().contains("layer `up`") && err.to_string().contains("row 0, column 5"),
        "{err}"
    );
}

/// Three residual blocks, for sequential calibration.
#[derive(Module, Debug)]
struct Blocks {
    layers: Vec<QLinear>,
    lm_head: QLinear,
}
impl_qlinear_container!(Blocks { layers, lm_head });

impl BlockwiseModel for Blocks {
    type Input = Tensor<2>;
    type State = Tensor<2>;
    fn num_blocks(&self) -> usize {
        self.layers.len()
    }
    fn block_path(&self, i: usize) -> String {
        format!("layers.{i}")
    }
    fn embed(&self, input: &Tensor<2>) -> Tensor<2> {
        input.clone()
    }
    fn block_forward(&self, i: usize, h: Tensor<2>) -> Tensor<2> {
        h.clone() + burn::tensor::activation::relu(self.layers[i].forward(h))
    }
    fn head_forward(&self, h: Tensor<2>) {
        let _ = self.lm_head.forward(h);
    }
}

#[test]
fn sequential_pass_quantizes_block_by_block() {
    let lin = |s: u64| QLinear::from_hf(tensor2(randn(128 * 128, s, 0.09), [128, 128]), None);
    let model = Blocks {
        layers: vec![lin(1), lin(2), lin(3)],
        lm_head: lin(4),
    };
    let x = calib_input(32, 128, 5);
    let cfg = QuantizeConfig::new(Any4Config::new(Format::Any4))
        .include("layers.*")
        .unwrap();
    let (model, report) = quantize_model_sequential(model, &cfg, &x).unwrap();
    assert!(model.layers.iter().all(QLinear::is_quantized));
    assert!(!model.lm_head.is_quantized());
    let paths: Vec<&str> = report.layers.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(paths, ["layers.0", "layers.1", "layers.2"]);
    assert!(
        report
            .layers
            .iter()
            .all(|l| l.calib_tokens == Some(32) && l.weighted_rel_mse.is_some())
    );
    let text = report.to_string();
    assert!(text.contains("3 layers quantized"), "{text}");
}

fn quantized_mlp(seed: u64) -> Mlp {
    let x = calib_input(16, 128, 3);
    let mut model = Mlp::new(seed);
    let mut cal = Calibrator::new();
    cal.attach(&mut model, |_| true);
    let _ = model.forward(x);
    let stats = cal.detach(&mut model);
    let cfg = QuantizeConfig::new(Any4Config::new(Format::Any4));
    quantize_model(model, &cfg, Some(&stats)).unwrap().0
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("any4-burn-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn checkpoint_save_load_is_bit_identical() {
    let dir = temp_dir("roundtrip");
    let file = dir.join("model.safetensors");
    let mut model = quantized_mlp(20);
    let x = calib_input(5, 128, 21);
    let before = to_vec(model.forward(x.clone()));
    let cfg = save(&mut model, &file).unwrap();
    assert_eq!(cfg.layers.len(), 2);
    assert_eq!(cfg.modules_not_quantized, vec!["lm_head".to_string()]);
    assert_eq!(cfg.layers["up"].table, "per-row");
    let ckpt = Checkpoint::open(&file).unwrap();
    assert_eq!(ckpt.config(), &cfg);
    // Load into a differently initialised skeleton: every parameter must come from the file.
    let loaded = ckpt.load_into(Mlp::new(999)).unwrap();
    assert!(loaded.up.is_quantized() && !loaded.lm_head.is_quantized());
    assert_eq!(to_vec(loaded.forward(x)), before);
    // Dense linear weights are stored in PyTorch layout [out, in].
    let infos = ckpt.tensor_infos().unwrap();
    let lm = infos.iter().find(|t| t.0 == "lm_head.weight").unwrap();
    assert_eq!(lm.2, vec![64, 128]);
    let qw = infos.iter().find(|t| t.0 == "up.qweight").unwrap();
    assert_eq!(
        (qw.1, qw.2.clone()),
        (safetensors::Dtype::U32, vec![256, 16])
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn expect_checkpoint_error(file: &std::path::Path, needle: &str) {
    let err = Checkpoint::open(file)
        .and_then(|c| c.load_into(Mlp::new(1)))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
    assert!(
        err.to_string().contains(needle),
        "`{err}` should mention `{needle}`"
    );
}

/// Re-serialize `src` into `dst`, editing its tensors and metadata.
fn rewrite(
    src: &std::path::Path,
    dst: &std::path::Path,
    drop: &str,
    edit_meta: impl Fn(&str) -> String,
) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut md = meta.metadata().clone().unwrap();
    let q = md["quantization_config"].clone();
    md.insert("quantization_config".into(), edit_meta(&q));
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect();
    safetensors::serialize_to_file(tensors, Some(md), dst).unwrap();
}

#[test]
fn checkpoint_errors_name_what_is_wrong() {
    let dir = temp_dir("errors");
    let good = dir.join("good.safetensors");
    save(&mut quantized_mlp(30), &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    expect_checkpoint_error(&truncated, "truncated");

    let garbage = dir.join("garbage.safetensors");
    let mut g = bytes.clone();
    g[10..40].copy_from_slice(&[b'#'; 30]);
    std::fs::write(&garbage, &g).unwrap();
    expect_checkpoint_error(&garbage, "not a valid safetensors file");

    let missing = dir.join("missing.safetensors");
    rewrite(&good, &missing, "down.scales", |q| q.to_string());
    expect_checkpoint_error(&missing, "missing tensor `down.scales`");

    let newer = dir.join("newer.safetensors");
    rewrite(&good, &newer, "", |q| {
        q.replace("\"schema_version\":1", "\"schema_version\":99")
    });
    expect_checkpoint_error(&newer, "schema version 99");

    let bad_cfg = dir.join("badcfg.safetensors");
    rewrite(&good, &bad_cfg, "", |q| {
        q.replacen("\"group_size\":128", "\"group_size\":100", 1)
    });
    expect_checkpoint_error(&bad_cfg, "invalid quantization_config");

    // A quantization_config that does not describe the tensors is refused at open, so what
    // `config()` (and `any4 inspect`) reports is backed by the file.
    let lying = dir.join("lying.safetensors");
    rewrite(&good, &lying, "", |q| {
        q.replacen("\"shape\":[256,128]", "\"shape\":[256,256]", 1)
    });
    let err = Checkpoint::open(&lying)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer `up`: tensor `up.qweight` is U32 [256, 16], expected U32 [256, 32]"),
        "{err}"
    );
    let table = dir.join("table.safetensors");
    rewrite(&good, &table, "", |q| {
        q.replacen("\"table\":\"per-row\"", "\"table\":\"shared\"", 1)
    });
    let err = Checkpoint::open(&table)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("table `shared` does not match format any4"),
        "{err}"
    );

    let err = Checkpoint::open(&dir.join("nope.safetensors"))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("nope.safetensors"),
        "{err}"
    );

    // Wrong architecture: a model whose `up` layer has another shape.
    let mut other = Mlp::new(1);
    other.up = QLinear::from_hf(tensor2(randn(128 * 128, 1, 0.1), [128, 128]), None);
    let err = Checkpoint::open(&good)
        .unwrap()
        .load_into(other)
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("layer `up` is [128, 128] in the model but [256, 128]"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn failed_write_leaves_the_previous_checkpoint_intact() {
    let dir = temp_dir("atomic");
    let file = dir.join("model.safetensors");
    save(&mut quantized_mlp(40), &file).unwrap();
    let before = std::fs::read(&file).unwrap();
    let err = write_atomically(&file, |tmp| {
        std::fs::write(tmp, b"partial").unwrap();
        Err(Error::Data("simulated failure mid-write".into()))
    })
    .unwrap_err();
    assert!(err.to_string().contains("simulated"));
    assert_eq!(std::fs::read(&file).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary file left behind: {leftovers:?}"
    );
    Checkpoint::open(&file)
        .unwrap()
        .load_into(Mlp::new(2))
        .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Readers of a checkpoint that is being replaced (open, load, run, in a loop) always get the
/// old model or the new one, never a mix or a torn file: saves rename a complete file over the
/// old one and a reader's mapping keeps the file it opened.
#[test]
fn concurrent_readers_see_the_old_or_the_new_checkpoint() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = temp_dir("concurrent");
    let file = dir.join("model.safetensors");
    let (mut a, mut b) = (quantized_mlp(50), quantized_mlp(51));
    let x = calib_input(3, 128, 52);
    let (ya, yb) = (to_vec(a.forward(x.clone())), to_vec(b.forward(x)));
    assert_ne!(ya, yb);
    save(&mut a, &file).unwrap();
    let done = AtomicBool::new(false);
    let (seen_a, seen_b) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut na, mut nb) = (0usize, 0usize);
            while !done.load(Ordering::Acquire) || na + nb < 4 {
                let m = Checkpoint::open(&file)
                    .and_then(|c| c.load_into(Mlp::new(3)))
                    .unwrap_or_else(|e| panic!("a reader saw a broken checkpoint: {e}"));
                let y = to_vec(m.forward(calib_input(3, 128, 52)));
                if y == ya {
                    na += 1;
                } else if y == yb {
                    nb += 1;
                } else {
                    panic!("a reader saw neither the old nor the new model");
                }
            }
            (na, nb)
        });
        for i in 0..12 {
            save(if i % 2 == 0 { &mut b } else { &mut a }, &file).unwrap();
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    eprintln!("loads: {seen_a} old, {seen_b} new");
    assert!(seen_a + seen_b >= 4, "{seen_a} + {seen_b} loads");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Backend-parametrized checks: written once, run on every device by `backend_tests!`.
// ---------------------------------------------------------------------------------------------

/// Named tolerance of the kernels against any4-core's exact f32 reference, relative to the
/// largest output: both accumulate in f32 over ≤ 576 products but in different orders (the
/// GEMV factors scale and zero out of each group), a difference of a few ulps of the row sum. A
/// wrong code, table entry or group changes an output by ~1e-3 of that scale or more.
const KERNEL_REL_TOL: f32 = 1e-4;

/// Dequantize: `table·scale + zero` may be fused (one rounding) on a device and not on the CPU,
/// so values may differ by an ulp of `|table·scale| + |zero|`.
const DEQUANT_ULPS: f32 = 2.0;

/// Half-precision activations: f16 keeps 11 significant bits, bf16 8, in the input and output.
fn half_tol(dtype: burn::tensor::FloatDType) -> f32 {
    match dtype {
        burn::tensor::FloatDType::BF16 => 2e-2,
        _ => 4e-3,
    }
}

fn tensor_on(v: Vec<f32>, shape: [usize; 2], dev: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), dev)
}

/// `(rows, cols, group)`: square, non-square with small groups, a short last group
/// (576 = 4·128 + 64), and per-row groups (0).
const SHAPES: [(usize, usize, usize); 4] = [
    (128, 128, 128),
    (200, 256, 32),
    (77, 576, 128),
    (48, 160, 0),
];

/// Batches: GEMV (≤ 8) and GEMM (16, 33: not a tile multiple) on Cube devices.
const BATCHES: [usize; 6] = [1, 2, 3, 8, 16, 33];

fn group_of(group: usize) -> GroupSize {
    if group == 0 {
        GroupSize::PER_ROW
    } else {
        GroupSize::new(group).expect("supported group size")
    }
}

fn quantized(format: Format, rows: usize, cols: usize, group: usize) -> QuantizedMatrix {
    let w = randn(rows * cols, (rows * cols) as u64, 0.05);
    let cfg = Any4Config::new(format).with_group_size(group_of(group));
    quantize_matrix(&w, [rows, cols], None, &cfg).unwrap()
}

/// `QLinear`/`Any4Linear` outputs against `QuantizedMatrix::matmul`, every format, shape, batch.
fn check_matches_core(dev: &Device) {
    assert_eq!(route(dev), Route::Extension, "{dev:?} takes the extension");
    for format in Format::ALL {
        for (rows, cols, group) in SHAPES {
            let q = quantized(format, rows, cols, group);
            let mut layer = Any4Linear::from_quantized(&q, None, dev);
            layer.cpu = CpuMatmul::Exact;
            let qlinear = QLinear::Quant(layer);
            for m in BATCHES {
                let x = randn(m * cols, 7 + m as u64, 1.0);
                let expect = q.matmul(&x, m).unwrap();
                let got = to_vec(qlinear.forward(tensor_on(x, [m, cols], dev)));
                let err = max_rel_diff(&got, &expect);
                assert!(
                    err <= KERNEL_REL_TOL,
                    "{dev:?} {format} {rows}x{cols} g{group} m{m}: relative error {err:.2e}"
                );
            }
        }
    }
}

/// `|table·scale| + |zero|` per weight: the magnitude a dequantized value is rounded at.
fn dequant_scale(q: &QuantizedMatrix) -> Vec<f32> {
    let [rows, cols] = q.shape();
    let (g, groups) = (q.group_len(), q.groups());
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let gi = r * groups + c / g;
            let t = q.row_table(r)[q.code(r, c) as usize];
            out.push((t * q.scales()[gi]).abs() + q.zeros()[gi].abs());
        }
    }
    out
}

/// The extension's dequantize equals any4-core's (up to an ulp of fused rounding).
fn check_dequantize(dev: &Device) {
    for format in [Format::Any4, Format::Int4, Format::Nf4] {
        for (rows, cols, group) in SHAPES {
            let q = quantized(format, rows, cols, group);
            let got = to_vec(
                Any4Linear::from_quantized(&q, None, dev)
                    .weight()
                    .dequantize(),
            );
            let want = q.dequantize();
            assert_eq!(got.len(), want.len());
            for (i, ((a, b), s)) in got.iter().zip(&want).zip(dequant_scale(&q)).enumerate() {
                assert!(
                    (a - b).abs() <= DEQUANT_ULPS * f32::EPSILON * s,
                    "{dev:?} {format} {rows}x{cols} g{group}: w[{i}] = {a}, core {b}"
                );
            }
        }
    }
}

/// int4 as a table: negating table and zeros must negate the output exactly; negating the
/// scales as well must not (a kernel that used the code as the value would fail both).
fn check_negation(dev: &Device) {
    let (rows, cols) = (64, 256);
    let q = quantize_matrix(
        &randn(rows * cols, 5, 0.05),
        [rows, cols],
        None,
        &Any4Config::new(Format::Int4),
    )
    .unwrap();
    let neg = |v: &[f32]| v.iter().map(|x| -x).collect::<Vec<_>>();
    let with = |table: Vec<f32>, scales: Vec<f32>, zeros: Vec<f32>| {
        let m = QuantizedMatrix::from_parts(
            *q.config(),
            q.shape(),
            q.codes().to_vec(),
            table,
            scales,
            zeros,
        )
        .unwrap();
        let mut l = Any4Linear::from_quantized(&m, None, dev);
        l.cpu = CpuMatmul::Exact;
        l
    };
    let base = with(q.table().to_vec(), q.scales().to_vec(), q.zeros().to_vec());
    let negated = with(neg(q.table()), q.scales().to_vec(), neg(q.zeros()));
    let all = with(neg(q.table()), neg(q.scales()), neg(q.zeros()));
    for m in [1usize, 3, 16] {
        let x = randn(m * cols, 6, 1.0);
        let a = to_vec(base.forward(tensor_on(x.clone(), [m, cols], dev)));
        assert!(max_rel_diff(&a, &q.matmul(&x, m).unwrap()) <= KERNEL_REL_TOL);
        let b = to_vec(negated.forward(tensor_on(x.clone(), [m, cols], dev)));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(*y, -*x, "{dev:?} m{m}: -table, -zeros must negate y[{i}]");
        }
        let c = to_vec(all.forward(tensor_on(x, [m, cols], dev)));
        assert_ne!(a, c, "{dev:?} m{m}: negating the scales too must change y");
    }
}

/// Named tolerance of the gradient on Cube devices, relative to the largest `dx`: the backward
/// pass is Burn's own f32 matmul `dy · W` on the dequantized weight, and on CUDA Burn runs f32
/// matmuls on tensor cores at TF32 precision: each operand keeps 10 explicit mantissa bits
/// (rounded by ≤ 2^-11 ≈ 4.9e-4), so a product is off by up to ~2^-10 ≈ 1e-3 of its size and a
/// sum of 32 of them, relative to the largest output, by up to ~1e-3 (3.2e-4 measured on an H200
/// against `KERNEL_REL_TOL`'s 1e-4). A wrong weight or transposition is off by O(1).
#[cfg(any(feature = "cpu", feature = "wgpu", feature = "cuda"))]
const TF32_MATMUL_TOL: f32 = 2e-3;

/// Autodiff on the device: `dx = dy · W` through the extension's backward.
fn check_gradient(dev: &Device) {
    let ad = dev.clone().autodiff();
    let (rows, cols, m) = (32, 128, 4);
    let q = quantize_matrix(
        &randn(rows * cols, 9, 0.05),
        [rows, cols],
        None,
        &Any4Config::new(Format::Any4),
    )
    .unwrap();
    let layer = Any4Linear::from_quantized(&q, None, &ad);
    let x = tensor_on(randn(m * cols, 10, 1.0), [m, cols], &ad).require_grad();
    let dy = randn(m * rows, 11, 1.0);
    let y = layer.forward(x.clone());
    let grads = (y * tensor_on(dy.clone(), [m, rows], &ad)).sum().backward();
    let gx = to_vec(x.grad(&grads).expect("x has a gradient"));
    let deq = q.dequantize();
    let mut expect = vec![0.0f32; m * cols];
    for i in 0..m {
        for n in 0..rows {
            for k in 0..cols {
                expect[i * cols + k] += dy[i * rows + n] * deq[n * cols + k];
            }
        }
    }
    let err = max_rel_diff(&gx, &expect);
    // Flex multiplies in f32 on the CPU; CubeCL runtimes may use TF32 tensor cores.
    #[allow(unused_imports)]
    use burn::backend::DispatchDevice;
    let tol = match dev.clone().as_dispatch() {
        #[cfg(any(feature = "cpu", feature = "wgpu", feature = "cuda"))]
        DispatchDevice::Cube(_) => TF32_MATMUL_TOL,
        #[allow(unreachable_patterns)]
        _ => KERNEL_REL_TOL,
    };
    assert!(err <= tol, "{dev:?}: gradient error {err:.2e} > {tol:.0e}");
}

/// Whether Burn itself can round-trip f32 → `dtype` → f32 on `dev`. The CubeCL CPU runtime built
/// against the LLVM 22 shim (docs/BUILD.md) reports bf16 support but cannot JIT Burn's own
/// f32 → bf16 cast (`__truncsfbf2` is missing), so that case is skipped as a platform limit, not
/// an any4 one.
fn casts_exactly(dev: &Device, dtype: burn::tensor::FloatDType) -> bool {
    let v = vec![1.5f32, -2.0, 0.25, 96.0];
    let t = Tensor::<1>::from_data(TensorData::new(v.clone(), [4]), dev);
    to_vec(t.cast(dtype).cast(burn::tensor::FloatDType::F32)) == v
}

/// f16 / bf16 activations: computed in f32, returned in the input's dtype.
fn check_half_inputs(dev: &Device) {
    use burn::tensor::FloatDType;
    let (rows, cols) = (96, 256);
    let q = quantized(Format::Any4, rows, cols, 64);
    let mut layer = Any4Linear::from_quantized(&q, None, dev);
    layer.cpu = CpuMatmul::Exact;
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        if !dev.supports_dtype(dtype) || !casts_exactly(dev, dtype) {
            eprintln!("{dev:?}: Burn cannot use {dtype:?} here, skipped");
            continue;
        }
        for m in [1usize, 16] {
            let x = randn(m * cols, 12, 1.0);
            let xh = tensor_on(x, [m, cols], dev).cast(dtype);
            // The reference sees the same rounded activations.
            let expect = q.matmul(&to_vec(xh.clone()), m).unwrap();
            let y = layer.forward(xh);
            assert_eq!(
                y.dtype(),
                dtype.into(),
                "{dev:?}: output keeps the input dtype"
            );
            let err = max_rel_diff(&to_vec(y), &expect);
            assert!(
                err <= half_tol(dtype),
                "{dev:?} {dtype:?} m{m}: error {err:.2e}"
            );
        }
    }
}

/// Inconsistent tensors reach the backend (the public API checks only `x` against the shape):
/// every backend refuses them with a message naming the tensor, never reads out of bounds.
fn check_inconsistent_weight_panics(dev: &Device) {
    let q = quantized(Format::Int4, 32, 128, 32);
    let mut bad = Any4Linear::from_quantized(&q, None, dev).weight();
    bad.scales = bad.scales.slice([0..32, 0..2]);
    let x = tensor_on(randn(128, 1, 1.0), [1, 128], dev);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bad.matmul(x)))
        .expect_err("a [32, 2] scales tensor for 4 groups must be refused");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("scales"),
        "{dev:?}: panic should name the scales: {msg}"
    );
}

macro_rules! backend_tests {
    ($name:ident, $device:expr) => {
        mod $name {
            use super::*;

            fn dev() -> Device {
                $device
            }

            #[test]
            fn matches_core_reference() {
                check_matches_core(&dev());
            }

            #[test]
            fn dequantize_equals_core() {
                check_dequantize(&dev());
            }

            #[test]
            fn negated_table_and_zeros_negate_the_output() {
                check_negation(&dev());
            }

            #[test]
            fn gradient_flows_to_the_activation() {
                check_gradient(&dev());
            }

            #[test]
            fn half_precision_inputs() {
                check_half_inputs(&dev());
            }

            #[test]
            fn inconsistent_weight_panics_with_its_name() {
                check_inconsistent_weight_panics(&dev());
            }
        }
    };
}

backend_tests!(flex, Device::flex());

// CubeCL runtimes. Fusion is all or nothing per build (burn-cubecl's `fusion` feature decides
// what `burn::backend::Cube` is), so the same checks run as `cube_*` in the project's builds and
// as `fusion_*` with `--features fusion`: `Fusion<CubeBackend>`, as in an app on Burn's defaults.
#[cfg(all(feature = "cpu", not(feature = "fusion")))]
backend_tests!(cube_cpu, Device::cpu());
#[cfg(all(feature = "cpu", feature = "fusion"))]
backend_tests!(fusion_cpu, Device::cpu());

#[cfg(all(feature = "wgpu", not(feature = "fusion")))]
backend_tests!(
    cube_wgpu,
    Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
);
#[cfg(all(feature = "wgpu", feature = "fusion"))]
backend_tests!(
    fusion_wgpu,
    Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
);

#[cfg(all(feature = "cuda", not(feature = "fusion")))]
backend_tests!(cube_cuda, Device::cuda(0));
#[cfg(all(feature = "cuda", feature = "fusion"))]
backend_tests!(fusion_cuda, Device::cuda(0));

/// The `cube_*` / `fusion_*` names above say which backend ran: check that they tell the truth.
#[cfg(feature = "cube")]
#[test]
fn cube_is_fused_exactly_with_the_fusion_feature() {
    let name = std::any::type_name::<burn::backend::Cube>();
    assert_eq!(
        name.contains("Fusion"),
        cfg!(feature = "fusion"),
        "burn::backend::Cube is {name}"
    );
}

/// Under fusion an any4 matmul is one opaque custom op (the Cube impl's casts and activation
/// quantization run inside it, never as ops of their own), and so is a dequantize: the fusion
/// stream sees exactly one op read the activation or the codes per any4 call, and runs it alone.
#[cfg(all(feature = "fusion", any(feature = "wgpu", feature = "cpu")))]
#[test]
fn fused_any4_ops_are_one_custom_op_each() {
    use burn_fusion::custom::OperationIr;
    use burn_fusion::observer::{BlockOperations, FusionObservation, FusionObserver};
    use std::sync::{Arc, Mutex};

    #[cfg(feature = "wgpu")]
    let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    #[cfg(not(feature = "wgpu"))]
    let dev = Device::cpu();
    // Shapes no other test uses (the observer sees every test thread's ops): the activation
    // `[m, cols]` and the codes `[rows, cols / 8]`.
    let (rows, cols, m) = (40, 136, 3);
    let watched = [vec![m, cols], vec![rows, cols / 8]];

    /// Every registered op that reads a watched tensor: its kind (a custom op's id), its input
    /// and output shapes; and the number of ops in each block that runs one of our custom ops.
    /// An op as recorded: kind, input shapes, output shapes.
    type Recorded = (String, Vec<Vec<usize>>, Vec<Vec<usize>>);
    struct Seen {
        watched: [Vec<usize>; 2],
        registered: Mutex<Vec<Recorded>>,
        blocks: Mutex<Vec<usize>>,
    }
    impl Seen {
        fn reads_watched(&self, op: &OperationIr) -> bool {
            !matches!(op, OperationIr::Drop(_))
                && op.inputs().any(|t| {
                    self.watched
                        .iter()
                        .any(|w| t.shape.as_slice() == w.as_slice())
                })
        }
    }
    impl FusionObserver for Seen {
        fn registered(&self, op: &OperationIr) {
            if self.reads_watched(op) {
                let kind = match op {
                    OperationIr::Custom(c) => c.id.clone(),
                    _ => "tensor op".to_string(),
                };
                let shapes = |ts: Vec<&burn_fusion::custom::TensorIr>| {
                    ts.iter().map(|t| t.shape.as_slice().to_vec()).collect()
                };
                let entry = (
                    kind,
                    shapes(op.inputs().collect()),
                    shapes(op.outputs().collect()),
                );
                self.registered.lock().unwrap().push(entry);
            }
        }
        fn block_starts(&self, block: BlockOperations<'_>) {
            let any4 =
                |op: &OperationIr| matches!(op, OperationIr::Custom(_)) && self.reads_watched(op);
            if block.iter().any(any4) {
                self.blocks.lock().unwrap().push(block.iter().len());
            }
        }
        fn block_ran(&self) {}
    }

    let q = quantized(Format::Any4, rows, cols, 64);
    let bias = randn(rows, 3, 1.0);
    let bias_t = Tensor::<1>::from_data(TensorData::new(bias.clone(), [rows]), &dev);
    let mut layer = Any4Linear::from_quantized(&q, Some(bias_t), &dev);
    layer.cpu = CpuMatmul::Exact;
    let xs = randn(m * cols, 4, 1.0);
    let x = tensor_on(xs.clone(), [m, cols], &dev);
    dev.sync().unwrap();
    let seen = Arc::new(Seen {
        watched,
        registered: Mutex::new(Vec::new()),
        blocks: Mutex::new(Vec::new()),
    });
    let observation = FusionObservation::new(seen.clone());
    // Element-wise work on both sides, which fusion would like to fuse with the matmul.
    let y = to_vec(layer.forward(x.mul_scalar(0.5)).tanh());
    let w = to_vec(layer.weight().dequantize());
    dev.sync().unwrap();
    drop(observation);

    let half: Vec<f32> = xs.iter().map(|v| v * 0.5).collect();
    let expect: Vec<f32> = q
        .matmul(&half, m)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| (v + bias[i % rows]).tanh())
        .collect();
    let err = max_rel_diff(&y, &expect);
    assert!(
        err <= KERNEL_REL_TOL,
        "fused forward: relative error {err:.2e}"
    );
    for (i, ((a, b), s)) in w
        .iter()
        .zip(q.dequantize())
        .zip(dequant_scale(&q))
        .enumerate()
    {
        assert!(
            (a - b).abs() <= DEQUANT_ULPS * f32::EPSILON * s,
            "fused dequantize: w[{i}] = {a}, core {b}"
        );
    }
    let registered = seen.registered.lock().unwrap().clone();
    let op = |kind: &str, inputs: &[&[usize]], outputs: &[&[usize]]| {
        let v = |ts: &[&[usize]]| ts.iter().map(|t| t.to_vec()).collect::<Vec<_>>();
        (kind.to_string(), v(inputs), v(outputs))
    };
    let (x, codes, table, groups) = ([m, cols], [rows, cols / 8], [rows, 16], [rows, 3]);
    // The int8 tables (`table_i8`, INT8_TABLE_WORDS u32 per row) travel with the weight.
    let table_i8 = [rows, any4_core::INT8_TABLE_WORDS];
    let weight: [&[usize]; 5] = [&codes, &table, &groups, &groups, &table_i8];
    let matmul_inputs = [&x, &codes, &table, &groups, &groups, &table_i8].map(|t| t.as_slice());
    assert_eq!(
        registered,
        vec![
            op("tensor op", &[&x], &[&x]), // the test's own `x * 0.5`
            op("any4_matmul", &matmul_inputs, &[&[m, rows]]),
            op("any4_dequantize", &weight, &[&[rows, cols]]),
        ],
        "one custom op per any4 call (x and the weight's 5 tensors in, one tensor out), and \
         nothing else reads the activation or the codes"
    );
    assert_eq!(
        *seen.blocks.lock().unwrap(),
        vec![1, 1],
        "each any4 op runs as a block of its own"
    );
}
