//! Quantization through any4-burn on the tiny Llama.

use crate::common::*;

#[test]
fn quantized_tiny_llama_stays_close_to_dense() {
    let dir = tiny_llama_dir();
    let (model, tok) = load_pretrained(&dir, &device()).expect("load tiny-llama");
    let heldout = std::fs::read_to_string(dir.join("heldout.txt")).unwrap();
    let cfg = PerplexityConfig {
        seq_len: 64,
        max_windows: Some(2),
        batch_size: 2,
    };
    let dense = perplexity(&model, &tok, &heldout, &cfg).unwrap();
    assert!(dense.ppl.is_finite() && dense.ppl > 1.0, "{dense:?}");
    let calib = token_tensor(&tok.encode(CALIBRATION_PROMPT, true).unwrap(), &device());
    let qcfg = QuantizeConfig::default();

    let mut one_shot = model;
    let stats = one_shot.calibrate(calib.clone());
    let layers = 6 * 7;
    assert_eq!(stats.len(), layers + 1, "every linear, lm_head included");
    let (one_shot, report) = quantize_model(one_shot, &qcfg, Some(&stats)).unwrap();
    assert_eq!(report.layers.len(), layers);
    assert_eq!(report.skipped, vec!["lm_head".to_string()]);
    let q1 = perplexity(&one_shot, &tok, &heldout, &cfg).unwrap();

    // Sequential: the first two blocks only, to keep the debug-build test short.
    let (dense_again, _) = load_pretrained(&dir, &device()).unwrap();
    let qcfg = qcfg
        .include("layers.0.*")
        .unwrap()
        .include("layers.1.*")
        .unwrap();
    let (sequential, report) = quantize_model_sequential(dense_again, &qcfg, &calib).unwrap();
    assert_eq!(report.layers.len(), 14);
    let mlp = sequential.layers[1].mlp.as_ref().expect("a dense layer");
    assert!(mlp.down_proj.is_quantized());
    assert!(sequential.layers[1].block_sparse_moe.is_none());
    assert!(!sequential.layers[2].self_attn.q_proj.is_quantized());
    let q2 = perplexity(&sequential, &tok, &heldout, &cfg).unwrap();

    for (name, q) in [("one-shot", q1), ("sequential", q2)] {
        assert!(
            q.ppl.is_finite() && q.ppl < 2.0 * dense.ppl && q.ppl > 0.9 * dense.ppl,
            "{name}: any4 ppl {} vs dense {}",
            q.ppl,
            dense.ppl
        );
    }
    // The quantized model still generates.
    let g = generate(
        &one_shot,
        &tok.encode("The king", true).unwrap(),
        &GenerateConfig {
            max_new_tokens: 4,
            sampling: Sampling::TopP {
                temperature: 0.8,
                top_p: 0.9,
            },
            seed: 1,
            ..GenerateConfig::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(g.tokens.len(), 4);
}
