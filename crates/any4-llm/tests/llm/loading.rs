//! Loading HF folders: dtypes, names, configs.

use crate::common::*;

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
