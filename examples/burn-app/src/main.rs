//! burn-app: burn-any4 in a Burn app that keeps Burn's default features.
//!
//! With Burn's defaults, fusion and autotune are on, so `burn::backend::Cube` is
//! `Fusion<CubeBackend>`; this app checks that the any4 extension takes it (the route is
//! `Extension`, not the portable dequantize-then-matmul path) and generates the same greedy text
//! as the repository's own build (fusion off), which runs this same file as its `burn_app`
//! example (`cargo run --example burn_app --features wgpu`).
//!
//! ```text
//! cargo run --manifest-path examples/burn-app/Cargo.toml -- [--backend wgpu|cuda]
//!     [--model DIR] [--prompt TEXT] [--tokens N]
//! ```
//!
//! Steps: load the embedded tiny Llama (models/tiny-llama) on the device, calibrate on
//! `CALIBRATION_PROMPT`, quantize every linear layer but the LM head to any4, generate greedily.
//! Prints `backend:`, `route:`, `logits:` (the prompt's last position, to see whether fusion
//! changes float results), `decode:` (`graph replay` when the steps replayed a recorded one),
//! `tokens:` and `text:` lines.

use std::error::Error;
use std::path::PathBuf;

use burn::tensor::Tensor;
use burn_any4::burn::{
    CALIBRATION_PROMPT, QuantizeConfig, device_from_name, quantize_model, route,
};
use burn_any4::llm::{GenerateConfig, generate, load_pretrained, token_tensor};

struct Args {
    backend: String,
    model: Option<PathBuf>,
    prompt: String,
    tokens: usize,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        backend: "wgpu".into(),
        model: None,
        prompt: "The king said".into(),
        tokens: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => a.backend = value()?,
            "--model" => a.model = Some(value()?.into()),
            "--prompt" => a.prompt = value()?,
            "--tokens" => a.tokens = value()?.parse()?,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    Ok(a)
}

/// models/tiny-llama, from this crate's folder or from the repository root (the workspace
/// example builds this file with the root as its manifest directory).
fn tiny_llama() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = if here.join("models").is_dir() {
        here
    } else {
        here.join("../..")
    };
    root.join("models/tiny-llama")
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let device = device_from_name(&args.backend)?;
    println!("backend: {}", std::any::type_name::<burn::backend::Cube>());
    println!("route: {:?}", route(&device));

    let (mut model, tok) = load_pretrained(args.model.unwrap_or_else(tiny_llama), &device)?;
    let stats = model.calibrate(token_tensor(
        &tok.encode(CALIBRATION_PROMPT, true)?,
        &device,
    ));
    let (model, report) = quantize_model(model, &QuantizeConfig::default(), Some(&stats))?;
    println!(
        "quantized: {} layers, {:.3} bits/weight",
        report.layers.len(),
        report.bits_per_weight()
    );

    let prompt = tok.encode(&args.prompt, true)?;
    let logits: Tensor<3> = model.forward_all(token_tensor(&prompt, &device));
    let [_, n, vocab] = logits.dims();
    let last = logits
        .slice([0..1, n - 1..n, 0..vocab])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()?;
    let sum: f64 = last.iter().map(|&v| f64::from(v)).sum();
    println!("logits: sum {sum:.9e}, first {:?}", &last[..4]);

    let cfg = GenerateConfig {
        max_new_tokens: args.tokens,
        stop_tokens: tok.eos_ids().to_vec(),
        ..GenerateConfig::default()
    };
    let out = generate(&model, &prompt, &cfg, &mut |_| {})?;
    // Greedy decoding on a GPU backend records its step once and replays it.
    let decode = if out.captured {
        "graph replay"
    } else {
        "steps"
    };
    println!("decode: {decode}");
    println!("tokens: {:?}", out.tokens);
    println!("text: {:?}", tok.decode(&out.tokens, true)?);
    Ok(())
}
