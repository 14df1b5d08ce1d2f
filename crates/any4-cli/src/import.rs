//! `any4 import --from gptq|awq`: GPTQ / AWQ int4 checkpoints into any4 folders, losslessly.

use std::path::PathBuf;

use any4_llm::import::{ImportFormat, import_int4};
use clap::Args;

use super::{AnyResult, OutputArgs, emit};

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// Checkpoint layout: gptq (AutoGPTQ/GPTQModel) or awq (AutoAWQ GEMM).
    #[arg(long = "from", value_parser = super::parse::<ImportFormat>)]
    from: ImportFormat,
    /// HF folder of the int4 checkpoint (config.json with quantization_config, safetensors,
    /// tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
    /// Print a one-line JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn cmd_import(a: ImportArgs) -> AnyResult<()> {
    let out = a.output.check(&[&a.model])?;
    let r = import_int4(&a.model, &out, a.from)?;
    let f16 = r
        .layers
        .values()
        .filter(|c| c.param_dtype() == any4_core::ParamDtype::F16)
        .count();
    if a.json {
        emit(format_args!(
            "{}",
            serde_json::json!({"model": a.model, "out": a.output.out, "from": a.from.to_string(),
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
        a.output.out.display()
    ))
}
