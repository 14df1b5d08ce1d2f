use super::*;
use crate::config::{Format, GroupSize, ParamDtype, Scaling};
use crate::gram::Gram;
use crate::quantize::quantize_matrix;
use crate::rng::SplitMix64;

/// Correlated activations `[t, k]`: a random mix of `k / 3` latent factors plus noise, with
/// channel magnitudes spread over ~30× and a few outlier channels, as LLM inputs have.
fn activations(t: usize, k: usize, seed: u64) -> Vec<f32> {
    tokens_of(t, k, seed, seed)
}

/// `t` tokens of the distribution `seed`, drawn from stream `draw`.
fn tokens_of(t: usize, k: usize, seed: u64, draw: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    let latent = (k / 3).max(1);
    let mix: Vec<f32> = (0..latent * k).map(|_| r.next_gaussian() as f32).collect();
    let mag: Vec<f32> = (0..k)
        .map(|j| {
            let base = (0.1 + 3.0 * r.next_f64()) as f32;
            if j % 29 == 3 { base * 10.0 } else { base }
        })
        .collect();
    let mut x = vec![0.0f32; t * k];
    let mut z = vec![0.0f32; latent];
    let mut r = SplitMix64::for_stream(draw, 1);
    for p in 0..t {
        z.iter_mut().for_each(|v| *v = r.next_gaussian() as f32);
        for j in 0..k {
            let s: f32 = (0..latent).map(|l| z[l] * mix[l * k + j]).sum();
            x[p * k + j] = mag[j] * (s / (latent as f32).sqrt() + 0.3 * r.next_gaussian() as f32);
        }
    }
    x
}

fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..rows * cols)
        .map(|_| (0.02 * r.next_student_t(4)) as f32)
        .collect()
}

fn gram(x: &[f32], k: usize) -> Gram {
    let mut g = Gram::new(k, u64::MAX).unwrap();
    g.accumulate(x, x.len() / k).unwrap();
    g
}

/// `T·Tᵀ` from the stored factor reproduces the dampened, per-token `H`.
#[test]
fn factor_reconstructs_dampened_gram() {
    let k = 150;
    let g = gram(&activations(400, k, 1), k);
    let damp = 0.01;
    let f = HessianFactor::new(&g, damp).unwrap();
    let n = g.tokens() as f64;
    let mean = (0..k).map(|j| g.get(j, j)).sum::<f64>() / k as f64 / n;
    let t = |i: usize, j: usize| f.r[i * k + j] as f64 * f.diag[j].sqrt();
    for i in 0..k {
        for j in i..k {
            let got: f64 = (j..k).map(|p| t(i, p) * t(j, p)).sum();
            let want = g.get(i, j) / n + if i == j { damp * mean } else { 0.0 };
            let scale = (g.get(i, i) * g.get(j, j)).sqrt() / n;
            assert!(
                (got - want).abs() < 1e-5 * scale,
                "H[{i},{j}]: {got} vs {want}"
            );
        }
    }
}

/// Rescaling the factor equals factoring the Gram matrix of the rescaled inputs.
#[test]
fn rescaled_factor_matches_rescaled_inputs() {
    let k = 60;
    let x = activations(300, k, 2);
    let s: Vec<f32> = (0..k).map(|j| 0.5 + (j % 7) as f32 * 0.3).collect();
    let xs: Vec<f32> = x.iter().enumerate().map(|(i, v)| v / s[i % k]).collect();
    let a = HessianFactor::new(&gram(&x, k), 0.0)
        .unwrap()
        .rescaled(&s)
        .unwrap();
    let b = HessianFactor::new(&gram(&xs, k), 0.0).unwrap();
    for (u, v) in a.r.iter().zip(&b.r) {
        assert!((u - v).abs() < 1e-4 * v.abs().max(1.0), "{u} vs {v}");
    }
    for (u, v) in a.diag.iter().zip(&b.diag) {
        assert!((u - v).abs() < 1e-6 * v, "{u} vs {v}");
    }
}

