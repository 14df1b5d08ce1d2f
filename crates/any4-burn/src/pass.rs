//! The quantization pass: every selected dense `QLinear` of a model becomes an any4 layer.
//!
//! Two calibration modes (docs/METHOD.md §3):
//! - **one-shot** ([`quantize_model`]): statistics from the full-precision model, collected by the
//!   caller with a [`Calibrator`](crate::Calibrator) in one forward pass (or none: unweighted);
//! - **sequential** ([`quantize_model_sequential`]): block by block, each block calibrated on the
//!   output of the already-quantized blocks before it — one forward per block to record, one
//!   through the quantized block to move on, instead of the reference's forward per linear.
//!
//! Only one layer's dense weight is copied to the host at a time; rows are quantized in
//! parallel on all cores (any4-core), and the result does not depend on the thread count.
//!
//! With [`Method::Gptq`] (error feedback) the calibration must record Gram matrices
//! ([`Calibrator::with_gram`]); the dampened Cholesky factor is computed once per distinct
//! layer input and reused by the layers that share it (q/k/v, gate/up, visited in a row).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use any4_core::act_scale::{ActScaleConfig, scale_columns, scale_stats};
use any4_core::{Any4Config, GptqConfig, Gram, HessianFactor, Method, OutputError};
use burn::tensor::{Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use crate::act_scale::{InputScales, search_scales};
use crate::calib::{CalibrationStats, Calibrator};
use crate::error::{Error, Result};
use crate::linear::{Any4Linear, QLinear, QLinearContainer, read_vec};
use crate::pattern::LayerPattern;

/// What to quantize and how.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    /// Format, group size, scaling, k-means options.
    pub any4: Any4Config,
    /// Layers to quantize (empty: all). Patterns: see [`LayerPattern`].
    pub include: Vec<LayerPattern>,
    /// Layers to leave dense; by default the LM head and embeddings.
    pub exclude: Vec<LayerPattern>,
    /// How codes are assigned: round-to-nearest or error feedback.
    pub method: Method,
    /// Activation-aware input scales, searched per layer input (needs Gram matrices).
    pub act_scale: Option<ActScaleConfig>,
    /// Bytes of Gram matrices one calibration may hold (error feedback; see [`Calibrator`]).
    pub gram_budget: u64,
    /// Record Gram matrices even when the method does not need them, to report each layer's
    /// output error on the calibration tokens ([`LayerReport::output_rel_err`]).
    pub measure_output_error: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Default [`QuantizeConfig::gram_budget`]: 4 GiB.
pub const DEFAULT_GRAM_BUDGET: u64 = 4 << 30;

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig::new(Any4Config::default())
    }
}

impl QuantizeConfig {
    /// Quantize every layer but `lm_head` and embeddings with `any4`.
    pub fn new(any4: Any4Config) -> Self {
        QuantizeConfig {
            any4,
            include: Vec::new(),
            exclude: ["lm_head", "*embed*"]
                .into_iter()
                .map(|p| LayerPattern::new(p).expect("valid default pattern"))
                .collect(),
            method: Method::Rtn,
            act_scale: None,
            gram_budget: DEFAULT_GRAM_BUDGET,
            measure_output_error: false,
            progress: false,
        }
    }
    /// Set the method (error feedback needs a calibration with Gram matrices).
    pub fn with_method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
    /// Set activation-aware scales.
    pub fn with_act_scale(mut self, act_scale: Option<ActScaleConfig>) -> Self {
        self.act_scale = act_scale;
        self
    }
    /// Whether the calibration must record Gram matrices (error feedback, activation scales).
    pub fn needs_gram(&self) -> bool {
        self.method.needs_gram() || self.act_scale.is_some()
    }
    /// A calibrator recording what this configuration needs (Gram matrices for error feedback).
    pub fn calibrator(&self) -> Calibrator {
        if self.needs_gram() || self.measure_output_error {
            Calibrator::with_gram(self.gram_budget)
        } else {
            Calibrator::new()
        }
    }
    /// Also leave layers matching `pattern` dense.
    pub fn exclude(mut self, pattern: &str) -> Result<Self> {
        self.exclude.push(LayerPattern::new(pattern)?);
        Ok(self)
    }
    /// Quantize only layers matching one of the include patterns.
    pub fn include(mut self, pattern: &str) -> Result<Self> {
        self.include.push(LayerPattern::new(pattern)?);
        Ok(self)
    }
    /// Also quantize the LM head (`lm_head`), which [`new`](Self::new) leaves dense as the paper
    /// does: on a small model it is the largest matrix a decode step reads (SmolLM2-135M: 113 MB
    /// in f32 against 62 MB for every other layer in any4), at some cost in perplexity.
    pub fn with_lm_head(mut self, on: bool) -> Self {
        self.exclude.retain(|p| p.as_str() != "lm_head");
        if !on {
            self.exclude
                .push(LayerPattern::new("lm_head").expect("valid default pattern"));
        }
        self
    }
    /// Show a progress bar.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }
    /// Whether the layer at `path` is to be quantized.
    pub fn selects(&self, path: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(path)))
            && !self.exclude.iter().any(|p| p.matches(path))
    }
}

