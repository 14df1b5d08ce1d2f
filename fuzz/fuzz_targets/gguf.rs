//! GGUF files: header, metadata, tensor directory, dequantization of every tensor, the
//! metadata → `config.json` conversion and the full model load (`load_auto`).
#![no_main]

use any4_llm::gguf::GgufFile;
use any4_llm::{GgufSource, TensorSource, load_auto};
use burn::tensor::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: any4_fuzz::init("gguf"), |data: &[u8]| {
    let path = any4_fuzz::scratch_file(data);
    if let Ok(g) = GgufFile::open(path) {
        for key in g.metadata.keys() {
            let _ = (g.get_u64(key), g.get_f64(key), g.get_str(key));
        }
        for name in g.tensors.keys() {
            if let Ok((values, shape)) = g.tensor_f32(name) {
                assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
            }
        }
    }
    // What `load_gguf` does: config from the metadata, then each tensor renamed and unpermuted.
    if let Ok(src) = GgufSource::open(path)
        && let Ok(cfg) = src.config()
    {
        for (name, shape) in any4_llm::hf_tensor_shapes(&cfg).iter().take(64) {
            let _ = src.read(name, shape);
        }
        let _ = load_auto(path, &Device::flex());
    }
});
