//! Importing GPTQ and AWQ int4 checkpoints (HF folders) into any4 folders, losslessly.
//!
//! An int4 group with a scale and a zero point is a special case of the any4 layout (the
//! int4 table `0..15`, see [`unpack_layer`]), so these checkpoints run on the any4 kernels without
//! re-quantizing: every quantized linear (`X.qweight` present) becomes an any4 layer whose
//! dequantized weight is bit-identical to the format's `s · (q − z)`; every other tensor
//! (embeddings, norms, a dense LM head) is copied as f32. The reading is streamed layer by
//! layer from the memory-mapped files and the folder is written atomically.
//!
//! The checkpoint's settings come from `quantization_config` in `config.json` (or a
//! `quantize_config.json` / `quant_config.json` beside it): `bits` must be 4; `group_size`
//! (−1: one group per row); GPTQ's `checkpoint_format` (`gptq`: zeros stored minus one, the
//! default; `gptq_v2`: as they are); AWQ's `version` must be `gemm`.

mod unpack;

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use any4_burn::{CheckpointMeta, OutputDir, PlannedTensor, write_checkpoint_streaming};
use safetensors::Dtype;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::load::{SafetensorsSource, TensorSource};
use crate::model::hf_tensor_shapes;
use crate::stream::{checkpoint_name, copy_f32, plan_checkpoint, write_model_files};
use crate::tokenizer::Tokenizer;

pub use unpack::{
    AWQ_ORDER, LayerParams, PackedFormat, PackedLayer, RawTensor, layer_params, unpack_layer,
};

/// Which int4 checkpoint layout to import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    /// GPTQ (AutoGPTQ, GPTQModel, transformers' `quant_method: gptq`).
    Gptq,
    /// AWQ (AutoAWQ's GEMM layout, `quant_method: awq`).
    Awq,
}

impl FromStr for ImportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gptq" => Ok(ImportFormat::Gptq),
            "awq" => Ok(ImportFormat::Awq),
            other => Err(format!(
                "unknown checkpoint format `{other}` (expected gptq or awq)"
            )),
        }
    }
}

impl std::fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImportFormat::Gptq => "gptq",
            ImportFormat::Awq => "awq",
        })
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// Quantized layers imported, by path, with their any4 config.
    pub layers: BTreeMap<String, any4_core::Any4Config>,
    /// Linear layers that were dense in the checkpoint (copied as f32).
    pub dense: Vec<String>,
    /// Weights in the imported layers.
    pub weights: usize,
    /// Storage bits per weight of the imported layers (int4 codes + scales and zeros).
    pub bits_per_weight: f64,
}

/// The checkpoint settings an import needs.
#[derive(Debug, Clone, Copy)]
struct Settings {
    packed: PackedFormat,
    /// `None`: one group per row.
    group: Option<usize>,
}

