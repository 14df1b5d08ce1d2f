//! Greedy decoding by replaying one recorded step.
//!
//! A single-token forward issues ~15 kernel launches per layer, each behind Burn's per-op host
//! work; on a GPU that host time, not the arithmetic, bounds a small or quantized model's
//! decode. Burn's `capture` records the launches of a step once and replays them as one
//! dispatch (CUDA and HIP graphs; wgpu replays its recorded passes without Burn's per-op work).
//!
//! A replay repeats every launch as recorded, arguments included, so nothing a step depends on
//! may be a host value:
//! - the token and its position live in device tensors (`[1, 1]` and `[1]`) that the step
//!   itself advances in place (`select_assign`): the next token is its own `argmax`, the
//!   position `+ 1`; nothing is uploaded between replays;
//! - keys and values are written at the device position (`select_assign` into the KV buffers,
//!   in place), and attention runs over every slot of the buffers with a mask computed on the
//!   device, so the shapes never change;
//! - the rotary rows are gathered by position (`select`) from tables covering every slot.
//!
//! One id is read back per token, for the caller (streaming, stop tokens).
//!
//! `capture` runs the step a few times to warm up (autotuning, fused kernels, allocation)
//! before it records. Those runs are real steps, so their tokens are handed out first; the
//! recorded run itself executes only when replayed (on the fallback path, when the backend
//! did not record a graph, it executes at once and every step after it re-runs the closure).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use burn::tensor::{Graph, IndexingUpdateOp, Int, Tensor, TensorData, capture};

use crate::attention::DevicePosition;
use crate::error::Result;
use crate::generate::read_id;
use crate::kv_cache::KvCache;
use crate::model::Llama;
use crate::rope::RopeTables;
use crate::timing::{Op, span};

/// Fewest decode steps worth a capture: it runs a few real steps to warm up, and the device
/// route attends over the whole buffer, so a short generation takes the ordinary steps.
pub(crate) const MIN_CAPTURED_STEPS: usize = 8;

/// One step's results.
#[derive(Debug, Clone)]
pub(crate) struct StepOutput {
    /// The next token, `[1, 1]` (the `argmax` of `logits`).
    pub token: Tensor<2, Int>,
    /// The logits it was chosen from, `[1, vocab]` (the tests compare them).
    #[cfg_attr(
        not(all(test, feature = "wgpu")),
        expect(dead_code, reason = "read by the tests")
    )]
    pub logits: Tensor<2>,
}

/// What the recorded step reads and writes: owned here (shared with the closure), so every
/// buffer the recording refers to outlives the graph.
struct State {
    /// The token the next step embeds, `[1, 1]`.
    token: Tensor<2, Int>,
    /// Its position, `[1]`.
    pos: Tensor<1, Int>,
    /// `[0]`: where `select_assign` writes the token and the position.
    zero: Tensor<1, Int>,
    /// `0..capacity`: the positions the cache slots hold, for the mask.
    slots: Tensor<1, Int>,
    /// Rotary tables of every slot.
    rope: RopeTables,
    cache: KvCache,
    /// Outputs of the runs made while capturing (the warm-up runs are real steps).
    warm_up: Option<Vec<StepOutput>>,
}

type StepFn<'m> = Box<dyn FnMut() -> StepOutput + 'm>;

/// Greedy single-token steps of one sequence, captured once and replayed.
pub(crate) struct DecodeGraph<'m> {
    graph: Graph<StepOutput, StepFn<'m>>,
    /// Steps that already ran during the capture, not yet handed out.
    ready: VecDeque<StepOutput>,
    /// Kept for the graph's lifetime (the closure holds the other reference).
    _state: Rc<RefCell<State>>,
}

impl<'m> DecodeGraph<'m> {
    /// Capture the steps after `token` (`[1, 1]`, chosen from the prefill of `cache`), with
    /// `rope` from [`KvCache::device_steps`] for the positions they reach.
    pub fn new(model: &'m Llama, token: Tensor<2, Int>, cache: KvCache, rope: RopeTables) -> Self {
        let device = token.device();
        let (state, step) = steps_at_device(model, token, cache, rope);
        let graph = capture(&device, step);
        let mut ready = state.borrow_mut().warm_up.take().unwrap_or_default();
        if graph.is_hardware() {
            // The recorded run has not executed: its output appears with the first replay.
            ready.pop();
        }
        DecodeGraph {
            graph,
            ready: ready.into(),
            _state: state,
        }
    }

    /// Whether the steps replay as a recorded graph (`false`: the backend recorded none, and
    /// each step re-runs the closure).
    pub fn is_recorded(&self) -> bool {
        self.graph.is_hardware()
    }

    /// The next step: one that ran during the capture, else a replay.
    pub fn step(&mut self) -> StepOutput {
        if let Some(out) = self.ready.pop_front() {
            return out;
        }
        // Safety: every tensor the recording touched is owned by the graph's closure (the
        // state, and the model it borrows for `'m`) or is the graph's own output; inputs are
        // advanced by the recording itself, on its own stream, and read back on it.
        let _t = span(Op::Replay);
        unsafe { self.graph.replay() }.clone()
    }

    /// The next step's token id, read back from the device.
    pub fn next_id(&mut self) -> Result<u32> {
        let token = self.step().token;
        let _t = span(Op::Sample);
        read_id(token)
    }
}

