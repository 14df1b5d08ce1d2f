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
    // Known issues F3-F5 (docs/RELIABILITY.md): `validate` bounds no size, so a config naming
    // 10^6 layers makes the tensor list take gigabytes, a huge head width makes `inv_freq`
    // allocate without bound, and `heads × head_dim` can overflow. Such configs are skipped
    // (with the bounds proposed for `validate`) so the fuzzer looks for other bugs.
    let experts = 3 * cfg.num_local_experts.unwrap_or(1).max(1);
    let bounded = cfg.num_hidden_layers.checked_mul(12 + experts).is_some_and(|n| n <= 1 << 20)
        && cfg.head_dim() <= 1 << 16
        && cfg.num_attention_heads.checked_mul(cfg.head_dim()).is_some()
        && cfg.kv_heads().checked_mul(cfg.head_dim()).is_some();
    if !bounded {
        return;
    }
    if let Ok(rope) = cfg.rope() {
        let f = inv_freq(&rope);
        assert_eq!(f.len(), rope.dim / 2);
    }
    let _ = hf_tensor_shapes(&cfg);
});
