//! End-to-end decode speed, dense vs any4, same backend, same run.
//!
//! `cargo xtask bench decode [--backend flex|cpu|wgpu|cuda] [--models DIR|GGUF,...] [--tokens N]
//! [--repeats N] [--lm-head] [--json FILE]` (or `cargo bench --bench decode -- ...`).
//!
//! For each model: load it twice, quantize one copy to any4 (group 128, one-shot calibration on
//! `CALIBRATION_PROMPT`; LM head and embeddings stay dense, as in the paper, unless `--lm-head`), then alternate
//! greedy generations of `--tokens` tokens (no stop token) on the dense and the any4 model and
//! report the median single-token decode speed of each. Defaults: the embedded tiny Llama, and
//! SmolLM2-135M when `cargo xtask fetch smollm2` has put it in `.cache/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use any4_burn::{CALIBRATION_PROMPT, QuantizeConfig, quantize_model};
use any4_core::{Any4Config, Format};
use any4_llm::{GenerateConfig, Llama, generate, load_auto, token_tensor};
use burn::tensor::Device;

struct Args {
    backend: String,
    models: Vec<PathBuf>,
    tokens: usize,
    repeats: usize,
    json: Option<PathBuf>,
    /// Quantize the LM head too (`QuantizeConfig::with_lm_head`).
    lm_head: bool,
}

fn parse_args() -> Result<Args, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut models = vec![root.join("models/tiny-llama")];
    let smol = root.join(".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smol.exists() {
        models.push(smol);
    }
    let mut a = Args {
        backend: "flex".into(),
        models,
        tokens: 64,
        repeats: 5,
        json: None,
        lm_head: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--backend" => a.backend = val()?,
            "--models" => a.models = val()?.split(',').map(PathBuf::from).collect(),
            "--tokens" => a.tokens = val()?.parse().map_err(|e| format!("--tokens: {e}"))?,
            "--repeats" => a.repeats = val()?.parse().map_err(|e| format!("--repeats: {e}"))?,
            "--json" => a.json = Some(val()?.into()),
            "--lm-head" => a.lm_head = true,
            // cargo bench passes `--bench`.
            "--bench" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.tokens < 2 || a.repeats == 0 {
        return Err("--tokens must be ≥ 2 and --repeats ≥ 1".into());
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Decode tokens/s of one greedy generation of exactly `cfg.max_new_tokens` tokens.
fn decode_speed(model: &Llama, prompt: &[u32], cfg: &GenerateConfig) -> Result<f64, String> {
    let g = generate(model, prompt, cfg, &mut |_| {}).map_err(|e| e.to_string())?;
    Ok(g.tokens_per_second)
}

struct Row {
    model: String,
    dense: f64,
    any4: f64,
    dense_mb: f64,
    any4_mb: f64,
    head_mb: f64,
}

fn bench_model(path: &Path, args: &Args, device: &Device) -> Result<Row, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let (dense, tok) = load_auto(path, device).map_err(|e| err(&e))?;
    let (mut qmodel, _) = load_auto(path, device).map_err(|e| err(&e))?;
    let calib = token_tensor(
        &tok.encode(CALIBRATION_PROMPT, true).map_err(|e| err(&e))?,
        device,
    );
    let stats = qmodel.calibrate(calib);
    let cfg = QuantizeConfig::new(Any4Config::new(Format::Any4)).with_lm_head(args.lm_head);
    let (qmodel, report) = quantize_model(qmodel, &cfg, Some(&stats)).map_err(|e| err(&e))?;
    let prompt = tok
        .encode("The capital of France is", true)
        .map_err(|e| err(&e))?;
    let gcfg = GenerateConfig {
        max_new_tokens: args.tokens,
        ..GenerateConfig::default()
    };
    // Warm-up (allocator, caches), then alternate so drift hits both sides alike.
    decode_speed(&dense, &prompt, &gcfg)?;
    decode_speed(&qmodel, &prompt, &gcfg)?;
    let (mut d, mut q) = (Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        d.push(decode_speed(&dense, &prompt, &gcfg)?);
        q.push(decode_speed(&qmodel, &prompt, &gcfg)?);
    }
    let c = &dense.config;
    let weights = report.weights() as f64;
    Ok(Row {
        model: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dense: median(d),
        any4: median(q),
        dense_mb: weights * 4.0 / 1e6,
        any4_mb: weights * report.bits_per_weight() / 8.0 / 1e6,
        // With `--lm-head` the head is among the quantized (linear) weights.
        head_mb: if args.lm_head {
            0.0
        } else {
            (c.vocab_size * c.hidden_size) as f64 * 4.0 / 1e6
        },
    })
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("bench decode: {e}");
        std::process::exit(2)
    });
    let device = any4_burn::device_from_name(&args.backend).unwrap_or_else(|e| {
        eprintln!("bench decode: {e}");
        std::process::exit(2)
    });
    let mut rows = Vec::new();
    for path in &args.models {
        match bench_model(path, &args, &device) {
            Ok(r) => {
                eprintln!(
                    "{}: dense {:.1} tok/s, any4 {:.1} tok/s ({:.2}×)",
                    r.model,
                    r.dense,
                    r.any4,
                    r.any4 / r.dense
                );
                rows.push(r);
            }
            Err(e) => {
                eprintln!("bench decode: {e}");
                std::process::exit(1)
            }
        }
    }
    let mut md = format!(
        "backend `{}` ({device:?}), greedy decode of {} tokens after a 6-token prompt, median of {} \
         alternating runs{}\n\n| model | dense tokens/s | any4 tokens/s | speed-up | linear weights dense → any4 (MB) | LM head, dense f32 (MB) |\n|---|---|---|---|---|---|\n",
        args.backend,
        args.tokens,
        args.repeats,
        if args.lm_head {
            "; LM head quantized to any4 too (`--lm-head`: in the linear weights column)"
        } else {
            "; LM head dense (as in the paper)"
        }
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.2}× | {:.1} → {:.1} | {:.1} |",
            r.model,
            r.dense,
            r.any4,
            r.any4 / r.dense,
            r.dense_mb,
            r.any4_mb,
            r.head_mb
        );
    }
    print!("{md}");
    if let Some(path) = &args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"backend": args.backend, "device": format!("{device:?}"),
                    "model": r.model, "tokens": args.tokens, "dense_tokens_per_s": r.dense,
                    "any4_tokens_per_s": r.any4, "speedup": r.any4 / r.dense,
                    "linear_mb_dense": r.dense_mb, "linear_mb_any4": r.any4_mb,
                    "lm_head_mb": r.head_mb, "lm_head_quantized": args.lm_head})
            })
            .collect();
        let text = serde_json::to_string_pretty(&json).expect("json");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("bench decode: cannot write {}: {e}", path.display());
        }
        if let Err(e) = std::fs::write(path.with_extension("md"), &md) {
            eprintln!("bench decode: cannot write md: {e}");
        }
    }
}
