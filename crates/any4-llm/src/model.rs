//! Llama / Mistral / Mixtral causal LM over `QLinear`, with a caller-owned KV cache.
//!
//! One implementation serves all three: Mistral is Llama plus an optional sliding attention
//! window, Mixtral is Mistral with a sparse mixture of experts in place of each MLP.
//! Module paths (`layers.3.self_attn.q_proj`, `lm_head`) are HF's names without `model.`.

use any4_burn::{
    Any4Linear, BlockwiseModel, CalibrationStats, Calibrator, CpuMatmul, QLinear,
    impl_qlinear_container, transposed_contiguous,
};
use any4_core::Any4Config;
use any4_core::rng::SplitMix64;
use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};

use crate::attention::{DevicePosition, StepContext};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::kv_cache::{KvCache, StepShape};
use crate::layers::{Attention, DecoderLayer, Mlp};
use crate::moe::{Expert, SparseMoe};
use crate::ops;
use crate::rope::{RopeTables, inv_freq};
use crate::timing::{Op, span};

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

/// Random weights generated on the device, for speed measurements at a model's shape without
/// its files (decode speed does not depend on the values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomWeights {
    /// Float type of the embeddings, norms and dense linears (hence of the activations).
    pub dtype: DType,
    /// `Some`: every linear of the decoder layers is any4 under this config, with uniformly
    /// random codes and random tables and scales drawn directly on the device (no k-means).
    pub any4: Option<Any4Config>,
    /// With `any4`, the LM head too (an untied any4 head); otherwise the head is the embedding.
    pub lm_head: bool,
}

/// Where [`Builder`] takes the weights from.
enum Source<'a, 'b> {
    /// Named HF tensors, f32 values on the host.
    Read(&'a mut ReadTensor<'b>),
    /// Values drawn on the device.
    Random(RandomWeights),
}

/// Builds modules from named HF tensors, read through the caller's `get` or drawn at random.
struct Builder<'a, 'b> {
    source: Source<'a, 'b>,
    device: &'a Device,
    eps: f64,
}

impl Builder<'_, '_> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        match &mut self.source {
            Source::Read(get) => {
                let data = TensorData::new(get(name, &shape)?, shape.to_vec());
                Ok(Tensor::from_data(data, self.device))
            }
            Source::Random(w) => {
                let options = (self.device, w.dtype);
                Ok(if name.ends_with("norm.weight") {
                    Tensor::ones(shape, options)
                } else {
                    Tensor::random(
                        shape,
                        Distribution::Normal(0.0, random_std(name, &shape)),
                        options,
                    )
                })
            }
        }
    }
    fn norm(&mut self, name: &str, d: usize) -> Result<RmsNorm> {
        Ok(RmsNorm {
            gamma: param(self.tensor(name, [d])?),
            epsilon: self.eps,
        })
    }
    /// `prefix.weight` `[out, in]` (+ `prefix.bias` `[out]`).
    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<QLinear> {
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), [out])?)
        } else {
            None
        };
        if let Source::Random(w) = &self.source {
            let name = format!("{prefix}.weight");
            return Ok(match w.any4 {
                Some(cfg) if prefix != "lm_head" || w.lm_head => {
                    QLinear::Quant(random_any4(out, inp, cfg, b, self.device))
                }
                _ => QLinear::Dense(Linear {
                    weight: param(self.tensor(&name, [inp, out])?),
                    bias: b.map(param),
                }),
            });
        }
        let w = self.tensor(&format!("{prefix}.weight"), [out, inp])?;
        Ok(QLinear::from_hf(w, b))
    }
    /// A dense `nn::Linear` without bias from `name` `[out, in]` (Burn stores `[in, out]`).
    fn dense(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: param(transposed_contiguous(self.tensor(name, [out, inp])?)),
            bias: None,
        })
    }
    /// Whether the LM head is built on its own rather than tied to the embedding.
    fn untied_head(&self, config: &LlamaConfig) -> bool {
        match &self.source {
            Source::Read(_) => !config.tie_word_embeddings,
            Source::Random(w) => !config.tie_word_embeddings || (w.any4.is_some() && w.lm_head),
        }
    }
}

/// Standard deviation of random weights: `1/√fan_in` for linears (activations keep their
/// scale), 1 for embeddings.
fn random_std(name: &str, shape: &[usize]) -> f64 {
    if name.contains("embed") {
        1.0
    } else {
        1.0 / (*shape.last().unwrap_or(&1) as f64).sqrt()
    }
}

