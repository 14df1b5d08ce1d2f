//! Dense vs any4 on a Mistral checkpoint (sliding-window attention): perplexity, generation,
//! speed and weight memory.
//!
//! ```text
//! cargo run --release --example mistral_any4 -- [--model DIR|GGUF] [--format any4] ...
//! ```
//!
//! Default model: the embedded tiny Mistral in `models/tiny-mistral` (same recipe as the tiny
//! Llama, sliding window 128), evaluated on the held-out text. Options and steps: see
//! `examples/common/mod.rs`.

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run("models/tiny-mistral")
}
