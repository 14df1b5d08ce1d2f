//! KV cache and sliding window.

use crate::common::*;

#[test]
fn kv_cache_decode_matches_full_forward() {
    let configs = [
        random_config(None, 2),
        random_config(Some(5), 2),
        random_config(Some(1), 2),
        random_mixtral_config(None, 2),
        random_mixtral_config(Some(5), 2),
    ];
    for config in configs {
        let (window, arch) = (config.sliding_window, config.architecture().unwrap());
        let model = Llama::random(config, 7, &device()).unwrap();
        let ids = random_ids(13, 97, 3);
        let full = to_vec(model.forward_all(token_tensor(&ids, &device())));
        let mut cache = model.new_cache();
        // Prefill, a multi-token chunk (after a window trim), then single tokens.
        let mut got = to_vec(model.forward(token_tensor(&ids[..6], &device()), &mut cache));
        got.extend(to_vec(
            model.forward(token_tensor(&ids[6..9], &device()), &mut cache),
        ));
        for &t in &ids[9..] {
            got.extend(to_vec(
                model.forward(token_tensor(&[t], &device()), &mut cache),
            ));
        }
        assert_eq!(cache.len(), ids.len());
        assert_eq!(cache.cached(), window.map_or(ids.len(), |w| w - 1));
        let diff = max_abs_diff(&got, &full);
        assert!(
            diff <= F32_REORDER_TOL * max_abs(&full),
            "{arch:?}, window {window:?}: cached decode differs by {diff}"
        );
        // Batched prefill: row 1 equals its own single-row forward.
        let other = random_ids(13, 97, 4);
        let batch = to_vec(model.forward_all(token_tensor_batch(&[&ids, &other], &device())));
        let single = to_vec(model.forward_all(token_tensor(&other, &device())));
        let diff = max_abs_diff(&batch[full.len()..], &single);
        assert!(
            diff <= F32_REORDER_TOL * max_abs(&single),
            "{arch:?}: batched prefill"
        );
    }
}

#[test]
fn attention_mask_is_causal_and_windowed() {
    let m = to_vec(attention_mask(0, 0, 4, Some(2), &device()).unwrap());
    let visible: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
    #[rustfmt::skip]
    let expect = [
        true, false, false, false,
        true, true, false, false,
        false, true, true, false,
        false, false, true, true,
    ];
    assert_eq!(visible, expect);
    // A decode step inside the window needs no mask; one beyond it masks the oldest keys.
    assert!(attention_mask(0, 3, 1, None, &device()).is_none());
    assert!(attention_mask(0, 3, 1, Some(4), &device()).is_none());
    let m = to_vec(attention_mask(0, 5, 1, Some(4), &device()).unwrap());
    assert_eq!(m.iter().filter(|v| v.is_finite()).count(), 4);
    // A cache trimmed to the window: keys 2..6 for query 6 with w = 4 → key 2 is out.
    let m = to_vec(attention_mask(2, 5, 2, Some(4), &device()).unwrap());
    assert_eq!(m.len(), 2 * 5);
    let visible: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
    assert_eq!(
        visible,
        [true, true, true, true, false, false, true, true, true, true]
    );
}

