//! any4 checkpoints (safetensors + `quantization_config`): open, list, load into a model and
//! run it. The reader memory-maps its input, so the bytes go through a scratch file.
#![no_main]

use any4_burn::Checkpoint;
use any4_fuzz::{Tiny, values};
use burn::tensor::{Device, Tensor, TensorData};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: any4_fuzz::init("checkpoint"), |data: &[u8]| {
    let path = any4_fuzz::scratch_file(data);
    let Ok(ckpt) = Checkpoint::open(path) else { return };
    let _ = ckpt.tensor_infos();
    if let Ok(model) = ckpt.load_into(Tiny::new(1)) {
        let x = Tensor::<2>::from_data(TensorData::new(values(64, 7, 1.0), [2, 32]), &Device::flex());
        let y = model.forward(x);
        assert_eq!(y.dims(), [2, 32]);
    }
});
