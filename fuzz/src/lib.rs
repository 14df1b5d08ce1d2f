//! Shared pieces of the fuzz targets: a scratch file for readers that memory-map their input,
//! the tiny model the checkpoint target loads into, and the seed corpora.
//!
//! Seeds are written by the targets themselves (`ANY4_FUZZ_WRITE_SEEDS=DIR`, see `run.sh
//! --seeds`), so they are produced by the same code paths users run (`save`, the GGUF layout of
//! llama.cpp) and always match the model the target loads into.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use any4_burn::{QLinear, QuantizeConfig, impl_qlinear_container, quantize_model, save};
use any4_core::rng::SplitMix64;
use any4_core::{Any4Config, Format, GroupSize, ParamDtype};
use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};

pub mod gguf_seeds;

/// Called from each target's `init`: writes the seeds of `target` when asked to.
///
/// The tokenizer targets also replace libfuzzer-sys's panic hook, which aborts on every panic,
/// caught or not: `any4_llm::Tokenizer` deliberately catches the panics of the `tokenizers`
/// crate (turning them into errors), and only panics that escape the target are bugs. Those
/// still abort (libfuzzer-sys aborts when a panic unwinds out of the target).
pub fn init(target: &str) {
    if target.contains("tokenizer") {
        let _ = std::panic::take_hook();
    }
    if let Some(dir) = std::env::var_os("ANY4_FUZZ_WRITE_SEEDS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create the seed folder");
        for (name, bytes) in seeds(target) {
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
}

/// A per-process scratch file holding `data` (in `/dev/shm` when there is one: no disk I/O).
pub fn scratch_file(data: &[u8]) -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("any4-fuzz-{}.bin", std::process::id()))
    });
    std::fs::write(path, data).expect("write the scratch file");
    path
}

/// The model checkpoints are loaded into: a quantizable layer (16×32), a layer with bias
/// (32×16) and a bare parameter, so every kind of tensor the loader handles is present.
#[derive(Module, Debug)]
pub struct Tiny {
    /// `[16, 32]`, quantized with a learned table in the seeds.
    pub up: QLinear,
    /// `[32, 16]` with bias, quantized with a shared int4 table in some seeds.
    pub down: QLinear,
    /// A plain parameter (e.g. a norm's gain).
    pub gain: Param<Tensor<1>>,
}
impl_qlinear_container!(Tiny { up, down });

/// Deterministic values in `[-scale, scale)` (the project's one generator, `any4_core::rng`).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (r.next_f64() as f32 * 2.0 - 1.0) * scale)
        .collect()
}

impl Tiny {
    /// Dense, with weights from `seed`.
    pub fn new(seed: u64) -> Self {
        let device = Device::flex();
        let t2 = |o: usize, i: usize, s: u64| {
            Tensor::<2>::from_data(TensorData::new(values(o * i, s, 0.5), [o, i]), &device)
        };
        let t1 = |n: usize, s: u64| {
            Tensor::<1>::from_data(TensorData::new(values(n, s, 1.0), [n]), &device)
        };
        Tiny {
            up: QLinear::from_hf(t2(16, 32, seed), None),
            down: QLinear::from_hf(t2(32, 16, seed + 1), Some(t1(32, seed + 2))),
            gain: Param::initialized(ParamId::new(), t1(16, seed + 3)),
        }
    }

    /// `down(up(x) · gain)` for a `[rows, 32]` input.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.up.forward(x) * self.gain.val().unsqueeze::<2>();
        self.down.forward(h)
    }
}

fn quantized_tiny(seed: u64, up: Any4Config, down: Option<Any4Config>) -> Tiny {
    let only = |p: &str, c: Any4Config| QuantizeConfig::new(c).include(p).expect("valid pattern");
    let (mut model, _) =
        quantize_model(Tiny::new(seed), &only("up", up), None).expect("quantize up");
    if let Some(c) = down {
        model = quantize_model(model, &only("down", c), None)
            .expect("quantize down")
            .0;
    }
    model
}