/// What happened to one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// Module path.
    pub path: String,
    /// `[d_output, d_input]`.
    pub shape: [usize; 2],
    /// `‖W − Ŵ‖² / ‖W‖²`.
    pub rel_mse: f64,
    /// Activation-weighted relative error `Σ|x̄_j|(w−ŵ)² / Σ|x̄_j| w²` (with statistics).
    pub weighted_rel_mse: Option<f64>,
    /// Storage bits per weight.
    pub bits_per_weight: f64,
    /// Relative output error on the calibration tokens, `tr(ΔHΔᵀ) / tr(WHWᵀ)` (when the
    /// calibration recorded Gram matrices).
    pub output_rel_err: Option<f64>,
    /// Calibration tokens the layer's statistics came from (`Some(0)`: attached but never
    /// reached, e.g. an expert no calibration token was routed to, so quantized unweighted).
    pub calib_tokens: Option<u64>,
    /// Wall time to quantize it.
    pub seconds: f64,
}

/// Summary of a pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Quantized layers, in model order.
    pub layers: Vec<LayerReport>,
    /// Layers left dense (excluded or not selected).
    pub skipped: Vec<String>,
    /// Total wall time.
    pub seconds: f64,
}

impl Report {
    /// Quantized weights in all.
    pub fn weights(&self) -> usize {
        self.layers.iter().map(|l| l.shape[0] * l.shape[1]).sum()
    }
    /// Weight-averaged bits per weight of the quantized layers.
    pub fn bits_per_weight(&self) -> f64 {
        let n = self.weights().max(1) as f64;
        self.layers
            .iter()
            .map(|l| l.bits_per_weight * (l.shape[0] * l.shape[1]) as f64)
            .sum::<f64>()
            / n
    }
    /// Weight-averaged activation-weighted relative error over the layers that had calibration
    /// statistics (`None` if none had): the error the next layer sees, to first order.
    pub fn weighted_rel_mse(&self) -> Option<f64> {
        let (sum, n) = self
            .layers
            .iter()
            .filter_map(|l| {
                l.weighted_rel_mse
                    .map(|e| (e, (l.shape[0] * l.shape[1]) as f64))
            })
            .fold((0.0, 0.0), |(s, n), (e, w)| (s + e * w, n + w));
        (n > 0.0).then(|| sum / n)
    }

    /// Weight-averaged relative output error over the layers that had a Gram matrix.
    pub fn output_rel_err(&self) -> Option<f64> {
        let (sum, n) = self
            .layers
            .iter()
            .filter_map(|l| {
                l.output_rel_err
                    .map(|e| (e, (l.shape[0] * l.shape[1]) as f64))
            })
            .fold((0.0, 0.0), |(s, n), (e, w)| (s + e * w, n + w));
        (n > 0.0).then(|| sum / n)
    }

