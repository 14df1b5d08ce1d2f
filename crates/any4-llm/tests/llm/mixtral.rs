//! Mixtral: sparse mixture of experts.

use crate::common::*;

pub fn tiny_mixtral_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-mixtral")
}

/// `models/tiny-mixtral/reference_logits.json`, written by `make_fixture.py`.
#[derive(serde::Deserialize)]
pub struct MixtralReference {
    text: String,
    input_ids: Vec<u32>,
    shape: [usize; 2],
    logits: Vec<Vec<f32>>,
    last_logits_without_window: Vec<f32>,
    greedy_continuation_ids: Vec<u32>,
    routing: Vec<LayerRouting>,
}

/// transformers' top-k expert indices of every token of one layer.
#[derive(serde::Deserialize)]
pub struct LayerRouting {
    experts: Vec<Vec<usize>>,
}

pub fn mixtral_reference() -> MixtralReference {
    let path = tiny_mixtral_dir().join("reference_logits.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run models/tiny-mixtral/make_fixture.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("reference format")
}

/// `‖a − b‖ / ‖b‖`.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt() as f32
}

pub fn moe(layer: &DecoderLayer) -> &SparseMoe {
    layer
        .block_sparse_moe
        .as_ref()
        .expect("a mixture-of-experts layer")
}

/// Router weights of every layer (HF layout `[experts, hidden]`).
pub fn routers(model: &Llama) -> Vec<Vec<f32>> {
    model
        .layers
        .iter()
        .map(|l| to_vec(moe(l).gate.weight.val().transpose()))
        .collect()
}

/// Every expert linear of the tiny Mixtral (2 layers × 4 experts × w1/w2/w3).
pub fn expert_paths() -> Vec<String> {
    let mut out = Vec::new();
    for l in 0..2 {
        for e in 0..4 {
            for w in ["w1", "w2", "w3"] {
                out.push(format!("layers.{l}.block_sparse_moe.experts.{e}.{w}"));
            }
        }
    }
    out
}

/// Our top-k choice and its weights for every token of every layer (the input of each layer's
/// MoE recomputed from the public pieces), against transformers' choice.
pub fn check_routing_against(model: &Llama, ids: &[u32], theirs: &[LayerRouting]) {
    let (n, d) = (ids.len(), model.config.hidden_size);
    let dev = device();
    let ctx = StepContext::new(
        &model.rope_inv_freq,
        0,
        0,
        n,
        model.config.sliding_window,
        &dev,
    );
    let mut h = model.embed_tokens.forward(token_tensor(ids, &dev));
    assert_eq!(theirs.len(), model.layers.len());
    for (i, (layer, theirs)) in model.layers.iter().zip(theirs).enumerate() {
        let attn = h.clone()
            + layer
                .self_attn
                .forward(layer.input_layernorm.forward(h.clone()), &ctx, None);
        let x = layer.post_attention_layernorm.forward(attn).reshape([n, d]);
        let routing = moe(layer).route(x);
        let mut chosen = vec![Vec::new(); n];
        let mut weight_sum = vec![0f32; n];
        for (e, (rows, weights)) in routing.experts.iter().enumerate() {
            for (&t, &w) in rows.iter().zip(weights) {
                chosen[t].push(e);
                weight_sum[t] += w;
            }
        }
        for t in 0..n {
            let mut want = theirs.experts[t].clone();
            want.sort_unstable();
            assert_eq!(chosen[t], want, "layer {i}, token {t}: experts");
            assert!((weight_sum[t] - 1.0).abs() < 1e-6, "weights renormalised");
        }
        h = layer.forward(h, &ctx, None);
    }
}

