//! Llama / Mistral / Mixtral causal LM over `QLinear`, with a caller-owned KV cache.
//!
//! One implementation serves all three: Mistral is Llama plus an optional sliding attention
//! window, Mixtral is Mistral with a sparse mixture of experts in place of each MLP.
//! Module paths (`layers.3.self_attn.q_proj`, `lm_head`) are HF's names without `model.`.

use any4_burn::{
    BlockwiseModel, CalibrationStats, Calibrator, QLinear, impl_qlinear_container,
    transposed_contiguous,
};
use any4_core::rng::SplitMix64;
use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::layers::{Attention, DecoderLayer, LayerCache, Mlp, StepContext};
use crate::moe::{Expert, SparseMoe};
use crate::rope::inv_freq;

/// Keys and values of every layer for the tokens processed so far (owned by the caller, so
/// several conversations can share one model).
///
/// With a sliding window `w` (Mistral), only the last `w − 1` positions are kept between calls:
/// memory stays bounded however long the generation runs.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions processed.
    len: usize,
    /// Position of the oldest cached key (`> 0` once a sliding window dropped some).
    start: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
            start: 0,
        }
    }
    /// Tokens (positions) cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Positions actually held (fewer than [`len`](Self::len) once a sliding window trimmed).
    pub fn cached(&self) -> usize {
        self.len - self.start
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Forget everything (start a new sequence).
    pub fn clear(&mut self) {
        let n = self.layers.len();
        *self = KvCache::new(n);
    }
}

/// A Llama-family causal language model (Llama, Mistral, Mixtral: see [`LlamaConfig::moe`]).
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    /// Output projection `[hidden] → [vocab]` (a copy of the embedding when tied).
    pub lm_head: QLinear,
    /// The HF config the model was built from.
    #[module(skip)]
    pub config: LlamaConfig,
    /// Rotary inverse frequencies (after scaling), computed once.
    pub rope_inv_freq: Vec<f32>,
}
impl_qlinear_container!(Llama { layers, lm_head });

/// HF tensor names and shapes (`[out, in]` for linears) the config implies, in load order.
///
/// A config whose expert counts do not validate is read as dense here; model construction
/// refuses it.
pub fn hf_tensor_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let moe = cfg.moe().ok().flatten();
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.kv_heads() * cfg.head_dim(),
    );
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut push = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        push("input_layernorm.weight", vec![d]);
        for (name, o, i) in [
            ("q_proj", q, d),
            ("k_proj", kv, d),
            ("v_proj", kv, d),
            ("o_proj", d, q),
        ] {
            push(&format!("self_attn.{name}.weight"), vec![o, i]);
            if cfg.attention_bias {
                push(&format!("self_attn.{name}.bias"), vec![o]);
            }
        }
        push("post_attention_layernorm.weight", vec![d]);
        if let Some(moe) = moe {
            push("block_sparse_moe.gate.weight", vec![moe.num_experts, d]);
            for e in 0..moe.num_experts {
                for (name, o, i) in [("w1", f, d), ("w2", d, f), ("w3", f, d)] {
                    push(
                        &format!("block_sparse_moe.experts.{e}.{name}.weight"),
                        vec![o, i],
                    );
                }
            }
            continue;
        }
        for (name, o, i) in [("gate_proj", f, d), ("up_proj", f, d), ("down_proj", d, f)] {
            push(&format!("mlp.{name}.weight"), vec![o, i]);
            if cfg.mlp_bias {
                push(&format!("mlp.{name}.bias"), vec![o]);
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d]));
    }
    out
}

/// `read(name, shape)`: the f32 values (row-major) of HF tensor `name`, checked against `shape`.
pub type ReadTensor<'a> = dyn FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a;

/// Reads named HF tensors through the caller's `get` and wraps them as modules.
struct Builder<'a, 'b> {
    get: &'a mut ReadTensor<'b>,
    device: &'a Device,
    eps: f64,
}