    /// Weight-averaged relative MSE.
    pub fn rel_mse(&self) -> f64 {
        let n = self.weights().max(1) as f64;
        self.layers
            .iter()
            .map(|l| l.rel_mse * (l.shape[0] * l.shape[1]) as f64)
            .sum::<f64>()
            / n
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| layer | shape | rel. MSE | weighted rel. MSE | bits/w | time |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for l in &self.layers {
            let w = l
                .weighted_rel_mse
                .map_or("-".into(), |v| format!("{v:.3e}"));
            writeln!(
                f,
                "| {} | {}×{} | {:.3e} | {w} | {:.3} | {:.2}s |",
                l.path, l.shape[0], l.shape[1], l.rel_mse, l.bits_per_weight, l.seconds
            )?;
        }
        write!(
            f,
            "{} layers quantized ({:.2} M weights, {:.3} bits/weight, rel. MSE {:.3e}), {} left dense, {:.2}s",
            self.layers.len(),
            self.weights() as f64 / 1e6,
            self.bits_per_weight(),
            self.rel_mse(),
            self.skipped.len(),
            self.seconds
        )
    }
}

/// The factor of the most recent Gram matrix and input scales (layers sharing an input are
/// visited in a row and share both).
#[derive(Default)]
struct FactorCache(Option<CachedFactor>);

/// A Gram matrix, the input scales its factor was rescaled by, and the factor.
type CachedFactor = (Arc<Gram>, Option<Arc<Vec<f32>>>, Arc<HessianFactor>);

impl FactorCache {
    fn get(
        &mut self,
        gram: &Arc<Gram>,
        scales: Option<&Arc<Vec<f32>>>,
        gptq: &GptqConfig,
    ) -> Result<Arc<HessianFactor>> {
        if let Some((g, s, f)) = &self.0
            && Arc::ptr_eq(g, gram)
            && match (s, scales) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        {
            return Ok(f.clone());
        }
        let mut f = HessianFactor::for_config(gram, gptq)?;
        if let Some(s) = scales {
            f = f.rescaled(s)?;
        }
        let f = Arc::new(f);
        self.0 = Some((gram.clone(), scales.cloned(), f.clone()));
        Ok(f)
    }
}

/// What a layer is quantized against: its calibration statistics and Gram matrix, the factor
/// for error feedback, and activation-aware input scales.
#[derive(Clone, Copy, Default)]
struct LayerCalib<'a> {
    /// `x̄` and the token count.
    stats: Option<(&'a [f32], u64)>,
    gram: Option<&'a Gram>,
    factor: Option<&'a HessianFactor>,
    /// `s`: the weight's columns are multiplied by it, the input divided by it.
    scales: Option<&'a [f32]>,
}

/// Quantize one dense layer in place.
fn quantize_layer(
    path: &str,
    layer: &mut QLinear,
    cfg: &QuantizeConfig,
    calib: LayerCalib<'_>,
) -> Result<LayerReport> {
    let start = Instant::now();
    let weight = layer.weight_hf();
    let device = weight.device();
    let [rows, cols] = weight.dims();
    let w = read_vec::<f32>(weight.into_data(), path)?;
    let mean = calib.stats.map(|s| s.0);
    let method = match calib.factor {
        Some(_) => cfg.method,
        None => Method::Rtn,
    };
    let (q, w_hat) = match calib.scales {
        Some(s) => {
            let q = method.quantize(
                &scale_columns(&w, s),
                [rows, cols],
                mean.map(|m| scale_stats(m, s)).as_deref(),
                calib.factor,
                &cfg.any4,
            )?;
            let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
            let w_hat = scale_columns(&q.dequantize(), &inv);
            (q, w_hat)
        }
        None => {
            let q = method.quantize(&w, [rows, cols], mean, calib.factor, &cfg.any4)?;
            let w_hat = q.dequantize();
            (q, w_hat)
        }
    };
    let output_rel_err = match calib.gram {
        Some(g) => {
            let metric = OutputError::new(g)?;
            let err = metric.eval(&w, &w_hat, rows)?;
            let energy = metric.eval(&w, &vec![0.0; w.len()], rows)?;
            Some(err / energy.max(f64::MIN_POSITIVE))
        }
        None => None,
    };
    let (rel_mse, weighted_rel_mse) = weight_errors(&w, &w_hat, cols, mean);
    // A stored input multiplier costs K f32 values.
    let scale_bits = if calib.scales.is_some() {
        32.0 / rows as f64
    } else {
        0.0
    };
    let report = LayerReport {
        path: path.to_string(),
        shape: [rows, cols],
        rel_mse,
        weighted_rel_mse,
        bits_per_weight: q.bits_per_weight() + scale_bits,
        output_rel_err,
        calib_tokens: calib.stats.map(|s| s.1),
        seconds: 0.0,
    };
    let bias: Option<Tensor<1>> = layer.bias();
    let input_scale = calib.scales.map(|s| {
        let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
        Tensor::<1>::from_data(TensorData::new(inv, [cols]), &device)
    });
    *layer =
        QLinear::Quant(Any4Linear::from_quantized(&q, bias, &device).with_input_scale(input_scale));
    Ok(LayerReport {
        seconds: start.elapsed().as_secs_f64(),
        ..report
    })
}

