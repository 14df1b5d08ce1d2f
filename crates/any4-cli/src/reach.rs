//! `any4 quantize --stream` / `--max-memory`, and `any4 import --from gptq|awq`.
//!
//! Streaming is chosen when asked (`--stream`), or when the model would not fit: its
//! in-memory estimate is over `--max-memory`, or over the memory the system has available
//! (`MemAvailable`). It needs an HF safetensors folder (a GGUF file or an any4 folder is read
//! whole). Both calibrations stream, with the same result as in memory.

use std::path::Path;

use any4_burn::QuantizeConfig;
use any4_llm::import::{ImportFormat, import_int4};
use any4_llm::{Calibration, StreamingQuantizer, format_bytes, is_streamable};
use burn::tensor::Device;
use clap::Args;

use super::{AnyResult, QuantizeArgs, emit, note};

/// `4G`, `4GiB`, `512M`, `4096MiB`, `1T` (binary units) or plain bytes.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("`{s}`: unknown unit (use e.g. 4G, 512M or bytes)")),
    };
    let value: f64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: not a size (use e.g. 4G, 512M or bytes)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("`{s}`: the size must be positive"));
    }
    Ok((value * (1u64 << shift) as f64) as u64)
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` where there is no such file).
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Quantize by streaming if `a` asks for it or the model would not fit in memory: `Some`
/// with the pass's report and the calibration token count once the folder is written, `None`
/// to quantize in memory.
pub(crate) fn quantize_streaming(
    a: &QuantizeArgs,
    cfg: &QuantizeConfig,
    device: &Device,
) -> AnyResult<Option<(any4_burn::Report, usize)>> {
    let max_memory = a.max_memory;
    if !is_streamable(&a.model) {
        if a.stream {
            return Err(format!(
                "{}: --stream needs an HF folder with config.json and safetensors (a GGUF file \
                 or an any4 folder is loaded whole)",
                a.model.display()
            )
            .into());
        }
        return Ok(None);
    }
    let q = StreamingQuantizer::open(&a.model, device)?;
    let text = match &a.calib_file {
        Some(f) => super::read_text(f)?,
        None => any4_burn::CALIBRATION_PROMPT.to_string(),
    };
    let mut ids = q.tokenizer().encode(&text, true)?;
    ids.truncate(a.calib_tokens.max(2));
    let est = q.memory_estimate(cfg, ids.len());
    let available = mem_available();
    let too_big = |limit: Option<u64>| limit.is_some_and(|m| est.in_memory > m);
    if !(a.stream || too_big(max_memory) || too_big(available)) {
        return Ok(None);
    }
    if !a.stream {
        note(format_args!(
            "{}: in memory this needs about {} ({} {}): streaming block by block instead \
             (about {})",
            a.model.display(),
            format_bytes(est.in_memory),
            if too_big(max_memory) {
                "over --max-memory"
            } else {
                "over the available"
            },
            format_bytes(max_memory.or(available).unwrap_or(0)),
            format_bytes(est.peak())
        ));
    }
    let calibration = if a.sequential {
        Calibration::Sequential
    } else {
        Calibration::OneShot
    };
    let report = q.run(&a.out, cfg, calibration, &ids, max_memory)?;
    Ok(Some((report, ids.len())))
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// Checkpoint layout: gptq (AutoGPTQ/GPTQModel) or awq (AutoAWQ GEMM).
    #[arg(long = "from", value_parser = super::parse::<ImportFormat>)]
    from: ImportFormat,
    /// HF folder of the int4 checkpoint (config.json with quantization_config, safetensors,
    /// tokenizer.json).
    #[arg(long)]
    model: std::path::PathBuf,
    /// Output any4 folder (written atomically; an existing any4 folder is replaced, any other
    /// existing folder refused).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Print a one-line JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn cmd_import(a: ImportArgs) -> AnyResult<()> {
    let r = import_int4(&a.model, &a.out, a.from)?;
    let f16 = r
        .layers
        .values()
        .filter(|c| c.param_dtype() == any4_core::ParamDtype::F16)
        .count();
    if a.json {
        emit(format_args!(
            "{}",
            serde_json::json!({"model": a.model, "out": a.out, "from": a.from.to_string(),
                "layers": r.layers.len(), "weights": r.weights,
                "bits_per_weight": r.bits_per_weight, "f16_params": f16,
                "f32_params": r.layers.len() - f16, "dense": r.dense})
        ))?;
        return Ok(());
    }
    emit(format_args!(
        "{} {} layers imported losslessly ({:.2} M weights, {:.3} bits/weight; parameters in \
         f16: {f16}, f32: {}), dense: {}; saved to {}",
        r.layers.len(),
        a.from,
        r.weights as f64 / 1e6,
        r.bits_per_weight,
        r.layers.len() - f16,
        if r.dense.is_empty() {
            "-".to_string()
        } else {
            r.dense.join(", ")
        },
        display(&a.out)
    ))
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
