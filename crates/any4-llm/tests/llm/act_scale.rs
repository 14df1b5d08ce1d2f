//! Activation-aware scales on the tiny Llama: folding the input multipliers into the norms
//! keeps the function, and the folded model round-trips through an any4 folder.

use any4_burn::QLinear;
use any4_core::{ActScaleConfig, GptqConfig, Method};

use crate::common::*;

#[test]
fn folded_input_scales_keep_the_function_and_round_trip() {
    let dir = tiny_llama_dir();
    let (mut model, tok) = load_pretrained(&dir, &device()).expect("load tiny-llama");
    let cfg = QuantizeConfig::default()
        .with_method(Method::Gptq(GptqConfig::default()))
        .with_act_scale(Some(ActScaleConfig {
            grid: 3,
            sample_rows: 16,
        }));
    let mut calibrator = cfg.calibrator();
    calibrator.attach(&mut model, |p| cfg.selects(p));
    let ids = tok.encode(CALIBRATION_PROMPT, true).unwrap();
    let _ = model.forward_all(token_tensor(&ids, &device()));
    let stats = calibrator.detach(&mut model);
    let (mut model, report) = quantize_model(model, &cfg, Some(&stats)).unwrap();
    assert!(report.layers.iter().all(|l| l.output_rel_err.is_some()));

    let input = token_tensor(&ids[..32], &device());
    let before = to_vec(model.forward_all(input.clone()));
    let layers = model.layers.len();
    assert_eq!(
        fold_input_scales(&mut model),
        2 * layers,
        "q/k/v and gate/up per block"
    );
    let after = to_vec(model.forward_all(input.clone()));
    assert!(
        max_abs_diff(&before, &after) <= 1e-4 * max_abs(&before),
        "folding changed the logits by {}",
        max_abs_diff(&before, &after)
    );
    let block = &model.layers[0];
    let scale_of = |l: &QLinear| match l {
        QLinear::Quant(q) => q.input_scale.is_some(),
        _ => panic!("quantized"),
    };
    let mlp = block.mlp.as_ref().unwrap();
    assert!(!scale_of(&block.self_attn.q_proj) && !scale_of(&mlp.up_proj));
    assert!(scale_of(&block.self_attn.o_proj) && scale_of(&mlp.down_proj));

    let tmp = TempDir::new("act-scale");
    let qc = save_any4(&tmp.0, &mut model, &tok).unwrap();
    assert!(qc.layers["layers.0.mlp.down_proj"].input_scale);
    assert!(!qc.layers["layers.0.self_attn.q_proj"].input_scale);
    let (loaded, _) = load_auto(&tmp.0, &device()).unwrap();
    assert_eq!(to_vec(loaded.forward_all(input)), after);
}
