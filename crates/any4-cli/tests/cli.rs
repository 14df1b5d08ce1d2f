//! The `any4` binary end to end on the embedded tiny Llama: quantize → inspect → generate → eval,
//! and the one-line errors users see for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn any4(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_any4"))
        .args(args)
        .output()
        .expect("run the any4 binary")
}

fn tiny_llama() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exactly one non-empty stderr line starting with `any4:`, no panic text, exit status 1.
fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("any4: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(err.contains(needle), "`{err}` should mention `{needle}`");
}

#[test]
fn quantize_inspect_generate_eval_round_trip() {
    let out = std::env::temp_dir().join(format!("any4-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let model = tiny_llama();
    let o = any4(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "any4",
        "--group-size",
        "128",
    ]);
    assert!(o.status.success(), "quantize failed: {}", stderr(&o));
    assert!(stdout(&o).contains("layers quantized"), "{}", stdout(&o));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    let o = any4(&["inspect", out.to_str().unwrap()]);
    assert!(o.status.success(), "inspect failed: {}", stderr(&o));
    let text = stdout(&o);
    // 6 layers × 7 linears; the tied LM head stays dense.
    assert!(text.contains("42 quantized layers"), "{text}");
    assert!(
        text.contains("layers.0.self_attn.q_proj") && text.contains("lm_head"),
        "{text}"
    );
    let o = any4(&["inspect", out.to_str().unwrap(), "--json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("inspect --json is JSON");
    assert_eq!(json["quant_method"], "any4");

    let o = any4(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "The king said",
        "--max-tokens",
        "8",
    ]);
    assert!(o.status.success(), "generate failed: {}", stderr(&o));
    assert!(stdout(&o).starts_with("The king said") && stdout(&o).len() > "The king said".len());
    assert!(stderr(&o).contains("tokens/s"), "{}", stderr(&o));

    let heldout = model.join("heldout.txt");
    let run_eval = |m: &Path| {
        let o = any4(&[
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--text",
            heldout.to_str().unwrap(),
            "--seq-len",
            "256",
            "--max-windows",
            "4",
            "--json",
        ]);
        assert!(o.status.success(), "eval failed: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("eval --json is JSON");
        v["ppl"].as_f64().expect("ppl")
    };
    let (dense, quant) = (run_eval(&model), run_eval(&out));
    assert!(
        dense.is_finite() && dense > 1.0 && dense < 200.0,
        "dense ppl {dense}"
    );
    assert!(
        quant >= dense * 0.9 && quant < dense * 1.5,
        "any4 ppl {quant} vs dense {dense}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn errors_are_one_line_with_a_nonzero_exit() {
    let o = any4(&["generate", "--model", "/nonexistent/model", "--prompt", "x"]);
    assert_one_line_error(&o, "/nonexistent/model");

    let not_ckpt = tiny_llama().join("config.json");
    let o = any4(&["inspect", not_ckpt.to_str().unwrap()]);
    assert_one_line_error(&o, "config.json");

    let o = any4(&["inspect", tiny_llama().to_str().unwrap()]);
    assert_one_line_error(&o, "not an any4 checkpoint");

    let empty = std::env::temp_dir().join(format!("any4-cli-empty-{}.gguf", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let o = any4(&[
        "eval",
        "--model",
        empty.to_str().unwrap(),
        "--text",
        "/nonexistent.txt",
    ]);
    assert_one_line_error(&o, "empty");
    std::fs::remove_file(&empty).unwrap();

    // Usage errors (unknown format, bad group size) exit with clap's status 2 and name the value.
    let o = any4(&["quantize", "--model", "m", "--out", "o", "--format", "any5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("any5"), "{}", stderr(&o));
    let o = any4(&[
        "quantize",
        "--model",
        "m",
        "--out",
        "o",
        "--group-size",
        "100",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unsupported group size 100"),
        "{}",
        stderr(&o)
    );
}