/// The tiny random Mixtral (4 experts, top 2, sliding window 8) against transformers on a
/// 43-token input: routing of every token, all logits, and the greedy continuation through the
/// KV cache. A model that ignored the window would be off at the last position.
#[test]
fn tiny_mixtral_matches_transformers() {
    let r = mixtral_reference();
    let (model, tok) = load_pretrained(tiny_mixtral_dir(), &device()).expect("load tiny-mixtral");
    assert_eq!(model.config.architecture().unwrap(), Architecture::Mixtral);
    assert_eq!(
        model.config.moe().unwrap(),
        Some(MoeConfig {
            num_experts: 4,
            top_k: 2
        })
    );
    let window = model.config.sliding_window.expect("a sliding window");
    assert!(r.input_ids.len() > 2 * window);
    assert!(
        model
            .layers
            .iter()
            .all(|l| l.mlp.is_none() && moe(l).num_experts() == 4 && moe(l).top_k == 2)
    );
    assert_eq!(tok.encode(&r.text, true).unwrap(), r.input_ids, "tokenizer");

    check_routing_against(&model, &r.input_ids, &r.routing);

    let logits = model.forward_all(token_tensor(&r.input_ids, &device()));
    assert_eq!(logits.dims(), [1, r.shape[0], r.shape[1]]);
    let ours = to_vec(logits);
    let theirs: Vec<f32> = r.logits.concat();
    let scale = max_abs(&theirs);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(
        diff <= HF_LOGIT_TOL * scale,
        "max |Δlogit| {diff} > {HF_LOGIT_TOL} × logit scale {scale}"
    );
    let vocab = r.shape[1];
    let last = &ours[ours.len() - vocab..];
    assert!(
        max_abs_diff(last, &r.last_logits_without_window) > 100.0 * diff.max(1e-6),
        "the window must matter at the last position"
    );

    let cfg = GenerateConfig {
        max_new_tokens: r.greedy_continuation_ids.len(),
        ..GenerateConfig::default()
    };
    let g = generate(&model, &r.input_ids, &cfg, &mut |_| {}).unwrap();
    assert_eq!(g.tokens, r.greedy_continuation_ids, "greedy continuation");
}

#[test]
fn routing_keeps_top_k_and_renormalises() {
    // Token 0: experts 1 and 2 win; token 1: a four-way tie goes to the lowest indices.
    let logits = [1.0, 3.0, 2.0, 0.0, 0.5, 0.5, 0.5, 0.5];
    let r = Routing::from_logits(&logits, 2, 4, 2);
    let w = 1.0 / (1.0 + (-1.0f32).exp()); // e³ / (e³ + e²)
    assert_eq!(r.experts[0], (vec![1], vec![0.5]));
    assert_eq!(r.experts[1].0, vec![0, 1]);
    assert!((r.experts[1].1[0] - w).abs() < 1e-6 && r.experts[1].1[1] == 0.5);
    assert_eq!(r.experts[2].0, vec![0]);
    assert!((r.experts[2].1[0] - (1.0 - w)).abs() < 1e-6);
    assert_eq!(r.tokens(3), 0);
    // top-1 puts all the weight on the winner.
    let r = Routing::from_logits(&logits, 2, 4, 1);
    assert_eq!(r.experts[1], (vec![0], vec![1.0]));
    assert_eq!(r.experts[0], (vec![1], vec![1.0]));
}

/// The gather / expert / scatter-add forward equals the dense formula: every expert on every
/// token, weighted by the routing (zero where not routed).
#[test]
fn sparse_moe_equals_the_dense_weighted_sum_of_experts() {
    let model = Llama::random(random_mixtral_config(None, 1), 3, &device()).unwrap();
    let moe = moe(&model.layers[0]);
    let (n, d) = (14, 64);
    let mut r = SplitMix64::new(9);
    let values: Vec<f32> = (0..n * d).map(|_| r.next_gaussian() as f32).collect();
    let x = Tensor::<2>::from_data(burn::tensor::TensorData::new(values, [n, d]), &device());
    let got = to_vec(moe.forward(x.clone().reshape([2, n / 2, d])));
    let routing = moe.route(x.clone());
    let mut want = vec![0f32; n * d];
    let mut routed = 0;
    for (expert, (rows, weights)) in moe.experts.iter().zip(&routing.experts) {
        let y = to_vec(expert.forward(x.clone()));
        routed += rows.len();
        for (&t, &w) in rows.iter().zip(weights) {
            for j in 0..d {
                want[t * d + j] += w * y[t * d + j];
            }
        }
    }
    assert_eq!(routed, n * moe.top_k, "every token goes to top_k experts");
    assert!(max_abs(&want) > 0.1);
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff <= F32_REORDER_TOL * max_abs(&want),
        "differs by {diff}"
    );
}

