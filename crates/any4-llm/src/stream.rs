//! Streaming quantization: models larger than memory, one decoder block at a time.
//!
//! The in-memory pass loads the whole model in f32 (32 GB for an 8B model). Here the HF
//! safetensors files are memory-mapped and each block is loaded, calibrated on the running
//! activations, quantized, written to the output checkpoint and dropped before the next one:
//!
//! ```text
//! plan every output tensor from config.json → header of model.safetensors, file sized
//! embed_tokens: copy row blocks (→ f32) · gather the calibration tokens' rows → state h
//! for block i:  load it (f32) · attach a calibrator · forward h · detach → x̄ per layer
//!               quantize its selected layers · h ← forward (sequential: through the quantized
//!               block; one-shot: the dense output of the calibration forward) · write · drop
//! norm, lm_head: written (the head copied in row blocks, or calibrated on norm(h) and quantized)
//! ```
//!
//! Peak memory is about one block in f32 plus the calibration activations (`tokens × hidden`
//! per state) — see [`MemoryEstimate`]; the embedding and a dense LM head are never held.
//! The computation is the in-memory one, split differently: the same layer code runs the same
//! operations on the same values, so the checkpoint is byte-identical to what
//! [`quantize_model`] (one-shot) or [`quantize_model_sequential`](any4_burn::quantize_model_sequential)
//! followed by [`save_any4`](crate::save_any4) writes (tested on the tiny Llama, Mistral and
//! Mixtral). The folder is written atomically: it appears, whole, only when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use any4_burn::{
    CalibrationStats, Calibrator, CheckpointMeta, CheckpointWriter, LayerInfo, OutputDir,
    PlannedTensor, QLinear, QLinearContainer, QuantizeConfig, Report, join_path, quantize_model,
    write_checkpoint_streaming, write_file_atomically,
};
use burn::module::{Param, ParamId};
use burn::nn::RmsNorm;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::Dtype;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::load::{SafetensorsSource, TensorSource};
use crate::model::{Llama, hf_tensor_shapes};
use crate::tokenizer::Tokenizer;
use any4_burn::BlockwiseModel;

/// Where each block's calibration statistics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// From the full-precision model (what `quantize_model` after one forward does).
    OneShot,
    /// From the output of the already-quantized blocks before it (`quantize_model_sequential`).
    Sequential,
}

/// Bytes of dense parameters copied per write (embedding and LM head row blocks).
const COPY_CHUNK: usize = 16 << 20;

/// What streaming one model will hold in memory at its peak, in bytes (an estimate; see
/// [`StreamingQuantizer::memory_estimate`] for the terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// One decoder block in f32 plus the transient copies of its largest tensor.
    pub block: u64,
    /// Calibration activations: the running state and one block's intermediates.
    pub activations: u64,
    /// The LM head in f32 when it is quantized (0 when it is copied).
    pub head: u64,
    /// Process baseline (runtime, tokenizer, copy buffers).
    pub baseline: u64,
    /// The whole model in f32 plus one layer's copies: what the in-memory pass needs.
    pub in_memory: u64,
}

impl MemoryEstimate {
    /// Peak of the streaming pass.
    pub fn peak(&self) -> u64 {
        self.block.max(self.head) + self.activations + self.baseline
    }
}

/// `bytes` in GiB (MiB below 1 GiB) with two decimals, for messages.
pub fn format_bytes(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// An HF safetensors model folder opened for streaming quantization.
pub struct StreamingQuantizer {
    dir: PathBuf,
    config: LlamaConfig,
    tokenizer: Tokenizer,
    source: SafetensorsSource,
    device: Device,
}

impl std::fmt::Debug for StreamingQuantizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingQuantizer")
            .field("dir", &self.dir)
            .finish()
    }
}

/// A decoder block loaded alone, visited under its real path (`layers.3.…`).
struct Block {
    path: String,
    /// A one-block model holding it (rotary tables, window) with an empty vocabulary.
    model: Llama,
}

impl QLinearContainer for Block {
    fn visit_qlinears(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut QLinear)) {
        self.model.layers[0].visit_qlinears(&join_path(prefix, &self.path), f);
    }
}

