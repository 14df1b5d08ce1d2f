//! `any4`: quantize LLMs to any4 (and int4/nf4/fp4/any3/any2), inspect checkpoints, dequantize
//! them back to dense weights, generate text and measure perplexity, on any Burn backend
//! compiled in.
//!
//! Errors print one line (`any4: <file>: <what is wrong>`) to stderr and exit with status 1;
//! usage errors exit with 2. Nothing panics with a backtrace: an internal error (a bug) is one
//! line too, `any4: internal error: …`, with status 101. A closed stdout (`any4 inspect … | head -1`) ends the command
//! quietly with status 0, as it would for any Unix filter.
#![warn(missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod calib;

use any4_burn::{
    CALIBRATION_PROMPT, Checkpoint, CheckpointMeta, CpuMatmul, LayerInfo, OutputDir, QLinear,
    QLinearContainer, QuantizeConfig, check_finite, check_output_dir, quantize_model,
    quantize_model_sequential,
};
use any4_core::{
    ActScaleConfig, Any4Config, Format, GptqConfig, GroupParams, GroupSize, Method, ParamDtype,
    Scaling, Solver,
};
use any4_llm::{
    Dataset, GenerateConfig, PerplexityConfig, Sampling, fold_input_scales, generate, load_auto,
    perplexity, save_any4_to, token_tensor_batch,
};
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// stdout was closed by its reader: stop without an error message.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// One line on stdout; `println!` would panic on a closed pipe.
fn emit(line: std::fmt::Arguments<'_>) -> AnyResult<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Box::new(StdoutClosed)),
        Err(e) => Err(format!("stdout: {e}").into()),
    }
}

macro_rules! outln {
    ($($arg:tt)*) => { emit(format_args!($($arg)*))? };
}

// After `outln!`, which they use (macros are in scope from their definition on).
mod import;
mod inspect;
mod stream;

/// A line on stderr; a closed stderr is ignored (`eprintln!` would panic).
fn note(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Load a model and refuse NaN/Inf weights up front, naming the tensor: later they would only
/// show as a NaN calibration statistic of another layer, or as garbage output.
///
/// Errors that do not name a file (an invalid config value, a tokenizer failure) get the
/// model's path in front, so every line says which input is wrong.
fn load_checked(path: &Path, device: &Device) -> AnyResult<(any4_llm::Llama, any4_llm::Tokenizer)> {
    let (model, tokenizer) =
        load_auto(path, device).map_err(|e| -> Box<dyn std::error::Error> {
            let line = one_line(&e);
            if line.contains(&path.display().to_string()) {
                Box::new(e)
            } else {
                format!("{}: {line}", path.display()).into()
            }
        })?;
    check_finite(&model).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((model, tokenizer))
}

#[derive(Parser)]
#[command(
    name = "any4",
    version,
    about = "Learned 4-bit weight quantization for LLMs, on Burn"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Backend to run on.
    #[arg(long, global = true, value_enum, default_value_t = Backend::Flex)]
    backend: Backend,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// Pure-Rust CPU (SIMD, multi-threaded).
    Flex,
    /// CubeCL's CPU runtime (build with `--features cpu`).
    Cpu,
    /// Vulkan / Metal / DX12 through wgpu (build with `--features wgpu`).
    Wgpu,
    /// NVIDIA CUDA (build with `--features cuda`).
    Cuda,
}

