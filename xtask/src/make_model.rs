//! `cargo xtask make-model --preset NAME --random --out DIR`: a model folder of a real model's
//! shapes with random weights, without downloading anything — for measuring what depends on
//! size alone (streaming quantization's memory and time).
//!
//! Writes HF's sharded layout: `model-0000i-of-0000n.safetensors` (bf16, shards of about
//! 5 GB, tensors in HF order), `model.safetensors.index.json`, `config.json`, and the embedded
//! tiny Llama's `tokenizer.json` (its ids are valid embedding rows; `bos`/`eos` set to its 0/1).
//! Weights are uniform with the standard deviation of `N(0, 1/fan_in)` (embeddings 1, norms
//! exactly 1), from a SplitMix64 stream per tensor: the same seed gives the same bytes. Each
//! tensor is generated and written in 64 MiB pieces by two threads, so memory stays small.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Shapes of a preset: `(hidden, intermediate, layers, heads, kv_heads, vocab, rope_theta)`.
struct Preset {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    rope_theta: f64,
    max_positions: usize,
}

fn preset(name: &str) -> Result<Preset, String> {
    match name {
        // meta-llama/Meta-Llama-3-8B's config.json shapes.
        "llama-3-8b" => Ok(Preset {
            hidden: 4096,
            intermediate: 14336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            vocab: 128_256,
            rope_theta: 500_000.0,
            max_positions: 8192,
        }),
        // The same architecture at 1/8 the width and 2 layers: a quick check of the command.
        "llama-3-8b-mini" => Ok(Preset {
            hidden: 512,
            intermediate: 1792,
            layers: 2,
            heads: 4,
            kv_heads: 1,
            vocab: 128_256,
            rope_theta: 500_000.0,
            max_positions: 8192,
        }),
        other => Err(format!(
            "unknown preset `{other}` (available: llama-3-8b, llama-3-8b-mini)"
        )),
    }
}

/// HF tensor names and shapes in HF's order.
fn tensors(p: &Preset) -> Vec<(String, Vec<usize>)> {
    let (d, f, hd) = (p.hidden, p.intermediate, p.hidden / p.heads);
    let (q, kv) = (p.heads * hd, p.kv_heads * hd);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![p.vocab, d])];
    for i in 0..p.layers {
        let l = format!("model.layers.{i}");
        out.push((format!("{l}.input_layernorm.weight"), vec![d]));
        out.push((format!("{l}.self_attn.q_proj.weight"), vec![q, d]));
        out.push((format!("{l}.self_attn.k_proj.weight"), vec![kv, d]));
        out.push((format!("{l}.self_attn.v_proj.weight"), vec![kv, d]));
        out.push((format!("{l}.self_attn.o_proj.weight"), vec![d, q]));
        out.push((format!("{l}.post_attention_layernorm.weight"), vec![d]));
        out.push((format!("{l}.mlp.gate_proj.weight"), vec![f, d]));
        out.push((format!("{l}.mlp.up_proj.weight"), vec![f, d]));
        out.push((format!("{l}.mlp.down_proj.weight"), vec![d, f]));
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    out.push(("lm_head.weight".to_string(), vec![p.vocab, d]));
    out
}

/// SplitMix64: a tiny, fast, seedable generator (Steele, Lea & Flood 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// bf16 bytes of values `start..start + n` of tensor number `index`: uniform on `[−a, a]` with
/// `a = √3·std` (so the standard deviation is `std`), or 1 for norms.
fn piece(index: u64, seed: u64, start: usize, n: usize, std: f32, norm: bool) -> Vec<u8> {
    let mut out = vec![0u8; 2 * n];
    if norm {
        let one = half_bf16(1.0).to_le_bytes();
        out.chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&one));
        return out;
    }
    let a = 3f32.sqrt() * std;
    // One generator per 4096 values so that any piece can start anywhere deterministically.
    const BLOCK: usize = 4096;
    let threads = 2;
    let per = n.div_ceil(threads).next_multiple_of(BLOCK);
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(2 * per).enumerate() {
            s.spawn(move || {
                let first = start + t * per;
                for (b, block) in chunk.chunks_mut(2 * BLOCK).enumerate() {
                    let block_index = (first / BLOCK + b) as u64;
                    let mut rng = SplitMix64(
                        seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)
                            ^ block_index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    for c in block.chunks_exact_mut(2) {
                        let u = (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
                        c.copy_from_slice(&half_bf16(a * (2.0 * u - 1.0)).to_le_bytes());
                    }
                }
            });
        }
    });
    out
}

