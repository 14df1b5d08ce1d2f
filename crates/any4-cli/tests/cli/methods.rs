//! `quantize --method gptq --act-scale --calib-file … --calib-tokens …` end to end on the tiny
//! Llama, and the one-line errors of its bad inputs.

use super::*;

/// `quantize --json` with `extra` flags into `out`; the JSON summary.
fn quantize_json(out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = quantize(tiny_llama(), out, &[&["--json"], extra].concat());
    assert!(o.status.success(), "quantize {extra:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("quantize --json is JSON")
}

/// Error feedback with activation-aware scales from two calibration files: the summary says
/// what ran, its output error on the calibration tokens is below round-to-nearest's, the
/// q/k/v and gate/up multipliers went into the norms (the others are stored and counted in
/// the bits), and the checkpoint evaluates to a perplexity close to round-to-nearest's.
#[test]
fn gptq_with_act_scales_from_calibration_files() {
    let root = scratch("methods");
    let text = tiny_llama().join("heldout.txt");
    let body = std::fs::read_to_string(&text).unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    let (fa, fb) = (root.join("a.txt"), root.join("b.txt"));
    std::fs::write(&fa, a).unwrap();
    // Start the second file at a line.
    std::fs::write(&fb, &b[b.find('\n').unwrap() + 1..]).unwrap();
    let calib = [
        "--calib-file",
        fa.to_str().unwrap(),
        "--calib-file",
        fb.to_str().unwrap(),
        "--calib-tokens",
        "512",
        "--calib-seq",
        "128",
        "--output-error",
    ];
    let (rtn_out, fb_out) = (root.join("rtn"), root.join("gptq"));
    let rtn = quantize_json(&rtn_out, &calib);
    let mut args = calib.to_vec();
    args.extend(["--method", "gptq", "--act-scale", "--act-scale-grid", "2"]);
    let q = quantize_json(&fb_out, &args);
    assert_eq!(q["method"], "gptq");
    assert_eq!(q["act_scale"], true);
    assert_eq!(q["calib_tokens"], 512);
    assert_eq!(q["calib_windows"], 4, "two windows of 128 from each file");
    assert_eq!(q["norms_folded"], 12, "q/k/v and gate/up of 6 blocks");
    let (e_rtn, e_q) = (
        rtn["output_rel_err"].as_f64().unwrap(),
        q["output_rel_err"].as_f64().unwrap(),
    );
    assert!(
        e_q < e_rtn,
        "output error {e_q} vs round-to-nearest {e_rtn}"
    );
    let (b_rtn, b_q) = (
        rtn["bits_per_weight"].as_f64().unwrap(),
        q["bits_per_weight"].as_f64().unwrap(),
    );
    assert!(
        b_q > b_rtn && b_q < b_rtn + 0.5,
        "o_proj/down_proj input multipliers: {b_q} vs {b_rtn} bits"
    );
    let inspect = any4(&["inspect", fb_out.to_str().unwrap(), "--json"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let meta: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let layers = &meta["quantization_config"]["layers"];
    let layers = if layers.is_null() {
        &meta["layers"]
    } else {
        layers
    };
    assert_eq!(layers["layers.0.mlp.down_proj"]["input_scale"], true);
    assert_eq!(layers["layers.0.self_attn.q_proj"]["input_scale"], false);
    let (p_rtn, p_q) = (eval_ppl(&rtn_out, &text, 2), eval_ppl(&fb_out, &text, 2));
    assert!(
        p_q.is_finite() && p_q < 1.05 * p_rtn,
        "ppl {p_q} vs round-to-nearest {p_rtn}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// An error after the model loaded: exit status 1, the progress notes, then one `any4:` line
/// mentioning `needle`, and no panic.
fn assert_error_after_load(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.starts_with("any4: ") && last.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A calibration file too short for its windows, and a Gram budget too small for the model's
/// widths, are one-line errors naming what to change; nothing is written.
#[test]
fn calibration_errors_are_one_line() {
    let root = scratch("methods-err");
    let short = root.join("short.txt");
    std::fs::write(&short, "a few words\n").unwrap();
    let model = tiny_llama();
    let out = root.join("out");
    let o = quantize(
        &model,
        &out,
        &[
            "--calib-file",
            short.to_str().unwrap(),
            "--calib-tokens",
            "512",
        ],
    );
    assert_error_after_load(&o, "short.txt: too short");
    assert!(!out.exists());
    let o = quantize(&model, &out, &["--method", "gptq", "--gram-budget-mb", "0"]);
    assert_error_after_load(&o, "raise the budget");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&root);
}