/// An any4 linear `[out, in]` with random codes, per-row tables and scales drawn on `device`.
fn random_any4(
    out: usize,
    inp: usize,
    config: Any4Config,
    bias: Option<Tensor<1>>,
    device: &Device,
) -> Any4Linear {
    let groups = config.group_size().groups_for(inp);
    let frozen = |t: Tensor<2>| Param::initialized(ParamId::new(), t).set_require_grad(false);
    let f32s =
        |shape: [usize; 2], d: Distribution| Tensor::<2>::random(shape, d, (device, DType::F32));
    let codes = Tensor::<2, Int>::random(
        [out, inp.div_ceil(8)],
        Distribution::Uniform(0.0, u32::MAX as f64),
        (device, DType::U32),
    );
    let table = f32s([out, 16], Distribution::Normal(0.0, 1.0));
    let table_i8 = any4_burn::int8_tables_tensor(&table).expect("a [out, 16] table");
    Any4Linear {
        codes: Param::initialized(ParamId::new(), codes),
        table_i8: Param::initialized(ParamId::new(), table_i8),
        table: frozen(table),
        scales: frozen(f32s(
            [out, groups],
            Distribution::Normal(0.0, 1.0 / (inp as f64).sqrt()),
        )),
        zeros: frozen(Tensor::zeros([out, groups], (device, DType::F32))),
        bias: bias.map(|b| Param::initialized(ParamId::new(), b).set_require_grad(false)),
        input_scale: None,
        config,
        cpu: CpuMatmul::Auto,
        d_input: inp,
        d_output: out,
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
        Self::build(config, device, Source::Read(get))
    }

    /// A model of `config`'s shape with random weights drawn directly on `device` (dense, or
    /// any4 with random codes: see [`RandomWeights`]); for measuring speed at a real model's
    /// shape without its files or a quantization run. Not seeded: the values are arbitrary.
    pub fn random_on_device(
        config: LlamaConfig,
        weights: RandomWeights,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, device, Source::Random(weights))
    }

    fn build(config: LlamaConfig, device: &Device, source: Source<'_, '_>) -> Result<Self> {
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
            source,
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
        let lm_head = if b.untied_head(&config) {
            b.linear("lm_head", v, d, false)?
        } else {
            QLinear::from_hf(embed.clone(), None)
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
            let std = random_std(name, shape);
            let mut r = SplitMix64::for_stream(seed, stream);
            Ok((0..n).map(|_| (r.next_gaussian() * std) as f32).collect())
        };
        Llama::from_tensors(config, device, &mut get)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// An empty KV cache for this model (buffers allocated on the first step, grown by doubling).
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// An empty KV cache that holds `positions` positions before it has to grow.
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        KvCache::with_capacity(self.layers.len(), positions)
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.weight.val().device()
    }

    /// Rotary tables and positions for `len` new positions from `start`, keys from `key_start`.
    fn context(&self, key_start: usize, start: usize, len: usize, device: &Device) -> StepContext {
        let _t = span(Op::Setup);
        StepContext::new(
            &self.rope_inv_freq,
            key_start,
            start,
            len,
            self.config.sliding_window,
            device,
        )
    }

    /// The hidden states after the final norm, `[batch, t or 1, hidden]` (only the last position
    /// when `last_only`), extending `cache` if given.
    fn run(
        &self,
        tokens: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Tensor<3> {
        let [batch, t] = tokens.dims();
        let mut h = {
            let _t = span(Op::Embed);
            self.embed_tokens.forward(tokens)
        };
        let window = self.config.sliding_window;
        match cache {
            Some(cache) => {
                cache.check_layers(self.layers.len());
                let shape = StepShape {
                    batch,
                    new: t,
                    kv_heads: self.config.kv_heads(),
                    head_dim: self.config.head_dim(),
                    dtype: h.dtype(),
                    device: h.device(),
                };
                let ctx = cache.begin(&shape, &self.rope_inv_freq, window);
                h = self.layers_over(h, &ctx, cache);
                cache.end(t, window);
            }
            None => {
                let ctx = self.context(0, 0, t, &h.device());
                for layer in &self.layers {
                    h = layer.forward(h, &ctx, None);
                }
            }
        }
        let h = if last_only && t > 1 {
            h.narrow(1, t - 1, 1)
        } else {
            h
        };
        let _t = span(Op::Norm);
        ops::rms_norm(h, &self.norm)
    }

    /// Logits `[1, vocab]` of one token `[1, 1]` at the device position `at`, extending `cache`
    /// (prepared by [`KvCache::device_steps`]) at slot `at.pos`; `rope` holds the rotary rows
    /// of every slot. No host value depends on the position, so a recording of this call
    /// replays at any position ([`crate::decode_graph`]).
    pub(crate) fn step_at(
        &self,
        token: Tensor<2, Int>,
        at: DevicePosition,
        rope: &RopeTables,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        let rows = {
            let _t = span(Op::Setup);
            rope.at(at.pos.clone())
        };
        let ctx = StepContext::at_device(rows, at);
        let h = {
            let _t = span(Op::Embed);
            self.embed_tokens.forward(token)
        };
        let h = self.layers_over(h, &ctx, cache);
        let h = {
            let _t = span(Op::Norm);
            ops::rms_norm(h, &self.norm)
        };
        let logits = self.head(h);
        let [b, _, v] = logits.dims();
        logits.reshape([b, v])
    }

    /// Every decoder layer over `h`, each writing its keys and values into its layer of `cache`.
    fn layers_over(&self, mut h: Tensor<3>, ctx: &StepContext, cache: &mut KvCache) -> Tensor<3> {
        for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward(h, ctx, Some(lc));
        }
        h
    }

    fn head(&self, h: Tensor<3>) -> Tensor<3> {
        let _t = span(Op::Head);
        self.lm_head.forward(h)
    }

    /// Logits `[batch, new, vocab]` for `tokens: [batch, new]` following what `cache` holds,
    /// which is extended: prefill with the whole prompt, then decode one token at a time.
    /// All sequences of a batch share positions (no padding).
    pub fn forward(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        ops::on_pool(&tokens.device(), tokens.dims().iter().product(), || {
            self.head(self.run(tokens, Some(cache), false))
        })
    }

    /// As [`forward`](Self::forward), but only the logits of the last new position,
    /// `[batch, vocab]`: what generation needs, and the LM head runs on one row instead of
    /// `new` (for a 512-token prompt of a 135M model the head is a fifth of the work).
    pub fn forward_last(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        let logits = ops::on_pool(&tokens.device(), tokens.dims().iter().product(), || {
            self.head(self.run(tokens, Some(cache), true))
        });
        let [b, _, v] = logits.dims();
        logits.reshape([b, v])
    }

    /// Logits `[batch, len, vocab]` for whole sequences from position 0, without a cache
    /// (perplexity, calibration).
    pub fn forward_all(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        ops::on_pool(&tokens.device(), tokens.dims().iter().product(), || {
            self.head(self.run(tokens, None, false))
        })
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
