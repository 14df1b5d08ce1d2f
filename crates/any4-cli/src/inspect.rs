//! `any4 inspect`: a checkpoint's layers, formats, shapes, bytes and bits per weight.

use std::path::PathBuf;

use clap::Args;

use super::*;

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// any4 checkpoint folder or its `model.safetensors`.
    path: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Stored bits per weight of a checkpoint layer: what its configuration stores, plus an f32
/// input multiplier (`K` values over `N·K` weights) when the layer has one.
pub(crate) fn layer_bits(l: &LayerInfo) -> f64 {
    let input = if l.input_scale {
        32.0 / l.shape[0] as f64
    } else {
        0.0
    };
    l.config.bits_per_weight(l.shape) + input
}

/// Weight-averaged [`layer_bits`] of the quantized layers of a checkpoint.
pub(crate) fn checkpoint_bits(meta: &CheckpointMeta) -> f64 {
    let (mut weights, mut bits) = (0.0f64, 0.0f64);
    for l in meta.layers.values() {
        let w = (l.shape[0] * l.shape[1]) as f64;
        weights += w;
        bits += layer_bits(l) * w;
    }
    bits / weights.max(1.0)
}

pub(crate) fn cmd_inspect(a: InspectArgs) -> AnyResult<()> {
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
    // Per layer: stored bytes (codes, table, scales, zeros, bias) and bits per weight (codes and
    // quantization parameters, as `any4_core::Any4Config::bits_per_weight` counts them).
    let mut layers = Vec::with_capacity(cfg.layers.len());
    let (mut weights, mut bits, mut bytes) = (0usize, 0.0f64, 0usize);
    for (path, l) in &cfg.layers {
        let [n, k] = l.shape;
        let bpw = layer_bits(l);
        let layer_bytes = ckpt.layer_bytes(path)?;
        weights += n * k;
        bits += bpw * (n * k) as f64;
        bytes += layer_bytes;
        layers.push((path, l, layer_bytes, bpw));
    }
    let bits_per_weight = bits / weights.max(1) as f64;
    if a.json {
        // The stored `quantization_config`, each layer with its bytes and bits per weight, plus
        // totals.
        let mut json = serde_json::to_value(cfg)?;
        for (path, _, layer_bytes, bpw) in &layers {
            if let Some(layer) = json["layers"][path.as_str()].as_object_mut() {
                layer.insert("bytes".into(), (*layer_bytes).into());
                layer.insert("bits_per_weight".into(), (*bpw).into());
            }
        }
        if let Some(top) = json.as_object_mut() {
            top.insert("file_bytes".into(), ckpt.file_bytes().into());
            top.insert("quantized_bytes".into(), bytes.into());
            top.insert("quantized_weights".into(), weights.into());
            top.insert("bits_per_weight".into(), bits_per_weight.into());
        }
        outln!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    outln!(
        "{} ({:.2} MB, {}, schema {})",
        file.display(),
        ckpt.file_bytes() as f64 / 1e6,
        cfg.tool_version,
        cfg.schema_version
    );
    outln!("| layer | shape | format | group | scaling | table | bytes | bits/weight |");
    outln!("|---|---|---|---|---|---|---:|---:|");
    for (path, l, layer_bytes, bpw) in &layers {
        let [n, k] = l.shape;
        outln!(
            "| {path} | {n}×{k} | {} | {} | {:?} | {} | {layer_bytes} | {bpw:.3} |",
            l.config.format(),
            l.config.group_size(),
            l.config.scaling(),
            l.table
        );
    }
    outln!(
        "{} quantized layers, {:.2} M weights in {:.2} MB at {:.3} bits/weight; dense: {}",
        cfg.layers.len(),
        weights as f64 / 1e6,
        bytes as f64 / 1e6,
        bits_per_weight,
        if cfg.modules_not_quantized.is_empty() {
            "-".to_string()
        } else {
            cfg.modules_not_quantized.join(", ")
        }
    );
    Ok(())
}