/// `‖W − Ŵ‖² / ‖W‖²` and, with statistics, `Σ|x̄_j|(w−ŵ)² / Σ|x̄_j| w²` (row-major `[·, cols]`).
fn weight_errors(
    w: &[f32],
    w_hat: &[f32],
    cols: usize,
    mean: Option<&[f32]>,
) -> (f64, Option<f64>) {
    let (mut err, mut energy, mut werr, mut wenergy) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, (&a, &b)) in w.iter().zip(w_hat).enumerate() {
        let (e2, a2) = (((a - b) as f64).powi(2), (a as f64).powi(2));
        err += e2;
        energy += a2;
        if let Some(m) = mean {
            let x = m[i % cols].abs() as f64;
            werr += x * e2;
            wenergy += x * a2;
        }
    }
    let rel = |e: f64, n: f64| e / n.max(f64::MIN_POSITIVE);
    (rel(err, energy), mean.map(|_| rel(werr, wenergy)))
}

/// Dense layers the pass will quantize (the progress bar's length).
fn count_selected(model: &mut impl QLinearContainer, cfg: &QuantizeConfig) -> usize {
    let mut count = 0;
    model.visit_qlinears("", &mut |p, l| {
        count += usize::from(cfg.selects(p) && matches!(l, QLinear::Dense(_)))
    });
    count
}

fn progress(cfg: &QuantizeConfig, len: usize) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("quantizing");
    bar
}

/// Quantize the selected dense layers whose paths pass `filter`, appending to `report`.
fn quantize_selected(
    model: &mut impl QLinearContainer,
    cfg: &QuantizeConfig,
    stats: Option<&CalibrationStats>,
    filter: &dyn Fn(&str) -> bool,
    bar: &ProgressBar,
    report: &mut Report,
) -> Result<()> {
    let scales: InputScales = match (&cfg.act_scale, stats) {
        (Some(opts), Some(s)) => {
            bar.set_message("searching activation scales");
            search_scales(model, cfg, opts, s, filter)?
        }
        _ => InputScales::new(),
    };
    let mut result = Ok(());
    let mut factors = FactorCache::default();
    model.visit_qlinears("", &mut |path, layer| {
        if result.is_err() || !filter(path) || !matches!(layer, QLinear::Dense(_)) {
            return;
        }
        if !cfg.selects(path) {
            report.skipped.push(path.to_string());
            return;
        }
        bar.set_message(path.to_string());
        // A layer calibrated on zero tokens (an expert no calibration token was routed to)
        // has nothing to weight by: quantize it unweighted rather than refuse.
        let unreached = stats.is_some_and(|s| s.is_unreached(path));
        let layer_stats = match stats {
            Some(_) if unreached => None,
            Some(s) => match (s.mean(path), s.tokens(path)) {
                (Some(m), Some(t)) => Some((m, t)),
                _ => {
                    result = Err(Error::MissingStats(path.to_string()));
                    return;
                }
            },
            None => None,
        };
        // Error feedback and activation scales need the layer input's Gram matrix (none for
        // an unreached layer, which is rounded unweighted).
        let gram = match stats.map(|s| s.gram(path)) {
            Some(Err(e)) => {
                result = Err(Error::from(e).in_layer(path));
                return;
            }
            Some(Ok(g)) => g.cloned(),
            None => None,
        };
        if cfg.needs_gram() && gram.is_none() && !unreached {
            result = Err(Error::MissingGram(path.to_string()));
            return;
        }
        let layer_scales = scales.get(path);
        let factor = match (&cfg.method, &gram) {
            (Method::Gptq(g), Some(gram)) => match factors.get(gram, layer_scales, g) {
                Ok(f) => Some(f),
                Err(e) => {
                    result = Err(e.in_layer(path));
                    return;
                }
            },
            _ => None,
        };
        let calib = LayerCalib {
            stats: layer_stats,
            gram: gram.as_deref(),
            factor: factor.as_deref(),
            scales: layer_scales.map(|s| s.as_slice()),
        };
        match quantize_layer(path, layer, cfg, calib) {
            Ok(r) => report.layers.push(LayerReport {
                calib_tokens: if unreached { Some(0) } else { r.calib_tokens },
                ..r
            }),
            Err(e) => result = Err(e.in_layer(path)),
        }
        bar.inc(1);
    });
    result
}