/// The textbook GPTQ/OBQ recursion (f64, explicit inverse, one column eliminated at a time)
/// on int4 with static per-row parameters: the blocked, inverse-free pass picks the same codes.
#[test]
fn matches_reference_recursion() {
    let (rows, k) = (6, 300);
    let x = activations(500, k, 3);
    let w = weights(rows, k, 4);
    let g = gram(&x, k);
    let damp = 0.01;
    let cfg = Any4Config::new(Format::Int4)
        .with_group_size(GroupSize::PER_ROW)
        .with_param_dtype(ParamDtype::F32);
    let gcfg = GptqConfig::default()
        .with_group_params(GroupParams::Static)
        .with_refit(false);
    let q = quantize_gptq(
        &w,
        [rows, k],
        None,
        &HessianFactor::new(&g, damp).unwrap(),
        &cfg,
        &gcfg,
    )
    .unwrap();
    // Reference: Hinv = (H/n + damp·mean·I)⁻¹ by Gauss–Jordan.
    let n = g.tokens() as f64;
    let mean = (0..k).map(|j| g.get(j, j)).sum::<f64>() / k as f64 / n;
    let mut a: Vec<f64> = (0..k * k)
        .map(|p| g.get(p / k, p % k) / n + if p / k == p % k { damp * mean } else { 0.0 })
        .collect();
    let mut inv: Vec<f64> = (0..k * k)
        .map(|p| f64::from(u8::from(p / k == p % k)))
        .collect();
    for c in 0..k {
        let piv = a[c * k + c];
        for j in 0..k {
            a[c * k + j] /= piv;
            inv[c * k + j] /= piv;
        }
        for i in (0..k).filter(|&i| i != c) {
            let f = a[i * k + c];
            for j in 0..k {
                a[i * k + j] -= f * a[c * k + j];
                inv[i * k + j] -= f * inv[c * k + j];
            }
        }
    }
    let (mut same, mut total) = (0usize, 0usize);
    for row in 0..rows {
        let (s, z) = (q.scales()[row], q.zeros()[row]);
        let mut h = inv.clone();
        let mut wr: Vec<f64> = w[row * k..(row + 1) * k]
            .iter()
            .map(|&v| v as f64)
            .collect();
        for j in 0..k {
            let code = (((wr[j] as f32 - z) / s).round().clamp(0.0, 15.0)) as u8;
            let qv = (code as f32 * s + z) as f64;
            let err = (wr[j] - qv) / h[j * k + j];
            for p in j + 1..k {
                wr[p] -= err * h[j * k + p];
            }
            // Eliminate column j from the inverse.
            let hj: Vec<f64> = (0..k).map(|p| h[j * k + p]).collect();
            for a_ in j + 1..k {
                for b_ in j + 1..k {
                    h[a_ * k + b_] -= hj[a_] * hj[b_] / hj[j];
                }
            }
            same += usize::from(q.code(row, j) == code);
            total += 1;
        }
    }
    assert!(same * 1000 >= total * 995, "{same} of {total} codes agree");
}

