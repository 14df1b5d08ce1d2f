//! Walking a Burn module by checkpoint path: collecting dense parameters to save, replacing
//! them on load, and the finiteness check.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;

use super::LayerInfo;
use super::codec::{Owned, float_dtype, non_finite};
use super::read::Checkpoint;
use crate::error::{Error, Result};
use crate::linear::transposed_contiguous;

/// Check that every dense float parameter of `model` is finite (any4 layers are checked when
/// they are built); the error names the first tensor that is not, in checkpoint naming
/// (`layers.0.mlp.up_proj.weight`, `[out, in]` positions).
///
/// Worth running after loading a model and before calibrating or quantizing it: one NaN weight
/// would otherwise surface later as a NaN calibration statistic of some other layer, or not at
/// all in layers that stay dense.
pub fn check_finite<M: Module>(model: &M) -> Result<()> {
    let mut collector = Collector {
        check_only: true,
        ..Collector::default()
    };
    model.visit(&mut collector);
    collector.error.map_or(Ok(()), Err)
}

/// The main tensor of every parameter that a checkpoint of `model` holds when the layers in
/// `quantized` are stored quantized: dense parameters by path, a quantized layer `p` as
/// `p.qweight` (and `p.bias` if it has one). For `model` with every layer dense (a skeleton to
/// load into), this is what a loader can check the file's tensor list against before reading.
pub fn checkpoint_tensor_names<M: Module>(
    model: &M,
    quantized: &BTreeMap<String, LayerInfo>,
) -> Vec<String> {
    #[derive(Default)]
    struct Paths {
        stack: PathStack,
        paths: Vec<String>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
            self.paths.push(self.stack.path());
        }
    }
    let mut visitor = Paths::default();
    model.visit(&mut visitor);
    visitor
        .paths
        .into_iter()
        .filter_map(|path| {
            let Some((layer, leaf)) = path.rsplit_once('.') else {
                return Some(path);
            };
            match (quantized.get(layer), leaf) {
                (Some(_), "weight") => Some(format!("{layer}.qweight")),
                (Some(info), "bias") => info.bias.then_some(path),
                _ => Some(path),
            }
        })
        .collect()
}

/// Tracks the module path while Burn walks a module; enum variants are dropped.
#[derive(Default)]
pub(super) struct PathStack {
    pub(super) names: Vec<(String, String)>,
}

impl PathStack {
    pub fn enter(&mut self, name: &str, container: &str) {
        self.names.push((name.to_string(), container.to_string()));
    }
    pub fn exit(&mut self) {
        self.names.pop();
    }
    pub fn path(&self) -> String {
        let parts: Vec<&str> = self
            .names
            .iter()
            .filter(|(_, c)| !c.starts_with("Enum:"))
            .map(|(n, _)| n.as_str())
            .collect();
        parts.join(".")
    }
    /// Container of the current leaf (e.g. `Struct:Linear` for a linear's weight).
    fn leaf_container(&self) -> &str {
        self.names.last().map_or("", |(_, c)| c.as_str())
    }
    fn in_any4(&self) -> bool {
        self.names
            .iter()
            .any(|(_, c)| c == "Struct:Any4Linear" || c == "Struct:CalibratingLinear")
    }
    fn is_linear_weight(&self) -> bool {
        self.leaf_container() == "Struct:Linear"
            && self.names.last().is_some_and(|(n, _)| n == "weight")
    }
}

/// Collects every dense float parameter (any4 layers excluded).
#[derive(Default)]
pub(super) struct Collector {
    pub(super) stack: PathStack,
    pub(super) tensors: Vec<(String, Owned)>,
    pub(super) error: Option<Error>,
    /// Only look for non-finite values; keep nothing.
    pub(super) check_only: bool,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.stack.in_any4() || self.error.is_some() {
            return;
        }
        let path = self.stack.path();
        // Burn stores Linear weights [in, out]; the file holds PyTorch's [out, in].
        let data = if D == 2 && self.stack.is_linear_weight() {
            param.val().transpose().into_data()
        } else {
            param.val().into_data()
        };
        let Some(dtype) = float_dtype(data.dtype()) else {
            self.error = Some(Error::Data(format!(
                "parameter `{path}` has unsupported dtype {:?}",
                data.dtype()
            )));
            return;
        };
        let shape = data.shape().to_vec();
        let bytes = data.as_bytes().to_vec();
        if let Some(e) = non_finite(&path, dtype, &shape, &bytes) {
            self.error = Some(e);
            return;
        }
        if !self.check_only {
            self.tensors.push((
                path,
                Owned {
                    dtype,
                    shape,
                    bytes,
                },
            ));
        }
    }
}

/// Replaces every dense float parameter with the stored tensor of the same path.
pub(super) struct Loader<'a> {
    pub(super) ckpt: &'a Checkpoint,
    pub(super) st: &'a SafeTensors<'a>,
    pub(super) stack: PathStack,
    pub(super) used: Vec<String>,
    pub(super) error: Option<Error>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() || self.stack.in_any4() {
            return param;
        }
        let path = self.stack.path();
        let linear = D == 2 && self.stack.is_linear_weight();
        let ckpt = self.ckpt;
        let st = self.st;
        let mut err = None;
        let param = param.map(|t| {
            let mut shape = t.dims();
            if linear {
                shape.swap(0, 1);
            }
            match ckpt.read_f32(st, &path, &shape) {
                Ok(values) => {
                    let loaded = Tensor::<D>::from_data(
                        TensorData::new(values, shape),
                        (&t.device(), t.dtype()),
                    );
                    if linear {
                        // The file's [out, in] to Burn's [in, out], materialised.
                        let dims = t.dims();
                        transposed_contiguous(loaded.reshape(shape2(&dims))).reshape(dims)
                    } else {
                        loaded
                    }
                }
                Err(e) => {
                    err = Some(e);
                    t
                }
            }
        });
        match err {
            Some(e) => self.error = Some(e),
            None => self.used.push(path),
        }
        param
    }
}

/// `[out, in]` of a linear weight whose Burn dims are `[in, out]` (`D` is 2 for those).
fn shape2<const D: usize>(dims: &[usize; D]) -> [usize; 2] {
    [dims[D - 1], dims[0]]
}
