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

impl Tokenizer {
    /// Read `tokenizer.json`; bos/eos ids come from the model config.
    pub fn from_file(path: impl AsRef<Path>, config: &LlamaConfig) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
            bos: config.bos_token_id,
            eos: config.eos_token_ids(),
        })
    }

    /// Build from `tokenizer.json` text (e.g. converted from a GGUF vocabulary); `origin` names
    /// where it came from in errors.
    pub fn from_json(json: &str, origin: PathBuf, config: &LlamaConfig) -> Result<Self> {
        let inner: tokenizers::Tokenizer =
            json.parse()
                .map_err(|e: tokenizers::Error| Error::Tokenizer {
                    path: origin.clone(),
                    reason: e.to_string(),
                })?;
        Ok(Tokenizer {
            inner,
            path: origin,
            bos: config.bos_token_id,
            eos: config.eos_token_ids(),
        })
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's template (e.g. prepends bos).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenize(e.to_string()))
    }

    /// Text of `ids`, special tokens skipped or not.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenize(e.to_string()))
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
