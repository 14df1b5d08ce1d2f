//! any4-llm behaviour tests on the Flex backend: one test binary (each costs a link), one
//! module per concern.

mod cache;
mod common;
mod gguf;
mod import;
mod loading;
mod mixtral;
mod numerics;
mod perplexity;
mod quantization;
mod stream;
