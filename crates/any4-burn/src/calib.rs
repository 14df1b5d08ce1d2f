//! Calibration: the per-input-channel mean `x̄` of every linear layer's input
//! (docs/METHOD.md §3).
//!
//! A [`Calibrator`] is an explicit object (no globals): `attach` switches the chosen dense
//! layers of a model into the `Calibrating` state, each sharing a [`Probe`] with the calibrator;
//! forward passes then accumulate `Σ x` per channel (f64) and the token count; `detach` restores
//! the dense layers and returns the means. Mixture-of-experts layers get each expert's own
//! tokens for free, since a probe only sees what is routed through its layer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use burn::tensor::Tensor;

use crate::linear::{CalibratingLinear, QLinear, QLinearContainer};

/// A short, diverse calibration text of our own (fiction, news, code, arithmetic, facts): the
/// paper finds one such prompt calibrates as well as 128 × 2048 tokens of C4.
pub const CALIBRATION_PROMPT: &str = "\
The lighthouse keeper had not spoken to anyone in eleven days when the boat appeared, its sail \
torn and its single passenger asleep against the mast. She rowed out, shouting, and the stranger \
woke, laughed, and asked whether this was the island where the clocks ran backwards.
GENEVA, March 3 (Reuters) - Ministers from forty countries agreed on Tuesday to cut fishing quotas \
in the North Atlantic by a fifth over the next three years, after scientists warned that cod stocks \
had fallen to their lowest level since records began.
def merge_sorted(a, b):
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]
17 + 25 = 42. 144 / 12 = 12. The square root of 81 is 9, and 2 to the power of 10 is 1024. \
If a train travels 300 km in 2.5 hours, its average speed is 120 km/h.
Water boils at 100 degrees Celsius at sea level. The Pacific is the largest ocean on Earth. \
Shakespeare wrote Hamlet around 1600, and the Moon orbits the Earth about once every 27 days.
";

/// Running per-channel sums of one layer's input.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ChannelSums {
    /// `Σ_tokens x_j` per input channel.
    pub sum: Vec<f64>,
    /// Number of tokens (rows of the input) seen.
    pub tokens: u64,
}

/// Shared handle a calibrating layer records into.
#[derive(Debug, Default, Clone)]
pub struct Probe(Arc<Mutex<ChannelSums>>);

impl Probe {
    /// Add the input `x: [..., K]` (all leading dimensions are tokens).
    pub fn record<const D: usize>(&self, x: &Tensor<D>) {
        let dims = x.dims();
        let k = dims[D - 1];
        let tokens: usize = dims[..D - 1].iter().product();
        if tokens == 0 {
            return;
        }
        let sums: Tensor<1> = x.clone().reshape([tokens, k]).sum_dim(0).reshape([k]);
        let sums = sums
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 after convert");
        let mut acc = self.0.lock().expect("probe lock");
        if acc.sum.is_empty() {
            acc.sum = vec![0.0; k];
        }
        assert_eq!(acc.sum.len(), k, "a probe saw inputs of two widths");
        for (a, s) in acc.sum.iter_mut().zip(sums) {
            *a += s as f64;
        }
        acc.tokens += tokens as u64;
    }

    /// A snapshot of the sums.
    pub fn sums(&self) -> ChannelSums {
        self.0.lock().expect("probe lock").clone()
    }
}

/// Per-layer calibration statistics: the signed mean of each input channel.
///
/// Layers that were attached but saw no token (a mixture-of-experts expert the router never
/// picked for the calibration text) have no mean; they are listed as
/// [`unreached`](Self::unreached) so the pass can tell them from layers never calibrated at all,
/// and quantize them unweighted.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CalibrationStats {
    layers: BTreeMap<String, (Vec<f32>, u64)>,
    unreached: BTreeSet<String>,
}

impl CalibrationStats {
    /// `x̄` for the layer at `path`, if it was calibrated.
    pub fn mean(&self, path: &str) -> Option<&[f32]> {
        self.layers.get(path).map(|(m, _)| m.as_slice())
    }
    /// Tokens the layer at `path` saw.
    pub fn tokens(&self, path: &str) -> Option<u64> {
        self.layers.get(path).map(|(_, t)| *t)
    }
    /// Whether the layer at `path` was attached but received no calibration token.
    pub fn is_unreached(&self, path: &str) -> bool {
        self.unreached.contains(path)
    }
    /// Layers attached but never reached (no statistics; quantized unweighted).
    pub fn unreached(&self) -> impl Iterator<Item = &str> {
        self.unreached.iter().map(String::as_str)
    }
    /// Number of calibrated layers (unreached ones excluded).
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// Whether no layer was calibrated.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
    /// Add (or replace) the statistics of other layers.
    pub fn extend(&mut self, other: CalibrationStats) {
        for path in other.layers.keys() {
            self.unreached.remove(path);
        }
        self.layers.extend(other.layers);
        let reached = &self.layers;
        self.unreached.extend(
            other
                .unreached
                .into_iter()
                .filter(|p| !reached.contains_key(p)),
        );
    }
    /// Layer paths with statistics.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.layers.keys().map(String::as_str)
    }
}

/// Records input statistics of a model's dense `QLinear`s while attached.
#[derive(Debug, Default)]
pub struct Calibrator {
    probes: BTreeMap<String, Probe>,
}

impl Calibrator {
    /// A calibrator with nothing attached.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start recording every dense layer of `model` whose path passes `filter`.
    pub fn attach(&mut self, model: &mut impl QLinearContainer, filter: impl Fn(&str) -> bool) {
        model.visit_qlinears("", &mut |path, layer| {
            if let QLinear::Dense(linear) = layer
                && filter(path)
            {
                let probe = self.probes.entry(path.to_string()).or_default().clone();
                *layer = QLinear::Calibrating(CalibratingLinear {
                    linear: linear.clone(),
                    probe,
                });
            }
        });
    }

    /// Stop recording: restore the dense layers and return the per-channel means.
    pub fn detach(&mut self, model: &mut impl QLinearContainer) -> CalibrationStats {
        model.visit_qlinears("", &mut |_, layer| {
            if let QLinear::Calibrating(c) = layer {
                *layer = QLinear::Dense(c.linear.clone());
            }
        });
        let mut stats = CalibrationStats::default();
        for (path, probe) in std::mem::take(&mut self.probes) {
            let s = probe.sums();
            if s.tokens > 0 {
                let mean = s.sum.iter().map(|v| (v / s.tokens as f64) as f32).collect();
                stats.layers.insert(path, (mean, s.tokens));
            } else {
                stats.unreached.insert(path);
            }
        }
        stats
    }
}