/// The LM head alone, visited as `lm_head`.
struct Head(QLinear);

impl QLinearContainer for Head {
    fn visit_qlinears(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut QLinear)) {
        self.0.visit_qlinears(&join_path(prefix, "lm_head"), f);
    }
}

impl StreamingQuantizer {
    /// Open `dir` (`config.json`, `model.safetensors` or a sharded index, `tokenizer.json`);
    /// the safetensors files are memory-mapped, nothing is read yet.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let config = LlamaConfig::from_file(dir.join("config.json"))?;
        config.validate()?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"), &config)?;
        let source = SafetensorsSource::open_dir(dir)?;
        Ok(StreamingQuantizer {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            source,
            device: device.clone(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The model's tokenizer (to encode the calibration text).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Peak memory of streaming with `cfg` on `calib_tokens` tokens, from the config alone:
    /// - block: `4·P_block + 16·L` (P_block parameters of one block held in f32; L its largest
    ///   tensor, of which loading holds two more f32 copies and quantizing two: the host copy
    ///   and the any4 result with its reconstruction check);
    /// - activations: `4·T·(6·hidden + 4·intermediate)` per state, twice (the running state
    ///   and the calibration forward's), T tokens;
    /// - head: `12·vocab·hidden` when the LM head is quantized (f32 weight, host copy, layout
    ///   copy), else 0 (it is copied in row blocks);
    /// - baseline: 256 MiB.
    pub fn memory_estimate(&self, cfg: &QuantizeConfig, calib_tokens: usize) -> MemoryEstimate {
        let c = &self.config;
        let shapes = hf_tensor_shapes(c);
        let numel = |s: &Vec<usize>| s.iter().product::<usize>() as u64;
        let block: Vec<u64> = shapes
            .iter()
            .filter(|(n, _)| n.starts_with("model.layers.0."))
            .map(|(_, s)| numel(s))
            .collect();
        let total: u64 = shapes.iter().map(|(_, s)| numel(s)).sum();
        let largest = block.iter().copied().max().unwrap_or(0);
        let t = calib_tokens.max(1) as u64;
        let state = 4 * t * (6 * c.hidden_size as u64 + 4 * c.intermediate_size as u64);
        let head = if cfg.selects("lm_head") {
            12 * (c.vocab_size * c.hidden_size) as u64
        } else {
            0
        };
        let head_weights = (c.vocab_size * c.hidden_size) as u64;
        MemoryEstimate {
            block: 4 * block.iter().sum::<u64>() + 16 * largest,
            activations: 2 * state,
            head,
            baseline: 256 << 20,
            in_memory: 4 * total + 16 * largest.max(head_weights) + 2 * state + (256 << 20),
        }
    }

    /// Quantize the model into the any4 folder `out` (checked by [`any4_burn::check_output_dir`]
    /// with the model among the inputs; written whole or not at all), calibrating on the token
    /// ids `ids`.
    /// With `max_memory`, refuses before reading any weight when the [`MemoryEstimate`] peak
    /// is larger.
    pub fn run(
        &self,
        out: &OutputDir,
        cfg: &QuantizeConfig,
        calibration: Calibration,
        ids: &[u32],
        max_memory: Option<u64>,
    ) -> Result<Report> {
        let start = Instant::now();
        if ids.is_empty() {
            return Err(Error::Input(
                "streaming needs at least one calibration token".into(),
            ));
        }
        if let Some(limit) = max_memory {
            let est = self.memory_estimate(cfg, ids.len());
            if est.peak() > limit {
                return Err(Error::Input(format!(
                    "{}: streaming needs about {} at its peak (one block {}, activations of {} \
                     calibration tokens {}, LM head {}, baseline {}), over --max-memory {}: use \
                     fewer calibration tokens{} or a larger limit",
                    self.dir.display(),
                    format_bytes(est.peak()),
                    format_bytes(est.block),
                    ids.len(),
                    format_bytes(est.activations),
                    format_bytes(est.head),
                    format_bytes(est.baseline),
                    format_bytes(limit),
                    if est.head > 0 {
                        ", leave the LM head dense"
                    } else {
                        ""
                    }
                )));
            }
        }
        let (tensors, meta) = self.plan(cfg);
        let mut report = Report::default();
        out.write(|tmp| -> Result<()> {
            write_model_files(tmp, &self.config, &self.tokenizer, &meta)?;
            write_checkpoint_streaming(&tmp.join("model.safetensors"), tensors, meta, |w| {
                self.fill(w, cfg, calibration, ids, &mut report)
            })
        })?;
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Every tensor of the output and its `quantization_config` (see [`plan_checkpoint`]).
    fn plan(&self, cfg: &QuantizeConfig) -> (Vec<PlannedTensor>, CheckpointMeta) {
        plan_checkpoint(&self.config, &mut |layer, _| {
            cfg.selects(layer).then_some(cfg.any4)
        })
    }

    fn fill(
        &self,
        w: &mut CheckpointWriter,
        cfg: &QuantizeConfig,
        calibration: Calibration,
        ids: &[u32],
        report: &mut Report,
    ) -> Result<()> {
        let c = &self.config;
        let embed = "model.embed_tokens.weight";
        let mut state = self.embed_rows(embed, ids)?;
        self.copy_f32(w, embed, "embed_tokens.weight")?;
        let inner = cfg.clone().with_progress(false);
        let bar = progress(cfg, c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let mut block = Block {
                path: format!("layers.{i}"),
                model: self.load_block(i)?,
            };
            let mut calibrator = Calibrator::new();
            calibrator.attach(&mut block, |p| cfg.selects(p));
            let dense_out = block.model.block_forward(0, state.clone());
            let stats = calibrator.detach(&mut block);
            let (mut block, r) = quantize_model(block, &inner, Some(&stats))?;
            state = match calibration {
                Calibration::Sequential => block.model.block_forward(0, state),
                Calibration::OneShot => dense_out,
            };
            extend(report, r);
            w.put_module(&block.path, &mut block.model.layers[0])?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let norm = self.norm("model.norm.weight")?;
        let gamma = norm.gamma.val().into_data();
        w.put("norm.gamma", Dtype::F32, &[c.hidden_size], gamma.as_bytes())?;
        let head_source = if c.tie_word_embeddings {
            embed
        } else {
            "lm_head.weight"
        };
        if cfg.selects("lm_head") {
            let values = self
                .source
                .read(head_source, &[c.vocab_size, c.hidden_size])?;
            self.source.release(head_source);
            let weight = Tensor::<2>::from_data(
                TensorData::new(values, [c.vocab_size, c.hidden_size]),
                &self.device,
            );
            let mut head = Head(QLinear::from_hf(weight, None));
            let stats = record_head(&mut head, cfg, norm.forward(state));
            let (mut head, r) = quantize_model(head, &inner, Some(&stats))?;
            extend(report, r);
            w.put_module("lm_head", &mut head.0)?;
        } else {
            report.skipped.push("lm_head".into());
            self.copy_f32(w, head_source, "lm_head.weight")?;
        }
        Ok(())
    }

    /// The embedding rows of the calibration tokens, `[1, T, hidden]` (what the model's
    /// embedding lookup returns), without reading the rest of the table.
    fn embed_rows(&self, name: &str, ids: &[u32]) -> Result<Tensor<3>> {
        let (dtype, shape, bytes) = self.source.raw(name)?;
        let [vocab, d] = [self.config.vocab_size, self.config.hidden_size];
        self.check_shape(name, &shape, &[vocab, d])?;
        let row = d * dtype.bitsize() / 8;
        let mut values = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::Input(format!(
                    "calibration token id {id} is outside the vocabulary ({vocab} tokens)"
                )));
            }
            values.extend(self.to_f32(name, dtype, &bytes[id * row..(id + 1) * row])?);
        }
        self.source.release(name);
        Ok(Tensor::from_data(
            TensorData::new(values, [1, ids.len(), d]),
            &self.device,
        ))
    }

    fn copy_f32(&self, w: &mut CheckpointWriter, hf: &str, name: &str) -> Result<()> {
        let shape = [self.config.vocab_size, self.config.hidden_size];
        copy_f32(&self.source, w, hf, name, &shape)
    }

    fn to_f32(&self, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
        to_f32(&self.source, name, dtype, bytes)
    }

    fn check_shape(&self, name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
        check_shape(&self.source, name, found, expected)
    }

    /// Block `i` alone, built by the model's own loader as the only block of a model with an
    /// empty (one-token) vocabulary: the same name mapping, layouts and layer code as the
    /// whole model, without its embedding or head. Its tensors' mapped pages are dropped once
    /// read.
    fn load_block(&self, i: usize) -> Result<Llama> {
        let mut config = self.config.clone();
        config.num_hidden_layers = 1;
        config.vocab_size = 1;
        config.tie_word_embeddings = true;
        let prefix = format!("model.layers.{i}.");
        let mut get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            match name.strip_prefix("model.layers.0.") {
                Some(rest) => {
                    let real = format!("{prefix}{rest}");
                    let values = self.source.read(&real, shape);
                    self.source.release(&real);
                    values
                }
                // The one-token embedding and the final norm of the carrier model: unused.
                None => Ok(vec![0.0; shape.iter().product()]),
            }
        };
        Llama::from_tensors(config, &self.device, &mut get)
    }

    fn norm(&self, name: &str) -> Result<RmsNorm> {
        let d = self.config.hidden_size;
        let gamma = self.source.read(name, &[d])?;
        Ok(RmsNorm {
            gamma: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(gamma, [d]), &self.device),
            ),
            epsilon: self.config.rms_norm_eps,
        })
    }
}