/// Checkpoints of [`Tiny`] in every table kind and parameter dtype.
fn checkpoint_seeds() -> Vec<(String, Vec<u8>)> {
    let g = |n| GroupSize::new(n).expect("valid group");
    let models = [
        ("dense", None, None),
        (
            "any4-g32-int4-rows",
            Some(Any4Config::new(Format::Any4).with_group_size(g(32))),
            Some(Any4Config::new(Format::Int4).with_group_size(GroupSize::PER_ROW)),
        ),
        (
            "any3-bf16-nf4-f32",
            Some(
                Any4Config::new(Format::Any3)
                    .with_group_size(g(32))
                    .with_param_dtype(ParamDtype::Bf16),
            ),
            Some(Any4Config::new(Format::Nf4).with_param_dtype(ParamDtype::F32)),
        ),
        (
            "fp4",
            Some(Any4Config::new(Format::Fp4).with_group_size(GroupSize::PER_ROW)),
            None,
        ),
    ];
    let dir = std::env::temp_dir().join(format!("any4-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut out = Vec::new();
    for (i, (name, up, down)) in models.into_iter().enumerate() {
        let mut model = match up {
            Some(up) => quantized_tiny(10 + i as u64, up, down),
            None => Tiny::new(10),
        };
        let file = dir.join("model.safetensors");
        save(&mut model, &file).expect("save a seed checkpoint");
        out.push((
            format!("{name}.safetensors"),
            std::fs::read(&file).expect("read it back"),
        ));
    }
    let _ = std::fs::remove_dir_all(dir);
    out
}

/// The `quantization_config` JSON of each checkpoint seed.
fn quant_config_seeds() -> Vec<(String, Vec<u8>)> {
    checkpoint_seeds()
        .into_iter()
        .map(|(name, bytes)| {
            let (_, meta) = safetensors_metadata(&bytes).expect("a seed checkpoint has metadata");
            (name.replace(".safetensors", ".json"), meta.into_bytes())
        })
        .collect()
}

/// The `quantization_config` string of a safetensors file, read without the safetensors crate.
fn safetensors_metadata(bytes: &[u8]) -> Option<(usize, String)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    let q = header["__metadata__"]["quantization_config"].as_str()?;
    Some((n, q.to_string()))
}

/// The seeds of `target`, by file name.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "checkpoint" => checkpoint_seeds(),
        "quant_config" => quant_config_seeds(),
        "gguf" => gguf_seeds::model_seeds(),
        "gguf_tokenizer" => gguf_seeds::tokenizer_seeds(),
        "llama_config" => config_seeds(),
        "tokenizer" => tokenizer_seeds(),
        other => panic!("no seeds for target `{other}`"),
    }
}

