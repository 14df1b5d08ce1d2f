//! Shared body of the `llama_any4` and `mistral_any4` examples: dense vs any4 on one model —
//! perplexity, generation, decode speed and weight memory.
//!
//! Options (`--help` lists them): `--model DIR|GGUF` `--format any4` `--group-size 128|per-row`
//! `--prompt TEXT` `--max-tokens N` `--sequential` `--eval FILE` `--seq-len N` `--windows N`
//! (`--windows` caps the perplexity windows: default 100, so a run stays near a minute on two
//! cores; `0` = all) `--backend flex|wgpu|cpu|cuda` (the CubeCL ones with `--features …`).
//!
//! Steps: load the dense model → perplexity → greedy generation → calibrate on
//! `CALIBRATION_PROMPT` → quantize the linear layers (LM head and embeddings stay dense) →
//! perplexity and generation again → a side-by-side table. Offline; Flex (CPU) by default.

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

use burn_any4::burn::{
    CALIBRATION_PROMPT, QuantizeConfig, Report, quantize_model, quantize_model_sequential,
};
use burn_any4::core::{Any4Config, Format, GroupSize};
use burn_any4::llm::{
    GenerateConfig, Generation, Llama, Perplexity, PerplexityConfig, Tokenizer, generate,
    load_auto, perplexity, token_tensor,
};

/// Dense vs any4 on one model: perplexity, greedy generation, decode speed and weight memory.
#[derive(Parser)]
struct Args {
    /// HF folder, GGUF file or any4 folder (default: the example's embedded model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Numeric format: any4, any3, any2, int4, nf4, fp4.
    #[arg(long, default_value = "any4", value_parser = parse::<Format>)]
    format: Format,
    /// Inputs per scale/zero group: 32, 64, 128, 256, 512, 1024 or per-row.
    #[arg(long, default_value = "128", value_parser = parse::<GroupSize>)]
    group_size: GroupSize,
    /// Prompt of the generation.
    #[arg(long, default_value = "The king said")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// Calibrate block by block on the already-quantized earlier blocks.
    #[arg(long)]
    sequential: bool,
    /// Evaluation text (default: the model's `heldout.txt`, else the tiny Llama's).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Tokens per perplexity window.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Perplexity windows at most (0: all); 100 keeps a run near a minute on two cores.
    #[arg(long, default_value_t = 100)]
    windows: usize,
    /// Backend: flex, cpu, wgpu, cuda (the CubeCL ones with `--features cpu|wgpu|cuda`).
    #[arg(long, default_value = "flex")]
    backend: String,
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

/// Greedy generation, streamed to stdout as text.
fn run_generation(
    model: &Llama,
    tok: &Tokenizer,
    args: &Args,
) -> Result<(Generation, String), Box<dyn Error>> {
    let prompt = tok.encode(&args.prompt, true)?;
    let cfg = GenerateConfig {
        max_new_tokens: args.max_tokens,
        stop_tokens: tok.eos_ids().to_vec(),
        ..GenerateConfig::default()
    };
    print!("  {}", args.prompt);
    let mut ids = Vec::new();
    let mut shown = 0;
    let g = generate(model, &prompt, &cfg, &mut |t| {
        ids.push(t);
        // Decode everything so far and print what is new (tokens may split characters).
        if let Ok(text) = tok.decode(&ids, true)
            && text.len() > shown
            && text.is_char_boundary(shown)
        {
            print!("{}", &text[shown..]);
            shown = text.len();
            let _ = std::io::stdout().flush();
        }
    })?;
    println!();
    let text = tok.decode(&g.tokens, true)?;
    Ok((g, text))
}

fn eval(model: &Llama, tok: &Tokenizer, text: &str, cfg: &PerplexityConfig) -> Perplexity {
    let t = Instant::now();
    let p = perplexity(model, tok, text, cfg).unwrap_or_else(|e| {
        eprintln!("perplexity failed: {e}");
        std::process::exit(1)
    });
    println!(
        "  perplexity {:.3} over {} windows × {} tokens ({} predicted) in {:.1}s",
        p.ppl,
        p.windows,
        cfg.seq_len,
        p.tokens,
        t.elapsed().as_secs_f64()
    );
    p
}

/// Run the dense-vs-quantized comparison; `default_model` is relative to the repository root.
pub fn run(default_model: &str) -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let model_path = args
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default_model));
    let start = Instant::now();
    let device = burn_any4::burn::device_from_name(&args.backend)?;
    let (model, tok) = load_auto(&model_path, &device)?;
    let c = &model.config;
    println!(
        "model {}: {} layers, hidden {}, heads {}/{} kv, vocab {} (loaded in {:.2}s)",
        model_path.display(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.kv_heads(),
        c.vocab_size,
        start.elapsed().as_secs_f64()
    );
    let eval_path = args.eval.clone().unwrap_or_else(|| {
        let own = model_path.join("heldout.txt");
        if own.exists() {
            own
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llama/heldout.txt")
        }
    });
    let text =
        std::fs::read_to_string(&eval_path).map_err(|e| format!("{}: {e}", eval_path.display()))?;
    let pcfg = PerplexityConfig {
        seq_len: args.seq_len,
        max_windows: (args.windows > 0).then_some(args.windows),
        batch_size: 4,
    };
    println!("\n[dense] {}", eval_path.display());
    let dense_ppl = eval(&model, &tok, &text, &pcfg);
    let (dense_gen, dense_text) = run_generation(&model, &tok, &args)?;

    let any4 = Any4Config::new(args.format).with_group_size(args.group_size);
    let qcfg = QuantizeConfig::new(any4);
    let calib = token_tensor(&tok.encode(CALIBRATION_PROMPT, true)?, &device);
    let mode = if args.sequential {
        "sequential"
    } else {
        "one-shot"
    };
    println!(
        "\n[{}] calibrating ({mode}) on CALIBRATION_PROMPT ({} tokens), group {}",
        args.format,
        calib.dims()[1],
        args.group_size
    );
    let (qmodel, report): (Llama, Report) = if args.sequential {
        quantize_model_sequential(model, &qcfg, &calib)?
    } else {
        let mut model = model;
        let stats = model.calibrate(calib);
        quantize_model(model, &qcfg, Some(&stats))?
    };
    println!(
        "  {}",
        report.to_string().lines().last().unwrap_or_default()
    );
    let q_ppl = eval(&qmodel, &tok, &text, &pcfg);
    let (q_gen, q_text) = run_generation(&qmodel, &tok, &args)?;

    let weights = report.weights() as f64;
    let dense_mb = weights * 32.0 / 8.0 / 1e6;
    let q_mb = weights * report.bits_per_weight() / 8.0 / 1e6;
    // One table row per text: newlines shown as ⏎, long texts cut.
    let one_line = |s: &str| {
        let s = s.replace('\n', "⏎");
        match s.char_indices().nth(72) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s,
        }
    };
    let name = args.format.to_string();
    println!("\n| | dense f32 | {name} |");
    println!("|---|---|---|");
    println!("| perplexity | {:.3} | {:.3} |", dense_ppl.ppl, q_ppl.ppl);
    println!(
        "| linear weights (MB) | {dense_mb:.3} (32 bits/w) | {q_mb:.3} ({:.3} bits/w) |",
        report.bits_per_weight()
    );
    println!(
        "| decode tokens/s | {:.1} | {:.1} |",
        dense_gen.tokens_per_second, q_gen.tokens_per_second
    );
    println!(
        "| generated | {} | {} |",
        one_line(&dense_text),
        one_line(&q_text)
    );
    println!("\ntotal {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}