/// The head's calibration statistic: its input `x` recorded by an attached calibrator, without
/// running the `tokens × vocab` matmul whose output calibration never looks at.
fn record_head(head: &mut Head, cfg: &QuantizeConfig, x: Tensor<3>) -> CalibrationStats {
    let mut calibrator = Calibrator::new();
    calibrator.attach(head, |p| cfg.selects(p));
    if let QLinear::Calibrating(c) = &head.0 {
        c.probe.record(&x);
    }
    calibrator.detach(head)
}

fn extend(report: &mut Report, part: Report) {
    report.layers.extend(part.layers);
    report.skipped.extend(part.skipped);
}

fn progress(cfg: &QuantizeConfig, blocks: usize) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(blocks as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} blocks ({elapsed}, {eta} left)",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("streaming");
    bar
}

/// Copy HF tensor `hf` (f32/f16/bf16, of shape `shape`) into checkpoint tensor `name` as f32,
/// a row block at a time, dropping each block's mapped pages once written.
pub(crate) fn copy_f32(
    source: &SafetensorsSource,
    w: &mut CheckpointWriter,
    hf: &str,
    name: &str,
    shape: &[usize],
) -> Result<()> {
    let (dtype, found, bytes) = source.raw(hf)?;
    check_shape(source, hf, &found, shape)?;
    let row = shape.last().copied().unwrap_or(1).max(1) * dtype.bitsize() / 8;
    let chunk = (COPY_CHUNK / row.max(1)).max(1) * row.max(1);
    for (k, part) in bytes.chunks(chunk).enumerate() {
        let values = to_f32(source, hf, dtype, part)?;
        let out: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.put_part(name, &out)?;
        source.release_part(hf, k * chunk..(k + 1) * chunk);
    }
    Ok(())
}