/// Error feedback lowers the activation-weighted output error `tr(Δ·H·Δᵀ)` against
/// round-to-nearest for every format, group size (incl. per-row and a short last group),
/// scaling and parameter dtype — on the calibration tokens and on held-out tokens.
#[test]
fn error_feedback_beats_rounding_for_every_format() {
    let (rows, k) = (24, 200);
    let x = activations(600, k, 5);
    let g = gram(&x, k);
    let held_out = gram(&tokens_of(600, k, 5, 99), k);
    let xbar = g.mean();
    let factor = HessianFactor::new(&g, 0.01).unwrap();
    let w = weights(rows, k, 6);
    let mut cases = Vec::new();
    for f in Format::ALL {
        for gs in [
            GroupSize::new(32).unwrap(),
            GroupSize::G128,
            GroupSize::PER_ROW,
        ] {
            cases.push(Any4Config::new(f).with_group_size(gs));
        }
    }
    for f in [Format::Int4, Format::Any4, Format::Nf4] {
        let flipped = match f.default_scaling() {
            Scaling::Asymmetric => Scaling::Symmetric,
            Scaling::Symmetric => Scaling::Asymmetric,
        };
        cases.push(Any4Config::new(f).with_scaling(flipped));
        cases.push(Any4Config::new(f).with_param_dtype(ParamDtype::Bf16));
        cases.push(Any4Config::new(f).with_param_dtype(ParamDtype::F32));
    }
    let ordered =
        HessianFactor::for_config(&g, &GptqConfig::default().with_act_order(true)).unwrap();
    for cfg in cases {
        for (gp, act_order) in [
            (GroupParams::Static, false),
            (GroupParams::Dynamic, false),
            (GroupParams::Static, true),
        ] {
            let gcfg = GptqConfig::default()
                .with_group_params(gp)
                .with_act_order(act_order);
            let f = if act_order { &ordered } else { &factor };
            let rtn = quantize_matrix(&w, [rows, k], Some(&xbar), &cfg).unwrap();
            let fb = quantize_gptq(&w, [rows, k], Some(&xbar), f, &cfg, &gcfg).unwrap();
            let e_rtn = g.output_error(&w, &rtn.dequantize(), rows).unwrap();
            let e_fb = g.output_error(&w, &fb.dequantize(), rows).unwrap();
            let h_rtn = held_out.output_error(&w, &rtn.dequantize(), rows).unwrap();
            let h_fb = held_out.output_error(&w, &fb.dequantize(), rows).unwrap();
            println!(
                "{} g{} {:?} {:?} {gp:?} act-order {act_order}: calibration {:.3}, held out {:.3} of rtn",
                cfg.format(),
                cfg.group_size(),
                cfg.scaling(),
                cfg.param_dtype(),
                e_fb / e_rtn,
                h_fb / h_rtn,
            );
            assert!(
                e_fb < 0.9 * e_rtn,
                "{cfg:?} {gp:?} {act_order}: {e_fb} vs rtn {e_rtn}"
            );
            assert!(
                h_fb < 0.95 * h_rtn,
                "{cfg:?} {gp:?} {act_order} held out: {h_fb} vs rtn {h_rtn}"
            );
        }
    }
}

/// Act-order on inputs whose second moments already decrease with the channel index is the
/// identity order: the permuted path must then give exactly the static-groups pass (codes,
/// tables, scales, zeros), for a learned and a fixed format. With the channels shuffled, the
/// order is not the identity and the factor's columns follow `E[x_j²]`.
#[test]
fn act_order_in_channel_order_is_the_static_pass() {
    let (rows, k) = (20, 192);
    let x = activations(500, k, 8);
    let moment = |j: usize| (0..500).map(|p| (x[p * k + j] as f64).powi(2)).sum::<f64>();
    let mut by_moment: Vec<usize> = (0..k).collect();
    by_moment.sort_by(|&a, &b| moment(b).total_cmp(&moment(a)));
    let sorted: Vec<f32> = (0..500 * k)
        .map(|at| x[at - at % k + by_moment[at % k]])
        .collect();
    let g = gram(&sorted, k);
    let w = weights(rows, k, 9);
    let xbar = g.mean();
    let fixed = GptqConfig::default().with_group_params(GroupParams::Static);
    let ordered = fixed.with_act_order(true);
    let plain = HessianFactor::new(&g, fixed.damp()).unwrap();
    let identity = HessianFactor::for_config(&g, &ordered).unwrap();
    assert!(identity.permuted());
    assert!((0..k).all(|j| identity.channel(j) == j), "sorted moments");
    for f in [Format::Any4, Format::Nf4] {
        let cfg = Any4Config::new(f).with_group_size(GroupSize::new(64).unwrap());
        let a = quantize_gptq(&w, [rows, k], Some(&xbar), &plain, &cfg, &fixed).unwrap();
        let b = quantize_gptq(&w, [rows, k], Some(&xbar), &identity, &cfg, &ordered).unwrap();
        assert_eq!(a, b, "{f}");
    }
    let shuffled = HessianFactor::for_config(&gram(&x, k), &ordered).unwrap();
    assert!((0..k).all(|j| shuffled.channel(j) == by_moment[j]));
}