/// Read and check the `quantization_config` of the folder `dir` for `format`.
fn settings(dir: &Path, format: ImportFormat) -> Result<Settings> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: config_path.clone(),
        source,
    })?;
    let mut found = json
        .get("quantization_config")
        .cloned()
        .map(|q| (config_path.clone(), q));
    for side in ["quantize_config.json", "quant_config.json"] {
        let p = dir.join(side);
        if found.is_none() && p.is_file() {
            let t = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let q = serde_json::from_str(&t).map_err(|source| Error::Json {
                path: p.clone(),
                source,
            })?;
            found = Some((p, q));
        }
    }
    let (path, q) = found.ok_or_else(|| {
        Error::Input(format!(
            "{}: no `quantization_config` (nor quantize_config.json): not a {format} checkpoint",
            config_path.display()
        ))
    })?;
    let bad =
        |what: String| Error::Input(format!("{}: quantization_config: {what}", path.display()));
    let method = q
        .get("quant_method")
        .and_then(|v| v.as_str())
        .unwrap_or(match format {
            // Old AutoGPTQ quantize_config.json files have no quant_method.
            ImportFormat::Gptq => "gptq",
            ImportFormat::Awq => "awq",
        })
        .to_ascii_lowercase();
    if method != format.to_string() {
        return Err(bad(format!(
            "quant_method is `{method}`, not `{format}` (use --from {method} if it is supported)"
        )));
    }
    let bits = q
        .get("bits")
        .or_else(|| q.get("w_bit"))
        .and_then(|v| v.as_u64());
    if bits != Some(4) {
        return Err(bad(format!(
            "bits is {}: only 4-bit checkpoints map onto the any4 layout",
            bits.map_or("missing".into(), |b| b.to_string())
        )));
    }
    let group = match q
        .get("group_size")
        .or_else(|| q.get("q_group_size"))
        .and_then(|v| v.as_i64())
    {
        Some(-1) => None,
        Some(g) if g > 0 => Some(g as usize),
        other => {
            return Err(bad(format!(
                "group_size {other:?} (expected a positive size or -1)"
            )));
        }
    };
    let packed = match format {
        ImportFormat::Gptq => {
            let fmt = q
                .get("checkpoint_format")
                .and_then(|v| v.as_str())
                .unwrap_or("gptq")
                .to_ascii_lowercase();
            let zero_offset = match fmt.as_str() {
                "gptq" => 1,
                "gptq_v2" => 0,
                other => {
                    return Err(bad(format!(
                        "checkpoint_format `{other}` (supported: gptq, gptq_v2)"
                    )));
                }
            };
            PackedFormat::Gptq { zero_offset }
        }
        ImportFormat::Awq => {
            let version = q
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or("gemm")
                .to_ascii_lowercase();
            if version != "gemm" {
                return Err(bad(format!(
                    "AWQ version `{version}`: only the GEMM layout is supported"
                )));
            }
            if q.get("zero_point").and_then(|v| v.as_bool()) == Some(false) {
                return Err(bad("AWQ without zero points is not supported".into()));
            }
            PackedFormat::Awq
        }
    };
    Ok(Settings { packed, group })
}

/// HF name of the checkpoint path `p` (`layers.0.mlp.up_proj` → `model.layers.0.mlp.up_proj`).
fn hf_path(p: &str) -> String {
    if p == "lm_head" || p.starts_with("lm_head.") {
        p.to_string()
    } else {
        format!("model.{p}")
    }
}

/// The packed tensors named `names` (`qweight`, `qzeros`, `scales`, `g_idx` if stored),
/// borrowed from the source.
fn packed<'a>(
    source: &'a SafetensorsSource,
    names: &'a [String; 4],
    shapes: &'a mut [Vec<usize>; 4],
) -> Result<PackedLayer<'a>> {
    let mut raw: Vec<(Dtype, &'a [u8])> = Vec::with_capacity(4);
    for (i, name) in names.iter().enumerate() {
        if i == 3 && !source.contains(name) {
            raw.push((Dtype::I32, &[]));
            continue;
        }
        let (dtype, shape, bytes) = source.raw(name)?;
        shapes[i] = shape;
        raw.push((dtype, bytes));
    }
    let t = |i: usize| RawTensor {
        name: &names[i],
        dtype: raw[i].0,
        shape: &shapes[i],
        bytes: raw[i].1,
    };
    Ok(PackedLayer {
        qweight: t(0),
        qzeros: t(1),
        scales: t(2),
        g_idx: (!raw[3].1.is_empty()).then(|| t(3)),
    })
}

