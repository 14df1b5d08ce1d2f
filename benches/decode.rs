//! End-to-end decode and prefill speed, dense vs any4, same backend, same run.
//!
//! `cargo xtask bench decode [--backend flex|cpu|wgpu|cuda] [--models PATH,...]
//! [--random-config smollm2-135m,llama-3.2-1b,llama-3-8b] [--prompt 32] [--tokens 128]
//! [--prefill 512] [--repeats 5] [--lm-head] [--dtype f32|bf16|f16] [--json FILE]`
//! (or `cargo bench --bench decode -- ...`; `--help` lists everything).
//!
//! Subjects: model files (`--models`: HF directories or GGUF files; each loaded twice, one copy
//! quantized to any4 with group 128 and one-shot calibration on `CALIBRATION_PROMPT`) and
//! random models of a known shape (`--random-config`: weights drawn directly on the device,
//! any4 codes/tables/scales included — no files, no k-means; speed does not depend on values).
//! The LM head stays dense (as in the paper) unless `--lm-head`.
//!
//! Measures, alternating dense and any4 so drift hits both alike, median over `--repeats`:
//! - decode: tokens/s of `--tokens` single-token steps (greedy, device-side argmax, one id read
//!   back per token) after a `--prompt`-token prompt, as `generate` runs them: on a device that
//!   records graphs (CUDA, ROCm, wgpu) the step is recorded once and replayed, and the same
//!   decode is also measured as ordinary steps ("decode, no capture"): the difference is the
//!   per-token host work the replay removes;
//! - prefill: tokens/s of one forward over a fresh `--prefill`-token prompt (logits of the last
//!   position only, as generation needs), timed until the chosen token is read back.
//!
//! Each figure is given as wall-clock tokens/s and as tokens per CPU-second of the process (all
//! threads): on a machine shared with other jobs the first falls with the share of the cores the
//! run gets, the second much less; the table and JSON record the thread count and load average.
//!
//! `--breakdown` (a build with `--features op-timing`) adds the time per token of each kind of
//! op during decode (host time on GPUs: see `any4_llm::timing`). `--tensor-ops` turns the Flex
//! host kernels off (every op as Burn tensor ops, the route other backends take).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use any4_burn::{CALIBRATION_PROMPT, QuantizeConfig, device_from_name, quantize_model};
use any4_core::rng::SplitMix64;
use any4_core::{Any4Config, Format};
use any4_llm::{
    GenerateConfig, Llama, LlamaConfig, RandomWeights, generate, load_auto, timing, token_tensor,
};
use burn::tensor::{DType, Device};
use clap::Parser;

/// Known model shapes for `--random-config` (HF `config.json` fields).
const PRESETS: [(&str, &str); 3] = [
    (
        "smollm2-135m",
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
        "rms_norm_eps":1e-5,"rope_theta":100000.0,"max_position_embeddings":8192,
        "tie_word_embeddings":true}"#,
    ),
    (
        "llama-3.2-1b",
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":2048,"intermediate_size":8192,
        "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":64,
        "vocab_size":128256,"rms_norm_eps":1e-5,"rope_theta":500000.0,
        "max_position_embeddings":131072,"tie_word_embeddings":true,
        "rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
        "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
    ),
    (
        "llama-3-8b",
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
        "vocab_size":128256,"rms_norm_eps":1e-5,"rope_theta":500000.0,
        "max_position_embeddings":8192,"tie_word_embeddings":false}"#,
    ),
];

