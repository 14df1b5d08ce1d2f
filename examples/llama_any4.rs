//! Quantize the linear layers of a Llama checkpoint with every format and compare them.
//!
//! `cargo run --release --example llama_any4 [-- --model DIR] [--group-size N]`
//!
//! Default model: the embedded tiny Llama in `models/tiny-llama` (trained by the recipe there).
//! This is the foundation-stage version of the main example: it works on the weights alone
//! (reconstruction error per format, bits per weight, quantization time). Generation, perplexity
//! and calibrated quantization through the Burn model arrive with the model crate.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use any4_core::{Any4Config, Format, GroupSize, quantize};
use safetensors::{Dtype, SafeTensors};

fn main() -> Result<(), Box<dyn Error>> {
    let mut model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llama");
    let mut group = GroupSize::G128;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().ok_or("--model needs a folder")?.into(),
            "--group-size" => group = args.next().ok_or("--group-size needs a value")?.parse()?,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let file = model.join("model.safetensors");
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;

    // Linear layers of the transformer blocks; embeddings and the LM head stay dense.
    let mut linears: Vec<(String, [usize; 2], Vec<f32>)> = Vec::new();
    for (name, view) in st.tensors() {
        if !(name.contains(".layers.") && name.ends_with("proj.weight")) {
            continue;
        }
        let shape: [usize; 2] = view
            .shape()
            .try_into()
            .map_err(|_| format!("{name}: not 2-D"))?;
        linears.push((
            name,
            shape,
            to_f32(view.dtype(), view.data()).ok_or("unsupported dtype")?,
        ));
    }
    linears.sort_by(|a, b| a.0.cmp(&b.0));
    let params: usize = linears.iter().map(|l| l.1[0] * l.1[1]).sum();
    println!(
        "{}: {} linear layers, {:.2} M weights, group size {group}\n",
        model.display(),
        linears.len(),
        params as f64 / 1e6
    );
    println!("| format | bits/weight | rel. MSE | time |");
    println!("|---|---|---|---|");
    for format in Format::ALL {
        let cfg = Any4Config::new(format).with_group_size(group);
        let t = Instant::now();
        let (mut err, mut energy, mut bits) = (0.0f64, 0.0f64, 0.0f64);
        for (_, shape, w) in &linears {
            let q = quantize(w, *shape, None, &cfg)?;
            let n = w.len() as f64;
            err += q.reconstruction_error(w, None)?.mse * n;
            energy += w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
            bits += q.bits_per_weight() * n;
        }
        println!(
            "| {format} | {:.3} | {:.5} | {:.2?} |",
            bits / params as f64,
            err / energy,
            t.elapsed()
        );
    }
    Ok(())
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let chunks = |n| data.chunks_exact(n);
    Some(match dtype {
        Dtype::F32 => chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}
