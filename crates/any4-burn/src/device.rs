//! Backend names (as the CLI, the examples and the benches take them) → Burn devices.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// Every backend name [`device_from_name`] knows, compiled in or not.
pub const BACKENDS: [&str; 4] = ["flex", "cpu", "wgpu", "cuda"];

/// The device for a backend name: `flex` (pure-Rust CPU), `cpu` (CubeCL's LLVM CPU runtime),
/// `wgpu` (the default wgpu adapter) or `cuda` (GPU 0). A backend whose cargo feature is off
/// is an error that names the feature to turn on.
pub fn device_from_name(name: &str) -> Result<Device> {
    match name {
        #[cfg(feature = "flex")]
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "cpu")]
        "cpu" => Ok(Device::cpu()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        known if BACKENDS.contains(&known) => Err(Error::Backend(format!(
            "backend `{known}` is not compiled in: build with `--features {known}`"
        ))),
        other => Err(Error::Backend(format!(
            "unknown backend `{other}`; expected one of {}",
            BACKENDS.join(", ")
        ))),
    }
}

/// Whether `device` records a launch sequence once and replays it as one dispatch
/// (`burn::tensor::capture`): CUDA and HIP graphs, wgpu's recorded passes. Flex and CubeCL's CPU
/// runtime have no graphs (a capture there only re-runs the closure), and an autodiff device
/// records a gradient graph instead, so callers keep their ordinary path on them.
pub fn records_graphs(device: &Device) -> bool {
    #[allow(unused_imports)]
    use burn::backend::DispatchDevice;
    match device.as_dispatch() {
        #[cfg(feature = "cube")]
        DispatchDevice::Cube(cube) => {
            use burn_cubecl::cubecl::RuntimeId;
            matches!(
                cube.runtime(),
                RuntimeId::Cuda | RuntimeId::Hip | RuntimeId::Wgpu
            )
        }
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_devices_or_say_what_is_missing() {
        assert!(device_from_name("flex").is_ok());
        assert!(!records_graphs(&device_from_name("flex").expect("flex")));
        let unknown = device_from_name("tpu").expect_err("unknown").to_string();
        assert_eq!(
            unknown,
            "unknown backend `tpu`; expected one of flex, cpu, wgpu, cuda"
        );
        #[cfg(not(feature = "cuda"))]
        assert_eq!(
            device_from_name("cuda").expect_err("not built").to_string(),
            "backend `cuda` is not compiled in: build with `--features cuda`"
        );
    }
}
