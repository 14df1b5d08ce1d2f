//! Numerics against transformers: the tiny Llama and Mistral logits.

use crate::common::*;

/// `models/tiny-llama/reference_logits.json`, written by `train.py` (stage eval).
#[derive(serde::Deserialize)]
pub struct Reference {
    text: String,
    input_ids: Vec<u32>,
    shape: [usize; 2],
    logits: Vec<Vec<f32>>,
    greedy_continuation_ids: Vec<u32>,
}

#[test]
fn tiny_llama_matches_transformers() {
    let dir = tiny_llama_dir();
    let ref_path = dir.join("reference_logits.json");
    let text = std::fs::read_to_string(&ref_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run models/tiny-llama/train.py --only eval)",
            ref_path.display()
        )
    });
    let r: Reference = serde_json::from_str(&text).expect("reference format");
    let (model, tok) = load_pretrained(&dir, &device()).expect("load tiny-llama");
    assert_eq!(tok.encode(&r.text, true).unwrap(), r.input_ids, "tokenizer");

    let logits = model.forward_all(token_tensor(&r.input_ids, &device()));
    assert_eq!(logits.dims(), [1, r.shape[0], r.shape[1]]);
    let ours = to_vec(logits);
    let theirs: Vec<f32> = r.logits.concat();
    let scale = max_abs(&theirs);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(
        diff <= HF_LOGIT_TOL * scale,
        "max |Δlogit| {diff} > {HF_LOGIT_TOL} × logit scale {scale}"
    );

    let cfg = GenerateConfig {
        max_new_tokens: r.greedy_continuation_ids.len(),
        stop_tokens: tok.eos_ids().to_vec(),
        ..GenerateConfig::default()
    };
    let mut streamed = Vec::new();
    let g = generate(&model, &r.input_ids, &cfg, &mut |t| streamed.push(t)).unwrap();
    assert_eq!(g.tokens, r.greedy_continuation_ids, "greedy continuation");
    assert_eq!(streamed, g.tokens, "streaming callback saw every token");
}

/// The `long` entry of `models/tiny-mistral/reference_logits.json`: 200 tokens, past the
/// 128-token sliding window.
#[derive(serde::Deserialize)]
pub struct LongReference {
    input_ids: Vec<u32>,
    last_logits: Vec<f32>,
    last_logits_without_window: Vec<f32>,
    greedy_continuation_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
pub struct MistralReference {
    #[serde(flatten)]
    short: Reference,
    long: LongReference,
}

/// The tiny Mistral (sliding window 128) against transformers, within and beyond the window:
/// a model that ignored the window would match the short input but not the long one.
#[test]
fn tiny_mistral_matches_transformers_beyond_the_window() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-mistral");
    let text = std::fs::read_to_string(dir.join("reference_logits.json")).expect("reference");
    let r: MistralReference = serde_json::from_str(&text).expect("reference format");
    let (model, tok) = load_pretrained(&dir, &device()).expect("load tiny-mistral");
    assert_eq!(model.config.sliding_window, Some(128));
    assert_eq!(tok.encode(&r.short.text, true).unwrap(), r.short.input_ids);
    let ours = to_vec(model.forward_all(token_tensor(&r.short.input_ids, &device())));
    let theirs: Vec<f32> = r.short.logits.concat();
    let scale = max_abs(&theirs);
    assert!(
        max_abs_diff(&ours, &theirs) <= HF_LOGIT_TOL * scale,
        "short input"
    );

    let n = r.long.input_ids.len();
    let logits = to_vec(model.forward_all(token_tensor(&r.long.input_ids, &device())));
    let vocab = r.long.last_logits.len();
    let last = &logits[(n - 1) * vocab..n * vocab];
    let scale = max_abs(&r.long.last_logits);
    let diff = max_abs_diff(last, &r.long.last_logits);
    assert!(
        diff <= HF_LOGIT_TOL * scale,
        "long input: max |Δlogit| {diff} (scale {scale})"
    );
    // The window matters here: without it the logits would be far off.
    assert!(max_abs_diff(last, &r.long.last_logits_without_window) > 100.0 * diff.max(1e-6));

    let cfg = GenerateConfig {
        max_new_tokens: r.long.greedy_continuation_ids.len(),
        ..GenerateConfig::default()
    };
    let g = generate(&model, &r.long.input_ids, &cfg, &mut |_| {}).unwrap();
    assert_eq!(
        g.tokens, r.long.greedy_continuation_ids,
        "greedy continuation past the window"
    );
}
