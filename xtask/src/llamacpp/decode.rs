//! SmolLM2-135M decode and prefill: `llama-bench` on the GGUF, `benches/decode.rs` on the same file.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{Context, DECODE_TOKENS, PREFILL_TOKENS, Record, Result, read, run_quiet};

pub(super) fn run(
    threads: usize,
    bin: &Path,
    model: &Path,
    cx: &mut Context,
) -> Result<Vec<Record>> {
    let record = |side, what, ty: &str, via: &str, tokens, samples, note: Option<&str>| Record {
        side,
        threads,
        what,
        ty: ty.to_string(),
        via: via.to_string(),
        shape: None,
        tokens,
        samples,
        from_dram: None,
        note: note.map(String::from),
    };
    let mut records = Vec::new();
    let lb = bin.join("llama-bench");
    let m = model.display().to_string();
    let (t, n, p) = (
        threads.to_string(),
        DECODE_TOKENS.to_string(),
        PREFILL_TOKENS.to_string(),
    );
    let args = ["-m", &m, "-n", &n, "-p", &p, "-t", &t, "-o", "json"];
    cx.command(format!("{} {}", lb.display(), args.join(" ")));
    cx.step("llama-bench");
    let out = run_quiet(Command::new(&lb).args(args), "llama-bench")?;
    let tests: Vec<Value> =
        serde_json::from_str(&out).map_err(|e| format!("llama-bench: bad JSON ({e}):\n{out}"))?;
    for t in &tests {
        let samples: Vec<f64> = t["samples_ts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let (what, tokens) = match (t["n_prompt"].as_u64(), t["n_gen"].as_u64()) {
            (Some(p), Some(0)) if p > 0 => ("prefill", p),
            (Some(0), Some(g)) if g > 0 => ("decode", g),
            _ => return Err(format!("llama-bench: unexpected test {t}")),
        };
        if samples.is_empty() {
            return Err(format!("llama-bench: no samples_ts in {t}"));
        }
        let ty = t["model_type"]
            .as_str()
            .and_then(|s| s.split_whitespace().last())
            .unwrap_or("gguf");
        records.push(record(
            "llama.cpp",
            what,
            &ty.to_lowercase(),
            "llama-bench",
            Some(tokens as usize),
            samples,
            None,
        ));
    }
    for what in ["decode", "prefill"] {
        if !records.iter().any(|r| r.what == what) {
            return Err(format!("llama-bench reported no {what} test:\n{out}"));
        }
    }

    let json =
        std::env::temp_dir().join(format!("any4-llamacpp-decode-{}.json", std::process::id()));
    let args = [
        "bench",
        "-p",
        "burn-any4",
        "--bench",
        "decode",
        "--",
        "--backend",
        "flex",
        "--models",
        &m,
        "--tokens",
        &n,
        "--prefill",
        &p,
        "--repeats",
        "5",
        "--lm-head",
        "--json",
    ];
    cx.command(format!(
        "RAYON_NUM_THREADS={} cargo {} FILE",
        threads,
        args.join(" ")
    ));
    cx.step("bench decode (quantizes SmolLM2 first)");
    run_quiet(
        Command::new("cargo")
            .args(args)
            .arg(&json)
            .env("RAYON_NUM_THREADS", &t),
        "cargo bench --bench decode",
    )?;
    let rows: Vec<Value> =
        serde_json::from_str(&read(&json)?).map_err(|e| format!("{}: {e}", json.display()))?;
    let _ = fs::remove_file(&json);
    // One row per (weights, what): the any4 model (LM head quantized) and the dense f32 one.
    let head = Some("LM head quantized too (--lm-head)");
    for (weights, ty, note) in [("any4", "any4", head), ("dense", "dense-f32", None)] {
        for what in ["decode", "prefill"] {
            let row = rows
                .iter()
                .find(|r| r["weights"] == weights && r["what"] == what)
                .ok_or(format!("bench decode: no {weights} {what} record"))?;
            let samples: Vec<f64> = row["runs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            if samples.is_empty() {
                return Err(format!("bench decode: no runs in {row}"));
            }
            let tokens = row["tokens"].as_u64().map(|t| t as usize);
            records.push(record(
                "burn-any4",
                what,
                ty,
                "bench decode",
                tokens,
                samples,
                note,
            ));
        }
    }
    Ok(records)
}
