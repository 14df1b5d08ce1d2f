//! # any4-llm
//!
//! Llama, Mistral (sliding-window attention) and Mixtral (sparse mixture of experts) causal
//! language models written once over [`any4_burn::QLinear`], so the same code runs dense or
//! any4-quantized: HF safetensors loading, tokenizer, KV-cached generation with sampling, and
//! GPTQ-style perplexity. In Mixtral every expert's `w1`/`w2`/`w3` is a `QLinear` (quantized
//! and calibrated on the tokens routed to it); the router stays dense.
//!
//! ```no_run
//! use any4_burn::{CALIBRATION_PROMPT, QuantizeConfig, quantize_model};
//! use any4_llm::{GenerateConfig, PerplexityConfig, generate, load_pretrained, perplexity, token_tensor};
//! use burn::tensor::Device;
//!
//! let device = Device::flex();
//! let (mut model, tok) = load_pretrained("models/tiny-llama", &device)?;
//! let text = std::fs::read_to_string("models/tiny-llama/heldout.txt").unwrap_or_default();
//! let cfg = PerplexityConfig { seq_len: 256, max_windows: Some(8), batch_size: 4 };
//! let dense = perplexity(&model, &tok, &text, &cfg)?;
//!
//! // One-shot calibration, then every linear but the LM head becomes any4.
//! let stats = model.calibrate(token_tensor(&tok.encode(CALIBRATION_PROMPT, true)?, &device));
//! let (model, report) = quantize_model(model, &QuantizeConfig::default(), Some(&stats))?;
//! let quantized = perplexity(&model, &tok, &text, &cfg)?;
//!
//! let prompt = tok.encode("The king said", true)?;
//! let out = generate(&model, &prompt, &GenerateConfig::default(), &mut |_| {})?;
//! println!("{} → {}: {}", dense.ppl, quantized.ppl, tok.decode(&out.tokens, true)?);
//! # Ok::<(), any4_llm::Error>(())
//! ```
#![warn(missing_docs)]

mod attention;
mod auto;
mod config;
mod decode_graph;
mod error;
mod eval;
mod fold;
mod generate;
pub mod gguf;
#[cfg(feature = "flex")]
mod host;
pub mod import;
mod kv_cache;
mod layers;
mod load;
mod model;
mod moe;
mod ops;
mod rope;
mod stream;
pub mod timing;
mod tokenizer;

pub use attention::{StepContext, attention_mask};
pub use auto::{is_gguf, load_auto, save_any4, save_any4_to};
pub use config::{
    Architecture, LlamaConfig, MoeConfig, RopeConfig, RopeScaling, RopeScalingConfig, TokenIds,
};
pub use error::{Error, Result};
pub use eval::{Dataset, Perplexity, PerplexityConfig, perplexity, perplexity_of_ids};
pub use fold::fold_input_scales;
pub use generate::{GenerateConfig, Generation, Sampling, generate, sample};
pub use gguf::{GgufSource, load_gguf};
pub use kv_cache::{KvCache, LayerCache};
pub use layers::{Attention, DecoderLayer, Mlp};
pub use load::{SafetensorsSource, TensorSource, load_model, load_pretrained};
pub use model::{
    Llama, RandomWeights, ReadTensor, hf_tensor_shapes, token_tensor, token_tensor_batch,
};
pub use moe::{Expert, Routing, SparseMoe};
pub use ops::set_host_kernels;
pub use rope::{RopeTables, inv_freq};
pub use stream::{Calibration, MemoryEstimate, StreamingQuantizer, format_bytes, is_streamable};
pub use tokenizer::Tokenizer;
