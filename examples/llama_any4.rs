//! Dense vs any4 on a Llama checkpoint: perplexity, generation, speed and weight memory.
//!
//! ```text
//! cargo run --release --example llama_any4 -- [--model DIR|GGUF] [--format any4] [--group-size 128|per-row]
//!     [--prompt TEXT] [--max-tokens N] [--sequential] [--eval FILE] [--seq-len N] [--windows N]
//! ```
//!
//! Default model: the embedded tiny Llama in `models/tiny-llama` (trained by the recipe there),
//! evaluated on its held-out text. See `examples/common/mod.rs` for the steps.

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run("models/tiny-llama")
}