impl Builder<'_, '_> {
    fn data(&mut self, name: &str, shape: &[usize]) -> Result<TensorData> {
        Ok(TensorData::new((self.get)(name, shape)?, shape.to_vec()))
    }
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        Ok(Tensor::from_data(self.data(name, &shape)?, self.device))
    }
    fn norm(&mut self, name: &str, d: usize) -> Result<RmsNorm> {
        Ok(RmsNorm {
            gamma: param(self.tensor(name, [d])?),
            epsilon: self.eps,
        })
    }
    /// `prefix.weight` `[out, in]` (+ `prefix.bias` `[out]`).
    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<QLinear> {
        let w = self.tensor(&format!("{prefix}.weight"), [out, inp])?;
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), [out])?)
        } else {
            None
        };
        Ok(QLinear::from_hf(w, b))
    }
    /// A dense `nn::Linear` without bias from `name` `[out, in]` (Burn stores `[in, out]`).
    fn dense(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: param(transposed_contiguous(self.tensor(name, [out, inp])?)),
            bias: None,
        })
    }
}

fn param<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::initialized(ParamId::new(), t)
}

impl Llama {
    /// Build from named HF tensors: `get(name, shape)` returns the f32 values (row-major) of
    /// tensor `name`, checked against `shape`. Loaders (safetensors, later GGUF) and the random
    /// initialiser all go through here, so the name mapping lives in one place.
    pub fn from_tensors(
        config: LlamaConfig,
        device: &Device,
        get: &mut ReadTensor<'_>,
    ) -> Result<Self> {
        config.validate()?;
        let (d, f, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let (heads, kv_heads, hd) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
        );
        let (ab, mb) = (config.attention_bias, config.mlp_bias);
        let moe_config = config.moe()?;
        let mut b = Builder {
            get,
            device,
            eps: config.rms_norm_eps,
        };
        let embed = b.tensor("model.embed_tokens.weight", [v, d])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let input_layernorm = b.norm(&format!("{p}.input_layernorm.weight"), d)?;
            let a = format!("{p}.self_attn");
            let self_attn = Attention {
                q_proj: b.linear(&format!("{a}.q_proj"), heads * hd, d, ab)?,
                k_proj: b.linear(&format!("{a}.k_proj"), kv_heads * hd, d, ab)?,
                v_proj: b.linear(&format!("{a}.v_proj"), kv_heads * hd, d, ab)?,
                o_proj: b.linear(&format!("{a}.o_proj"), d, heads * hd, ab)?,
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: hd,
            };
            let post_attention_layernorm =
                b.norm(&format!("{p}.post_attention_layernorm.weight"), d)?;
            let (mlp, block_sparse_moe) = match moe_config {
                None => {
                    let m = format!("{p}.mlp");
                    let mlp = Mlp {
                        gate_proj: b.linear(&format!("{m}.gate_proj"), f, d, mb)?,
                        up_proj: b.linear(&format!("{m}.up_proj"), f, d, mb)?,
                        down_proj: b.linear(&format!("{m}.down_proj"), d, f, mb)?,
                    };
                    (Some(mlp), None)
                }
                Some(moe) => {
                    let m = format!("{p}.block_sparse_moe");
                    let gate = b.dense(&format!("{m}.gate.weight"), moe.num_experts, d)?;
                    let experts = (0..moe.num_experts)
                        .map(|e| {
                            let x = format!("{m}.experts.{e}");
                            Ok(Expert {
                                w1: b.linear(&format!("{x}.w1"), f, d, false)?,
                                w2: b.linear(&format!("{x}.w2"), d, f, false)?,
                                w3: b.linear(&format!("{x}.w3"), f, d, false)?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let moe = SparseMoe {
                        gate,
                        experts,
                        top_k: moe.top_k,
                    };
                    (None, Some(moe))
                }
            };
            layers.push(DecoderLayer {
                self_attn,
                mlp,
                block_sparse_moe,
                input_layernorm,
                post_attention_layernorm,
            });
        }
        let norm = b.norm("model.norm.weight", d)?;
        let lm_head = if config.tie_word_embeddings {
            QLinear::from_hf(embed.clone(), None)
        } else {
            b.linear("lm_head", v, d, false)?
        };
        let rope_inv_freq = inv_freq(&config.rope()?);
        Ok(Llama {
            embed_tokens: Embedding {
                weight: param(embed),
            },
            layers,
            norm,
            lm_head,
            config,
            rope_inv_freq,
        })
    }

    /// A randomly initialised model, deterministic in `seed` (for tests and fixtures): linear
    /// weights `N(0, 1/fan_in)` so activations keep their scale, embeddings `N(0, 1)`, unit norms.
    pub fn random(config: LlamaConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut stream = 0u64;
        let mut get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            stream += 1;
            let n: usize = shape.iter().product();
            if name.ends_with("norm.weight") {
                return Ok(vec![1.0; n]);
            }
            let std = if name.contains("embed") {
                1.0
            } else {
                1.0 / (*shape.last().unwrap_or(&1) as f64).sqrt()
            };
            let mut r = SplitMix64::for_stream(seed, stream);
            Ok((0..n).map(|_| (r.next_gaussian() * std) as f32).collect())
        };
        Llama::from_tensors(config, device, &mut get)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.weight.val().device()
    }

    /// Rotary tables for `len` new positions from `start`, and their mask over keys from
    /// `key_start`.
    fn context(&self, key_start: usize, start: usize, len: usize, device: &Device) -> StepContext {
        StepContext::new(
            &self.rope_inv_freq,
            key_start,
            start,
            len,
            self.config.sliding_window,
            device,
        )
    }

    fn run(&self, tokens: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let (key_start, start) = cache.as_ref().map_or((0, 0), |c| (c.start, c.len));
        if let Some(c) = cache.as_ref() {
            assert_eq!(
                c.layers.len(),
                self.layers.len(),
                "KV cache made for a model with another layer count"
            );
        }
        let ctx = self.context(key_start, start, t, &tokens.device());
        let mut h = self.embed_tokens.forward(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = layer.forward(h, &ctx, layer_cache);
        }
        if let Some(c) = cache {
            c.len += t;
            if let Some(w) = self.config.sliding_window {
                let keep = (w - 1).min(c.len);
                c.layers.iter_mut().for_each(|l| l.keep_last(keep));
                c.start = c.len - keep;
            }
        }
        self.lm_head.forward(self.norm.forward(h))
    }

    /// Logits `[batch, new, vocab]` for `tokens: [batch, new]` following what `cache` holds,
    /// which is extended: prefill with the whole prompt, then decode one token at a time.
    /// All sequences of a batch share positions (no padding).
    pub fn forward(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.run(tokens, Some(cache))
    }

    /// Logits `[batch, len, vocab]` for whole sequences from position 0, without a cache
    /// (perplexity, calibration).
    pub fn forward_all(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.run(tokens, None)
    }

    /// One-shot calibration: per-channel input means of every linear layer over `tokens`.
    pub fn calibrate(&mut self, tokens: Tensor<2, Int>) -> CalibrationStats {
        let mut calibrator = Calibrator::new();
        calibrator.attach(self, |_| true);
        let _ = self.forward_all(tokens);
        calibrator.detach(self)
    }

    /// Whether any linear layer is quantized.
    pub fn is_quantized(&mut self) -> bool {
        let mut any = false;
        any4_burn::QLinearContainer::visit_qlinears(self, "", &mut |_, l| any |= l.is_quantized());
        any
    }
}

impl BlockwiseModel for Llama {
    type Input = Tensor<2, Int>;
    type State = Tensor<3>;
    fn num_blocks(&self) -> usize {
        self.layers.len()
    }
    fn block_path(&self, i: usize) -> String {
        format!("layers.{i}")
    }
    fn embed(&self, input: &Tensor<2, Int>) -> Tensor<3> {
        self.embed_tokens.forward(input.clone())
    }
    fn block_forward(&self, i: usize, h: Tensor<3>) -> Tensor<3> {
        let ctx = self.context(0, 0, h.dims()[1], &h.device());
        self.layers[i].forward(h, &ctx, None)
    }
    fn head_forward(&self, h: Tensor<3>) {
        let _ = self.lm_head.forward(self.norm.forward(h));
    }
}

/// `[1, len]` token tensor of `ids`.
pub fn token_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    token_tensor_batch(&[ids], device)
}

/// `[rows, len]` token tensor; every row must have the same length (asserted).
pub fn token_tensor_batch(rows: &[&[u32]], device: &Device) -> Tensor<2, Int> {
    let len = rows.first().map_or(0, |r| r.len());
    assert!(
        rows.iter().all(|r| r.len() == len),
        "token rows of different lengths"
    );
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&t| t as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
}