/// One-shot pass: quantize every selected dense layer of `model`, weighting k-means by `stats`
/// (from a [`Calibrator`] run on the full-precision model) or unweighted when `None`.
pub fn quantize_model<M: QLinearContainer>(
    mut model: M,
    cfg: &QuantizeConfig,
    stats: Option<&CalibrationStats>,
) -> Result<(M, Report)> {
    let start = Instant::now();
    let count = count_selected(&mut model, cfg);
    let bar = progress(cfg, count);
    let mut report = Report::default();
    quantize_selected(&mut model, cfg, stats, &|_| true, &bar, &mut report)?;
    bar.finish_and_clear();
    report.seconds = start.elapsed().as_secs_f64();
    Ok((model, report))
}

/// A model that can be run block by block (for sequential calibration).
pub trait BlockwiseModel: QLinearContainer {
    /// What the calibration input is (e.g. token ids).
    type Input;
    /// The state flowing between blocks (e.g. hidden states).
    type State: Clone;
    /// Number of blocks.
    fn num_blocks(&self) -> usize;
    /// Path prefix of block `i`'s layers (e.g. `layers.3`).
    fn block_path(&self, i: usize) -> String;
    /// State entering the first block.
    fn embed(&self, input: &Self::Input) -> Self::State;
    /// Run block `i`.
    fn block_forward(&self, i: usize, state: Self::State) -> Self::State;
    /// Run what follows the last block (final norm, LM head), for layers outside blocks.
    fn head_forward(&self, state: Self::State);
}

/// Sequential pass: block `i` is calibrated on the outputs of blocks `0..i` already quantized.
pub fn quantize_model_sequential<M: BlockwiseModel>(
    mut model: M,
    cfg: &QuantizeConfig,
    input: &M::Input,
) -> Result<(M, Report)> {
    let start = Instant::now();
    let count = count_selected(&mut model, cfg);
    let bar = progress(cfg, count);
    let mut report = Report::default();
    let mut state = model.embed(input);
    let mut calibrator = cfg.calibrator();
    let blocks: Vec<String> = (0..model.num_blocks())
        .map(|i| model.block_path(i))
        .collect();
    let under = |p: &str, block: &str| {
        p == block || p.strip_prefix(block).is_some_and(|r| r.starts_with('.'))
    };
    for (i, block) in blocks.iter().enumerate() {
        let in_block = |p: &str| under(p, block);
        calibrator.attach(&mut model, |p| in_block(p) && cfg.selects(p));
        // Record with the block dense (its own earlier layers included), then move on through
        // the quantized block.
        let _ = model.block_forward(i, state.clone());
        let stats = calibrator.detach(&mut model);
        quantize_selected(&mut model, cfg, Some(&stats), &in_block, &bar, &mut report)?;
        state = model.block_forward(i, state);
    }
    // Layers outside every block (e.g. an included LM head) see the final state.
    let outside = |p: &str| !blocks.iter().any(|b| under(p, b));
    calibrator.attach(&mut model, |p| outside(p) && cfg.selects(p));
    model.head_forward(state);
    let stats = calibrator.detach(&mut model);
    quantize_selected(&mut model, cfg, Some(&stats), &outside, &bar, &mut report)?;
    bar.finish_and_clear();
    report.seconds = start.elapsed().as_secs_f64();
    Ok((model, report))
}
