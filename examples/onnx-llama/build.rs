//! Import `model/tiny-llama.onnx` with burn-onnx's code generation (what burn-import 0.22
//! re-exports), then write the any4 variant of the generated source (`src/swap.rs`).
//!
//! The ONNX file holds the graph only: its initializers are external data inside the tiny
//! Llama's `model.safetensors`, which must sit next to it, so both are copied into OUT_DIR.

use std::path::{Path, PathBuf};

#[path = "src/swap.rs"]
mod swap;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let weights = Path::new("../../models/tiny-llama/model.safetensors");
    for f in [
        "model/tiny-llama.onnx",
        "src/swap.rs",
        weights.to_str().unwrap(),
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    let onnx_dir = out.join("onnx");
    std::fs::create_dir_all(&onnx_dir).expect("create OUT_DIR/onnx");
    std::fs::copy("model/tiny-llama.onnx", onnx_dir.join("tiny-llama.onnx")).expect("copy onnx");
    std::fs::copy(weights, onnx_dir.join("model.safetensors")).expect("copy safetensors");
    burn_onnx::ModelGen::new()
        .input(
            onnx_dir
                .join("tiny-llama.onnx")
                .to_str()
                .expect("utf-8 path"),
        )
        .out_dir("model/")
        // Graphs over 200 nodes are split into `SubmoduleK` structs (burn-onnx 0.22 computes the
        // split before reading `.partition(false)`, so it cannot be turned off); the linears
        // are numbered `linear1 … linear43` across them in graph order.
        .run_from_script();
    let generated = out.join("model/tiny-llama.rs");
    let source = std::fs::read_to_string(&generated).expect("generated source");
    let any4 = swap::qlinear_source(&source).unwrap_or_else(|e| panic!("any4 rewrite: {e}"));
    std::fs::write(out.join("model/tiny-llama-any4.rs"), any4).expect("write the any4 source");
}