/// Relative L2 distance of any4 logits from dense ones on the tiny random Mixtral. any4 (group
/// 128) leaves each random Gaussian weight matrix ~7 % off (relative RMS); through two layers of
/// quantized attention and experts, with occasional routing flips, the logits measured 0.137
/// (one-shot) and 0.140 (sequential). int4 on the same model lands near 0.2, and a broken expert
/// path (wrong rows, lost weights) gives O(1).
pub const MIXTRAL_ANY4_REL_TOL: f32 = 0.15;

/// Every expert linear is any4 after the pass, the router is untouched, and only `lm_head`
/// (excluded by default) stays dense.
pub fn assert_experts_quantized(
    model: &mut Llama,
    report: &any4_burn::Report,
    dense_routers: &[Vec<f32>],
) {
    let paths = qlinear_paths(model);
    assert!(
        paths.iter().all(|p| !p.ends_with(".gate")),
        "the router is not a QLinear: {paths:?}"
    );
    let experts: Vec<String> = paths
        .iter()
        .filter(|p| p.contains(".experts."))
        .cloned()
        .collect();
    assert_eq!(experts, expert_paths());
    for layer in &model.layers {
        for e in &moe(layer).experts {
            assert!(e.w1.is_quantized() && e.w2.is_quantized() && e.w3.is_quantized());
        }
        assert!(layer.self_attn.o_proj.is_quantized());
    }
    assert!(!model.lm_head.is_quantized());
    assert_eq!(
        report.layers.len(),
        24 + 8,
        "24 expert and 8 attention linears"
    );
    assert_eq!(report.skipped, vec!["lm_head".to_string()]);
    assert_eq!(
        routers(model),
        dense_routers,
        "the router stays dense and unchanged"
    );
}

#[test]
fn quantized_tiny_mixtral_stays_close_with_per_expert_calibration() {
    let r = mixtral_reference();
    let dir = tiny_mixtral_dir();
    let (model, tok) = load_pretrained(&dir, &device()).unwrap();
    let input = token_tensor(&r.input_ids, &device());
    let dense = to_vec(model.forward_all(input.clone()));
    let dense_routers = routers(&model);
    let calib_len = 256;
    let calib_ids = tok.encode(CALIBRATION_PROMPT, true).unwrap();
    let calib = token_tensor(&calib_ids[..calib_len], &device());
    let qcfg = QuantizeConfig::default();

    let mut one_shot = model;
    let stats = one_shot.calibrate(calib.clone());
    // Per-expert statistics: an expert's probes see only its own tokens, so per layer the
    // counts add up to top_k × tokens, and w1 / w2 / w3 of one expert see the same tokens.
    for l in 0..2 {
        let mut total = 0;
        for e in 0..4 {
            let p = |w: &str| format!("layers.{l}.block_sparse_moe.experts.{e}.{w}");
            let t = stats.tokens(&p("w1")).unwrap_or(0);
            assert!(
                t < calib_len as u64,
                "expert {e} of layer {l} saw every token"
            );
            assert_eq!(stats.tokens(&p("w2")).unwrap_or(0), t);
            assert_eq!(stats.tokens(&p("w3")).unwrap_or(0), t);
            total += t;
        }
        assert_eq!(total, 2 * calib_len as u64, "layer {l}");
        let q = format!("layers.{l}.self_attn.q_proj");
        assert_eq!(stats.tokens(&q), Some(calib_len as u64));
    }
    let (mut one_shot, report) = quantize_model(one_shot, &qcfg, Some(&stats)).unwrap();
    assert_experts_quantized(&mut one_shot, &report, &dense_routers);
    let q1 = to_vec(one_shot.forward_all(input.clone()));

    let (dense_again, _) = load_pretrained(&dir, &device()).unwrap();
    let (mut sequential, report) = quantize_model_sequential(dense_again, &qcfg, &calib).unwrap();
    assert_experts_quantized(&mut sequential, &report, &dense_routers);
    let q2 = to_vec(sequential.forward_all(input));

    for (name, q) in [("one-shot", &q1), ("sequential", &q2)] {
        let err = relative_l2(q, &dense);
        eprintln!("tiny-mixtral any4 {name}: relative logit error {err:.4}");
        assert!(
            err.is_finite() && err < MIXTRAL_ANY4_REL_TOL,
            "{name}: relative logit error {err}"
        );
    }
    assert_ne!(q1, dense, "quantization changed something");
}