/// f32 → bf16 bits, round to nearest even (finite inputs).
fn half_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let round = 0x7FFF + ((bits >> 16) & 1);
    ((bits + round) >> 16) as u16
}

/// `make-model --preset NAME --random --out DIR [--seed S]`.
pub fn make_model(args: &[String]) -> Result<(), String> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if !args.iter().any(|a| a == "--random") {
        return Err("only random weights are supported: pass --random".into());
    }
    let name = value("--preset").ok_or("--preset NAME is required")?;
    let out = PathBuf::from(value("--out").ok_or("--out DIR is required")?);
    let seed: u64 = value("--seed")
        .map(|s| s.parse().map_err(|e| format!("--seed: {e}")))
        .transpose()?
        .unwrap_or(0);
    let p = preset(&name)?;
    if out.exists() {
        return Err(format!("{}: already exists", out.display()));
    }
    let list = tensors(&p);
    let total: usize = list
        .iter()
        .map(|(_, s)| 2 * s.iter().product::<usize>())
        .sum();
    eprintln!(
        "make-model {name}: {} tensors, {:.2} GB of bf16 into {}",
        list.len(),
        total as f64 / 1e9,
        out.display()
    );
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    write_shards(&tmp, &list, seed)?;
    write_config(&tmp, &p)?;
    let tok = Path::new("models/tiny-llama/tokenizer.json");
    std::fs::copy(tok, tmp.join("tokenizer.json"))
        .map_err(|e| format!("{}: {e}", tok.display()))?;
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("make-model: wrote {}", out.display());
    Ok(())
}

/// Shards of at most ~5 GB, each a safetensors file, plus the index.
fn write_shards(dir: &Path, list: &[(String, Vec<usize>)], seed: u64) -> Result<(), String> {
    const SHARD: usize = 5_000_000_000;
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, (_, shape)) in list.iter().enumerate() {
        let bytes = 2 * shape.iter().product::<usize>();
        if size + bytes > SHARD && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("non-empty").push(i);
        size += bytes;
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (s, members) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", s + 1);
        let path = dir.join(&file);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut offset = 0usize;
        for &i in members {
            let (name, shape) = &list[i];
            let bytes = 2 * shape.iter().product::<usize>();
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
            offset += bytes;
        }
        total += offset;
        let mut text = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        text.resize(text.len().next_multiple_of(8), b' ');
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
        w.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&text).map_err(io)?;
        for &i in members {
            let (name, shape) = &list[i];
            let numel: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let std = if name.contains("embed") {
                1.0
            } else {
                1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt()
            };
            const PIECE: usize = 32 << 20;
            let mut start = 0;
            while start < numel {
                let len = PIECE.min(numel - start);
                w.write_all(&piece(i as u64, seed, start, len, std, norm))
                    .map_err(io)?;
                start += len;
            }
        }
        w.flush().map_err(io)?;
        eprintln!(
            "  {file}: {} tensors, {:.2} GB",
            members.len(),
            offset as f64 / 1e9
        );
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let path = dir.join("model.safetensors.index.json");
    let text = serde_json::to_string_pretty(&index).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_config(dir: &Path, p: &Preset) -> Result<(), String> {
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden,
        "intermediate_size": p.intermediate,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": p.rope_theta,
        "max_position_embeddings": p.max_positions,
        "vocab_size": p.vocab,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "bfloat16",
        // The embedded tokenizer's ids (the model is random: only shapes matter).
        "bos_token_id": 0,
        "eos_token_id": 1,
    });
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}
