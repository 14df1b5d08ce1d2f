//! Gram-matrix calibration, error feedback and activation-aware scales through the pass.

use super::*;
use any4_core::{ActScaleConfig, Error as CoreError, GptqConfig, Method};

/// q and k read the same input, o reads another (an attention block's shape of sharing).
#[derive(Module, Debug)]
struct Shared {
    q: QLinear,
    k: QLinear,
    o: QLinear,
}
impl_qlinear_container!(Shared { q, k, o });

impl Shared {
    fn new(seed: u64) -> Self {
        let lin = |s: u64| QLinear::from_hf(tensor2(randn(128 * 128, s, 0.09), [128, 128]), None);
        Shared {
            q: lin(seed),
            k: lin(seed + 1),
            o: lin(seed + 2),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.q.forward(x.clone()) * self.k.forward(x);
        self.o.forward(h)
    }
}

/// Layers reading the same tensor share one Gram matrix (not two copies), and it equals XᵀX
/// over every forward; a layer with another input gets its own.
#[test]
fn gram_matrices_are_shared_by_identical_inputs() {
    let mut model = Shared::new(1);
    let (x1, x2) = (calib_input(20, 128, 2), calib_input(12, 128, 3));
    let mut cal = Calibrator::with_gram(u64::MAX);
    cal.attach(&mut model, |_| true);
    let _ = model.forward(x1.clone());
    let _ = model.forward(x2.clone());
    let stats = cal.detach(&mut model);
    let (q, k, o) = (
        stats.gram("q").unwrap().unwrap(),
        stats.gram("k").unwrap().unwrap(),
        stats.gram("o").unwrap().unwrap(),
    );
    assert!(
        std::sync::Arc::ptr_eq(q, k),
        "q and k share their Gram matrix"
    );
    assert!(!std::sync::Arc::ptr_eq(q, o));
    assert_eq!(stats.gram_bytes(), (2, 2 * any4_core::Gram::bytes(128)));
    assert_eq!(q.tokens(), 32);
    let xs: Vec<f32> = [to_vec(x1), to_vec(x2)].concat();
    let h = q.matrix();
    for (i, j) in [(0, 0), (3, 77), (127, 5)] {
        let direct: f64 = (0..32)
            .map(|t| xs[t * 128 + i] as f64 * xs[t * 128 + j] as f64)
            .sum();
        assert!((h[i * 128 + j] - direct).abs() < 1e-9 * direct.abs().max(1.0));
    }
}

/// Past the byte budget the recording stops and the pass names the layer and the budget.
#[test]
fn gram_budget_is_refused_clearly() {
    let mut model = Shared::new(4);
    let mut cal = Calibrator::with_gram(any4_core::Gram::bytes(128) + 10);
    cal.attach(&mut model, |_| true);
    let _ = model.forward(calib_input(8, 128, 5));
    let stats = cal.detach(&mut model);
    assert!(matches!(
        stats.gram_error(),
        Some(CoreError::GramTooLarge { k: 128, .. })
    ));
    let cfg = QuantizeConfig::new(Any4Config::new(Format::Any4))
        .with_method(Method::Gptq(GptqConfig::default()));
    let err = quantize_model(model, &cfg, Some(&stats))
        .unwrap_err()
        .to_string();
    assert!(err.contains("budget") && err.contains("K = 128"), "{err}");
}

/// Error feedback needs Gram matrices: a first-order calibration is refused by name.
#[test]
fn error_feedback_without_gram_is_refused() {
    let mut model = Shared::new(6);
    let mut cal = Calibrator::new();
    cal.attach(&mut model, |_| true);
    let _ = model.forward(calib_input(8, 128, 7));
    let stats = cal.detach(&mut model);
    let cfg = QuantizeConfig::new(Any4Config::new(Format::Int4))
        .with_method(Method::Gptq(GptqConfig::default()));
    let err = quantize_model(model, &cfg, Some(&stats))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no calibration Gram matrix for layer `q`"),
        "{err}"
    );
}

fn calibrated(cfg: &QuantizeConfig, seed: u64) -> (Shared, CalibrationStats) {
    let mut model = Shared::new(seed);
    let mut cal = cfg.calibrator();
    cal.attach(&mut model, |_| true);
    let _ = model.forward(calib_input(400, 128, seed + 10));
    let stats = cal.detach(&mut model);
    (model, stats)
}

/// Through the pass, error feedback lowers every layer's output error on the calibration
/// tokens against round-to-nearest, and activation scales (stored as an input multiplier) keep
/// the model's function and survive a checkpoint round trip bit for bit.
#[test]
fn error_feedback_and_act_scales_through_the_pass() {
    let any4 = Any4Config::new(Format::Any4);
    let rtn_cfg = QuantizeConfig {
        measure_output_error: true,
        ..QuantizeConfig::new(any4)
    };
    let gptq_cfg = rtn_cfg
        .clone()
        .with_method(Method::Gptq(GptqConfig::default()));
    let (model, stats) = calibrated(&rtn_cfg, 20);
    let (_, rtn) = quantize_model(model, &rtn_cfg, Some(&stats)).unwrap();
    let (model, stats) = calibrated(&gptq_cfg, 20);
    let (_, gptq) = quantize_model(model, &gptq_cfg, Some(&stats)).unwrap();
    for (r, g) in rtn.layers.iter().zip(&gptq.layers) {
        let (a, b) = (r.output_rel_err.unwrap(), g.output_rel_err.unwrap());
        assert!(b < a, "{}: gptq {b} vs rtn {a}", g.path);
    }

    let scaled_cfg = gptq_cfg.with_act_scale(Some(ActScaleConfig {
        grid: 4,
        sample_rows: 32,
    }));
    let (model, stats) = calibrated(&scaled_cfg, 20);
    let x = calib_input(6, 128, 99);
    let dense = to_vec(model.forward(x.clone()));
    let (mut model, report) = quantize_model(model, &scaled_cfg, Some(&stats)).unwrap();
    let QLinear::Quant(q) = &model.q else {
        panic!("q is quantized")
    };
    assert!(q.input_scale.is_some(), "scales are searched and stored");
    let out = to_vec(model.forward(x.clone()));
    assert!(
        max_rel_diff(&out, &dense) < 0.1,
        "{}",
        max_rel_diff(&out, &dense)
    );
    assert!(report.layers.iter().all(|l| l.output_rel_err.is_some()));

    let dir = temp_dir("act-scale");
    let file = dir.join("model.safetensors");
    let meta = save(&mut model, &file).unwrap();
    assert!(meta.layers["q"].input_scale && meta.layers["o"].input_scale);
    let loaded = Checkpoint::open(&file)
        .unwrap()
        .load_into(Shared::new(999))
        .unwrap();
    assert_eq!(to_vec(loaded.forward(x)), out);
    std::fs::remove_dir_all(dir).unwrap();
}