#[test]
fn sliding_window_hides_tokens_beyond_reach() {
    let (window, layers, len) = (4, 2, 14);
    // Each layer looks back window − 1 positions: token 0 reaches positions ≤ layers·(window−1).
    let reach = layers * (window - 1);
    let model = Llama::random(random_config(Some(window), layers), 11, &device()).unwrap();
    let ids = random_ids(len, 97, 5);
    let mut perturbed = ids.clone();
    perturbed[0] = (ids[0] + 1) % 97;
    let a = to_vec(model.forward_all(token_tensor(&ids, &device())));
    let b = to_vec(model.forward_all(token_tensor(&perturbed, &device())));
    let row = |v: &[f32], p: usize| v[p * 97..(p + 1) * 97].to_vec();
    for p in 0..len {
        let d = max_abs_diff(&row(&a, p), &row(&b, p));
        if p <= reach {
            assert!(
                d > 1e-6,
                "position {p} is within reach of token 0 but unchanged"
            );
        } else {
            assert_eq!(
                d, 0.0,
                "position {p} is beyond the window yet changed by {d}"
            );
        }
    }
    // Without the window the last position does depend on token 0.
    let full = Llama::random(random_config(None, layers), 11, &device()).unwrap();
    let a = to_vec(full.forward_all(token_tensor(&ids, &device())));
    let b = to_vec(full.forward_all(token_tensor(&perturbed, &device())));
    assert!(max_abs_diff(&row(&a, len - 1), &row(&b, len - 1)) > 1e-6);
}

/// Logits of `ids` decoded through a cache (prefill 6, a chunk of 3, then single tokens).
fn cached_logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut got = to_vec(model.forward(token_tensor(&ids[..6], &device()), &mut cache));
    got.extend(to_vec(
        model.forward(token_tensor(&ids[6..9], &device()), &mut cache),
    ));
    for &t in &ids[9..] {
        got.extend(to_vec(
            model.forward(token_tensor(&[t], &device()), &mut cache),
        ));
    }
    assert_eq!(cache.len(), ids.len());
    got
}

/// Long enough for the cache to grow past its first buffers (and, with a window, to move the
/// visible positions to the front), on both routes of the attention step: the Flex host loops
/// and the Burn tensor ops other backends take. Each route's cached decode equals its full
/// forward, and the routes equal each other.
#[test]
fn cache_growth_and_both_routes_match_full_forward() {
    let configs = [
        random_config(None, 2),
        random_config(Some(5), 2),
        random_mixtral_config(Some(40), 2),
    ];
    for config in configs {
        let (window, arch) = (config.sliding_window, config.architecture().unwrap());
        let model = Llama::random(config, 3, &device()).unwrap();
        let ids = random_ids(150, 97, 8);
        let mut routes = Vec::new();
        for host in [true, false] {
            set_host_kernels(host);
            let full = to_vec(model.forward_all(token_tensor(&ids, &device())));
            let got = cached_logits(&model, &ids);
            set_host_kernels(true);
            let diff = max_abs_diff(&got, &full);
            assert!(
                diff <= F32_REORDER_TOL * max_abs(&full),
                "{arch:?}, window {window:?}, host {host}: cached decode differs by {diff}"
            );
            routes.push(full);
        }
        let diff = max_abs_diff(&routes[0], &routes[1]);
        assert!(
            diff <= F32_REORDER_TOL * max_abs(&routes[1]),
            "{arch:?}, window {window:?}: host and tensor routes differ by {diff}"
        );
    }
}

/// `forward_last` is the last row of `forward` (up to the head's summation order for one row
/// instead of 20), and a cache sized up front never grows.
#[test]
fn forward_last_and_reserved_capacity() {
    let model = Llama::random(random_config(None, 2), 5, &device()).unwrap();
    let ids = random_ids(20, 97, 9);
    let mut a = model.new_cache();
    let all = to_vec(model.forward(token_tensor(&ids, &device()), &mut a));
    let mut b = model.new_cache_with_capacity(300);
    let last = to_vec(model.forward_last(token_tensor(&ids, &device()), &mut b));
    let want = &all[all.len() - 97..];
    assert!(max_abs_diff(&last, want) <= F32_REORDER_TOL * max_abs(want));
    let cap = b.capacity();
    assert!(cap >= 300, "capacity {cap}");
    for &t in &random_ids(200, 97, 10) {
        let _ = model.forward_last(token_tensor(&[t], &device()), &mut b);
    }
    assert_eq!(b.capacity(), cap, "a reserved cache does not grow");
    assert_eq!(b.len(), 220);
}