/// The state of steps at device positions after `token`, and the step (not recorded).
fn steps_at_device<'m>(
    model: &'m Llama,
    token: Tensor<2, Int>,
    cache: KvCache,
    rope: RopeTables,
) -> (Rc<RefCell<State>>, StepFn<'m>) {
    let device = token.device();
    let start = cache.len();
    let window = model.config.sliding_window;
    let capacity = cache.capacity();
    let ints = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
    };
    let state = Rc::new(RefCell::new(State {
        token,
        pos: ints(vec![start as i64]),
        zero: ints(vec![0]),
        slots: ints((0..capacity as i64).collect()),
        rope,
        cache,
        warm_up: Some(Vec::new()),
    }));
    let shared = Rc::clone(&state);
    let step: StepFn<'m> = Box::new(move || {
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        let at = DevicePosition::new(s.pos.clone(), &s.slots, window);
        let logits = model.step_at(s.token.clone(), at, &s.rope, &mut s.cache);
        let token = logits.clone().argmax(1);
        let next_pos = s.pos.clone().add_scalar(1);
        let assign = IndexingUpdateOp::Assign;
        s.token = s
            .token
            .extract()
            .select_assign(1, s.zero.clone(), token.clone(), assign);
        s.pos = s
            .pos
            .extract()
            .select_assign(0, s.zero.clone(), next_pos, assign);
        let out = StepOutput { token, logits };
        if let Some(runs) = &mut s.warm_up {
            runs.push(out.clone());
        }
        out
    });
    (state, step)
}

/// The recorded step against the ordinary one, on wgpu (a software graph on lavapipe, which
/// replays the recorded launches with their recorded buffers, as CUDA graphs do).
#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use std::path::Path;

    use any4_burn::{QuantizeConfig, quantize_model};
    use burn::tensor::{Device, DeviceKind};

    use super::*;
    use crate::generate::{GenerateConfig, generate};
    use crate::load::load_pretrained;
    use crate::model::token_tensor;

    fn load(name: &str) -> Llama {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(name);
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        load_pretrained(&dir, &device).expect("embedded model").0
    }

    fn floats(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    }

    /// `steps` greedy tokens after `prompt` three ways: ordinary steps, steps at a device
    /// position run directly, and the same steps recorded and replayed. The replay must give
    /// the direct steps' logits bit for bit (same kernels, same buffers); the device route must
    /// match the ordinary steps to `tol` of the logits' scale (a different attention kernel;
    /// with any4 linears, int8 activation rounding can amplify its last-bit differences).
    fn check(model: &Llama, prompt: &[u32], steps: usize, tol: f32) {
        let device = model.device();
        let prefill = |cache: &mut KvCache| {
            model
                .forward_last(token_tensor(prompt, &device), cache)
                .argmax(1)
        };
        let mut cache = model.new_cache_with_capacity(prompt.len() + steps);
        let mut token = prefill(&mut cache);
        let mut ordinary = Vec::new();
        for _ in 0..steps {
            let logits = model.forward_last(token, &mut cache);
            token = logits.clone().argmax(1);
            ordinary.push((read_id(token.clone()).expect("id"), floats(logits)));
        }

        let ready = |cache: &mut KvCache| {
            let first = prefill(cache);
            let end = prompt.len() + steps;
            let rope = cache.device_steps(end, &model.rope_inv_freq, &device);
            (first, rope.expect("the cache serves the steps"))
        };
        let mut cache = model.new_cache_with_capacity(prompt.len() + steps);
        let (first, rope) = ready(&mut cache);
        let (_state, mut step) = steps_at_device(model, first, cache, rope);
        let direct: Vec<StepOutput> = (0..steps).map(|_| step()).collect();

        let mut cache = model.new_cache_with_capacity(prompt.len() + steps);
        let (first, rope) = ready(&mut cache);
        let mut graph = DecodeGraph::new(model, first, cache, rope);
        assert!(graph.is_recorded(), "wgpu records the step");
        for (i, ((id, want), direct)) in ordinary.iter().zip(direct).enumerate() {
            let out = graph.step();
            let got = floats(out.logits);
            let direct = floats(direct.logits);
            let moved = got.iter().zip(&direct).filter(|(a, b)| a != b).count();
            assert_eq!(
                moved, 0,
                "step {i}: {moved} logits of the replay differ from the direct step's"
            );
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= tol * scale,
                "step {i}: logits differ from the ordinary step's by {err} (scale {scale})"
            );
            if tol <= 1e-4 {
                assert_eq!(read_id(out.token).expect("id"), *id, "step {i}");
            }
        }
    }

    #[test]
    fn replayed_steps_match_ordinary_steps() {
        let prompt = [1, 412, 93, 1200, 7, 88];
        let model = load("tiny-llama");
        check(&model, &prompt, 24, 1e-4);
        // A sliding window shorter than the generation: the device mask hides the old slots.
        let mut mistral = load("tiny-mistral");
        mistral.config.sliding_window = Some(8);
        check(&mistral, &prompt, 20, 1e-4);

        // Through `generate`: the same tokens with and without the capture.
        let cfg = |capture| GenerateConfig {
            max_new_tokens: 20,
            capture,
            ..GenerateConfig::default()
        };
        let on = generate(&model, &prompt, &cfg(true), &mut |_| {}).expect("generate");
        let off = generate(&model, &prompt, &cfg(false), &mut |_| {}).expect("generate");
        assert!(on.captured && !off.captured);
        assert_eq!(on.tokens, off.tokens);

        // any4 linears: the extension's Cube kernels inside the recording.
        let (quantized, _) =
            quantize_model(model, &QuantizeConfig::default(), None).expect("quantize");
        check(&quantized, &prompt, 16, 0.02);
    }
}
