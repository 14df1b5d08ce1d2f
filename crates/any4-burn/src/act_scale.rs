//! Activation-aware input scales over a model: one search per distinct layer input.
//!
//! Layers that read the same input (they share a calibration Gram matrix: q/k/v, gate/up) must
//! share their scales, since the inverse is applied to that one input; their output errors are
//! searched jointly ([`any4_core::act_scale::search`]). Only one group's dense weights are held
//! on the host at a time.

use std::collections::HashMap;
use std::sync::Arc;

use any4_core::Gram;
use any4_core::act_scale::{self, ActScaleConfig};

use crate::calib::CalibrationStats;
use crate::error::Result;
use crate::linear::{QLinear, QLinearContainer, read_vec};
use crate::pass::QuantizeConfig;

/// Per-layer scales `s` (weight columns are multiplied by `s`, the input divided by it).
pub(crate) type InputScales = HashMap<String, Arc<Vec<f32>>>;

/// Layers of one input awaiting their joint search.
struct Group {
    gram: Arc<Gram>,
    layers: Vec<(String, Vec<f32>, [usize; 2])>,
}

impl Group {
    fn search(
        self,
        cfg: &QuantizeConfig,
        opts: &ActScaleConfig,
        out: &mut InputScales,
    ) -> Result<()> {
        let views: Vec<(&[f32], [usize; 2])> = self
            .layers
            .iter()
            .map(|(_, w, s)| (w.as_slice(), *s))
            .collect();
        let found = act_scale::search(&views, &self.gram, &cfg.method, &cfg.any4, opts)
            .map_err(|e| crate::Error::from(e).in_layer(&self.layers[0].0))?;
        let scales = Arc::new(found.scales);
        for (path, _, _) in self.layers {
            out.insert(path, scales.clone());
        }
        Ok(())
    }
}

/// Search the scales of every selected dense layer passing `filter` that has a Gram matrix.
pub(crate) fn search_scales(
    model: &mut impl QLinearContainer,
    cfg: &QuantizeConfig,
    opts: &ActScaleConfig,
    stats: &CalibrationStats,
    filter: &dyn Fn(&str) -> bool,
) -> Result<InputScales> {
    let mut out = InputScales::new();
    let mut current: Option<Group> = None;
    let mut result = Ok(());
    model.visit_qlinears("", &mut |path, layer| {
        if result.is_err() || !filter(path) || !cfg.selects(path) {
            return;
        }
        let QLinear::Dense(_) = layer else { return };
        let gram = match stats.gram(path) {
            Ok(Some(g)) => g.clone(),
            Ok(None) => return,
            Err(e) => {
                result = Err(crate::Error::from(e).in_layer(path));
                return;
            }
        };
        let weight = layer.weight_hf();
        let shape = weight.dims();
        let w = match read_vec::<f32>(weight.into_data(), path) {
            Ok(w) => w,
            Err(e) => {
                result = Err(e);
                return;
            }
        };
        match &mut current {
            Some(g) if Arc::ptr_eq(&g.gram, &gram) => g.layers.push((path.to_string(), w, shape)),
            _ => {
                if let Some(done) = current.take() {
                    result = done.search(cfg, opts, &mut out);
                }
                current = Some(Group {
                    gram,
                    layers: vec![(path.to_string(), w, shape)],
                });
            }
        }
    });
    result?;
    if let Some(done) = current {
        done.search(cfg, opts, &mut out)?;
    }
    Ok(out)
}
