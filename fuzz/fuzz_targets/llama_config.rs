//! HF `config.json`: parsing, validation, and what is derived from a valid config before any
//! tensor is read (architecture, rotary frequencies, the tensor names and shapes to load).
#![no_main]

use any4_llm::{LlamaConfig, hf_tensor_shapes, inv_freq};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: any4_fuzz::init("llama_config"), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = LlamaConfig::from_json(text) else { return };
    let _ = cfg.architecture();
    let _ = cfg.eos_token_ids();
    // Everything below allocates from the config's sizes: `validate` (in `from_json`) must
    // have bounded them (findings F3-F5, docs/RELIABILITY.md).
    if let Ok(rope) = cfg.rope() {
        let f = inv_freq(&rope);
        assert_eq!(f.len(), rope.dim / 2);
    }
    let _ = hf_tensor_shapes(&cfg);
});
