//! Calibration: the per-input-channel mean `x̄` of every linear layer's input
//! (docs/METHOD.md §3), and, for error feedback and activation-aware scales, the Gram matrix
//! `H = XᵀX` of each input.
//!
//! A [`Calibrator`] is an explicit object (no globals): `attach` switches the chosen dense
//! layers of a model into the `Calibrating` state, each sharing a [`Probe`] with the calibrator;
//! forward passes then accumulate `Σ x` per channel (f64) and the token count; `detach` restores
//! the dense layers and returns the means. Mixture-of-experts layers get each expert's own
//! tokens for free, since a probe only sees what is routed through its layer.
//!
//! **Gram matrices** ([`Calibrator::with_gram`]): each probe also copies its input to the host
//! and adds `XᵀX` (f64, [`any4_core::Gram`]). That is `8·K²` bytes per distinct input, so layers
//! that read the same tensor (q/k/v, gate/up) share one matrix: a probe whose first input is
//! bit-identical to one already recorded in this forward joins that matrix, and afterwards only
//! checks that its inputs keep matching. The matrices of one calibration must fit a byte budget
//! (SmolLM2-135M one-shot: 30 blocks × (3 × 576² + 1536²) × 8 B ≈ 0.8 GB); past it the probes stop
//! recording Gram matrices and [`CalibrationStats::gram`] reports the error (calibrate block by
//! block to need one block's matrices at a time).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use any4_core::{Error as CoreError, Gram};
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
    /// Index of the Gram matrix this layer's inputs go to (Gram recording only).
    gram: Option<usize>,
    /// Forward calls recorded (Gram recording only).
    calls: usize,
}

/// The Gram matrices of one calibration, shared by all its probes.
#[derive(Debug)]
struct GramStore {
    budget: u64,
    used: u64,
    grams: Vec<GramSlot>,
    /// Fingerprint of an input first recorded by some probe → its matrix (for sharing).
    first_inputs: HashMap<u64, usize>,
    /// Why recording stopped (budget exceeded or a bad input), reported at use.
    error: Option<CoreError>,
}

#[derive(Debug)]
struct GramSlot {
    gram: Gram,
    /// Fingerprints of the inputs added, in call order (what sharing probes are checked against).
    calls: Vec<u64>,
}

impl GramStore {
    fn new(budget: u64) -> Self {
        GramStore {
            budget,
            used: 0,
            grams: Vec::new(),
            first_inputs: HashMap::new(),
            error: None,
        }
    }

    /// Record a probe's call `call` with input `x: [tokens, k]`; returns the matrix index.
    fn record(
        &mut self,
        own: Option<usize>,
        call: usize,
        x: &[f32],
        tokens: usize,
        k: usize,
    ) -> Option<usize> {
        if self.error.is_some() {
            return own;
        }
        let print = fingerprint(x, tokens, k);
        let index = match own.or_else(|| self.first_inputs.get(&print).copied()) {
            Some(g) => g,
            None => {
                let bytes = Gram::bytes(k);
                match Gram::new(k, self.budget.saturating_sub(self.used)) {
                    Ok(gram) => {
                        self.used += bytes;
                        self.grams.push(GramSlot {
                            gram,
                            calls: Vec::new(),
                        });
                        self.first_inputs.insert(print, self.grams.len() - 1);
                        self.grams.len() - 1
                    }
                    Err(_) => {
                        self.error = Some(CoreError::GramTooLarge {
                            k,
                            bytes: self.used + bytes,
                            budget: self.budget,
                        });
                        return None;
                    }
                }
            }
        };
        let slot = &mut self.grams[index];
        if call < slot.calls.len() {
            // A layer sharing the matrix: its input must be the one already added.
            assert_eq!(
                slot.calls[call], print,
                "layers that shared their first calibration input were later fed different inputs"
            );
        } else {
            if let Err(e) = slot.gram.accumulate(x, tokens) {
                self.error = Some(e);
            }
            slot.calls.push(print);
        }
        Some(index)
    }
}

/// A 64-bit fingerprint of an input's shape and bits (equal inputs share a Gram matrix).
fn fingerprint(x: &[f32], tokens: usize, k: usize) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_usize(tokens);
    h.write_usize(k);
    for v in x {
        h.write_u32(v.to_bits());
    }
    h.finish()
}

/// Shared handle a calibrating layer records into.
#[derive(Debug, Default, Clone)]
pub struct Probe {
    sums: Arc<Mutex<ChannelSums>>,
    grams: Option<Arc<Mutex<GramStore>>>,
}

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
        let mut acc = self.sums.lock().expect("probe lock");
        if acc.sum.is_empty() {
            acc.sum = vec![0.0; k];
        }
        assert_eq!(acc.sum.len(), k, "a probe saw inputs of two widths");
        for (a, s) in acc.sum.iter_mut().zip(sums) {
            *a += s as f64;
        }
        acc.tokens += tokens as u64;
        if let Some(store) = &self.grams {
            let host = x
                .clone()
                .reshape([tokens, k])
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 after convert");
            let call = acc.calls;
            acc.calls += 1;
            acc.gram = store
                .lock()
                .expect("gram store lock")
                .record(acc.gram, call, &host, tokens, k);
        }
    }

    /// A snapshot of the sums.
    pub fn sums(&self) -> ChannelSums {
        self.sums.lock().expect("probe lock").clone()
    }
}