impl Backend {
    fn device(self) -> AnyResult<Device> {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        Ok(any4_burn::device_from_name(&name)?)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Quantize a model (HF folder or GGUF file) and save an any4 checkpoint folder.
    Quantize(QuantizeArgs),
    /// Show the layers, formats, shapes and sizes of an any4 checkpoint.
    Inspect(inspect::InspectArgs),
    /// Turn every quantized layer of a checkpoint back into a dense f32 one (a folder that
    /// `eval`, `generate` and `quantize` read as a dense model).
    Dequantize(DequantizeArgs),
    /// Import a GPTQ or AWQ int4 checkpoint (HF folder) into an any4 folder, losslessly.
    Import(import::ImportArgs),
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Perplexity of a model on a text file (GPTQ protocol: non-overlapping windows).
    Eval(EvalArgs),
}

/// Where a command writes a model folder (`quantize`, `dequantize`).
#[derive(Args)]
pub(crate) struct OutputArgs {
    /// Output folder: created, or an existing any4 checkpoint folder replaced whole (never the
    /// input, nor a folder containing it).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Also write into an existing folder that is not an any4 checkpoint (its
    /// `model.safetensors`, `config.json` and `tokenizer.json` are replaced, other files kept).
    #[arg(long)]
    force: bool,
}

impl OutputArgs {
    /// Check `--out` before the (long) pass, so a bad output fails in a second: it must not be,
    /// or contain, an input; an existing folder must be an any4 checkpoint (replaced whole)
    /// unless `--force`. Nothing is created until the new folder is complete
    /// (`any4_burn::OutputDir`).
    pub(crate) fn check(&self, inputs: &[&Path]) -> AnyResult<OutputDir> {
        Ok(check_output_dir(&self.out, inputs, self.force)?)
    }
}

#[derive(Args)]
struct QuantizeArgs {
    /// HF model folder, GGUF file, or any4 checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
    /// Numeric format.
    #[arg(long, default_value = "any4", value_parser = parse::<Format>)]
    format: Format,
    /// Inputs per scale/zero group: 32, 64, 128, 256, 512, 1024 or per-row.
    #[arg(long, default_value = "128", value_parser = parse::<GroupSize>)]
    group_size: GroupSize,
    /// Symmetric (absmax) scaling instead of the format's default.
    #[arg(long)]
    symmetric: bool,
    /// Table learner for anyN: Lloyd k-means (paper) or the exact 1-D optimum.
    #[arg(long, default_value = "lloyd", value_parser = parse::<Solver>)]
    kmeans: Solver,
    /// Precision of tables, scales and zeros.
    #[arg(long, default_value = "f16", value_parser = parse::<ParamDtype>)]
    dtype: ParamDtype,
    /// k-means seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Calibration text file (repeatable; default: the built-in diverse prompt). Each file gives
    /// an equal share of `--calib-tokens`, as windows spread evenly over the file.
    #[arg(long)]
    calib_file: Vec<PathBuf>,
    /// Calibration tokens in all.
    #[arg(long, default_value_t = 2048)]
    calib_tokens: usize,
    /// Tokens per calibration window (files are read as windows of this length).
    #[arg(long, default_value_t = 2048)]
    calib_seq: usize,
    /// How codes are assigned: `rtn` (round to nearest, the paper) or `gptq` (error feedback
    /// through the calibration Gram matrix).
    #[arg(long, default_value = "rtn", value_parser = ["rtn", "gptq"])]
    method: String,
    /// Error feedback: damping, as a fraction of the Gram matrix's mean diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Error feedback: group scales from the original weights instead of the fed-back targets.
    #[arg(long)]
    static_groups: bool,
    /// Error feedback: keep the first table of learned formats (no refit on the targets).
    #[arg(long)]
    no_refit: bool,
    /// Error feedback: quantize input channels in decreasing order of E(x²) (act-order; group
    /// parameters are then static).
    #[arg(long)]
    act_order: bool,
    /// Activation-aware scales: per layer input, search s = mean|x|^α (α on a grid) by the
    /// output error on the calibration tokens; the weight is quantized as W·diag(s) and the
    /// input multiplied by 1/s (folded into the previous norm where the model allows it).
    #[arg(long)]
    act_scale: bool,
    /// Activation-aware scales: grid points of α in [0, 1).
    #[arg(long, default_value_t = 10)]
    act_scale_grid: u32,
    /// Record the calibration Gram matrices with any method, to report the output error.
    #[arg(long)]
    output_error: bool,
    /// Error feedback: MiB of Gram matrices one calibration may hold.
    #[arg(long, default_value_t = 4096)]
    gram_budget_mb: u64,
    /// Calibrate block by block on the already-quantized earlier blocks.
    #[arg(long)]
    sequential: bool,
    /// Quantize one decoder block at a time from the memory-mapped files, for models larger
    /// than memory (HF safetensors folders; chosen automatically when the model would not fit).
    #[arg(long)]
    stream: bool,
    /// Memory limit, e.g. 4G: stream when the in-memory pass would need more, and refuse
    /// before reading any weight when even streaming would.
    #[arg(long, value_parser = stream::parse_bytes)]
    max_memory: Option<u64>,
    /// Also quantize the LM head (left dense by default, as in the paper); embeddings stay dense.
    #[arg(long)]
    lm_head: bool,
    /// Leave layers matching this pattern dense (repeatable; embeddings always, `lm_head` unless
    /// `--lm-head`).
    #[arg(long)]
    skip: Vec<String>,
    /// Print a one-line JSON summary (format, bits/weight, errors, pass seconds) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DequantizeArgs {
    /// any4 checkpoint folder (or any model the other commands read).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
    /// Print a one-line JSON summary (layers dequantized, dense layers) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// HF folder, GGUF file, or any4 checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run every greedy step as ordinary forwards, without recording one and replaying it
    /// (recording applies on CUDA, ROCm and wgpu).
    #[arg(long)]
    no_capture: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// HF folder, GGUF file, or any4 checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// Text file to evaluate on.
    #[arg(long, required_unless_present = "dataset", conflicts_with = "dataset")]
    text: Option<PathBuf>,
    /// A fetched evaluation text: ptb (validation), ptb-test, botchan, shakespeare
    /// (`cargo xtask fetch ptb|botchan|shakespeare`; read from `$ANY4_CACHE` or `.cache/`).
    #[arg(long, value_parser = parse::<Dataset>)]
    dataset: Option<Dataset>,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Evaluate at most this many windows.
    #[arg(long)]
    max_windows: Option<usize>,
    /// Activation precision of the any4 matmul on CPU backends: `auto` (int8 for decode-sized
    /// batches, f32 panels above), `exact` (f32 throughout) or `int8` (int8 activations
    /// throughout, to measure what the decode path costs in perplexity).
    #[arg(long, default_value = "auto", value_parser = ["auto", "exact", "int8"])]
    cpu_matmul: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

fn read_text(path: &Path) -> AnyResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// An input whose selected layers are all quantized already (an any4 folder) has nothing to
/// quantize: say so, and how to re-quantize, instead of a pass over 0 layers. Layers quantized
/// already next to dense ones (a checkpoint made with `--skip`) are kept as they are.
fn check_something_to_quantize(
    path: &Path,
    model: &mut any4_llm::Llama,
    cfg: &QuantizeConfig,
) -> AnyResult<()> {
    let (mut dense, mut quantized) = (0usize, Vec::new());
    model.visit_qlinears("", &mut |p, layer| match layer {
        QLinear::Quant(q) if cfg.selects(p) => quantized.push(q.config),
        QLinear::Dense(_) if cfg.selects(p) => dense += 1,
        _ => {}
    });
    let Some(first) = quantized.first() else {
        return Ok(());
    };
    if dense == 0 {
        return Err(format!(
            "{}: already quantized ({} layers in {}, group {}): nothing to quantize; to \
             re-quantize from its current weights, run `any4 dequantize --model {} --out DIR` \
             and quantize DIR",
            path.display(),
            quantized.len(),
            first.format(),
            first.group_size(),
            path.display()
        )
        .into());
    }
    note(format_args!(
        "{}: {} layers are already quantized ({}) and are kept as they are; quantizing the {dense} \
         dense ones",
        path.display(),
        quantized.len(),
        first.format()
    ));
    Ok(())
}

fn cmd_quantize(a: QuantizeArgs, device: &Device) -> AnyResult<()> {
    let mut any4 = Any4Config::new(a.format)
        .with_group_size(a.group_size)
        .with_solver(a.kmeans)
        .with_seed(a.seed)
        .with_param_dtype(a.dtype);
    if a.symmetric {
        any4 = any4.with_scaling(Scaling::Symmetric);
    }
    // Error feedback's switches do nothing under round-to-nearest: say so rather than ignore them.
    if a.method != "gptq" {
        for (on, flag) in [
            (a.act_order, "--act-order"),
            (a.static_groups, "--static-groups"),
            (a.no_refit, "--no-refit"),
        ] {
            if on {
                return Err(
                    format!("{flag} is an option of error feedback: add --method gptq").into(),
                );
            }
        }
    }
    let method = match a.method.as_str() {
        "gptq" => Method::Gptq(
            GptqConfig::default()
                .with_damp(a.damp)?
                .with_refit(!a.no_refit)
                .with_act_order(a.act_order)
                .with_group_params(if a.static_groups {
                    GroupParams::Static
                } else {
                    GroupParams::Dynamic
                }),
        ),
        _ => Method::Rtn,
    };
    let mut cfg = QuantizeConfig::new(any4)
        .with_lm_head(a.lm_head)
        .with_method(method)
        .with_act_scale(a.act_scale.then_some(ActScaleConfig {
            grid: a.act_scale_grid,
            ..ActScaleConfig::default()
        }))
        .with_progress(true);
    cfg.gram_budget = a.gram_budget_mb << 20;
    cfg.measure_output_error = a.output_error;
    for p in &a.skip {
        cfg = cfg.exclude(p)?;
    }
    let mut inputs = vec![a.model.as_path()];
    inputs.extend(a.calib_file.iter().map(PathBuf::as_path));
    let out = a.output.check(&inputs)?;
    if let Some((report, calib_tokens)) = stream::quantize_streaming(&a, &cfg, &out, device)? {
        let layers = report.layers.len();
        let bits = report.bits_per_weight();
        return print_quantized(
            &a,
            &report,
            calib_tokens,
            layers,
            true,
            (bits, serde_json::json!({})),
        );
    }
    let t = Instant::now();
    let (mut model, tokenizer) = load_checked(&a.model, device)?;
    check_something_to_quantize(&a.model, &mut model, &cfg)?;
    note(format_args!(
        "loaded {} in {:.1}s",
        a.model.display(),
        t.elapsed().as_secs_f64()
    ));
    let t_quant = Instant::now();
    let windows = calib::windows(
        &tokenizer,
        CALIBRATION_PROMPT,
        &a.calib_file,
        a.calib_tokens,
        a.calib_seq,
    )?;
    let calib_used: usize = windows.iter().map(Vec::len).sum();
    // Windows of one length form one batch (files' windows share a length; the prompt is one).
    let mut batches: Vec<Vec<&[u32]>> = Vec::new();
    for w in &windows {
        match batches.iter_mut().find(|b| b[0].len() == w.len()) {
            Some(b) => b.push(w),
            None => batches.push(vec![w]),
        }
    }
    let (mut model, report) = if a.sequential {
        let [batch] = batches.as_slice() else {
            return Err("sequential calibration needs calibration windows of one length".into());
        };
        quantize_model_sequential(model, &cfg, &token_tensor_batch(batch, device))?
    } else {
        let mut calibrator = cfg.calibrator();
        calibrator.attach(&mut model, |p| cfg.selects(p));
        for batch in &batches {
            let _ = model.forward_all(token_tensor_batch(batch, device));
        }
        let stats = calibrator.detach(&mut model);
        if let Some(e) = stats.gram_error() {
            return Err(e.to_string().into());
        }
        quantize_model(model, &cfg, Some(&stats))?
    };
    // Activation-scale multipliers of q/k/v and gate/up move into the norms before them.
    let folded = fold_input_scales(&mut model);
    // Calibration forward(s) (and their Gram matrices) plus the pass.
    let quant_seconds = t_quant.elapsed().as_secs_f64();
    let qc = save_any4_to(&out, &mut model, &tokenizer)?;
    let extra = serde_json::json!({
        "calib_windows": windows.len(), "calib_files": a.calib_file, "method": a.method,
        "act_scale": a.act_scale, "norms_folded": folded,
        "output_rel_err": report.output_rel_err(), "quant_seconds": quant_seconds});
    let bits = inspect::checkpoint_bits(&qc);
    print_quantized(
        &a,
        &report,
        calib_used,
        qc.layers.len(),
        false,
        (bits, extra),
    )
}

/// The summary of `quantize`: the JSON line or the report's last line and where it went.
/// `stored` is the checkpoint's bits per weight and JSON fields only the in-memory path has.
fn print_quantized(
    a: &QuantizeArgs,
    report: &any4_burn::Report,
    calib_tokens: usize,
    saved_layers: usize,
    streamed: bool,
    stored: (f64, serde_json::Value),
) -> AnyResult<()> {
    let (bits, extra) = stored;
    if a.json {
        let mut json = serde_json::json!({"model": a.model, "out": a.output.out,
            "format": a.format.to_string(),
            "group_size": a.group_size.to_string(), "kmeans": a.kmeans.to_string(),
            "calibration": if a.sequential { "sequential" } else { "one-shot" },
            "streamed": streamed,
            "calib_tokens": calib_tokens, "layers": report.layers.len(),
            "weights": report.weights(), "bits_per_weight": bits,
            // Codes are stored in 4-bit slots; any3/any2 would need only `bits` per code.
            "format_bits_per_weight": bits - 4.0 + f64::from(a.format.bits()),
            "rel_mse": report.rel_mse(), "weighted_rel_mse": report.weighted_rel_mse(),
            "pass_seconds": report.seconds});
        if let (Some(j), serde_json::Value::Object(e)) = (json.as_object_mut(), extra) {
            j.extend(e);
        }
        outln!("{json}");
        return Ok(());
    }
    outln!("{}", report.to_string().lines().last().unwrap_or_default());
    outln!(
        "calibration: {} tokens ({}{}), {} layers quantized, saved to {}",
        calib_tokens,
        if a.sequential {
            "sequential"
        } else {
            "one-shot"
        },
        if streamed { ", streamed" } else { "" },
        saved_layers,
        a.output.out.display()
    );
    Ok(())
}

/// Every `QLinear::Quant` becomes `QLinear::Dense` holding exactly the weight the quantized
/// layer computes with (`table[code] · scale + zero` in f32), bias kept; the folder is written by
/// `save_any4` with no quantized layer, so it loads as a dense model.
fn cmd_dequantize(a: DequantizeArgs, device: &Device) -> AnyResult<()> {
    let out = a.output.check(&[&a.model])?;
    let (mut model, tokenizer) = load_checked(&a.model, device)?;
    let (mut dequantized, mut dense) = (0usize, 0usize);
    model.visit_qlinears("", &mut |_, layer| {
        if layer.is_quantized() {
            *layer = QLinear::from_hf(layer.weight_hf(), layer.bias());
            dequantized += 1;
        } else {
            dense += 1;
        }
    });
    let qc = save_any4_to(&out, &mut model, &tokenizer)?;
    debug_assert!(qc.layers.is_empty());
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"model": a.model, "out": a.output.out, "dequantized": dequantized,
                "already_dense": dense})
        );
    } else {
        outln!(
            "{dequantized} layers dequantized to f32 ({dense} already dense), saved to {}",
            a.output.out.display()
        );
    }
    Ok(())
}

