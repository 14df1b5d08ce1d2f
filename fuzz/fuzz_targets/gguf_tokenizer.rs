//! A GGUF vocabulary turned into a `tokenizer.json` (`hf_tokenizer_json`), loaded and used.
#![no_main]

use any4_llm::Tokenizer;
use any4_llm::gguf::{GgufFile, hf_tokenizer_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: any4_fuzz::init("gguf_tokenizer"), |data: &[u8]| {
    let path = any4_fuzz::scratch_file(data);
    let Ok(g) = GgufFile::open(path) else { return };
    let Ok(json) = hf_tokenizer_json(&g) else { return };
    if let Ok(tok) = Tokenizer::from_json(&json, path.to_path_buf(), any4_fuzz::tokenizer_config()) {
        any4_fuzz::use_tokenizer(&tok);
    }
});