/// End-to-end decode and prefill tokens/s, dense vs any4, on one backend.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench decode")]
struct Args {
    /// Backend: flex, cpu, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Model files (HF directories or GGUF), comma-separated. Default: the embedded tiny Llama
    /// and SmolLM2-135M when `cargo xtask fetch smollm2` has put it in `.cache/` (none when
    /// `--random-config` is given).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<PathBuf>>,
    /// Random models of these shapes: smollm2-135m, llama-3.2-1b, llama-3-8b (comma-separated).
    #[arg(long, value_delimiter = ',')]
    random_config: Vec<String>,
    /// Prompt tokens before decoding.
    #[arg(long, default_value_t = 32)]
    prompt: usize,
    /// Tokens decoded (single-token steps timed).
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Prompt length of the prefill measurement (0: none).
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Alternating runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Quantize the LM head too.
    #[arg(long)]
    lm_head: bool,
    /// Float type of random models: f32, bf16 or f16 (default: f32 on flex and cpu, bf16
    /// elsewhere). Model files are f32.
    #[arg(long)]
    dtype: Option<String>,
    /// Skip the dense model (e.g. an 8B dense model that does not fit).
    #[arg(long)]
    no_dense: bool,
    /// Time per token of each kind of op during decode (needs `--features op-timing`).
    #[arg(long)]
    breakdown: bool,
    /// Flex: run every op as Burn tensor ops (host kernels off).
    #[arg(long)]
    tensor_ops: bool,
    /// Write the records here (and the table next to it as .md).
    #[arg(long)]
    json: Option<PathBuf>,
    /// `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One model pair (dense, any4) to measure.
struct Subject {
    name: String,
    dense: Option<Llama>,
    any4: Llama,
    /// Linear weights in MB: dense f32/bf16, any4.
    mb: (f64, f64),
}

fn parse_dtype(name: &str) -> Result<DType, String> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!("--dtype {other}: expected f32, bf16 or f16")),
    }
}

fn any4_config() -> Any4Config {
    Any4Config::new(Format::Any4)
}

fn from_file(path: &Path, args: &Args, device: &Device) -> Result<Subject, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let (dense, tok) = load_auto(path, device).map_err(|e| err(&e))?;
    let (mut qmodel, _) = load_auto(path, device).map_err(|e| err(&e))?;
    let calib = token_tensor(
        &tok.encode(CALIBRATION_PROMPT, true).map_err(|e| err(&e))?,
        device,
    );
    let stats = qmodel.calibrate(calib);
    let cfg = QuantizeConfig::new(any4_config()).with_lm_head(args.lm_head);
    let (any4, report) = quantize_model(qmodel, &cfg, Some(&stats)).map_err(|e| err(&e))?;
    let weights = report.weights() as f64;
    Ok(Subject {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dense: (!args.no_dense).then_some(dense),
        any4,
        mb: (
            weights * 4.0 / 1e6,
            weights * report.bits_per_weight() / 8.0 / 1e6,
        ),
    })
}

