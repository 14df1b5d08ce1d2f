//! `any4 quantize --stream` / `--max-memory`: quantizing models larger than memory.
//!
//! Streaming is chosen when asked (`--stream`), or when the model would not fit: its
//! in-memory estimate is over `--max-memory`, or over the memory the system has available
//! (`MemAvailable`). It needs an HF safetensors folder (a GGUF file or an any4 folder is read
//! whole). Both calibrations stream, with the same result as in memory.

use any4_burn::{OutputDir, QuantizeConfig};
use any4_llm::{Calibration, StreamingQuantizer, format_bytes, is_streamable};
use burn::tensor::Device;

use super::{AnyResult, QuantizeArgs, note};

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
    out: &OutputDir,
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
    let report = q.run(out, cfg, calibration, &ids, max_memory)?;
    Ok(Some((report, ids.len())))
}