/// Bad inputs get clear errors: no tokens, singular `H` without damping, a damping out of
/// range, a Gram matrix of another width, NaN weights.
#[test]
fn bad_inputs_are_refused() {
    let k = 64;
    let empty = Gram::new(k, u64::MAX).unwrap();
    assert!(matches!(
        HessianFactor::new(&empty, 0.01),
        Err(Error::NoCalibrationTokens)
    ));
    // 10 tokens for 64 channels: rank ≤ 10, singular without damping.
    let few = gram(&activations(10, k, 7), k);
    let err = HessianFactor::new(&few, 0.0).unwrap_err();
    assert!(matches!(err, Error::NotPositiveDefinite { .. }), "{err}");
    assert!(err.to_string().contains("raise the damping"), "{err}");
    assert!(
        HessianFactor::new(&few, 0.01).is_ok(),
        "damping makes it definite"
    );
    assert!(matches!(
        HessianFactor::new(&few, 1.5),
        Err(Error::InvalidMethodOption(_))
    ));
    assert!(GptqConfig::default().with_damp(-0.1).is_err());
    let factor = HessianFactor::new(&few, 0.01).unwrap();
    let cfg = Any4Config::new(Format::Any4);
    let gcfg = GptqConfig::default();
    let w = weights(4, 2 * k, 8);
    let err = quantize_gptq(&w, [4, 2 * k], None, &factor, &cfg, &gcfg).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let mut w = weights(4, k, 8);
    w[k + 3] = f32::NAN;
    let err = quantize_gptq(&w, [4, k], None, &factor, &cfg, &gcfg).unwrap_err();
    assert!(
        matches!(err, Error::NonFiniteWeight { row: 1, col: 3, .. }),
        "{err}"
    );
}

/// A channel the calibration never excited is rounded on its own (its weight kept, not
/// zeroed), even without damping; a Gram matrix of zeros degenerates to round-to-nearest.
#[test]
fn dead_channels_are_kept() {
    let (rows, k) = (8, 96);
    let mut x = activations(400, k, 9);
    for p in 0..400 {
        x[p * k + 17] = 0.0;
    }
    let factor = HessianFactor::new(&gram(&x, k), 0.0).unwrap();
    let w = weights(rows, k, 10);
    let cfg = Any4Config::new(Format::Int4).with_group_size(GroupSize::PER_ROW);
    let gcfg = GptqConfig::default().with_group_params(GroupParams::Static);
    let q = quantize_gptq(&w, [rows, k], None, &factor, &cfg, &gcfg).unwrap();
    let rtn = quantize_matrix(&w, [rows, k], None, &cfg).unwrap();
    for row in 0..rows {
        assert_eq!(
            q.code(row, 17),
            rtn.code(row, 17),
            "row {row}: dead column rounded alone"
        );
    }
    let zeros = gram(&vec![0.0; 50 * k], k);
    let factor = HessianFactor::new(&zeros, 0.0).unwrap();
    let q = quantize_gptq(&w, [rows, k], None, &factor, &cfg, &gcfg).unwrap();
    assert_eq!(q.codes(), rtn.codes(), "no signal: plain rounding");
}

/// The result does not depend on the number of threads.
#[test]
fn deterministic_across_thread_counts() {
    let (rows, k) = (70, 130);
    let x = activations(300, k, 11);
    let g = gram(&x, k);
    let factor = HessianFactor::new(&g, 0.01).unwrap();
    let w = weights(rows, k, 12);
    let cfg = Any4Config::new(Format::Any4);
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                quantize_gptq(
                    &w,
                    [rows, k],
                    Some(&g.mean()),
                    &factor,
                    &cfg,
                    &GptqConfig::default(),
                )
                .unwrap()
            })
    };
    assert_eq!(run(1), run(3));
}
