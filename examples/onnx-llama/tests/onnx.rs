//! The ONNX-imported tiny Llama against the hand-written one: logits, and any4 perplexity by
//! both routes (reconstructed weights; QLinear on the any4 kernels) with the same seed and
//! calibration statistics.

use any4_burn::{CALIBRATION_PROMPT, QuantizeConfig, quantize_model, reconstruct_linears_as};
use any4_llm::{PerplexityConfig, load_pretrained, perplexity, token_tensor};
use burn::tensor::{Device, Int, Tensor, TensorData};
use onnx_llama::{HfNames, any4, dense, hf_path, weights};

fn tiny_llama() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama")
}

#[test]
fn imported_logits_match_transformers() {
    let device = Device::flex();
    let model = dense::Model::from_file(weights(), &device);
    let text = std::fs::read_to_string(tiny_llama().join("reference_logits.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<i64> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let n = ids.len();
    let logits = model
        .forward(Tensor::<2, Int>::from_data(
            TensorData::new(ids, [1, n]),
            &device,
        ))
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let reference: Vec<f32> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let diff = logits
        .iter()
        .zip(&reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-4, "max |logit − transformers| = {diff}");
}

#[test]
fn any4_perplexity_matches_the_hand_written_model_by_both_routes() {
    let device = Device::flex();
    let (mut llama, tok) = load_pretrained(tiny_llama(), &device).unwrap();
    let layers = llama.num_layers();
    let heldout = std::fs::read_to_string(tiny_llama().join("heldout.txt")).unwrap();
    let ids = tok.encode(&heldout, false).unwrap();
    // Two windows: debug-build forwards are slow; the three runs see the same tokens.
    let (seq_len, windows) = (256, 2);
    // One calibration for all three: the hand-written model's statistics, keyed by HF names.
    let stats = llama.calibrate(token_tensor(
        &tok.encode(CALIBRATION_PROMPT, true).unwrap(),
        &device,
    ));
    let cfg = QuantizeConfig::default();
    let (hand, report) = quantize_model(llama, &cfg, Some(&stats)).unwrap();
    let ppl_cfg = PerplexityConfig {
        seq_len,
        max_windows: Some(windows),
        batch_size: 1,
    };
    let hand_ppl = perplexity(&hand, &tok, &heldout, &ppl_cfg).unwrap().ppl;

    // 1. The generated model, every linear weight replaced by its any4 reconstruction.
    let imported = dense::Model::from_file(weights(), &device);
    let (reconstructed, r1) =
        reconstruct_linears_as(imported, &cfg, Some(&stats), &|p| hf_path(p, layers)).unwrap();
    assert_eq!(r1.layers.len(), report.layers.len());
    assert_eq!(r1.skipped, vec!["lm_head".to_string()]);
    assert!(r1.rel_mse() > 0.0 && r1.rel_mse() == report.rel_mse());
    let ppl_1 = onnx_llama::perplexity(
        |t| reconstructed.forward(t),
        &ids,
        seq_len,
        windows,
        &device,
    );

    // 2. The rewritten model: QLinear layers, quantized by the pass, any4 kernels.
    let model = any4::Model::from_file(weights(), &device);
    let (q, r2) = quantize_model(HfNames { model, layers }, &cfg, Some(&stats)).unwrap();
    assert_eq!(r2.layers.len(), report.layers.len());
    let mut quantized = 0;
    let mut q = q;
    any4_burn::QLinearContainer::visit_qlinears(&mut q, "", &mut |_, l| {
        quantized += usize::from(l.is_quantized())
    });
    assert_eq!(quantized, 42);
    let ppl_2 = onnx_llama::perplexity(|t| q.model.forward(t), &ids, seq_len, windows, &device);

    eprintln!(
        "tiny-llama {windows}×{seq_len}: hand-written any4 {hand_ppl:.6}, imported \
         reconstructed {ppl_1:.6}, imported on any4 kernels {ppl_2:.6}"
    );
    for (route, ppl) in [("reconstructed", ppl_1), ("QLinear", ppl_2)] {
        let rel = (ppl - hand_ppl).abs() / hand_ppl;
        assert!(
            rel < 1e-4,
            "{route}: {ppl} vs hand-written {hand_ppl} (rel {rel:e})"
        );
    }
}
