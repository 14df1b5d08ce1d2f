//! any4-llm behaviour tests on the Flex backend (one test binary: each costs a link).

use std::path::{Path, PathBuf};

use any4_burn::{CALIBRATION_PROMPT, QuantizeConfig, qlinear_paths, quantize, quantize_sequential};
use any4_core::rng::SplitMix64;
use any4_llm::*;
use burn::tensor::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};

fn device() -> Device {
    Device::flex()
}

fn tiny_llama_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama")
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// f32 sums of a few hundred products in different orders (cache vs full forward, batched vs
/// not), relative to the logit scale.
const F32_REORDER_TOL: f32 = 1e-5;

/// Our f32 forward against transformers' eager f32 forward: different kernels and summation
/// orders, relative to the largest logit.
const HF_LOGIT_TOL: f32 = 1e-5;

fn random_config(sliding_window: Option<usize>, layers: usize) -> LlamaConfig {
    let json = serde_json::json!({
        "architectures": [if sliding_window.is_some() { "MistralForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "vocab_size": 97,
        "tie_word_embeddings": false,
        "sliding_window": sliding_window,
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    LlamaConfig::from_json(&json.to_string()).expect("valid test config")
}

/// [`random_config`] as a Mixtral: 4 experts, top 2, each expert as wide as the dense MLP.
fn random_mixtral_config(sliding_window: Option<usize>, layers: usize) -> LlamaConfig {
    let mut json = serde_json::to_value(random_config(sliding_window, layers)).unwrap();
    json["architectures"] = serde_json::json!(["MixtralForCausalLM"]);
    json["num_local_experts"] = 4.into();
    json["num_experts_per_tok"] = 2.into();
    LlamaConfig::from_json(&json.to_string()).expect("valid test config")
}

fn random_ids(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// (a) numerics against transformers
// ---------------------------------------------------------------------------------------------

/// `models/tiny-llama/reference_logits.json`, written by `train.py` (stage eval).
#[derive(serde::Deserialize)]
struct Reference {
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
struct LongReference {
    input_ids: Vec<u32>,
    last_logits: Vec<f32>,
    last_logits_without_window: Vec<f32>,
    greedy_continuation_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct MistralReference {
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

// ---------------------------------------------------------------------------------------------
// (b) KV cache, (c) sliding window
// ---------------------------------------------------------------------------------------------

#[test]
fn kv_cache_decode_matches_full_forward() {
    let configs = [
        random_config(None, 2),
        random_config(Some(5), 2),
        random_config(Some(1), 2),
        random_mixtral_config(None, 2),
        random_mixtral_config(Some(5), 2),
    ];
    for config in configs {
        let (window, arch) = (config.sliding_window, config.architecture().unwrap());
        let model = Llama::random(config, 7, &device()).unwrap();
        let ids = random_ids(13, 97, 3);
        let full = to_vec(model.forward_all(token_tensor(&ids, &device())));
        let mut cache = model.new_cache();
        // Prefill, a multi-token chunk (after a window trim), then single tokens.
        let mut got = to_vec(model.forward(token_tensor(&ids[..6], &device()), &mut cache));
        got.extend(to_vec(
            model.forward(token_tensor(&ids[6..9], &device()), &mut cache),
        ));
        for &t in &ids[9..] {
            got.extend(to_vec(
                model.forward(token_tensor(&[t], &device()), &mut cache),
            ));
        }
        assert_eq!(cache.len(), ids.len());
        assert_eq!(cache.cached(), window.map_or(ids.len(), |w| w - 1));
        let diff = max_abs_diff(&got, &full);
        assert!(
            diff <= F32_REORDER_TOL * max_abs(&full),
            "{arch:?}, window {window:?}: cached decode differs by {diff}"
        );
        // Batched prefill: row 1 equals its own single-row forward.
        let other = random_ids(13, 97, 4);
        let batch = to_vec(model.forward_all(token_tensor_batch(&[&ids, &other], &device())));
        let single = to_vec(model.forward_all(token_tensor(&other, &device())));
        let diff = max_abs_diff(&batch[full.len()..], &single);
        assert!(
            diff <= F32_REORDER_TOL * max_abs(&single),
            "{arch:?}: batched prefill"
        );
    }
}

#[test]
fn attention_mask_is_causal_and_windowed() {
    let m = to_vec(attention_mask(0, 0, 4, Some(2), &device()).unwrap());
    let visible: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
    #[rustfmt::skip]
    let expect = [
        true, false, false, false,
        true, true, false, false,
        false, true, true, false,
        false, false, true, true,
    ];
    assert_eq!(visible, expect);
    // A decode step inside the window needs no mask; one beyond it masks the oldest keys.
    assert!(attention_mask(0, 3, 1, None, &device()).is_none());
    assert!(attention_mask(0, 3, 1, Some(4), &device()).is_none());
    let m = to_vec(attention_mask(0, 5, 1, Some(4), &device()).unwrap());
    assert_eq!(m.iter().filter(|v| v.is_finite()).count(), 4);
    // A cache trimmed to the window: keys 2..6 for query 6 with w = 4 → key 2 is out.
    let m = to_vec(attention_mask(2, 5, 2, Some(4), &device()).unwrap());
    assert_eq!(m.len(), 2 * 5);
    let visible: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
    assert_eq!(
        visible,
        [true, true, true, true, false, false, true, true, true, true]
    );
}

#[test]
fn sliding_window_hides_tokens_beyond_reach() {
    let (window, layers, len) = (4, 2, 14);
    // Each layer looks back window − 1 positions: token 0 reaches positions ≤ layers·(window−1).
    let reach = layers * (window - 1);
    let model = Llama::random(random_config(Some(window), layers), 11, &device()).unwrap();
    let ids = random_ids(len, 97, 5);
    let mut perturbed = ids.clone();
    perturbed[0] = (ids[0] + 1) % 97;
    let a = to_vec(model.forward_all(token_tensor(&ids, &device())));
    let b = to_vec(model.forward_all(token_tensor(&perturbed, &device())));
    let row = |v: &[f32], p: usize| v[p * 97..(p + 1) * 97].to_vec();
    for p in 0..len {
        let d = max_abs_diff(&row(&a, p), &row(&b, p));
        if p <= reach {
            assert!(
                d > 1e-6,
                "position {p} is within reach of token 0 but unchanged"
            );
        } else {
            assert_eq!(
                d, 0.0,
                "position {p} is beyond the window yet changed by {d}"
            );
        }
    }
    // Without the window the last position does depend on token 0.
    let full = Llama::random(random_config(None, layers), 11, &device()).unwrap();
    let a = to_vec(full.forward_all(token_tensor(&ids, &device())));
    let b = to_vec(full.forward_all(token_tensor(&perturbed, &device())));
    assert!(max_abs_diff(&row(&a, len - 1), &row(&b, len - 1)) > 1e-6);
}

// ---------------------------------------------------------------------------------------------
// (d) perplexity
// ---------------------------------------------------------------------------------------------

#[test]
fn perplexity_is_exp_mean_nll_of_the_logits() {
    let model = Llama::random(random_config(None, 2), 13, &device()).unwrap();
    let (seq, windows) = (16, 3);
    let ids = random_ids(seq * windows + 5, 97, 6); // a partial tail to be dropped
    let mut total = 0f64;
    for w in ids.chunks_exact(seq) {
        let logits = to_vec(model.forward_all(token_tensor(w, &device())));
        for p in 0..seq - 1 {
            let row = &logits[p * 97..(p + 1) * 97];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            total += lse - row[w[p + 1] as usize] as f64;
        }
    }
    let expect = (total / (windows * (seq - 1)) as f64).exp();
    for batch_size in [1, 2] {
        let cfg = PerplexityConfig {
            seq_len: seq,
            max_windows: None,
            batch_size,
        };
        let p = perplexity_of_ids(&model, &ids, &cfg).unwrap();
        assert_eq!((p.windows, p.tokens), (windows, windows * (seq - 1)));
        assert!(
            (p.ppl - expect).abs() <= 1e-5 * expect,
            "batch {batch_size}: {} vs {expect}",
            p.ppl
        );
    }
    let capped = PerplexityConfig {
        seq_len: seq,
        max_windows: Some(2),
        batch_size: 1,
    };
    assert_eq!(perplexity_of_ids(&model, &ids, &capped).unwrap().windows, 2);
    assert!(matches!(
        perplexity_of_ids(&model, &ids[..10], &capped),
        Err(Error::Input(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// (e) quantization through any4-burn
// ---------------------------------------------------------------------------------------------

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
    let (one_shot, report) = quantize(one_shot, &qcfg, Some(&stats)).unwrap();
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
    let (sequential, report) = quantize_sequential(dense_again, &qcfg, &calib).unwrap();
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
            stop_tokens: vec![],
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(g.tokens.len(), 4);
}

// ---------------------------------------------------------------------------------------------
// (f) loading
// ---------------------------------------------------------------------------------------------

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("any4-llm-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write `config` and random weights (in `dtype`) as an HF folder; `edit` may drop or reshape.
fn write_checkpoint(
    dir: &Path,
    config: &LlamaConfig,
    dtype: Dtype,
    edit: impl Fn(&str, Vec<usize>) -> Option<Vec<usize>>,
) -> Vec<(String, Vec<f32>)> {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(config).unwrap(),
    )
    .unwrap();
    let mut tensors = Vec::new();
    for (i, (name, shape)) in hf_tensor_shapes(config).into_iter().enumerate() {
        let Some(shape) = edit(&name, shape) else {
            continue;
        };
        let n: usize = shape.iter().product();
        let mut r = SplitMix64::new(i as u64);
        let values: Vec<f32> = (0..n).map(|_| r.next_gaussian() as f32 * 0.1).collect();
        let bytes: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .flat_map(|v| (*v as f64).to_le_bytes())
                .collect(),
        };
        tensors.push((name, shape, bytes, values));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b, _)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();
    tensors.into_iter().map(|(n, _, _, v)| (n, v)).collect()
}

fn load_dir(dir: &Path) -> Result<Llama> {
    let config = LlamaConfig::from_file(dir.join("config.json"))?;
    load_model(config, &SafetensorsSource::open_dir(dir)?, &device())
}

#[test]
fn loader_converts_dtypes_and_names_bad_tensors() {
    let cfg = random_config(None, 1);
    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        let tmp = TempDir::new(&format!("{dtype:?}"));
        let written = write_checkpoint(&tmp.0, &cfg, dtype, |_, s| Some(s));
        let model = load_dir(&tmp.0).unwrap();
        let (_, q) = written
            .iter()
            .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        let got = to_vec(model.layers[0].self_attn.q_proj.weight_hf());
        let tol = match dtype {
            Dtype::F32 => 0.0,
            _ => 1e-2 * max_abs(q),
        };
        assert!(max_abs_diff(&got, q) <= tol, "{dtype:?}");
    }

    let tmp = TempDir::new("missing");
    let gone = "model.layers.0.mlp.up_proj.weight";
    write_checkpoint(&tmp.0, &cfg, Dtype::F32, |n, s| (n != gone).then_some(s));
    match load_dir(&tmp.0) {
        Err(Error::MissingTensor { tensor, .. }) => assert_eq!(tensor, gone),
        other => panic!("expected a missing tensor, got {other:?}"),
    }

    let tmp = TempDir::new("shape");
    let bad = "model.layers.0.self_attn.k_proj.weight";
    write_checkpoint(&tmp.0, &cfg, Dtype::F32, |n, s| {
        Some(if n == bad { vec![s[0] + 1, s[1]] } else { s })
    });
    let err = load_dir(&tmp.0).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { tensor, expected, found, .. }
            if tensor == bad && expected == &vec![32, 64] && found == &vec![33, 64]),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    let tmp = TempDir::new("dtype");
    write_checkpoint(&tmp.0, &cfg, Dtype::F64, |_, s| Some(s));
    assert!(matches!(load_dir(&tmp.0), Err(Error::Dtype { .. })));

    let mut json = serde_json::to_value(&cfg).unwrap();
    json["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    let err = LlamaConfig::from_json(&json.to_string()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedModel { name, .. } if name == "Qwen2ForCausalLM"),
        "{err}"
    );
}

#[test]
fn config_reads_llama3_rope_scaling_and_mistral_window() {
    let llama31 = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "max_position_embeddings": 131072, "vocab_size": 128256,
        "tie_word_embeddings": true, "bos_token_id": 128000, "eos_token_id": [128001, 128008],
        "torch_dtype": "bfloat16", "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
        "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
    let c = LlamaConfig::from_json(llama31).unwrap();
    assert_eq!(c.head_dim(), 64);
    assert_eq!(c.eos_token_ids(), vec![128001, 128008]);
    assert!(matches!(
        c.rope().unwrap().scaling,
        RopeScaling::Llama3 { factor: 32.0, .. }
    ));
    let mistral = r#"{"architectures": ["MistralForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 32000, "sliding_window": 4096,
        "rope_theta": 10000.0, "eos_token_id": 2}"#;
    let c = LlamaConfig::from_json(mistral).unwrap();
    assert_eq!(c.architecture().unwrap(), Architecture::Mistral);
    assert_eq!(c.sliding_window, Some(4096));
    let bad = llama31.replace("\"llama3\"", "\"yarn\"");
    assert!(matches!(
        LlamaConfig::from_json(&bad),
        Err(Error::Config(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// (g) Mixtral: sparse mixture of experts
// ---------------------------------------------------------------------------------------------

fn tiny_mixtral_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-mixtral")
}

/// `models/tiny-mixtral/reference_logits.json`, written by `make_fixture.py`.
#[derive(serde::Deserialize)]
struct MixtralReference {
    text: String,
    input_ids: Vec<u32>,
    shape: [usize; 2],
    logits: Vec<Vec<f32>>,
    last_logits_without_window: Vec<f32>,
    greedy_continuation_ids: Vec<u32>,
    routing: Vec<LayerRouting>,
}

/// transformers' top-k expert indices of every token of one layer.
#[derive(serde::Deserialize)]
struct LayerRouting {
    experts: Vec<Vec<usize>>,
}

fn mixtral_reference() -> MixtralReference {
    let path = tiny_mixtral_dir().join("reference_logits.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run models/tiny-mixtral/make_fixture.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("reference format")
}

/// `‖a − b‖ / ‖b‖`.
fn relative_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt() as f32
}

fn moe(layer: &DecoderLayer) -> &SparseMoe {
    layer
        .block_sparse_moe
        .as_ref()
        .expect("a mixture-of-experts layer")
}

/// Router weights of every layer (HF layout `[experts, hidden]`).
fn routers(model: &Llama) -> Vec<Vec<f32>> {
    model
        .layers
        .iter()
        .map(|l| to_vec(moe(l).gate.weight.val().transpose()))
        .collect()
}

/// Every expert linear of the tiny Mixtral (2 layers × 4 experts × w1/w2/w3).
fn expert_paths() -> Vec<String> {
    let mut out = Vec::new();
    for l in 0..2 {
        for e in 0..4 {
            for w in ["w1", "w2", "w3"] {
                out.push(format!("layers.{l}.block_sparse_moe.experts.{e}.{w}"));
            }
        }
    }
    out
}

/// Our top-k choice and its weights for every token of every layer (the input of each layer's
/// MoE recomputed from the public pieces), against transformers' choice.
fn check_routing_against(model: &Llama, ids: &[u32], theirs: &[LayerRouting]) {
    let (n, d) = (ids.len(), model.config.hidden_size);
    let dev = device();
    let ctx = StepContext::new(
        &model.rope_inv_freq,
        0,
        0,
        n,
        model.config.sliding_window,
        &dev,
    );
    let mut h = model.embed_tokens.forward(token_tensor(ids, &dev));
    assert_eq!(theirs.len(), model.layers.len());
    for (i, (layer, theirs)) in model.layers.iter().zip(theirs).enumerate() {
        let attn = h.clone()
            + layer
                .self_attn
                .forward(layer.input_layernorm.forward(h.clone()), &ctx, None);
        let x = layer.post_attention_layernorm.forward(attn).reshape([n, d]);
        let routing = moe(layer).route(x);
        let mut chosen = vec![Vec::new(); n];
        let mut weight_sum = vec![0f32; n];
        for (e, (rows, weights)) in routing.experts.iter().enumerate() {
            for (&t, &w) in rows.iter().zip(weights) {
                chosen[t].push(e);
                weight_sum[t] += w;
            }
        }
        for t in 0..n {
            let mut want = theirs.experts[t].clone();
            want.sort_unstable();
            assert_eq!(chosen[t], want, "layer {i}, token {t}: experts");
            assert!((weight_sum[t] - 1.0).abs() < 1e-6, "weights renormalised");
        }
        h = layer.forward(h, &ctx, None);
    }
}

/// The tiny random Mixtral (4 experts, top 2, sliding window 8) against transformers on a
/// 43-token input: routing of every token, all logits, and the greedy continuation through the
/// KV cache. A model that ignored the window would be off at the last position.
#[test]
fn tiny_mixtral_matches_transformers() {
    let r = mixtral_reference();
    let (model, tok) = load_pretrained(tiny_mixtral_dir(), &device()).expect("load tiny-mixtral");
    assert_eq!(model.config.architecture().unwrap(), Architecture::Mixtral);
    assert_eq!(
        model.config.moe().unwrap(),
        Some(MoeConfig {
            num_experts: 4,
            top_k: 2
        })
    );
    let window = model.config.sliding_window.expect("a sliding window");
    assert!(r.input_ids.len() > 2 * window);
    assert!(
        model
            .layers
            .iter()
            .all(|l| l.mlp.is_none() && moe(l).num_experts() == 4 && moe(l).top_k == 2)
    );
    assert_eq!(tok.encode(&r.text, true).unwrap(), r.input_ids, "tokenizer");

    check_routing_against(&model, &r.input_ids, &r.routing);

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
    let vocab = r.shape[1];
    let last = &ours[ours.len() - vocab..];
    assert!(
        max_abs_diff(last, &r.last_logits_without_window) > 100.0 * diff.max(1e-6),
        "the window must matter at the last position"
    );

    let cfg = GenerateConfig {
        max_new_tokens: r.greedy_continuation_ids.len(),
        ..GenerateConfig::default()
    };
    let g = generate(&model, &r.input_ids, &cfg, &mut |_| {}).unwrap();
    assert_eq!(g.tokens, r.greedy_continuation_ids, "greedy continuation");
}

#[test]
fn routing_keeps_top_k_and_renormalises() {
    // Token 0: experts 1 and 2 win; token 1: a four-way tie goes to the lowest indices.
    let logits = [1.0, 3.0, 2.0, 0.0, 0.5, 0.5, 0.5, 0.5];
    let r = Routing::from_logits(&logits, 2, 4, 2);
    let w = 1.0 / (1.0 + (-1.0f32).exp()); // e³ / (e³ + e²)
    assert_eq!(r.experts[0], (vec![1], vec![0.5]));
    assert_eq!(r.experts[1].0, vec![0, 1]);
    assert!((r.experts[1].1[0] - w).abs() < 1e-6 && r.experts[1].1[1] == 0.5);
    assert_eq!(r.experts[2].0, vec![0]);
    assert!((r.experts[2].1[0] - (1.0 - w)).abs() < 1e-6);
    assert_eq!(r.tokens(3), 0);
    // top-1 puts all the weight on the winner.
    let r = Routing::from_logits(&logits, 2, 4, 1);
    assert_eq!(r.experts[1], (vec![0], vec![1.0]));
    assert_eq!(r.experts[0], (vec![1], vec![1.0]));
}

/// The gather / expert / scatter-add forward equals the dense formula: every expert on every
/// token, weighted by the routing (zero where not routed).
#[test]
fn sparse_moe_equals_the_dense_weighted_sum_of_experts() {
    let model = Llama::random(random_mixtral_config(None, 1), 3, &device()).unwrap();
    let moe = moe(&model.layers[0]);
    let (n, d) = (14, 64);
    let mut r = SplitMix64::new(9);
    let values: Vec<f32> = (0..n * d).map(|_| r.next_gaussian() as f32).collect();
    let x = Tensor::<2>::from_data(burn::tensor::TensorData::new(values, [n, d]), &device());
    let got = to_vec(moe.forward(x.clone().reshape([2, n / 2, d])));
    let routing = moe.route(x.clone());
    let mut want = vec![0f32; n * d];
    let mut routed = 0;
    for (expert, (rows, weights)) in moe.experts.iter().zip(&routing.experts) {
        let y = to_vec(expert.forward(x.clone()));
        routed += rows.len();
        for (&t, &w) in rows.iter().zip(weights) {
            for j in 0..d {
                want[t * d + j] += w * y[t * d + j];
            }
        }
    }
    assert_eq!(routed, n * moe.top_k, "every token goes to top_k experts");
    assert!(max_abs(&want) > 0.1);
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff <= F32_REORDER_TOL * max_abs(&want),
        "differs by {diff}"
    );
}

/// Relative L2 distance of any4 logits from dense ones on the tiny random Mixtral. any4 (group
/// 128) leaves each random Gaussian weight matrix ~7 % off (relative RMS); through two layers of
/// quantized attention and experts, with occasional routing flips, the logits measured 0.137
/// (one-shot) and 0.140 (sequential). int4 on the same model lands near 0.2, and a broken expert
/// path (wrong rows, lost weights) gives O(1).
const MIXTRAL_ANY4_REL_TOL: f32 = 0.15;

/// Every expert linear is any4 after the pass, the router is untouched, and only `lm_head`
/// (excluded by default) stays dense.
fn assert_experts_quantized(
    model: &mut Llama,
    report: &any4_burn::Report,
    dense_routers: &[Vec<f32>],
) {
    let paths = qlinear_paths(model);
    assert!(
        paths.iter().all(|p| !p.ends_with(".gate")),
        "the router is not a QLinear: {paths:?}"
    );
    let experts: Vec<String> = paths
        .iter()
        .filter(|p| p.contains(".experts."))
        .cloned()
        .collect();
    assert_eq!(experts, expert_paths());
    for layer in &model.layers {
        for e in &moe(layer).experts {
            assert!(e.w1.is_quantized() && e.w2.is_quantized() && e.w3.is_quantized());
        }
        assert!(layer.self_attn.o_proj.is_quantized());
    }
    assert!(!model.lm_head.is_quantized());
    assert_eq!(
        report.layers.len(),
        24 + 8,
        "24 expert and 8 attention linears"
    );
    assert_eq!(report.skipped, vec!["lm_head".to_string()]);
    assert_eq!(
        routers(model),
        dense_routers,
        "the router stays dense and unchanged"
    );
}

#[test]
fn quantized_tiny_mixtral_stays_close_with_per_expert_calibration() {
    let r = mixtral_reference();
    let dir = tiny_mixtral_dir();
    let (model, tok) = load_pretrained(&dir, &device()).unwrap();
    let input = token_tensor(&r.input_ids, &device());
    let dense = to_vec(model.forward_all(input.clone()));
    let dense_routers = routers(&model);
    let calib_len = 256;
    let calib_ids = tok.encode(CALIBRATION_PROMPT, true).unwrap();
    let calib = token_tensor(&calib_ids[..calib_len], &device());
    let qcfg = QuantizeConfig::default();

    let mut one_shot = model;
    let stats = one_shot.calibrate(calib.clone());
    // Per-expert statistics: an expert's probes see only its own tokens, so per layer the
    // counts add up to top_k × tokens, and w1 / w2 / w3 of one expert see the same tokens.
    for l in 0..2 {
        let mut total = 0;
        for e in 0..4 {
            let p = |w: &str| format!("layers.{l}.block_sparse_moe.experts.{e}.{w}");
            let t = stats.tokens(&p("w1")).unwrap_or(0);
            assert!(
                t < calib_len as u64,
                "expert {e} of layer {l} saw every token"
            );
            assert_eq!(stats.tokens(&p("w2")).unwrap_or(0), t);
            assert_eq!(stats.tokens(&p("w3")).unwrap_or(0), t);
            total += t;
        }
        assert_eq!(total, 2 * calib_len as u64, "layer {l}");
        let q = format!("layers.{l}.self_attn.q_proj");
        assert_eq!(stats.tokens(&q), Some(calib_len as u64));
    }
    let (mut one_shot, report) = quantize(one_shot, &qcfg, Some(&stats)).unwrap();
    assert_experts_quantized(&mut one_shot, &report, &dense_routers);
    let q1 = to_vec(one_shot.forward_all(input.clone()));

    let (dense_again, _) = load_pretrained(&dir, &device()).unwrap();
    let (mut sequential, report) = quantize_sequential(dense_again, &qcfg, &calib).unwrap();
    assert_experts_quantized(&mut sequential, &report, &dense_routers);
    let q2 = to_vec(sequential.forward_all(input));

    for (name, q) in [("one-shot", &q1), ("sequential", &q2)] {
        let err = relative_l2(q, &dense);
        eprintln!("tiny-mixtral any4 {name}: relative logit error {err:.4}");
        assert!(
            err.is_finite() && err < MIXTRAL_ANY4_REL_TOL,
            "{name}: relative logit error {err}"
        );
    }
    assert_ne!(q1, dense, "quantization changed something");
}

/// An expert the calibration text never reaches has no statistics; the pass quantizes it
/// unweighted (and says so with `calib_tokens == Some(0)`) instead of failing.
#[test]
fn experts_without_calibration_tokens_are_quantized_unweighted() {
    let (mut model, _) = load_pretrained(tiny_mixtral_dir(), &device()).unwrap();
    let dense_routers = routers(&model);
    // One token reaches exactly top_k = 2 of the 4 experts of each layer.
    let stats = model.calibrate(token_tensor(&[0], &device()));
    let unreached: Vec<String> = stats.unreached().map(str::to_string).collect();
    assert_eq!(unreached.len(), 2 * 2 * 3, "{unreached:?}");
    assert!(unreached.iter().all(|p| p.contains(".experts.")));
    assert!(unreached.iter().all(|p| stats.mean(p).is_none()));
    let (mut model, report) = quantize(model, &QuantizeConfig::default(), Some(&stats)).unwrap();
    assert_experts_quantized(&mut model, &report, &dense_routers);
    for l in &report.layers {
        if unreached.contains(&l.path) {
            assert_eq!(l.calib_tokens, Some(0), "{}", l.path);
            assert!(l.weighted_rel_mse.is_none());
        } else {
            assert_eq!(l.calib_tokens, Some(1), "{}", l.path);
        }
    }
    let logits = to_vec(model.forward_all(token_tensor(&[0, 5, 9, 200], &device())));
    assert!(logits.iter().all(|v| v.is_finite()));
}

/// Rewrite a safetensors file without tensor `name`, keeping its metadata.
fn drop_tensor(file: &Path, name: &str) {
    let bytes = std::fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    assert_eq!(kept.len() + 1, st.len(), "`{name}` was in the file");
    let out = safetensors::tensor::serialize(kept, meta.metadata().clone()).unwrap();
    std::fs::write(file, out).unwrap();
}

#[test]
fn mixtral_any4_folder_round_trips_and_names_missing_experts() {
    let r = mixtral_reference();
    let (model, tok) = load_pretrained(tiny_mixtral_dir(), &device()).unwrap();
    // Unweighted keeps it quick: the round trip, not the quality, is under test here.
    let (mut quantized, _) = quantize(model, &QuantizeConfig::default(), None).unwrap();
    let input = token_tensor(&r.input_ids, &device());
    let before = to_vec(quantized.forward_all(input.clone()));
    let tmp = TempDir::new("mixtral-any4");
    let qc = save_any4(&tmp.0, &mut quantized, &tok).unwrap();
    assert_eq!(qc.layers.len(), 32);
    assert_eq!(qc.modules_not_quantized, vec!["lm_head".to_string()]);

    let (mut loaded, _) = load_auto(&tmp.0, &device()).unwrap();
    assert_eq!(loaded.config, quantized.config);
    assert!(loaded.is_quantized());
    assert_eq!(routers(&loaded), routers(&quantized));
    let after = to_vec(loaded.forward_all(input));
    assert_eq!(
        max_abs_diff(&after, &before),
        0.0,
        "identical logits after reload"
    );

    let weights = tmp.0.join("model.safetensors");
    let pristine = std::fs::read(&weights).unwrap();
    for gone in [
        "layers.1.block_sparse_moe.experts.2.w3.qweight",
        "layers.0.block_sparse_moe.gate.weight",
    ] {
        std::fs::write(&weights, &pristine).unwrap();
        drop_tensor(&weights, gone);
        match load_auto(&tmp.0, &device()) {
            Err(Error::MissingTensor { tensor, path }) => {
                assert_eq!(tensor, gone);
                assert_eq!(path, weights);
            }
            other => panic!("expected `{gone}` missing, got {other:?}"),
        }
    }
}

#[test]
fn mixtral_loader_reads_experts_and_names_missing_ones() {
    let cfg = random_mixtral_config(Some(4), 2);
    let shapes = hf_tensor_shapes(&cfg);
    // embed, 2 × (2 norms, 4 attention, router, 4 × 3 expert linears), norm, lm_head
    assert_eq!(shapes.len(), 1 + 2 * (2 + 4 + 1 + 12) + 2);
    assert!(shapes.iter().all(|(n, _)| !n.contains(".mlp.")));
    let tmp = TempDir::new("mixtral-hf");
    let written = write_checkpoint(&tmp.0, &cfg, Dtype::F32, |_, s| Some(s));
    let model = load_dir(&tmp.0).unwrap();
    let find = |name: &str| {
        written
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let w2 = to_vec(moe(&model.layers[1]).experts[3].w2.weight_hf());
    assert_eq!(
        w2,
        find("model.layers.1.block_sparse_moe.experts.3.w2.weight")
    );
    assert_eq!(
        routers(&model)[0],
        find("model.layers.0.block_sparse_moe.gate.weight")
    );

    for gone in [
        "model.layers.1.block_sparse_moe.experts.3.w2.weight",
        "model.layers.0.block_sparse_moe.gate.weight",
    ] {
        let tmp = TempDir::new("mixtral-missing");
        write_checkpoint(&tmp.0, &cfg, Dtype::F32, |n, s| (n != gone).then_some(s));
        match load_dir(&tmp.0) {
            Err(Error::MissingTensor { tensor, .. }) => assert_eq!(tensor, gone),
            other => panic!("expected `{gone}` missing, got {other:?}"),
        }
    }
}

#[test]
fn config_reads_mixtral_and_validates_expert_counts() {
    // Mixtral-8x7B-v0.1's config.json (transformers 4.36 layout).
    let mixtral = r#"{"architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
        "output_router_logits": false, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02, "sliding_window": null, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32000}"#;
    let c = LlamaConfig::from_json(mixtral).unwrap();
    assert_eq!(c.architecture().unwrap(), Architecture::Mixtral);
    let moe = MoeConfig {
        num_experts: 8,
        top_k: 2,
    };
    assert_eq!(c.moe().unwrap(), Some(moe));
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.rope().unwrap().theta, 1e6);
    let shapes = hf_tensor_shapes(&c);
    assert!(shapes.contains(&(
        "model.layers.31.block_sparse_moe.experts.7.w2.weight".to_string(),
        vec![4096, 14336]
    )));
    assert!(shapes.contains(&(
        "model.layers.0.block_sparse_moe.gate.weight".to_string(),
        vec![8, 4096]
    )));

    // HF defaults when the counts are omitted; `model_type` alone identifies Mixtral.
    let mut json: serde_json::Value = serde_json::from_str(mixtral).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.remove("num_local_experts");
    obj.remove("num_experts_per_tok");
    obj.remove("architectures");
    let c = LlamaConfig::from_json(&json.to_string()).unwrap();
    assert_eq!(c.moe().unwrap(), Some(moe));

    for (field, value, mentions) in [
        ("num_experts_per_tok", 0, "num_experts_per_tok"),
        ("num_experts_per_tok", 9, "num_local_experts (8)"),
        ("num_local_experts", 0, "num_local_experts"),
    ] {
        let bad = mixtral.replace(
            &format!(
                "\"{field}\": {}",
                if field == "num_local_experts" { 8 } else { 2 }
            ),
            &format!("\"{field}\": {value}"),
        );
        assert_ne!(bad, mixtral);
        match LlamaConfig::from_json(&bad) {
            Err(Error::Config(m)) => assert!(m.contains(mentions), "{field}={value}: {m}"),
            other => panic!("{field}={value}: expected a config error, got {other:?}"),
        }
    }
    // Dense configs neither have nor write expert fields.
    let llama = random_config(None, 1);
    assert_eq!(llama.moe().unwrap(), None);
    let text = serde_json::to_string(&llama).unwrap();
    assert!(!text.contains("experts"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// (h) GGUF twins: one model as an HF folder and as llama.cpp files of four tensor types
// ---------------------------------------------------------------------------------------------

fn tiny_gguf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-gguf")
}

/// One GGUF twin in `models/tiny-gguf/reference_logits.json`.
#[derive(serde::Deserialize)]
struct GgufTwin {
    file: String,
    /// transformers' logits of the weights read back from this file (absent for f32: they are
    /// the f32 logits, bit for bit, which `make_fixture.py` asserts).
    #[serde(default)]
    logits: Option<Vec<Vec<f32>>>,
    /// The same distance as our `vs safetensors` one, measured by transformers.
    max_abs_logit_diff_vs_f32: f32,
}

/// `models/tiny-gguf/reference_logits.json`, written by `make_fixture.py`.
#[derive(serde::Deserialize)]
struct GgufReference {
    text: String,
    input_ids: Vec<u32>,
    shape: [usize; 2],
    logits: Vec<Vec<f32>>,
    twins: std::collections::BTreeMap<String, GgufTwin>,
    tokenizer_text: String,
    tokenizer_ids: Vec<u32>,
}

fn gguf_reference() -> GgufReference {
    let path = tiny_gguf_dir().join("reference_logits.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run models/tiny-gguf/make_fixture.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("reference format")
}

fn gguf_twin_path(r: &GgufReference, twin: &str) -> PathBuf {
    tiny_gguf_dir().join(&r.twins[twin].file)
}

/// The F32 twin holds the very f32 values of `model.safetensors` (Q/K rows in llama.cpp's
/// rotary order, which the reader undoes), and both loaders build the same model through the
/// same code, so the logits are bit-identical: no tolerance at all.
const GGUF_F32_TWIN_TOL: f32 = 0.0;

/// A rounded twin against the f32 model: max |Δlogit| ≤ 2 ε × logit scale, with ε the format's
/// rounding step relative to the value it is taken from. `ε = 2⁻¹¹` for F16 (unit roundoff of an
/// 11-bit significand); `1/127` for Q8_0 and `1/8` for Q4_0 (grid step over the largest |w| of
/// the 32-value block: `d = amax/127`, `d = amax/8`). The fixture's weights are random, so
/// per-weight errors are independent and do not compound across the two layers; transformers
/// measures 0.55 ε (F16), 0.99 ε (Q8_0) and 0.90 ε (Q4_0) on this input, so 2 ε leaves a factor
/// two while a mis-decoded tensor (wrong nibble order, scale, block or row) moves the logits by
/// O(scale) and Q4_0 by far more than 0.25 scale.
const GGUF_F16_LOGIT_TOL: f32 = 2.0 / 2048.0;
const GGUF_Q8_0_LOGIT_TOL: f32 = 2.0 / 127.0;
const GGUF_Q4_0_LOGIT_TOL: f32 = 2.0 / 8.0;

/// Per-weight bound of a rounded twin, from how the format rounds (`amax`: the largest |w| of
/// the 32-value block along the row, which is where llama.cpp's blocks lie):
/// - F16: `|Δ| ≤ 2⁻¹¹ |w|`, plus 2⁻²⁵ absolute for subnormals;
/// - Q8_0: `q = round(w/d)`, `d = amax/127` stored as f16: `d/2` from the grid plus at most 127
///   steps of the f16-rounded scale (`127 · 2⁻¹¹ d ≈ 0.062 d`): `|Δ| ≤ 0.57 amax/127`;
/// - Q4_0: `d = −m/8` (m: the signed block extreme), `q = trunc(w/d + 8.5)` clipped to 0..15, so
///   `w/d ∈ [−8, 8]` and the clip at +7.5..8 costs up to a whole step; plus 8 steps of the f16
///   scale's rounding (`0.004 d`): `|Δ| ≤ 1.01 amax/8`.
fn gguf_weight_bound(twin: &str, w: f32, amax: f32) -> f32 {
    match twin {
        "f16" => w.abs() / 2048.0 + 2f32.powi(-25),
        "q8_0" => 0.57 * amax / 127.0,
        "q4_0" => 1.01 * amax / 8.0,
        _ => 0.0,
    }
}

/// Every tensor the config implies, through the GGUF reader and through the safetensors reader,
/// within the twin's rounding bound per weight (exactly equal for F32 and for the 1-D norms,
/// which llama.cpp keeps F32 in every twin). Returns the largest |Δw|.
fn check_gguf_weights(twin: &str, gguf: &Path, config: &LlamaConfig) -> f32 {
    let hf = SafetensorsSource::open_dir(tiny_gguf_dir()).unwrap();
    let gg = GgufSource::open(gguf).unwrap();
    let mut worst = 0f32;
    for (name, shape) in hf_tensor_shapes(config) {
        let want = hf.read(&name, &shape).unwrap();
        let got = gg.read(&name, &shape).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        if shape.len() == 1 {
            assert_eq!(got, want, "{twin}: norm `{name}` is F32 in every twin");
            continue;
        }
        // Blocks of 32 along the row (the innermost dimension; every row here is 64 or 96).
        for (b, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
            let amax = max_abs(w);
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                let d = (g - w).abs();
                worst = worst.max(d);
                assert!(
                    d <= gguf_weight_bound(twin, *w, amax),
                    "{twin}: `{name}` value {} is {g}, f32 {w} (block max {amax})",
                    b * 32 + i
                );
            }
        }
    }
    worst
}

/// The loaded configs agree field by field. GGUF stores `rms_norm_eps` and the RoPE base as
/// f32, so those are compared at f32 precision (the forward pass uses them as f32 anyway).
fn assert_same_config(gguf: &LlamaConfig, hf: &LlamaConfig) {
    assert_eq!(gguf.architecture().unwrap(), Architecture::Llama);
    assert_eq!(gguf.hidden_size, hf.hidden_size, "hidden_size");
    assert_eq!(gguf.intermediate_size, hf.intermediate_size, "intermediate");
    assert_eq!(gguf.num_hidden_layers, hf.num_hidden_layers, "layers");
    assert_eq!(gguf.num_attention_heads, hf.num_attention_heads, "heads");
    assert_eq!(gguf.kv_heads(), hf.kv_heads(), "kv heads");
    assert_eq!(gguf.head_dim(), hf.head_dim(), "head_dim");
    let (gr, hr) = (gguf.rope().unwrap(), hf.rope().unwrap());
    assert_eq!(gr.theta as f32, hr.theta as f32, "rope theta");
    assert_eq!(hr.theta, 1e5, "the fixture's non-default theta");
    assert_eq!((gr.dim, gr.scaling), (hr.dim, hr.scaling), "rope");
    assert_eq!(gguf.rms_norm_eps as f32, hf.rms_norm_eps as f32, "eps");
    assert_eq!(gguf.vocab_size, hf.vocab_size, "vocab");
    assert!(hf.tie_word_embeddings, "the fixture ties (as SmolLM2)");
    assert_eq!(gguf.tie_word_embeddings, hf.tie_word_embeddings, "tie");
    assert_eq!(gguf.bos_token_id, hf.bos_token_id, "bos");
    assert_eq!(gguf.eos_token_ids(), hf.eos_token_ids(), "eos");
    assert_eq!(
        gguf.max_position_embeddings, hf.max_position_embeddings,
        "context length"
    );
    assert_eq!(gguf.sliding_window, None);
}

fn logits_of(model: &Llama, ids: &[u32]) -> Vec<f32> {
    to_vec(model.forward_all(token_tensor(ids, &device())))
}

/// The F32 twin: same config, bit-identical weights and logits as the safetensors folder, and
/// both match transformers.
#[test]
fn gguf_f32_twin_matches_safetensors_and_transformers() {
    let r = gguf_reference();
    let dir = tiny_gguf_dir();
    let path = gguf_twin_path(&r, "f32");
    let (hf_model, hf_tok) = load_pretrained(&dir, &device()).expect("load tiny-gguf folder");
    let (gg_model, gg_tok) = load_auto(&path, &device()).expect("load the f32 GGUF twin");
    assert_same_config(&gg_model.config, &hf_model.config);
    assert_eq!(check_gguf_weights("f32", &path, &hf_model.config), 0.0);
    assert_eq!(hf_tok.encode(&r.text, true).unwrap(), r.input_ids);
    assert_eq!(gg_tok.encode(&r.text, true).unwrap(), r.input_ids);

    let theirs: Vec<f32> = r.logits.concat();
    assert_eq!(theirs.len(), r.shape[0] * r.shape[1]);
    let scale = max_abs(&theirs);
    let hf_logits = logits_of(&hf_model, &r.input_ids);
    let gg_logits = logits_of(&gg_model, &r.input_ids);
    for (name, ours) in [("safetensors", &hf_logits), ("gguf f32", &gg_logits)] {
        let diff = max_abs_diff(ours, &theirs);
        assert!(
            diff <= HF_LOGIT_TOL * scale,
            "{name} vs transformers: max |Δlogit| {diff} (scale {scale})"
        );
    }
    let diff = max_abs_diff(&gg_logits, &hf_logits);
    eprintln!("tiny-gguf f32 twin vs safetensors: max |Δlogit| {diff}");
    assert!(
        diff <= GGUF_F32_TWIN_TOL * scale,
        "f32 twin vs safetensors: max |Δlogit| {diff}"
    );
}

/// The F16, Q8_0 and Q4_0 twins: each tensor stored in the claimed type, every weight within
/// the format's rounding of the f32 one, logits equal to transformers' on the same dequantized
/// weights (so the dequantization and the Q/K un-permutation are exact), and within the
/// format's tolerance of the f32 model.
#[test]
fn gguf_rounded_twins_match_within_their_rounding() {
    let r = gguf_reference();
    let (hf_model, _) = load_pretrained(tiny_gguf_dir(), &device()).unwrap();
    let f32_logits = logits_of(&hf_model, &r.input_ids);
    let scale = max_abs(&f32_logits);
    for (twin, ty, tol) in [
        ("f16", gguf::GgmlType::F16, GGUF_F16_LOGIT_TOL),
        ("q8_0", gguf::GgmlType::Q8_0, GGUF_Q8_0_LOGIT_TOL),
        ("q4_0", gguf::GgmlType::Q4_0, GGUF_Q4_0_LOGIT_TOL),
    ] {
        let path = gguf_twin_path(&r, twin);
        let file = gguf::GgufFile::open(&path).unwrap();
        // 7 matrices per layer plus the tied embedding (no `output.weight`); 2 norms per layer
        // plus the final one.
        let n_layers = hf_model.config.num_hidden_layers;
        assert_eq!(file.tensors.len(), 7 * n_layers + 1 + 2 * n_layers + 1);
        for (name, info) in &file.tensors {
            let want = if info.dims.len() == 1 {
                gguf::GgmlType::F32
            } else {
                ty
            };
            assert_eq!(info.ty, want, "{twin}: `{name}`");
        }

        let (model, _) = load_gguf(&path, &device()).unwrap();
        assert_same_config(&model.config, &hf_model.config);
        let worst_w = check_gguf_weights(twin, &path, &hf_model.config);
        let ours = logits_of(&model, &r.input_ids);

        let entry = &r.twins[twin];
        let theirs: Vec<f32> = entry.logits.as_ref().expect("rounded twin logits").concat();
        let exact = max_abs_diff(&ours, &theirs);
        assert!(
            exact <= HF_LOGIT_TOL * max_abs(&theirs),
            "{twin} vs transformers on its dequantized weights: max |Δlogit| {exact}"
        );
        let diff = max_abs_diff(&ours, &f32_logits);
        eprintln!(
            "tiny-gguf {twin} twin: max |Δw| {worst_w:.3e}; max |Δlogit| vs safetensors {diff:.4} \
             = {:.3e} of scale {scale:.2} (tolerance {tol:.3e}; transformers measured {:.4}); \
             vs transformers on the same weights {exact:.2e}",
            diff / scale,
            entry.max_abs_logit_diff_vs_f32
        );
        assert!(
            diff <= tol * scale,
            "{twin} vs f32: max |Δlogit| {diff} > {tol} × scale {scale}"
        );
        assert!(
            (diff - entry.max_abs_logit_diff_vs_f32).abs() <= 2.0 * HF_LOGIT_TOL * scale,
            "{twin}: our rounding error {diff} is not transformers' {}",
            entry.max_abs_logit_diff_vs_f32
        );
    }
}

/// The tokenizer rebuilt from the GGUF vocabulary (`hf_tokenizer_json`: tokens, merges, control
/// tokens, SmolLM2's `smollm` digit-splitting pre-tokenizer) encodes and decodes like the
/// folder's `tokenizer.json`: special tokens inside text, single digits, multi-byte UTF-8.
#[test]
fn gguf_tokenizer_matches_hf_tokenizer() {
    let r = gguf_reference();
    let dir = tiny_gguf_dir();
    let config = LlamaConfig::from_file(dir.join("config.json")).unwrap();
    let hf = Tokenizer::from_file(dir.join("tokenizer.json"), &config).unwrap();
    let text = &r.tokenizer_text;
    // The text exercises what it should: <|im_start|> = 1 and <|im_end|> = 2 as single tokens,
    // "1024" as four digit tokens (bytes 0x31.. at 3 + byte).
    assert_eq!(r.tokenizer_ids.first(), Some(&1));
    assert!(r.tokenizer_ids.contains(&2));
    let digits: Vec<u32> = b"1024".iter().map(|&b| 3 + b as u32).collect();
    assert!(r.tokenizer_ids.windows(4).any(|w| w == digits.as_slice()));
    assert!(r.tokenizer_ids.iter().any(|&id| id >= 259), "merges used");
    for add_special in [false, true] {
        assert_eq!(hf.encode(text, add_special).unwrap(), r.tokenizer_ids);
    }
    assert_eq!(&hf.decode(&r.tokenizer_ids, false).unwrap(), text);

    for twin in r.twins.keys() {
        let path = gguf_twin_path(&r, twin);
        let file = gguf::GgufFile::open(&path).unwrap();
        assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(file.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
        let json = gguf::hf_tokenizer_json(&file).unwrap();
        let gg = Tokenizer::from_json(&json, path.clone(), &config).unwrap();
        assert_eq!(gg.vocab_size(), hf.vocab_size(), "{twin}: vocab");
        assert_eq!(gg.inner().get_vocab(true), hf.inner().get_vocab(true));
        for add_special in [false, true] {
            assert_eq!(
                gg.encode(text, add_special).unwrap(),
                r.tokenizer_ids,
                "{twin}: add_special {add_special}"
            );
        }
        assert_eq!(&gg.decode(&r.tokenizer_ids, false).unwrap(), text, "{twin}");
        assert_eq!(
            gg.decode(&r.tokenizer_ids, true).unwrap(),
            hf.decode(&r.tokenizer_ids, true).unwrap(),
            "{twin}: special tokens skipped"
        );
        assert_eq!((gg.bos_id(), gg.eos_ids()), (hf.bos_id(), hf.eos_ids()));
    }
}

/// Every twin's metadata gives the folder's config (hidden, heads, KV heads, RoPE base, eps,
/// vocabulary, tied embeddings, special ids).
#[test]
fn gguf_configs_match_the_hf_config() {
    let r = gguf_reference();
    let hf = LlamaConfig::from_file(tiny_gguf_dir().join("config.json")).unwrap();
    assert_eq!(r.twins.len(), 4);
    for twin in r.twins.keys() {
        let source = GgufSource::open(&gguf_twin_path(&r, twin)).unwrap();
        assert_eq!(
            source.file().get_str("general.architecture").unwrap(),
            "llama"
        );
        assert_same_config(&source.config().unwrap(), &hf);
    }
}
