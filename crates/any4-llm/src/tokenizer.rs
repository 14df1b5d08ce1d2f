//! HF `tokenizer.json` through the `tokenizers` crate, with the model's bos/eos ids.

use std::path::{Path, PathBuf};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// A text tokenizer plus the special ids generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos: Option<u32>,
    eos: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// Run a call into the `tokenizers` crate, turning a panic into an error: some malformed
/// `tokenizer.json` files make it panic instead of returning an error (e.g. a `decoder` that is
/// not an object: `expect("Helper")` in its deserializer, found by the `tokenizer` fuzz target).
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(format!(
            "the tokenizers library failed on this input: {msg}"
        ))
    })
}

impl Tokenizer {
    /// Read `tokenizer.json`; bos/eos ids come from the model config.
    pub fn from_file(path: impl AsRef<Path>, config: &LlamaConfig) -> Result<Self> {
        let path = path.as_ref();
        let inner = guarded(|| tokenizers::Tokenizer::from_file(path).map_err(|e| e.to_string()))
            .map_err(|reason| Error::Tokenizer {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Self::new(inner, path.to_path_buf(), config))
    }

    /// Padding and truncation settings of the file are dropped: this crate encodes one text at
    /// a time and batches by itself, so padding would insert pad tokens into prompts (and a
    /// hostile `Fixed` length would allocate without bound), and truncation would silently
    /// shorten the text a perplexity is measured on.
    fn new(mut inner: tokenizers::Tokenizer, path: PathBuf, config: &LlamaConfig) -> Self {
        inner.with_padding(None);
        // Cannot fail: removing truncation has nothing to validate.
        let _ = inner.with_truncation(None);
        Tokenizer {
            inner,
            path,
            bos: config.bos_token_id,
            eos: config.eos_token_ids(),
        }
    }

    /// Build from `tokenizer.json` text (e.g. converted from a GGUF vocabulary); `origin` names
    /// where it came from in errors.
    pub fn from_json(json: &str, origin: PathBuf, config: &LlamaConfig) -> Result<Self> {
        let inner = guarded(|| {
            json.parse::<tokenizers::Tokenizer>()
                .map_err(|e| e.to_string())
        })
        .map_err(|reason| Error::Tokenizer {
            path: origin.clone(),
            reason,
        })?;
        Ok(Self::new(inner, origin, config))
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's template (e.g. prepends bos).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        guarded(|| {
            self.inner
                .encode(text, add_special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string())
        })
        .map_err(Error::Tokenize)
    }

    /// Text of `ids`, special tokens skipped or not.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        guarded(|| {
            self.inner
                .decode(ids, skip_special)
                .map_err(|e| e.to_string())
        })
        .map_err(Error::Tokenize)
    }

    /// Beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence ids (generation stops on any of them).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        LlamaConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8,
                "bos_token_id": 0, "eos_token_id": 1}"#,
        )
        .expect("valid config")
    }

    /// A byte-level BPE `tokenizer.json` with the given `padding` and `truncation` values.
    fn json(padding: &str, truncation: &str) -> String {
        format!(
            r#"{{"version": "1.0", "truncation": {truncation}, "padding": {padding},
            "added_tokens": [], "normalizer": null, "post_processor": null,
            "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": false,
                "trim_offsets": true, "use_regex": true}},
            "decoder": {{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true}},
            "model": {{"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": {{"a": 0, "b": 1, "ab": 2, "Ġ": 3}}, "merges": ["a b"]}}}}"#
        )
    }

    /// Found in review while writing the `tokenizer` fuzz target: a `Fixed` padding length from
    /// the file was applied to every encoding, so 2^40 made `encode` abort allocating 4 TiB;
    /// and a truncation length silently cut the text. Both settings are dropped at load.
    #[test]
    fn hostile_tokenizer_files_are_errors_not_crashes() {
        let hostile = json(
            r#"{"strategy": {"Fixed": 1099511627776}, "direction": "Right",
                "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "a"}"#,
            r#"{"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0}"#,
        );
        let tok =
            Tokenizer::from_json(&hostile, PathBuf::from("t.json"), &config()).expect("loads");
        assert_eq!(
            tok.encode("ab ab ab", false).expect("encodes"),
            [2, 3, 2, 3, 2]
        );
        let plain = Tokenizer::from_json(&json("null", "null"), PathBuf::from("t.json"), &config())
            .expect("loads");
        assert_eq!(
            plain.encode("ab ab ab", false).expect("encodes"),
            [2, 3, 2, 3, 2]
        );
        // Fuzz regression: the tokenizers crate panics on a `decoder` that is not an object.
        let panicking = include_str!("../tests/fixtures/fuzz/tokenizer-decoder-panic.json");
        let err = Tokenizer::from_json(panicking, PathBuf::from("t.json"), &config())
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("the tokenizers library failed on this input"),
            "{err}"
        );
        let err = Tokenizer::from_json("{", PathBuf::from("bad.json"), &config())
            .expect_err("refused")
            .to_string();
        assert!(err.starts_with("tokenizer bad.json: "), "{err}");
    }
}
