//! The GGUF seeds: complete tiny Llama models in every tensor type the reader dequantizes, and
//! vocabulary-only files, written with any4-llm's test writer (`any4_llm::gguf::writer`).

use any4_llm::gguf::writer::{GgufTensor, Meta, encode, write};

fn tokenizer_kv(pre: &str) -> Vec<(&'static str, Meta)> {
    let tokens = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġa", "1", "c"];
    let strs = |v: &[&str]| Meta::Array(8, v.iter().map(|s| Meta::Str(s.to_string())).collect());
    vec![
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str(pre.into())),
        ("tokenizer.ggml.tokens", strs(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Meta::Array(5, [3, 1, 1, 1, 1, 1, 1, 1].map(Meta::I32).into()),
        ),
        ("tokenizer.ggml.merges", strs(&["a b", "Ġ a"])),
        ("tokenizer.ggml.bos_token_id", Meta::U32(0)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(0)),
    ]
}

/// A complete 1-block Llama (width 16, 2 heads, 1 kv head, ffn 32, vocab 8) whose tensors use
/// `types` in turn (so every block type appears), with a tokenizer.
fn tiny_llama(version: u32, types: &[u32], tied: bool, extra: Vec<(&str, Meta)>) -> Vec<u8> {
    let mut kv = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("general.name", Meta::Str("tiny".into())),
        ("llama.block_count", Meta::U32(1)),
        ("llama.context_length", Meta::U32(64)),
        ("llama.embedding_length", Meta::U32(16)),
        ("llama.feed_forward_length", Meta::U32(32)),
        ("llama.attention.head_count", Meta::U32(2)),
        ("llama.attention.head_count_kv", Meta::U32(1)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
    ];
    kv.extend(tokenizer_kv("smollm"));
    kv.extend(extra);
    // (name, HF shape [out, in] or [n], may use a block type)
    let mut shapes: Vec<(&str, Vec<u64>)> = vec![
        ("token_embd.weight", vec![8, 16]),
        ("blk.0.attn_norm.weight", vec![16]),
        ("blk.0.attn_q.weight", vec![16, 16]),
        ("blk.0.attn_k.weight", vec![8, 16]),
        ("blk.0.attn_v.weight", vec![8, 16]),
        ("blk.0.attn_output.weight", vec![16, 16]),
        ("blk.0.ffn_norm.weight", vec![16]),
        ("blk.0.ffn_gate.weight", vec![32, 16]),
        ("blk.0.ffn_up.weight", vec![32, 16]),
        ("blk.0.ffn_down.weight", vec![16, 32]),
        ("output_norm.weight", vec![16]),
    ];
    if !tied {
        shapes.push(("output.weight", vec![8, 16]));
    }
    let tensors: Vec<GgufTensor> = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: u64 = shape.iter().product();
            // Norm gains and 1-D tensors stay f32, as llama.cpp writes them.
            let ty = if shape.len() == 1 {
                0
            } else {
                types[i % types.len()]
            };
            let vals = crate::values(n as usize, i as u64 + 1, 0.5);
            GgufTensor {
                name: name.to_string(),
                dims: shape.iter().rev().copied().collect(),
                ty,
                data: encode(&vals, ty),
            }
        })
        .collect();
    write(version, &kv, &tensors)
}

/// Every metadata value type, nested arrays included.
fn all_types() -> Vec<(&'static str, Meta)> {
    vec![
        ("t.u8", Meta::U8(200)),
        ("t.i8", Meta::I8(-100)),
        ("t.u16", Meta::U16(60000)),
        ("t.i16", Meta::I16(-30000)),
        ("t.u32", Meta::U32(4_000_000_000)),
        ("t.i32", Meta::I32(-2_000_000_000)),
        ("t.f32", Meta::F32(1.5)),
        ("t.bool", Meta::Bool(true)),
        ("t.u64", Meta::U64(u64::MAX)),
        ("t.i64", Meta::I64(i64::MIN)),
        ("t.f64", Meta::F64(-0.25)),
        (
            "t.nested",
            Meta::Array(
                9,
                vec![
                    Meta::Array(4, vec![Meta::U32(1), Meta::U32(2)]),
                    Meta::Array(8, vec![Meta::Str("x".into())]),
                ],
            ),
        ),
        ("general.alignment", Meta::U32(64)),
    ]
}

/// Seeds of the `gguf` target: tiny models in each tensor type, v2 and v3.
pub fn model_seeds() -> Vec<(String, Vec<u8>)> {
    vec![
        ("f32.gguf".into(), tiny_llama(3, &[0], true, vec![])),
        (
            "f16-bf16.gguf".into(),
            tiny_llama(3, &[1, 30], false, vec![]),
        ),
        ("q8_0.gguf".into(), tiny_llama(3, &[8], true, vec![])),
        (
            "q4_0-q4_1.gguf".into(),
            tiny_llama(2, &[2, 3], false, vec![]),
        ),
        (
            "all-types.gguf".into(),
            tiny_llama(3, &[0, 8], true, all_types()),
        ),
    ]
}

/// Seeds of the `gguf_tokenizer` target: vocabulary-only files.
pub fn tokenizer_seeds() -> Vec<(String, Vec<u8>)> {
    vec![
        ("smollm.gguf".into(), write(3, &tokenizer_kv("smollm"), &[])),
        ("gpt2.gguf".into(), write(3, &tokenizer_kv("gpt2"), &[])),
        ("model.gguf".into(), tiny_llama(3, &[0], true, vec![])),
    ]
}
