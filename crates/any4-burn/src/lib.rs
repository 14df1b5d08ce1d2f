//! # any4-burn
//!
//! any4 for the Burn framework: the `Any4Backend` extension (`any4_matmul`, `any4_dequantize`),
//! the `QLinear` layer that model code is written against, calibration, the quantization pass
//! and checkpoints.
//!
//! Backends: the extension runs natively on Flex (default feature `flex`, any4-core's CPU path)
//! and, with the features `wgpu`, `cpu` or `cuda`, on every CubeCL runtime through the
//! `any4-kernels` kernels; any other backend dequantizes with tensor ops and runs a dense matmul
//! (see [`route`]).
//!
//! ```
//! use any4_burn::{quantize_model, QLinear, QuantizeConfig};
//! use burn::tensor::{Device, Tensor};
//!
//! let device = Device::flex();
//! let layer = QLinear::init(256, 64, true, &device);
//! let x = Tensor::<2>::ones([3, 256], &device);
//! let dense = layer.forward(x.clone());
//! let (layer, report) = quantize_model(layer, &QuantizeConfig::default(), None)?;
//! assert!(layer.is_quantized());
//! let y = layer.forward(x);
//! assert_eq!(y.dims(), dense.dims());
//! assert_eq!(report.layers.len(), 1);
//! # Ok::<(), any4_burn::Error>(())
//! ```
#![warn(missing_docs)]

mod act_scale;
mod atomic;
mod calib;
mod checkpoint;
mod device;
mod error;
mod extension;
mod linear;
mod mapper;
mod pass;
mod pattern;
mod weight;

pub use atomic::{
    CHECKPOINT_FILES, OutputDir, check_output_dir, write_atomically, write_file_atomically,
};
pub use calib::{CALIBRATION_PROMPT, CalibrationStats, Calibrator, ChannelSums, Probe};
pub use checkpoint::{
    Any4Header, CHECKPOINT_FORMAT, Checkpoint, CheckpointMeta, CheckpointWriter, LayerInfo,
    PlannedTensor, SCHEMA_VERSION, bytes_to_f32, check_finite, checkpoint_tensor_names,
    is_any4_checkpoint, read_any4_header, save, write_checkpoint_streaming,
};
pub use device::{BACKENDS, device_from_name, records_graphs};
pub use error::{Error, Result};
pub use extension::{Any4Backend, Any4WeightPrimitive};
pub use linear::{
    Any4Linear, CalibratingLinear, QLinear, QLinearContainer, join_path, qlinear_paths,
    transposed_contiguous,
};
pub use mapper::{reconstruct_linears, reconstruct_linears_as};
pub use pass::{
    BlockwiseModel, DEFAULT_GRAM_BUDGET, LayerReport, QuantizeConfig, Report, quantize_model,
    quantize_model_sequential,
};
pub use pattern::LayerPattern;
pub use weight::{Any4Weight, CpuMatmul, Route, int8_tables_tensor, route};