/// An expert the calibration text never reaches has no statistics; the pass quantizes it
/// unweighted (and says so with `calib_tokens == Some(0)`) instead of failing.
#[test]
fn experts_without_calibration_tokens_are_quantized_unweighted() {
    let (mut model, _) = load_pretrained(tiny_mixtral_dir(), &device()).unwrap();
    let dense_routers = routers(&model);
    // One token reaches exactly top_k = 2 of the 4 experts of each layer.
    let stats = model.calibrate(token_tensor(&[0], &device()));
    let unreached: Vec<String> = stats.unreached().map(str::to_string).collect();
    assert_eq!(unreached.len(), 2 * 2 * 3, "{unreached:?}");
    assert!(unreached.iter().all(|p| p.contains(".experts.")));
    assert!(unreached.iter().all(|p| stats.mean(p).is_none()));
    let (mut model, report) =
        quantize_model(model, &QuantizeConfig::default(), Some(&stats)).unwrap();
    assert_experts_quantized(&mut model, &report, &dense_routers);
    for l in &report.layers {
        if unreached.contains(&l.path) {
            assert_eq!(l.calib_tokens, Some(0), "{}", l.path);
            assert!(l.weighted_rel_mse.is_none());
        } else {
            assert_eq!(l.calib_tokens, Some(1), "{}", l.path);
        }
    }
    let logits = to_vec(model.forward_all(token_tensor(&[0, 5, 9, 200], &device())));
    assert!(logits.iter().all(|v| v.is_finite()));
}

/// Rewrite a safetensors file without tensor `name`, keeping its metadata.
pub fn drop_tensor(file: &Path, name: &str) {
    let bytes = std::fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    assert_eq!(kept.len() + 1, st.len(), "`{name}` was in the file");
    let out = safetensors::tensor::serialize(kept, meta.metadata().clone()).unwrap();
    std::fs::write(file, out).unwrap();
}

#[test]
fn mixtral_any4_folder_round_trips_and_names_missing_experts() {
    let r = mixtral_reference();
    let (model, tok) = load_pretrained(tiny_mixtral_dir(), &device()).unwrap();
    // Unweighted keeps it quick: the round trip, not the quality, is under test here.
    let (mut quantized, _) = quantize_model(model, &QuantizeConfig::default(), None).unwrap();
    let input = token_tensor(&r.input_ids, &device());
    let before = to_vec(quantized.forward_all(input.clone()));
    let tmp = TempDir::new("mixtral-any4");
    let qc = save_any4(&tmp.0, &mut quantized, &tok).unwrap();
    assert_eq!(qc.layers.len(), 32);
    assert_eq!(qc.modules_not_quantized, vec!["lm_head".to_string()]);

    let (mut loaded, _) = load_auto(&tmp.0, &device()).unwrap();
    assert_eq!(loaded.config, quantized.config);
    assert!(loaded.is_quantized());
    assert_eq!(routers(&loaded), routers(&quantized));
    let after = to_vec(loaded.forward_all(input));
    assert_eq!(
        max_abs_diff(&after, &before),
        0.0,
        "identical logits after reload"
    );

    let weights = tmp.0.join("model.safetensors");
    let pristine = std::fs::read(&weights).unwrap();
    for gone in [
        "layers.1.block_sparse_moe.experts.2.w3.qweight",
        "layers.0.block_sparse_moe.gate.weight",
    ] {
        std::fs::write(&weights, &pristine).unwrap();
        drop_tensor(&weights, gone);
        match load_auto(&tmp.0, &device()) {
            Err(Error::MissingTensor { tensor, path }) => {
                assert_eq!(tensor, gone);
                assert_eq!(path, weights);
            }
            other => panic!("expected `{gone}` missing, got {other:?}"),
        }
    }
}