/// Import the GPTQ or AWQ checkpoint folder `dir` into the any4 folder `out` (see the module
/// docs). `out`, checked by [`any4_burn::check_output_dir`] (with `dir` among the inputs), is
/// written whole or not at all.
pub fn import_int4(dir: &Path, out: &OutputDir, format: ImportFormat) -> Result<ImportReport> {
    let settings = settings(dir, format)?;
    let config = LlamaConfig::from_file(dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"), &config)?;
    let source = SafetensorsSource::open_dir(dir)?;
    let names = |p: &str| {
        let h = hf_path(p);
        ["qweight", "qzeros", "scales", "g_idx"].map(|t| format!("{h}.{t}"))
    };
    // Pass 1: which layers are quantized, and their any4 configs (from zeros, scales, g_idx).
    let mut failure = None;
    let mut params = BTreeMap::new();
    let (tensors, meta) = plan_checkpoint(&config, &mut |p, shape| {
        let n = names(p);
        if failure.is_some() || !source.contains(&n[0]) {
            return None;
        }
        let mut shapes = Default::default();
        let result = packed(&source, &n, &mut shapes).and_then(|layer| {
            layer_params(settings.packed, &layer, shape, settings.group).map_err(|reason| {
                Error::Input(format!("{}: {reason}", source.location().display()))
            })
        });
        match result {
            Ok(lp) => {
                let cfg = lp.config;
                params.insert(p.to_string(), cfg);
                Some(cfg)
            }
            Err(e) => {
                failure = Some(e);
                None
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if params.is_empty() {
        return Err(Error::Input(format!(
            "{}: no `*.qweight` tensor of a linear layer: not a {format} checkpoint of this model",
            source.location().display()
        )));
    }
    check_no_stray_bias(&source, &config, &meta)?;
    out.write(|tmp| -> Result<()> {
        write_model_files(tmp, &config, &tokenizer, &meta)?;
        let layers = meta.layers.clone();
        write_checkpoint_streaming(
            &tmp.join("model.safetensors"),
            tensors.clone(),
            meta.clone(),
            |w| {
                for (p, info) in &layers {
                    let n = names(p);
                    let mut shapes = Default::default();
                    let layer = packed(&source, &n, &mut shapes)?;
                    let m = unpack_layer(settings.packed, &layer, info.shape, settings.group)
                        .map_err(|reason| {
                            Error::Input(format!("{}: {reason}", source.location().display()))
                        })?;
                    let bias = if info.bias {
                        Some(source.read(&format!("{}.bias", hf_path(p)), &[info.shape[0]])?)
                    } else {
                        None
                    };
                    w.put_quantized(p, &m, bias.as_deref())?;
                    n.iter().for_each(|t| source.release(t));
                }
                copy_dense(&source, &config, &tensors, &layers, w)
            },
        )
    })?;
    let weights: usize = meta.layers.values().map(|l| l.shape[0] * l.shape[1]).sum();
    let bits: f64 = meta
        .layers
        .values()
        .map(|l| {
            let [n, k] = l.shape;
            let groups = l.config.group_size().groups_for(k);
            let pbits = l.config.param_dtype().bits() as f64;
            4.0 * (n * k) as f64 + (2.0 * (n * groups) as f64 + 16.0) * pbits
        })
        .sum();
    Ok(ImportReport {
        layers: params,
        dense: meta.modules_not_quantized.clone(),
        weights,
        bits_per_weight: bits / weights.max(1) as f64,
    })
}

/// Copy every planned dense tensor from its HF source tensor.
fn copy_dense(
    source: &SafetensorsSource,
    config: &LlamaConfig,
    tensors: &[PlannedTensor],
    layers: &BTreeMap<String, any4_burn::LayerInfo>,
    w: &mut any4_burn::CheckpointWriter,
) -> Result<()> {
    let mut hf_of: BTreeMap<String, String> = hf_tensor_shapes(config)
        .into_iter()
        .map(|(n, _)| (checkpoint_name(&n), n))
        .collect();
    if config.tie_word_embeddings {
        hf_of.insert("lm_head.weight".into(), "model.embed_tokens.weight".into());
    }
    for t in tensors {
        let owner = t.name.rsplit_once('.').map_or("", |(o, _)| o);
        if layers.contains_key(owner) {
            continue;
        }
        let hf = hf_of.get(&t.name).ok_or_else(|| {
            Error::Input(format!(
                "no source tensor for `{}` (internal plan mismatch)",
                t.name
            ))
        })?;
        copy_f32(source, w, hf, &t.name, &t.shape)?;
    }
    Ok(())
}

/// A bias stored for a quantized layer whose config says it has none would be dropped: refuse
/// it unless it is all zeros (some exporters write zero biases).
fn check_no_stray_bias(
    source: &SafetensorsSource,
    config: &LlamaConfig,
    meta: &CheckpointMeta,
) -> Result<()> {
    for (p, info) in &meta.layers {
        let name = format!("{}.bias", hf_path(p));
        if info.bias || !source.contains(&name) {
            continue;
        }
        let values = source.read(&name, &[info.shape[0]])?;
        if values.iter().any(|v| *v != 0.0) {
            return Err(Error::Input(format!(
                "{}: `{name}` is not zero but the config has no bias for this layer \
                 (attention_bias {}, mlp_bias {})",
                source.location().display(),
                config.attention_bias,
                config.mlp_bias
            )));
        }
    }
    Ok(())
}
