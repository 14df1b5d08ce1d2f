//! A small GGUF writer (llama.cpp's layout: v3, 32-byte alignment, dims innermost first) for
//! the GGUF seeds: complete tiny Llama models in every tensor type the reader dequantizes.

/// A metadata value as written.
pub enum Meta {
    /// type 0.
    U8(u8),
    /// type 1.
    I8(i8),
    /// type 2.
    U16(u16),
    /// type 3.
    I16(i16),
    /// type 4.
    U32(u32),
    /// type 5.
    I32(i32),
    /// type 6.
    F32(f32),
    /// type 7.
    Bool(bool),
    /// type 8.
    Str(String),
    /// type 9: item type and items.
    Array(u32, Vec<Meta>),
    /// type 10.
    U64(u64),
    /// type 11.
    I64(i64),
    /// type 12.
    F64(f64),
}

impl Meta {
    fn ty(&self) -> u32 {
        match self {
            Meta::U8(_) => 0,
            Meta::I8(_) => 1,
            Meta::U16(_) => 2,
            Meta::I16(_) => 3,
            Meta::U32(_) => 4,
            Meta::I32(_) => 5,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Array(..) => 9,
            Meta::U64(_) => 10,
            Meta::I64(_) => 11,
            Meta::F64(_) => 12,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Meta::U8(v) => out.push(*v),
            Meta::I8(v) => out.push(*v as u8),
            Meta::U16(v) => out.extend(v.to_le_bytes()),
            Meta::I16(v) => out.extend(v.to_le_bytes()),
            Meta::U32(v) => out.extend(v.to_le_bytes()),
            Meta::I32(v) => out.extend(v.to_le_bytes()),
            Meta::F32(v) => out.extend(v.to_le_bytes()),
            Meta::Bool(v) => out.push(u8::from(*v)),
            Meta::Str(s) => string(out, s),
            Meta::Array(ty, items) => {
                out.extend(ty.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            Meta::U64(v) => out.extend(v.to_le_bytes()),
            Meta::I64(v) => out.extend(v.to_le_bytes()),
            Meta::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A tensor: name, GGUF dims (innermost first), ggml type id and raw data.
pub struct GgufTensor {
    /// llama.cpp name.
    pub name: String,
    /// Dims, innermost first.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ty: u32,
    /// Encoded data.
    pub data: Vec<u8>,
}

/// Serialize a GGUF file (`version` 2 or 3; alignment 32 unless `general.alignment` says).
pub fn write(version: u32, kv: &[(&str, Meta)], tensors: &[GgufTensor]) -> Vec<u8> {
    let align = kv
        .iter()
        .find_map(|(k, v)| match (k, v) {
            (&"general.alignment", Meta::U32(a)) => Some(*a as usize),
            _ => None,
        })
        .unwrap_or(32);
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        string(&mut out, k);
        out.extend(v.ty().to_le_bytes());
        v.write(&mut out);
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += t.data.len().div_ceil(align) as u64 * align as u64;
    }
    while out.len() % align != 0 {
        out.push(0);
    }
    for t in tensors {
        out.extend(&t.data);
        while out.len() % align != 0 {
            out.push(0);
        }
    }
    out
}

fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Encode `values` (a multiple of 32 for the block types) as ggml type `ty`.
pub fn encode(values: &[f32], ty: u32) -> Vec<u8> {
    match ty {
        0 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        1 => values.iter().flat_map(|v| f16(*v)).collect(),
        30 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        8 => values
            .chunks(32)
            .flat_map(|b| {
                let d = b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                let mut out = f16(d).to_vec();
                out.extend(b.iter().map(|v| {
                    let q = if d > 0.0 { (v / d).round() } else { 0.0 };
                    q as i8 as u8
                }));
                out
            })
            .collect(),
        2 | 3 => values
            .chunks(32)
            .flat_map(|b| {
                let (mn, mx) = b
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, c), v| (a.min(*v), c.max(*v)));
                let (d, m, offset) = if ty == 3 {
                    ((mx - mn) / 15.0, mn, 0.0)
                } else {
                    (mx.abs().max(mn.abs()) / 8.0, 0.0, 8.0)
                };
                let q = |v: f32| {
                    let x = if d > 0.0 {
                        (v - m) / d + offset
                    } else {
                        offset
                    };
                    x.round().clamp(0.0, 15.0) as u8
                };
                let mut out = f16(d).to_vec();
                if ty == 3 {
                    out.extend(f16(m));
                }
                out.extend((0..16).map(|i| q(b[i]) | (q(b[i + 16]) << 4)));
                out
            })
            .collect(),
        other => panic!("no encoder for ggml type {other}"),
    }
}

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