fn cmd_generate(a: GenerateArgs, device: &Device) -> AnyResult<()> {
    let (model, tokenizer) = load_checked(&a.model, device)?;
    let sampling = if a.temperature <= 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature: a.temperature,
            top_p: a.top_p,
        }
    };
    let cfg = GenerateConfig {
        max_new_tokens: a.max_tokens,
        sampling,
        seed: a.seed,
        stop_tokens: tokenizer.eos_ids().to_vec(),
        capture: !a.no_capture,
    };
    let prompt = tokenizer.encode(&a.prompt, true)?;
    let mut stdout = std::io::stdout();
    let _ = write!(stdout, "{}", a.prompt);
    let mut out = Vec::new();
    let mut shown = 0;
    let r#gen = generate(&model, &prompt, &cfg, &mut |tok| {
        out.push(tok);
        if let Ok(text) = tokenizer.decode(&out, true) {
            // `get`: a token may end inside a multi-byte character of the previous text.
            let new = text.get(shown..).unwrap_or_default();
            let _ = write!(stdout, "{new}").and_then(|()| stdout.flush());
            shown = text.len();
        }
    })?;
    outln!("");
    note(format_args!(
        "{} tokens, {:.1} tokens/s (prefill {} tokens in {:.2}s)",
        r#gen.tokens.len(),
        r#gen.tokens_per_second,
        r#gen.prompt_tokens,
        r#gen.prefill_seconds
    ));
    Ok(())
}

