//! GGUF twins: one model as an HF folder and as llama.cpp files of four tensor types.

use crate::common::*;

pub fn tiny_gguf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-gguf")
}

/// One GGUF twin in `models/tiny-gguf/reference_logits.json`.
#[derive(serde::Deserialize)]
pub struct GgufTwin {
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
pub struct GgufReference {
    text: String,
    input_ids: Vec<u32>,
    shape: [usize; 2],
    logits: Vec<Vec<f32>>,
    twins: std::collections::BTreeMap<String, GgufTwin>,
    tokenizer_text: String,
    tokenizer_ids: Vec<u32>,
}

pub fn gguf_reference() -> GgufReference {
    let path = tiny_gguf_dir().join("reference_logits.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run models/tiny-gguf/make_fixture.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("reference format")
}

pub fn gguf_twin_path(r: &GgufReference, twin: &str) -> PathBuf {
    tiny_gguf_dir().join(&r.twins[twin].file)
}

/// The F32 twin holds the very f32 values of `model.safetensors` (Q/K rows in llama.cpp's
/// rotary order, which the reader undoes), and both loaders build the same model through the
/// same code, so the logits are bit-identical: no tolerance at all.
pub const GGUF_F32_TWIN_TOL: f32 = 0.0;

/// A rounded twin against the f32 model: max |Δlogit| ≤ 2 ε × logit scale, with ε the format's
/// rounding step relative to the value it is taken from. `ε = 2⁻¹¹` for F16 (unit roundoff of an
/// 11-bit significand); `1/127` for Q8_0 and `1/8` for Q4_0 (grid step over the largest |w| of
/// the 32-value block: `d = amax/127`, `d = amax/8`). The fixture's weights are random, so
/// per-weight errors are independent and do not compound across the two layers; transformers
/// measures 0.55 ε (F16), 0.99 ε (Q8_0) and 0.90 ε (Q4_0) on this input, so 2 ε leaves a factor
/// two while a mis-decoded tensor (wrong nibble order, scale, block or row) moves the logits by
/// O(scale) and Q4_0 by far more than 0.25 scale.
pub const GGUF_F16_LOGIT_TOL: f32 = 2.0 / 2048.0;
pub const GGUF_Q8_0_LOGIT_TOL: f32 = 2.0 / 127.0;
pub const GGUF_Q4_0_LOGIT_TOL: f32 = 2.0 / 8.0;

/// Per-weight bound of a rounded twin, from how the format rounds (`amax`: the largest |w| of
/// the 32-value block along the row, which is where llama.cpp's blocks lie):
/// - F16: `|Δ| ≤ 2⁻¹¹ |w|`, plus 2⁻²⁵ absolute for subnormals;
/// - Q8_0: `q = round(w/d)`, `d = amax/127` stored as f16: `d/2` from the grid plus at most 127
///   steps of the f16-rounded scale (`127 · 2⁻¹¹ d ≈ 0.062 d`): `|Δ| ≤ 0.57 amax/127`;
/// - Q4_0: `d = −m/8` (m: the signed block extreme), `q = trunc(w/d + 8.5)` clipped to 0..15, so
///   `w/d ∈ [−8, 8]` and the clip at +7.5..8 costs up to a whole step; plus 8 steps of the f16
///   scale's rounding (`0.004 d`): `|Δ| ≤ 1.01 amax/8`.
pub fn gguf_weight_bound(twin: &str, w: f32, amax: f32) -> f32 {
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
pub fn check_gguf_weights(twin: &str, gguf: &Path, config: &LlamaConfig) -> f32 {
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
pub fn assert_same_config(gguf: &LlamaConfig, hf: &LlamaConfig) {
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

pub fn logits_of(model: &Llama, ids: &[u32]) -> Vec<f32> {
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