fn to_f32(source: &SafetensorsSource, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    any4_burn::bytes_to_f32(dtype, bytes).ok_or_else(|| Error::Dtype {
        path: source.location().to_path_buf(),
        tensor: name.to_string(),
        dtype: format!("{dtype:?}"),
    })
}

pub(crate) fn check_shape(
    source: &SafetensorsSource,
    name: &str,
    found: &[usize],
    expected: &[usize],
) -> Result<()> {
    if found != expected {
        return Err(Error::Shape {
            path: source.location().to_path_buf(),
            tensor: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// `config.json` (the model config plus `quantization_config`) and `tokenizer.json` of an any4
/// folder, as [`save_any4`](crate::save_any4) writes them.
pub(crate) fn write_model_files(
    dir: &Path,
    config: &LlamaConfig,
    tokenizer: &Tokenizer,
    qc: &CheckpointMeta,
) -> Result<()> {
    let mut json = serde_json::to_value(config).map_err(|e| Error::Input(e.to_string()))?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert(
            "quantization_config".into(),
            serde_json::to_value(qc).map_err(|e| Error::Input(e.to_string()))?,
        );
    }
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Input(e.to_string()))?;
    write_file_atomically(&dir.join("config.json"), text.as_bytes())?;
    let tok = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| Error::Tokenize(e.to_string()))?;
    write_file_atomically(&dir.join("tokenizer.json"), tok.as_bytes())?;
    Ok(())
}

/// Every tensor of an any4 checkpoint of the model `config` describes and its
/// `quantization_config`, from the config alone: HF names become module paths (`model.`
/// dropped, RMSNorm weights `gamma`), a linear layer for which `quantized(path, [out, in])`
/// gives a config becomes its any4 tensors, everything else f32 (the tied LM head included, as
/// its own layer). The same tensors, names and metadata as [`save`](any4_burn::save) of the
/// loaded model quantized that way.
pub(crate) fn plan_checkpoint(
    config: &LlamaConfig,
    quantized: &mut dyn FnMut(&str, [usize; 2]) -> Option<any4_core::Any4Config>,
) -> (Vec<PlannedTensor>, CheckpointMeta) {
    let mut shapes = hf_tensor_shapes(config);
    if config.tie_word_embeddings {
        shapes.push((
            "lm_head.weight".into(),
            vec![config.vocab_size, config.hidden_size],
        ));
    }
    let shapes: Vec<(String, Vec<usize>)> = shapes
        .into_iter()
        .map(|(n, s)| (checkpoint_name(&n), s))
        .collect();
    let is_linear = |n: &str, s: &[usize]| {
        s.len() == 2
            && n.ends_with(".weight")
            && n != "embed_tokens.weight"
            && !n.ends_with("block_sparse_moe.gate.weight")
    };
    let mut layers = BTreeMap::new();
    let mut dense = Vec::new();
    for (name, shape) in &shapes {
        if !is_linear(name, shape) {
            continue;
        }
        let layer = name.trim_end_matches(".weight");
        match quantized(layer, [shape[0], shape[1]]) {
            Some(any4) => {
                let bias = shapes.iter().any(|(n, _)| *n == format!("{layer}.bias"));
                let info = LayerInfo::planned(any4, [shape[0], shape[1]], bias);
                layers.insert(layer.to_string(), info);
            }
            None => dense.push(layer.to_string()),
        }
    }
    let mut tensors = Vec::new();
    for (name, shape) in &shapes {
        let owner = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"))
            .unwrap_or(name);
        match layers.get(owner) {
            // Its tensors are planned once, with the weight.
            Some(info) if name.ends_with(".weight") => {
                tensors.extend(PlannedTensor::quantized(owner, info))
            }
            Some(_) => {}
            None => tensors.push(PlannedTensor::f32(name.clone(), shape)),
        }
    }
    (tensors, CheckpointMeta::new(layers, dense))
}

/// HF tensor name → checkpoint name: `model.` dropped, RMSNorm weights called `gamma`.
pub(crate) fn checkpoint_name(hf: &str) -> String {
    let name = hf.strip_prefix("model.").unwrap_or(hf);
    match name.strip_suffix("norm.weight") {
        Some(p) => format!("{p}norm.gamma"),
        None => name.to_string(),
    }
}

/// Whether `dir` is a dense HF safetensors folder the streaming pass can read (not GGUF, not
/// an any4 folder): `config.json` and `model.safetensors` or its shard index.
pub fn is_streamable(dir: &Path) -> bool {
    dir.is_dir()
        && dir.join("config.json").is_file()
        && (dir.join("model.safetensors.index.json").is_file()
            || (dir.join("model.safetensors").is_file()
                && !any4_burn::is_any4_checkpoint(&dir.join("model.safetensors"))))
}
