//! Streaming quantization against the in-memory pass: byte-identical folders for the same seed
//! (Llama, Mistral, Mixtral; one-shot and sequential; LM head dense and quantized; single
//! file and sharded), early `--max-memory` refusal, and nothing left behind on failure.

use crate::common::*;
use any4_burn::{Calibrator, Report};

/// An HF folder with `config`, random f32 weights and the tiny Llama's tokenizer file.
fn hf_model(name: &str, config: &LlamaConfig) -> TempDir {
    let dir = TempDir::new(name);
    write_checkpoint(&dir.0, config, Dtype::F32, |_, s| Some(s));
    std::fs::copy(
        tiny_llama_dir().join("tokenizer.json"),
        dir.0.join("tokenizer.json"),
    )
    .unwrap();
    dir
}

/// What `any4 quantize` does in memory: load, calibrate, quantize, `save_any4`.
fn in_memory(
    dir: &Path,
    out: &Path,
    cfg: &QuantizeConfig,
    calibration: Calibration,
    ids: &[u32],
) -> Report {
    let config = LlamaConfig::from_file(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json"), &config).unwrap();
    let mut model = load_dir(dir).unwrap();
    let tokens = token_tensor(ids, &device());
    let (mut model, report) = match calibration {
        Calibration::Sequential => quantize_model_sequential(model, cfg, &tokens).unwrap(),
        Calibration::OneShot => {
            let mut calibrator = Calibrator::new();
            calibrator.attach(&mut model, |p| cfg.selects(p));
            let _ = model.forward_all(tokens);
            let stats = calibrator.detach(&mut model);
            quantize_model(model, cfg, Some(&stats)).unwrap()
        }
    };
    std::fs::create_dir_all(out).unwrap();
    save_any4(out, &mut model, &tok).unwrap();
    report
}

fn assert_same_folder(a: &Path, b: &Path, what: &str) {
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{what}: {f} differs ({} vs {} bytes)",
            x.len(),
            y.len()
        );
    }
}

#[test]
fn streaming_writes_the_in_memory_checkpoint_byte_for_byte() {
    let cases = [
        (
            "llama",
            random_config(None, 2),
            Calibration::Sequential,
            false,
        ),
        (
            "mistral",
            random_config(Some(8), 2),
            Calibration::OneShot,
            true,
        ),
        (
            "mixtral",
            random_mixtral_config(None, 2),
            Calibration::Sequential,
            true,
        ),
        (
            "mixtral1",
            random_mixtral_config(Some(8), 2),
            Calibration::OneShot,
            false,
        ),
    ];
    for (name, config, calibration, lm_head) in cases {
        let model = hf_model(name, &config);
        let ids = random_ids(24, config.vocab_size as u32, 7);
        let cfg = QuantizeConfig::default().with_lm_head(lm_head);
        let out = TempDir::new(&format!("{name}-out"));
        let (memory, stream) = (out.0.join("memory"), out.0.join("stream"));
        let expected = in_memory(&model.0, &memory, &cfg, calibration, &ids);
        let q = StreamingQuantizer::open(&model.0, &device()).unwrap();
        let report = q
            .run(&out_dir(&stream), &cfg, calibration, &ids, None)
            .unwrap();
        let what = format!("{name} {calibration:?} lm_head={lm_head}");
        assert_same_folder(&memory, &stream, &what);
        assert_eq!(report.layers.len(), expected.layers.len(), "{what}");
        assert_eq!(report.skipped, expected.skipped, "{what}");
        for (a, b) in report.layers.iter().zip(&expected.layers) {
            assert_eq!((&a.path, a.rel_mse), (&b.path, b.rel_mse), "{what}");
        }
        // What it wrote loads and runs.
        let (m, _) = load_auto(&stream, &device()).unwrap();
        let logits = to_vec(m.forward_all(token_tensor(&ids[..4], &device())));
        assert!(logits.iter().all(|v| v.is_finite()), "{what}");
    }
}