/// HF `config.json` variants beyond the ones in `models/` (which `run.sh` adds).
fn config_seeds() -> Vec<(String, Vec<u8>)> {
    let base = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": true, "bos_token_id": 1,
        "eos_token_id": [2, 3], "torch_dtype": "bfloat16", "hidden_act": "silu"
    });
    let with = |patch: serde_json::Value| {
        let mut v = base.clone();
        for (k, x) in patch.as_object().expect("object") {
            v[k] = x.clone();
        }
        serde_json::to_vec_pretty(&v).expect("json")
    };
    vec![
        ("llama.json".into(), with(serde_json::json!({}))),
        (
            "llama3-rope.json".into(),
            with(
                serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}}),
            ),
        ),
        (
            "linear-rope-v5.json".into(),
            with(serde_json::json!({"rope_theta": null,
                "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}})),
        ),
        (
            "mistral.json".into(),
            with(serde_json::json!({"architectures": ["MistralForCausalLM"],
                "model_type": "mistral", "sliding_window": 32, "head_dim": 32,
                "attention_bias": true, "mlp_bias": true})),
        ),
        (
            "mixtral.json".into(),
            with(serde_json::json!({"architectures": ["MixtralForCausalLM"],
                "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2})),
        ),
    ]
}

/// Small `tokenizer.json` files of each model type (the repository's real ones are added by
/// `run.sh`).
fn tokenizer_seeds() -> Vec<(String, Vec<u8>)> {
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let doc = |model: serde_json::Value, pre: serde_json::Value, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": pre, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
            "model": model,
        });
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        serde_json::to_vec(&v).expect("json")
    };
    let bpe = serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
        "byte_fallback": false, "ignore_merges": false,
        "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġa": 5, "c": 6, "1": 7},
        "merges": ["a b", "Ġ a"]});
    let wordpiece = serde_json::json!({"type": "WordPiece", "unk_token": "[UNK]",
        "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
        "vocab": {"<s>": 0, "[UNK]": 1, "the": 2, "##s": 3, "king": 4, "said": 5}});
    let unigram = serde_json::json!({"type": "Unigram", "unk_id": 1, "byte_fallback": false,
        "vocab": [["<s>", 0.0], ["<unk>", 0.0], ["▁the", -1.0], ["▁king", -2.0], ["s", -3.0],
            ["▁", -4.0], ["a", -5.0]]});
    let wordlevel = serde_json::json!({"type": "WordLevel", "unk_token": "<unk>",
        "vocab": {"<s>": 0, "<unk>": 1, "the": 2, "king": 3}});
    let whitespace = serde_json::json!({"type": "Whitespace"});
    vec![
        (
            "bpe.json".into(),
            doc(bpe.clone(), byte_level.clone(), serde_json::json!({})),
        ),
        (
            "bpe-template.json".into(),
            doc(
                bpe,
                serde_json::json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level]}),
                serde_json::json!({
                    "normalizer": {"type": "NFC"},
                    "post_processor": {"type": "TemplateProcessing",
                        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                            {"Sequence": {"id": "A", "type_id": 0}}],
                        "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
                    "truncation": {"direction": "Right", "max_length": 16, "strategy":
                        "LongestFirst", "stride": 0},
                    "padding": {"strategy": {"Fixed": 8}, "direction": "Right",
                        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0,
                        "pad_token": "<s>"}
                }),
            ),
        ),
        (
            "wordpiece.json".into(),
            doc(
                wordpiece,
                whitespace.clone(),
                serde_json::json!({"normalizer": {"type": "BertNormalizer", "clean_text": true,
                    "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
                    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true}}),
            ),
        ),
        (
            "unigram.json".into(),
            doc(
                unigram,
                serde_json::json!({"type": "Metaspace", "replacement": "▁",
                    "prepend_scheme": "always", "split": true}),
                serde_json::json!({"decoder": {"type": "Metaspace", "replacement": "▁",
                    "prepend_scheme": "always", "split": true}}),
            ),
        ),
        (
            "wordlevel.json".into(),
            doc(wordlevel, whitespace, serde_json::json!({"decoder": null})),
        ),
    ]
}

/// The config every tokenizer is built against (bos 0, eos 1).
pub fn tokenizer_config() -> &'static any4_llm::LlamaConfig {
    static CFG: OnceLock<any4_llm::LlamaConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        any4_llm::LlamaConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8,
                "bos_token_id": 0, "eos_token_id": 1}"#,
        )
        .expect("valid config")
    })
}

/// Exercise a tokenizer the way generation and evaluation do.
pub fn use_tokenizer(tok: &any4_llm::Tokenizer) {
    for text in [
        "The king said 12 words.",
        "",
        "  \u{0}é漢字 ab\n\tc",
        "aaaaaaaaab",
    ] {
        if let Ok(ids) = tok.encode(text, true) {
            let _ = tok.decode(&ids, true);
            let _ = tok.decode(&ids, false);
        }
    }
    let _ = tok.decode(&[0, 1, 2, 3, u32::MAX], false);
    let _ = tok.vocab_size();
}