/// Per-layer calibration statistics: the signed mean of each input channel.
///
/// Layers that were attached but saw no token (a mixture-of-experts expert the router never
/// picked for the calibration text) have no mean; they are listed as
/// [`unreached`](Self::unreached) so the pass can tell them from layers never calibrated at all,
/// and quantize them unweighted.
#[derive(Debug, Default, Clone)]
pub struct CalibrationStats {
    layers: BTreeMap<String, (Vec<f32>, u64)>,
    unreached: BTreeSet<String>,
    grams: BTreeMap<String, Arc<Gram>>,
    gram_error: Option<CoreError>,
}

impl PartialEq for CalibrationStats {
    fn eq(&self, other: &Self) -> bool {
        self.layers == other.layers
            && self.unreached == other.unreached
            && self.grams == other.grams
            && self.gram_error == other.gram_error
    }
}

impl CalibrationStats {
    /// The Gram matrix of the input of the layer at `path` (shared with the layers that read the
    /// same input), `Ok(None)` if Gram matrices were not recorded or the layer saw no token, or
    /// the error that stopped the recording (e.g. the memory budget).
    pub fn gram(&self, path: &str) -> Result<Option<&Arc<Gram>>, CoreError> {
        match (&self.gram_error, self.grams.get(path)) {
            (Some(e), _) if self.layers.contains_key(path) => Err(e.clone()),
            (_, g) => Ok(g),
        }
    }
    /// Why Gram recording stopped, if it did.
    pub fn gram_error(&self) -> Option<&CoreError> {
        self.gram_error.as_ref()
    }
    /// Distinct Gram matrices held (shared ones counted once) and their bytes.
    pub fn gram_bytes(&self) -> (usize, u64) {
        let mut distinct: Vec<&Arc<Gram>> = Vec::new();
        for g in self.grams.values() {
            if !distinct.iter().any(|d| Arc::ptr_eq(d, g)) {
                distinct.push(g);
            }
        }
        let bytes = distinct.iter().map(|g| Gram::bytes(g.k())).sum();
        (distinct.len(), bytes)
    }
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
        self.grams.extend(other.grams);
        if self.gram_error.is_none() {
            self.gram_error = other.gram_error;
        }
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
    /// Byte budget of the Gram matrices, when they are recorded.
    gram_budget: Option<u64>,
    grams: Option<Arc<Mutex<GramStore>>>,
}

impl Calibrator {
    /// A calibrator with nothing attached (first-order statistics only).
    pub fn new() -> Self {
        Self::default()
    }

    /// A calibrator that also records each layer input's Gram matrix, holding at most
    /// `budget` bytes of them per attach/detach cycle (see the module docs).
    pub fn with_gram(budget: u64) -> Self {
        Calibrator {
            gram_budget: Some(budget),
            ..Self::default()
        }
    }

    /// Start recording every dense layer of `model` whose path passes `filter`.
    pub fn attach(&mut self, model: &mut impl QLinearContainer, filter: impl Fn(&str) -> bool) {
        if let (Some(budget), None) = (self.gram_budget, &self.grams) {
            self.grams = Some(Arc::new(Mutex::new(GramStore::new(budget))));
        }
        let grams = self.grams.clone();
        model.visit_qlinears("", &mut |path, layer| {
            if let QLinear::Dense(linear) = layer
                && filter(path)
            {
                let probe = self
                    .probes
                    .entry(path.to_string())
                    .or_insert_with(|| Probe {
                        grams: grams.clone(),
                        ..Probe::default()
                    })
                    .clone();
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
        let store = self.grams.take().map(|s| {
            let mut s = s.lock().expect("gram store lock");
            let grams: Vec<Arc<Gram>> = std::mem::take(&mut s.grams)
                .into_iter()
                .map(|slot| Arc::new(slot.gram))
                .collect();
            (grams, s.error.take())
        });
        for (path, probe) in std::mem::take(&mut self.probes) {
            let s = probe.sums();
            if s.tokens > 0 {
                let mean = s.sum.iter().map(|v| (v / s.tokens as f64) as f32).collect();
                if let (Some((grams, _)), Some(g)) = (&store, s.gram) {
                    stats.grams.insert(path.clone(), grams[g].clone());
                }
                stats.layers.insert(path, (mean, s.tokens));
            } else {
                stats.unreached.insert(path);
            }
        }
        stats.gram_error = store.and_then(|(_, e)| e);
        stats
    }
}