/// The tiny Llama (trained, tied embeddings) with its first block quantized (debug builds are
/// slow), and the same model split into two shards.
#[test]
fn tied_and_sharded_models_stream_identically() {
    let src = tiny_llama_dir();
    let (_, tok) = load_pretrained(&src, &device()).unwrap();
    let mut ids = tok.encode(CALIBRATION_PROMPT, true).unwrap();
    ids.truncate(64);
    let cfg = QuantizeConfig::default().include("layers.0.*").unwrap();
    let out = TempDir::new("tiny-stream");
    let (memory, stream) = (out.0.join("memory"), out.0.join("stream"));
    in_memory(&src, &memory, &cfg, Calibration::Sequential, &ids);
    let q = StreamingQuantizer::open(&src, &device()).unwrap();
    q.run(&out_dir(&stream), &cfg, Calibration::Sequential, &ids, None)
        .unwrap();
    assert_same_folder(&memory, &stream, "tiny-llama");

    // Two shards and an index, as HF writes large models.
    let sharded = TempDir::new("tiny-sharded");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        std::fs::write(
            sharded.0.join(file),
            safetensors::tensor::serialize(views, None).unwrap(),
        )
        .unwrap();
        for n in part {
            map.insert(n.to_string(), file.into());
        }
    }
    std::fs::write(
        sharded.0.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), sharded.0.join(f)).unwrap();
    }
    // One small layer is enough to check reading; the rest is copied.
    let cfg = QuantizeConfig::default()
        .include("layers.0.self_attn.k_proj")
        .unwrap();
    let (single, from_shards) = (out.0.join("single"), out.0.join("shards"));
    for (dir, to) in [(&src, &single), (&sharded.0, &from_shards)] {
        StreamingQuantizer::open(dir, &device())
            .unwrap()
            .run(&out_dir(to), &cfg, Calibration::OneShot, &ids, None)
            .unwrap();
    }
    assert_same_folder(&single, &from_shards, "sharded tiny-llama");
}

#[test]
fn max_memory_refuses_early_and_failures_leave_nothing() {
    let config = random_config(None, 2);
    let model = hf_model("refuse", &config);
    let ids = random_ids(16, config.vocab_size as u32, 3);
    let q = StreamingQuantizer::open(&model.0, &device()).unwrap();
    let cfg = QuantizeConfig::default();
    let est = q.memory_estimate(&cfg, ids.len());
    assert!(est.peak() < est.in_memory + est.baseline, "{est:?}");
    let out = TempDir::new("refuse-out");
    let target = out.0.join("q");
    let err = q
        .run(
            &out_dir(&target),
            &cfg,
            Calibration::OneShot,
            &ids,
            Some(est.peak() - 1),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("over --max-memory"), "{err}");
    assert!(!target.exists());
    // Within the limit it runs.
    q.run(
        &out_dir(&target),
        &cfg,
        Calibration::OneShot,
        &ids,
        Some(est.peak()),
    )
    .unwrap();
    assert!(target.join("model.safetensors").is_file());

    // A NaN in the second block fails the pass after the first block was written: no folder,
    // no temporary left, and the earlier output untouched.
    let before = std::fs::read(target.join("model.safetensors")).unwrap();
    let bad = TempDir::new("refuse-nan");
    write_checkpoint(&bad.0, &config, Dtype::F32, |_, s| Some(s));
    std::fs::copy(model.0.join("tokenizer.json"), bad.0.join("tokenizer.json")).unwrap();
    let file = bad.0.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let view = st.tensor(name).unwrap();
    let offset = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let mut damaged = bytes.clone();
    damaged[offset..offset + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, damaged).unwrap();
    let err = StreamingQuantizer::open(&bad.0, &device())
        .unwrap()
        .run(&out_dir(&target), &cfg, Calibration::Sequential, &ids, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layers.1.mlp.up_proj"), "{err}");
    assert_eq!(
        std::fs::read(target.join("model.safetensors")).unwrap(),
        before
    );
    let left: Vec<_> = std::fs::read_dir(&out.0).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "only the earlier output remains: {left:?}");
}

/// A checked output folder at `path` (no inputs to protect in these tests).
fn out_dir(path: &std::path::Path) -> any4_burn::OutputDir {
    any4_burn::check_output_dir(path, &[], false).unwrap()
}