fn cmd_eval(a: EvalArgs, device: &Device) -> AnyResult<()> {
    let (mut model, tokenizer) = load_checked(&a.model, device)?;
    let cpu = match a.cpu_matmul.as_str() {
        "exact" => CpuMatmul::Exact,
        "int8" => CpuMatmul::Int8,
        _ => CpuMatmul::Auto,
    };
    model.visit_qlinears("", &mut |_, layer| {
        if let QLinear::Quant(q) = layer {
            q.cpu = cpu;
        }
    });
    let (text, source) = match (&a.text, a.dataset) {
        (_, Some(d)) => (d.read()?, d.name().to_string()),
        (Some(f), None) => (read_text(f)?, f.display().to_string()),
        (None, None) => return Err("eval needs --text FILE or --dataset NAME".into()),
    };
    let cfg = PerplexityConfig {
        seq_len: a.seq_len,
        max_windows: a.max_windows,
        ..PerplexityConfig::default()
    };
    let t = Instant::now();
    let p = perplexity(&model, &tokenizer, &text, &cfg)?;
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"model": a.model, "text": source, "seq_len": a.seq_len, "ppl": p.ppl,
                "cpu_matmul": a.cpu_matmul,
                "nll": p.nll, "tokens": p.tokens, "windows": p.windows,
                "seconds": t.elapsed().as_secs_f64()})
        );
    } else {
        outln!(
            "perplexity {:.4} over {} tokens ({} windows of {}), {:.1}s",
            p.ppl,
            p.tokens,
            p.windows,
            a.seq_len,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `error: cause: cause` on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// The message of the last panic, printed by `main` only if the panic reaches it: panics that
/// a library catches and turns into an error (the tokenizers crate on some malformed files)
/// must not print a second line.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn run(cli: Cli) -> AnyResult<()> {
    let device = cli.backend.device()?;
    match cli.cmd {
        Cmd::Quantize(a) => cmd_quantize(a, &device),
        Cmd::Inspect(a) => inspect::cmd_inspect(a),
        Cmd::Import(a) => import::cmd_import(a),
        Cmd::Dequantize(a) => cmd_dequantize(a, &device),
        Cmd::Generate(a) => cmd_generate(a, &device),
        Cmd::Eval(a) => cmd_eval(a, &device),
    }
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
    }));
    let cli = Cli::parse();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            note(format_args!("any4: {}", one_line(e.as_ref())));
            ExitCode::FAILURE
        }
        Err(_) => {
            let msg = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
            note(format_args!(
                "any4: internal error: {}",
                msg.as_deref().unwrap_or("unknown panic")
            ));
            // Rust's status for a panic, distinct from input errors (1) and usage errors (2).
            ExitCode::from(101)
        }
    }
}
