//! An HF `tokenizer.json` rebuilt from a GGUF byte-level BPE vocabulary.

use super::{GgufError, GgufFile, Result, Value};

/// Build a Hugging Face `tokenizer.json` from a GGUF byte-level BPE vocabulary
/// (`tokenizer.ggml.model = "gpt2"`): tokens, merges and special tokens; SmolLM2's `"smollm"`
/// pre-tokenizer splits digits individually before the GPT-2 byte-level split.
pub fn hf_tokenizer_json(g: &GgufFile) -> Result<String> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::Format {
            path: g.path.clone(),
            reason: format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            ),
        });
    }
    let strings = |key: &str| -> Result<Vec<&str>> {
        g.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| g.meta_err(key, "an array of strings"))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i.into()))
        .collect();
    // Type 3 = control token (llama.cpp's LLAMA_TOKEN_TYPE_CONTROL).
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&3))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = match g.get("tokenizer.ggml.pre").and_then(Value::as_str) {
        Some("smollm") => serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        _ => byte_level.clone(),
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    Ok(json.to_string())
}
