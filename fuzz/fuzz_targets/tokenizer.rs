//! `tokenizer.json` text loaded through `Tokenizer::from_json` and used to encode and decode.
#![no_main]

use any4_llm::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: any4_fuzz::init("tokenizer"), |data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else { return };
    let origin = std::path::PathBuf::from("tokenizer.json");
    if let Ok(tok) = Tokenizer::from_json(json, origin, any4_fuzz::tokenizer_config()) {
        any4_fuzz::use_tokenizer(&tok);
    }
});