fn from_preset(name: &str, args: &Args, device: &Device) -> Result<Subject, String> {
    let json = PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, j)| *j)
        .ok_or_else(|| {
            let names: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
            format!(
                "--random-config {name}: expected one of {}",
                names.join(", ")
            )
        })?;
    let config = LlamaConfig::from_json(json).map_err(|e| format!("{name}: {e}"))?;
    let dtype = match &args.dtype {
        Some(d) => parse_dtype(d)?,
        None if matches!(args.backend.as_str(), "flex" | "cpu") => DType::F32,
        None => DType::BF16,
    };
    let weights = |any4: bool| RandomWeights {
        dtype,
        any4: any4.then(any4_config),
        lm_head: args.lm_head,
    };
    let build = |any4: bool| {
        Llama::random_on_device(config.clone(), weights(any4), device)
            .map_err(|e| format!("{name}: {e}"))
    };
    let dense = if args.no_dense {
        None
    } else {
        Some(build(false)?)
    };
    let any4 = build(true)?;
    let (d, f, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q, kv) = (
        config.num_attention_heads * config.head_dim(),
        config.kv_heads() * config.head_dim(),
    );
    let per_layer = (2 * d * q + 2 * d * kv + 3 * d * f) as f64;
    let mut linear = per_layer * config.num_hidden_layers as f64;
    if args.lm_head {
        linear += (v * d) as f64;
    }
    let bytes = match dtype {
        DType::F32 => 4.0,
        _ => 2.0,
    };
    // any4 G128: 4 bits per weight + an f32 scale and zero per 128 + a 16-entry f32 table per row.
    let any4_mb = linear * (0.5 + 8.0 / 128.0) / 1e6;
    Ok(Subject {
        name: format!("{name} (random, {dtype:?})"),
        dense,
        any4,
        mb: (linear * bytes / 1e6, any4_mb),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

/// CPU time this process has used (all threads, user + system), from `/proc/self/stat` in
/// clock ticks of 1/100 s (Linux's `USER_HZ` on x86-64); `None` where that file is missing.
///
/// On a machine shared with other jobs, wall-clock tokens/s fall with the share of the cores
/// this process gets; tokens per CPU-second do not (they still feel cache and memory-bandwidth
/// contention), so the bench reports both.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (`state`);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Tokens/s: wall clock, and per CPU-second when [`cpu_seconds`] is available.
type Speed = (f64, Option<f64>);

/// Least CPU time a per-CPU-second figure is computed from: [`cpu_seconds`] counts 10 ms ticks,
/// so a run shorter than this (the tiny model's decode takes ~15 ms) would report a multiple of
/// the tick instead of a measurement; such figures are left out (`—`).
const MIN_CPU_SECONDS: f64 = 0.5;

/// Decode tokens/s: exactly `args.tokens` timed single-token steps after the prompt (CPU time
/// from the first generated token, as `generate` times wall time), recorded and replayed where
/// the device allows and `capture` (see [`GenerateConfig::capture`]).
fn decode(model: &Llama, args: &Args, capture: bool) -> Result<(Speed, bool), String> {
    let prompt = random_ids(args.prompt.max(1), model.config.vocab_size, 1);
    let cfg = GenerateConfig {
        max_new_tokens: args.tokens + 1,
        capture,
        ..GenerateConfig::default()
    };
    let mut cpu_start = None;
    let g = generate(model, &prompt, &cfg, &mut |_| {
        cpu_start = cpu_start.or_else(|| Some(cpu_seconds()));
    })
    .map_err(|e| e.to_string())?;
    let cpu = match (cpu_start.flatten(), cpu_seconds()) {
        (Some(a), Some(b)) if b - a >= MIN_CPU_SECONDS => Some(args.tokens as f64 / (b - a)),
        _ => None,
    };
    Ok(((g.tokens_per_second, cpu), g.captured))
}

/// Prefill tokens/s: one forward over `args.prefill` tokens into a fresh cache, until the next
/// token (chosen on the device) is read back.
fn prefill(model: &Llama, args: &Args) -> Speed {
    let ids = random_ids(args.prefill, model.config.vocab_size, 2);
    let device = model.device();
    let mut cache = model.new_cache_with_capacity(args.prefill + 1);
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let logits = model.forward_last(token_tensor(&ids, &device), &mut cache);
    let _ = logits.argmax(1).into_data();
    let wall = args.prefill as f64 / start.elapsed().as_secs_f64();
    let cpu = match (cpu_start, cpu_seconds()) {
        (Some(a), Some(b)) if b - a >= MIN_CPU_SECONDS => Some(args.prefill as f64 / (b - a)),
        _ => None,
    };
    (wall, cpu)
}

/// The `what` of decode measured as ordinary steps on a device that records graphs.
const NO_CAPTURE: &str = "decode, no capture";
/// The `what` of decode whose steps replayed a recorded one (every run).
const REPLAYED: &str = "decode, graph replay";

/// One measured figure.
struct Record {
    model: String,
    weights: &'static str,
    what: &'static str,
    tokens_per_s: f64,
    runs: Vec<f64>,
    /// Median tokens per CPU-second (all threads), when measured in every run.
    cpu_tokens_per_s: Option<f64>,
    cpu_runs: Vec<f64>,
    /// Linear weights read per token (MB).
    linear_mb: f64,
}

fn measure(s: &Subject, args: &Args, out: &mut Vec<Record>) -> Result<(), String> {
    let models: Vec<(&'static str, &Llama)> = s
        .dense
        .iter()
        .map(|m| ("dense", m))
        .chain([("any4", &s.any4)])
        .collect();
    // Warm-up: allocator, caches, kernel compilation on GPUs.
    for (_, m) in &models {
        let short = Args {
            tokens: 4,
            prefill: args.prefill.min(64),
            ..args.clone()
        };
        decode(m, &short, true)?;
        if args.prefill > 0 {
            prefill(m, &short);
        }
    }
    // On a device that records graphs, also the ordinary steps (what the replay saves).
    let graphs = any4_burn::records_graphs(&s.any4.device());
    let mut dec = vec![Vec::new(); models.len()];
    let mut steps = vec![Vec::new(); models.len()];
    let mut captured = vec![Vec::new(); models.len()];
    let mut pre = vec![Vec::new(); models.len()];
    let mut dec_ops = vec![Vec::new(); models.len()];
    let mut pre_ops = vec![Vec::new(); models.len()];
    let mut steps_ops = vec![Vec::new(); models.len()];
    for _ in 0..args.repeats {
        for (i, (_, m)) in models.iter().enumerate() {
            timing::take();
            let (speed, replayed) = decode(m, args, true)?;
            dec[i].push(speed);
            captured[i].push(replayed);
            dec_ops[i].push(timing::take());
            if graphs {
                steps[i].push(decode(m, args, false)?.0);
                steps_ops[i].push(timing::take());
            }
            if args.prefill > 0 {
                pre[i].push(prefill(m, args));
                pre_ops[i].push(timing::take());
            }
        }
    }
    for (i, (w, _)) in models.iter().enumerate() {
        let mb = if *w == "dense" { s.mb.0 } else { s.mb.1 };
        let mut push = |what, runs: &Vec<Speed>| {
            let wall: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let cpu: Option<Vec<f64>> = runs.iter().map(|r| r.1).collect();
            out.push(Record {
                model: s.name.clone(),
                weights: w,
                what,
                tokens_per_s: median(wall.clone()),
                runs: wall,
                cpu_tokens_per_s: cpu.clone().map(median),
                cpu_runs: cpu.unwrap_or_default(),
                linear_mb: mb,
            })
        };
        let replayed = captured[i].iter().all(|&c| c);
        push(if replayed { REPLAYED } else { "decode" }, &dec[i]);
        if graphs {
            push(NO_CAPTURE, &steps[i]);
        }
        if args.prefill > 0 {
            push("prefill", &pre[i]);
        }
        if args.breakdown {
            let what = format!("decode ({} tokens after {})", args.tokens, args.prompt);
            print_breakdown(&s.name, w, &what, &dec_ops[i], args.tokens + 1);
            if graphs {
                let what = format!("{what}, no capture");
                print_breakdown(&s.name, w, &what, &steps_ops[i], args.tokens + 1);
            }
            if args.prefill > 0 {
                let what = format!("prefill of {}", args.prefill);
                print_breakdown(&s.name, w, &what, &pre_ops[i], args.prefill);
            }
        }
    }
    Ok(())
}

/// Time per token of each op over `runs`, each of `tokens` tokens. For decode the prompt's
/// forward is in the totals too: the figures are per generated token including a share of the
/// prompt (small at 32 tokens).
fn print_breakdown(
    model: &str,
    weights: &str,
    what: &str,
    runs: &[Vec<(timing::Op, f64, u64)>],
    tokens: usize,
) {
    let per_token = tokens as f64 * runs.len() as f64;
    let mut total = 0.0;
    eprintln!(
        "{model} {weights}, {what}: time per token by op (µs; {} runs)",
        runs.len()
    );
    for op in timing::Op::ALL {
        let secs: f64 = runs
            .iter()
            .flat_map(|r| r.iter().filter(|(o, _, _)| *o == op))
            .map(|(_, s, _)| s)
            .sum();
        let calls: u64 = runs
            .iter()
            .flat_map(|r| r.iter().filter(|(o, _, _)| *o == op))
            .map(|(_, _, c)| c)
            .sum();
        total += secs;
        eprintln!(
            "  {:<16} {:>9.1} µs  ({:.1} calls/token)",
            op.name(),
            secs / per_token * 1e6,
            calls as f64 / per_token
        );
    }
    eprintln!("  {:<16} {:>9.1} µs", "total", total / per_token * 1e6);
}

fn run(args: &Args) -> Result<(), String> {
    if args.tokens == 0 || args.repeats == 0 {
        return Err("--tokens and --repeats must be ≥ 1".into());
    }
    if args.breakdown && !timing::ENABLED {
        return Err("--breakdown needs a build with `--features op-timing`".into());
    }
    let device = device_from_name(&args.backend).map_err(|e| e.to_string())?;
    if args.tensor_ops {
        any4_llm::set_host_kernels(false);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models = match &args.models {
        Some(m) => m.clone(),
        None if !args.random_config.is_empty() => Vec::new(),
        None => {
            let smol = root.join(".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            let mut m = vec![root.join("models/tiny-llama")];
            m.extend(smol.exists().then_some(smol));
            m
        }
    };
    let mut records = Vec::new();
    for path in &models {
        let s = from_file(path, args, &device)?;
        measure(&s, args, &mut records)?;
        report_subject(&s, &records);
    }
    for preset in &args.random_config {
        let s = from_preset(preset, args, &device)?;
        measure(&s, args, &mut records)?;
        report_subject(&s, &records);
    }
    let md = table(args, &device, &records);
    print!("{md}");
    if let Some(path) = &args.json {
        write_json(path, args, &device, &records, &md)?;
    }
    Ok(())
}

fn report_subject(s: &Subject, records: &[Record]) {
    for r in records.iter().filter(|r| r.model == s.name) {
        let cpu = r
            .cpu_tokens_per_s
            .map_or(String::new(), |c| format!(" ({c:.1} per CPU-second)"));
        eprintln!(
            "{} {} {}: {:.1} tokens/s{cpu}",
            r.model, r.weights, r.what, r.tokens_per_s
        );
    }
    eprintln!(
        "{}: linear weights {:.1} MB dense → {:.1} MB any4",
        s.name, s.mb.0, s.mb.1
    );
}

fn table(args: &Args, device: &Device, records: &[Record]) -> String {
    let mut md = format!(
        "backend `{}` ({device:?}); decode: {} tokens after a {}-token prompt (greedy); prefill: \
         {} tokens; median of {} alternating runs; LM head {}{}; threads {}; load average {} \
         at the end\n\n\
         Tokens per CPU-second (all threads) beside wall-clock tokens/s: on a shared machine the \
         wall figures fall with this process's share of the cores, the CPU ones much less.\n\n\
         | model | what | dense tokens/s | any4 tokens/s | any4 / dense | dense tok/CPU-s | any4 tok/CPU-s | any4 / dense (CPU) | linear weights dense → any4 (MB) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.backend,
        args.tokens,
        args.prompt,
        args.prefill,
        args.repeats,
        if args.lm_head {
            "any4 (`--lm-head`)"
        } else {
            "dense"
        },
        if args.tensor_ops {
            "; Flex host kernels off (`--tensor-ops`)"
        } else {
            ""
        },
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
            std::thread::available_parallelism().map_or("?".into(), |n| n.to_string())
        }),
        load_average().map_or("?".into(), |l| format!("{l:.1}")),
    );
    let mut seen = Vec::new();
    for r in records {
        let key = (r.model.clone(), r.what);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let find = |w: &str| {
            records
                .iter()
                .find(|x| x.model == r.model && x.what == r.what && x.weights == w)
        };
        let (d, q) = (
            find("dense").map(|x| x.tokens_per_s),
            find("any4").map(|x| x.tokens_per_s),
        );
        let (dc, qc) = (
            find("dense").and_then(|x| x.cpu_tokens_per_s),
            find("any4").and_then(|x| x.cpu_tokens_per_s),
        );
        let mb = |w: &str| {
            records
                .iter()
                .find(|x| x.model == r.model && x.weights == w)
                .map_or("—".to_string(), |x| format!("{:.1}", x.linear_mb))
        };
        let fmt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
        let ratio = |d: Option<f64>, q: Option<f64>| match (d, q) {
            (Some(d), Some(q)) => format!("{:.2}×", q / d),
            _ => "—".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            r.model,
            r.what,
            fmt(d),
            fmt(q),
            ratio(d, q),
            fmt(dc),
            fmt(qc),
            ratio(dc, qc),
            mb("dense"),
            mb("any4")
        );
    }
    md
}

fn write_json(
    path: &Path,
    args: &Args,
    device: &Device,
    records: &[Record],
    md: &str,
) -> Result<(), String> {
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let json: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({"backend": args.backend, "device": format!("{device:?}"),
                "model": r.model, "weights": r.weights, "what": r.what,
                "lm_head_quantized": args.lm_head, "tensor_ops": args.tensor_ops,
                "prompt_tokens": if r.what == "prefill" { args.prefill } else { args.prompt },
                "tokens": if r.what == "prefill" { args.prefill } else { args.tokens },
                "tokens_per_s": r.tokens_per_s, "runs": r.runs,
                "cpu_tokens_per_s": r.cpu_tokens_per_s, "cpu_runs": r.cpu_runs,
                "linear_mb": r.linear_mb, "threads": threads,
                "rayon_threads": std::env::var("RAYON_NUM_THREADS").ok(),
                "load_average": load_average()})
        })
        .collect();
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::fs::write(path.with_extension("md"), md).map_err(|e| format!("cannot write md: {e}"))
}

/// The 1-minute load average (`/proc/loadavg`), recorded with the figures: above the core
/// count, other jobs were taking CPU time from the run.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("bench decode: {e}");
        std::process::exit(1);
    }
}