#[test]
fn mixtral_loader_reads_experts_and_names_missing_ones() {
    let cfg = random_mixtral_config(Some(4), 2);
    let shapes = hf_tensor_shapes(&cfg);
    // embed, 2 × (2 norms, 4 attention, router, 4 × 3 expert linears), norm, lm_head
    assert_eq!(shapes.len(), 1 + 2 * (2 + 4 + 1 + 12) + 2);
    assert!(shapes.iter().all(|(n, _)| !n.contains(".mlp.")));
    let tmp = TempDir::new("mixtral-hf");
    let written = write_checkpoint(&tmp.0, &cfg, Dtype::F32, |_, s| Some(s));
    let model = load_dir(&tmp.0).unwrap();
    let find = |name: &str| {
        written
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let w2 = to_vec(moe(&model.layers[1]).experts[3].w2.weight_hf());
    assert_eq!(
        w2,
        find("model.layers.1.block_sparse_moe.experts.3.w2.weight")
    );
    assert_eq!(
        routers(&model)[0],
        find("model.layers.0.block_sparse_moe.gate.weight")
    );

    for gone in [
        "model.layers.1.block_sparse_moe.experts.3.w2.weight",
        "model.layers.0.block_sparse_moe.gate.weight",
    ] {
        let tmp = TempDir::new("mixtral-missing");
        write_checkpoint(&tmp.0, &cfg, Dtype::F32, |n, s| (n != gone).then_some(s));
        match load_dir(&tmp.0) {
            Err(Error::MissingTensor { tensor, .. }) => assert_eq!(tensor, gone),
            other => panic!("expected `{gone}` missing, got {other:?}"),
        }
    }
}

#[test]
fn config_reads_mixtral_and_validates_expert_counts() {
    // Mixtral-8x7B-v0.1's config.json (transformers 4.36 layout).
    let mixtral = r#"{"architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
        "output_router_logits": false, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02, "sliding_window": null, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32000}"#;
    let c = LlamaConfig::from_json(mixtral).unwrap();
    assert_eq!(c.architecture().unwrap(), Architecture::Mixtral);
    let moe = MoeConfig {
        num_experts: 8,
        top_k: 2,
    };
    assert_eq!(c.moe().unwrap(), Some(moe));
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.rope().unwrap().theta, 1e6);
    let shapes = hf_tensor_shapes(&c);
    assert!(shapes.contains(&(
        "model.layers.31.block_sparse_moe.experts.7.w2.weight".to_string(),
        vec![4096, 14336]
    )));
    assert!(shapes.contains(&(
        "model.layers.0.block_sparse_moe.gate.weight".to_string(),
        vec![8, 4096]
    )));

    // HF defaults when the counts are omitted; `model_type` alone identifies Mixtral.
    let mut json: serde_json::Value = serde_json::from_str(mixtral).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.remove("num_local_experts");
    obj.remove("num_experts_per_tok");
    obj.remove("architectures");
    let c = LlamaConfig::from_json(&json.to_string()).unwrap();
    assert_eq!(c.moe().unwrap(), Some(moe));

    for (field, value, mentions) in [
        ("num_experts_per_tok", 0, "num_experts_per_tok"),
        ("num_experts_per_tok", 9, "num_local_experts (8)"),
        ("num_local_experts", 0, "num_local_experts"),
    ] {
        let bad = mixtral.replace(
            &format!(
                "\"{field}\": {}",
                if field == "num_local_experts" { 8 } else { 2 }
            ),
            &format!("\"{field}\": {value}"),
        );
        assert_ne!(bad, mixtral);
        match LlamaConfig::from_json(&bad) {
            Err(Error::Config(m)) => assert!(m.contains(mentions), "{field}={value}: {m}"),
            other => panic!("{field}={value}: expected a config error, got {other:?}"),
        }
    }
    // Dense configs neither have nor write expert fields.
    let llama = random_config(None, 1);
    assert_eq!(llama.moe().unwrap(), None);
    let text = serde_json::to_string(&llama).unwrap();
    assert!(!text.contains("experts"), "{text}");
}
