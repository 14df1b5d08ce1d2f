//! The `any4` binary end to end on the embedded tiny Llama: quantize → inspect → generate → eval,
//! the one-line errors users see for bad input, (`output`) the rules that keep a command
//! from destroying the user's files, and (`methods`) error feedback with activation-aware scales.

mod methods;
mod output;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn any4(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_any4"))
        .args(args)
        .output()
        .expect("run the any4 binary")
}

/// `any4 quantize --model MODEL --out OUT` followed by `extra`.
fn quantize(model: impl AsRef<Path>, out: impl AsRef<Path>, extra: &[&str]) -> Output {
    let (model, out) = (model.as_ref(), out.as_ref());
    let mut args = vec![
        "quantize",
        "--model",
        model.to_str().expect("UTF-8 test path"),
        "--out",
        out.to_str().expect("UTF-8 test path"),
    ];
    args.extend_from_slice(extra);
    any4(&args)
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
    let o = quantize(&model, &out, &["--format", "any4", "--group-size", "128"]);
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
    let run_eval = |m: &Path| eval_ppl(m, &heldout, 4);
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

/// `dequantize` turns an int4 checkpoint into a dense folder that computes the same thing: the
/// same perplexity, and `quantize` accepts it as a dense model.
#[test]
fn dequantize_gives_a_dense_model_with_the_same_perplexity() {
    let dir = scratch("dequantize");
    let (quant, dense) = (any4_fixture(), dir.join("dense"));
    let o = any4(&[
        "dequantize",
        "--model",
        quant.to_str().unwrap(),
        "--out",
        dense.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "dequantize failed: {}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("dequantize --json is JSON");
    assert_eq!(v["dequantized"], 42, "{v}");

    let o = any4(&["inspect", dense.to_str().unwrap()]);
    assert!(o.status.success(), "inspect failed: {}", stderr(&o));
    assert!(stdout(&o).contains("0 quantized layers"), "{}", stdout(&o));

    let heldout = tiny_llama().join("heldout.txt");
    let ppl = |m: &Path| eval_ppl(m, &heldout, 2);
    let (p_quant, p_dense) = (ppl(quant), ppl(&dense));
    assert!(
        p_quant.is_finite() && (p_dense - p_quant).abs() <= 1e-3 * p_quant,
        "dequantized ppl {p_dense} vs int4 ppl {p_quant}"
    );

    // Re-quantizing the dense folder works; to int4 at the same group size it lands back on
    // (nearly) the same lattice.
    let requant = dir.join("requant");
    let o = quantize(
        &dense,
        &requant,
        &["--format", "int4", "--calib-tokens", "8", "--json"],
    );
    assert!(o.status.success(), "re-quantize failed: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("quantize --json is JSON");
    assert_eq!(v["layers"], 42, "{v}");
    assert!(v["rel_mse"].as_f64().is_some_and(|e| e < 1e-4), "{v}");
    let p_requant = ppl(&requant);
    assert!(
        (p_requant - p_quant).abs() <= 1e-2 * p_quant,
        "re-quantized ppl {p_requant} vs int4 ppl {p_quant}"
    );

    // A bad input is one line, and leaves no output folder behind.
    let missing = dir.join("never-created");
    let o = any4(&[
        "dequantize",
        "--model",
        "/nonexistent/model",
        "--out",
        missing.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "/nonexistent/model");
    assert!(!missing.exists());
    std::fs::remove_dir_all(&dir).unwrap();
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

    let gguf = tiny_llama().join("../tiny-gguf/tiny-gguf-q8_0.gguf");
    let o = any4(&["inspect", gguf.to_str().unwrap()]);
    assert_one_line_error(
        &o,
        "tiny-gguf-q8_0.gguf: a GGUF model, not an any4 checkpoint",
    );

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
    let o = quantize("m", "o", &["--group-size", "100"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unsupported group size 100"),
        "{}",
        stderr(&o)
    );
    // An error-feedback switch without error feedback is refused, not ignored.
    let o = quantize(tiny_llama(), "o", &["--act-order"]);
    assert_one_line_error(
        &o,
        "--act-order is an option of error feedback: add --method gptq",
    );
    assert!(!Path::new("o").exists());
}

// ---------------------------------------------------------------------------------------------
// Reliability: damaged input, unwritable output, killed writers (docs/RELIABILITY.md).
// ---------------------------------------------------------------------------------------------

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("any4-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tensors of a safetensors file as owned `(name, dtype, shape, bytes)`, sorted by name.
type Owned = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn tensors_of(file: &Path) -> Owned {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Owned = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A copy of the tiny Llama's HF folder at `dir`, its tensors edited by `edit`.
fn hf_copy(dir: &Path, edit: impl FnOnce(&mut Owned)) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_llama().join(f), dir.join(f)).unwrap();
    }
    let mut tensors = tensors_of(&tiny_llama().join("model.safetensors"));
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Set f32 element `index` of tensor `name` to `value`.
fn poke(tensors: &mut Owned, name: &str, index: usize, value: f32) {
    let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    t.3[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
}

/// An any4 checkpoint folder of the tiny Llama, quantized once per test run (int4, 8
/// calibration tokens: ~2 s in a debug build) and copied by the tests that need one.
fn any4_fixture() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // Under target/tmp, one per test process; those of finished processes are removed.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("any4-cli-fixture-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = root
            .join(format!("any4-cli-fixture-{}", std::process::id()))
            .join("int4");
        let _ = std::fs::remove_dir_all(&dir);
        let o = quantize(
            tiny_llama(),
            &dir,
            &["--format", "int4", "--calib-tokens", "8"],
        );
        assert!(
            o.status.success(),
            "fixture quantize failed: {}",
            stderr(&o)
        );
        dir
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Every class of bad input gives exit status 1 and one line naming the file and what is wrong.
/// (Usage errors — unknown names, bad group sizes — are clap's, status 2: see above and below.)
#[test]
fn damaged_inputs_fail_with_one_line_naming_the_file() {
    let d = scratch("damaged");
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    let text = tiny_llama().join("heldout.txt");
    let text = text.to_str().unwrap();
    let eval = |model: &str| {
        any4(&[
            "eval",
            "--model",
            model,
            "--text",
            text,
            "--max-windows",
            "1",
        ])
    };
    let ckpt = std::fs::read(any4_fixture().join("model.safetensors")).unwrap();

    // Missing files.
    let o = any4(&["inspect", &p("absent.safetensors")]);
    assert_one_line_error(&o, "absent.safetensors: No such file or directory");
    let o = any4(&[
        "eval",
        "--model",
        tiny_llama().to_str().unwrap(),
        "--text",
        &p("no.txt"),
    ]);
    assert_one_line_error(&o, "no.txt: No such file or directory");
    let o = any4(&["quantize", "--model", &p("no-model"), "--out", &p("o")]);
    assert_one_line_error(&o, "no-model: no such file or folder");
    assert!(
        !d.join("o").exists(),
        "a failed quantize left its output folder"
    );

    // Empty files.
    std::fs::write(d.join("empty.safetensors"), b"").unwrap();
    assert_one_line_error(
        &any4(&["inspect", &p("empty.safetensors")]),
        "empty.safetensors: not a valid safetensors file",
    );
    hf_copy(&d.join("empty-config"), |_| {});
    std::fs::write(d.join("empty-config/config.json"), b"").unwrap();
    assert_one_line_error(&eval(&p("empty-config")), "empty-config/config.json: EOF");
    hf_copy(&d.join("empty-tok"), |_| {});
    std::fs::write(d.join("empty-tok/tokenizer.json"), b"").unwrap();
    assert_one_line_error(&eval(&p("empty-tok")), "empty-tok/tokenizer.json");
    hf_copy(&d.join("empty-weights"), |_| {});
    std::fs::write(d.join("empty-weights/model.safetensors"), b"").unwrap();
    assert_one_line_error(
        &eval(&p("empty-weights")),
        "empty-weights/model.safetensors",
    );

    // Truncated files.
    std::fs::write(d.join("cut.safetensors"), &ckpt[..ckpt.len() / 2]).unwrap();
    assert_one_line_error(
        &any4(&["inspect", &p("cut.safetensors")]),
        "cut.safetensors:",
    );
    hf_copy(&d.join("cut-hf"), |_| {});
    let w = std::fs::read(d.join("cut-hf/model.safetensors")).unwrap();
    std::fs::write(d.join("cut-hf/model.safetensors"), &w[..w.len() - 1000]).unwrap();
    assert_one_line_error(&eval(&p("cut-hf")), "cut-hf/model.safetensors");
    std::fs::write(d.join("cut.gguf"), b"GGUF\x03\x00\x00\x00\x01").unwrap();
    assert_one_line_error(&eval(&p("cut.gguf")), "cut.gguf: truncated");
    let cfg = std::fs::read(tiny_llama().join("config.json")).unwrap();
    hf_copy(&d.join("cut-config"), |_| {});
    std::fs::write(d.join("cut-config/config.json"), &cfg[..cfg.len() / 2]).unwrap();
    assert_one_line_error(&eval(&p("cut-config")), "cut-config/config.json: EOF");

    // A tokenizer.json the tokenizers crate panics on (fuzz finding): still one line, status 1.
    hf_copy(&d.join("tok-panic"), |_| {});
    let fixture = "../any4-llm/tests/fixtures/fuzz/tokenizer-decoder-panic.json";
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture),
        d.join("tok-panic/tokenizer.json"),
    )
    .unwrap();
    assert_one_line_error(
        &eval(&p("tok-panic")),
        "tok-panic/tokenizer.json: the tokenizers library failed on this input",
    );

    // Wrong magic / not the expected kind of file.
    std::fs::write(d.join("magic.gguf"), b"GGUX\x03\x00\x00\x00").unwrap();
    assert_one_line_error(&eval(&p("magic.gguf")), "magic.gguf: not a GGUF file");
    assert_one_line_error(
        &any4(&["inspect", &p("magic.gguf")]),
        "magic.gguf: not a valid",
    );
    std::fs::create_dir_all(d.join("dir.safetensors")).unwrap();
    // A folder is read as an any4 folder: its checkpoint file is named.
    assert_one_line_error(
        &any4(&["inspect", &p("dir.safetensors")]),
        "dir.safetensors/model.safetensors: No such file",
    );

    // Wrong dtype, wrong shape.
    hf_copy(&d.join("dtype"), |t| {
        t.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap().1 = safetensors::Dtype::I32;
    });
    assert_one_line_error(
        &eval(&p("dtype")),
        "`model.norm.weight` has unsupported dtype I32",
    );
    hf_copy(&d.join("shape"), |t| {
        let up = t
            .iter_mut()
            .find(|t| t.0 == "model.layers.0.mlp.up_proj.weight")
            .unwrap();
        up.2.reverse();
    });
    assert_one_line_error(
        &eval(&p("shape")),
        "`model.layers.0.mlp.up_proj.weight` has shape [128, 384], expected [384, 128]",
    );
    // An any4 folder whose config.json describes another model than its checkpoint.
    copy_dir(any4_fixture(), &d.join("other-config"));
    let wider = String::from_utf8(cfg.clone())
        .unwrap()
        .replace("\"intermediate_size\": 384", "\"intermediate_size\": 512");
    std::fs::write(d.join("other-config/config.json"), wider).unwrap();
    assert_one_line_error(&eval(&p("other-config")), "other-config");

    // Invalid config values and unsupported architectures.
    hf_copy(&d.join("heads"), |_| {});
    let zero_heads = String::from_utf8(cfg.clone())
        .unwrap()
        .replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 0");
    std::fs::write(d.join("heads/config.json"), zero_heads).unwrap();
    assert_one_line_error(
        &eval(&p("heads")),
        "heads: invalid config: head counts must be positive",
    );
    hf_copy(&d.join("arch"), |_| {});
    let gpt2 = String::from_utf8(cfg.clone())
        .unwrap()
        .replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(d.join("arch/config.json"), gpt2).unwrap();
    assert_one_line_error(&eval(&p("arch")), "unsupported model `GPT2LMHeadModel`");

    // NaN / Inf weights: refused before calibration, naming the tensor; nothing is written.
    hf_copy(&d.join("nan"), |t| {
        poke(
            t,
            "model.layers.2.mlp.up_proj.weight",
            5 * 128 + 7,
            f32::NAN,
        )
    });
    let o = any4(&["quantize", "--model", &p("nan"), "--out", &p("nan-out")]);
    assert_one_line_error(
        &o,
        "tensor `layers.2.mlp.up_proj.weight` has a non-finite value (NaN) at row 5, column 7",
    );
    assert!(!d.join("nan-out").exists());
    hf_copy(&d.join("inf"), |t| {
        poke(t, "model.embed_tokens.weight", 130, f32::INFINITY)
    });
    let o = quantize(p("inf"), p("inf-out"), &["--format", "int4"]);
    assert_one_line_error(
        &o,
        "`embed_tokens.weight` has a non-finite value (inf) at row 1, column 2",
    );
    assert_one_line_error(&eval(&p("inf")), "inf: tensor `embed_tokens.weight`");

    // An unwritable output folder. Tests run as root, for whom a read-only mode does not stop
    // writes, so the honest stand-in is a path that cannot be a folder: its parent is a file.
    std::fs::write(d.join("file"), b"x").unwrap();
    let o = quantize(tiny_llama(), p("file/out"), &[]);
    assert_one_line_error(&o, "file/out: cannot create the output folder: ");
    assert!(
        stderr(&o).contains("file is not a folder"),
        "{}",
        stderr(&o)
    );

    // A backend that is not compiled in.
    let o = any4(&["inspect", &p("x"), "--backend", "cuda"]);
    assert_one_line_error(&o, "backend `cuda` is not compiled in");

    // More usage errors: unknown names and sizes are refused by the parser (status 2).
    for (flag, value, needle) in [
        ("--dtype", "f8", "unknown dtype `f8`"),
        ("--kmeans", "kmedoids", "unknown k-means solver `kmedoids`"),
        ("--group-size", "0", "unsupported group size 0"),
        ("--group-size", "many", "many"),
    ] {
        let o = any4(&["quantize", "--model", "m", "--out", "o", flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{flag} {value}: {}",
            stderr(&o)
        );
    }
    let o = any4(&["eval", "--model", "m", "--dataset", "wikitext9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown dataset `wikitext9`"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// `any4 inspect … | head -1`: a reader that closes the pipe is not a crash.
#[test]
fn closed_stdout_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_any4"))
        .args(["inspect", any4_fixture().to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

/// `any4 eval --json` perplexity of `model` on the first `windows` 256-token windows of `text`.
fn eval_ppl(model: &Path, text: &Path, windows: usize) -> f64 {
    let windows = windows.to_string();
    let o = any4(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--seq-len",
        "256",
        "--max-windows",
        &windows,
        "--json",
    ]);
    assert!(o.status.success(), "eval failed: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("eval --json is JSON");
    v["ppl"].as_f64().expect("ppl")
}

/// `--stream` writes what the in-memory `quantize` writes (one-shot and sequential), and a
/// `--max-memory` below the streaming peak is refused before anything is written.
#[test]
fn streamed_quantize_matches_in_memory_and_respects_max_memory() {
    let root = scratch("stream");
    let model = tiny_llama();
    let m = model.to_str().unwrap();
    for sequential in [false, true] {
        let (memory, stream) = (root.join("memory"), root.join("stream"));
        let _ = std::fs::remove_dir_all(&memory);
        let _ = std::fs::remove_dir_all(&stream);
        // The first block only: debug builds are slow.
        let mut args = vec!["quantize", "--model", m, "--calib-tokens", "64"];
        for skip in [
            "layers.1*",
            "layers.2*",
            "layers.3*",
            "layers.4*",
            "layers.5*",
        ] {
            args.extend(["--skip", skip]);
        }
        if sequential {
            args.push("--sequential");
        }
        let run = |out: &Path, extra: &[&str]| {
            let mut a = args.clone();
            a.extend(["--out", out.to_str().unwrap()]);
            a.extend(extra);
            let o = any4(&a);
            assert!(o.status.success(), "quantize {extra:?}: {}", stderr(&o));
            stdout(&o)
        };
        run(&memory, &[]);
        let text = run(&stream, &["--stream"]);
        assert!(text.contains("streamed"), "{text}");
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            assert!(
                std::fs::read(memory.join(f)).unwrap() == std::fs::read(stream.join(f)).unwrap(),
                "{f} differs (sequential: {sequential})"
            );
        }
    }
    let refused = root.join("refused");
    let o = quantize(m, &refused, &["--stream", "--max-memory", "1M"]);
    assert_one_line_error(&o, "over --max-memory");
    assert!(!refused.exists());
    let o = quantize(m, &refused, &["--max-memory", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Streaming needs safetensors: a GGUF file is refused with the reason.
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-gguf");
    let file = std::fs::read_dir(&gguf)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        .expect("a GGUF fixture");
    let o = quantize(&file, &refused, &["--stream"]);
    assert_one_line_error(&o, "--stream needs an HF folder");
    std::fs::remove_dir_all(&root).unwrap();
}

/// `any4 import` of the GPTQ fixture, then the other commands read the result; errors are one
/// line naming the problem.
#[test]
fn import_gptq_then_inspect_and_eval() {
    let root = scratch("import");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../any4-llm/tests/fixtures/int4");
    let out = root.join("gptq-any4");
    let src = fixture.join("gptq-tiny");
    let o = any4(&[
        "import",
        "--from",
        "gptq",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "import: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("import --json is JSON");
    assert_eq!(v["layers"], 7);
    let o = any4(&["inspect", out.to_str().unwrap()]);
    assert!(
        o.status.success() && stdout(&o).contains("int4"),
        "{}",
        stdout(&o)
    );
    let text = root.join("words.txt");
    std::fs::write(&text, "w3 w4 w5 w6 w7 w8 w9 w10 ".repeat(8)).unwrap();
    let o = any4(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--seq-len",
        "16",
        "--json",
    ]);
    assert!(o.status.success(), "eval: {}", stderr(&o));
    let o = any4(&[
        "import",
        "--from",
        "awq",
        "--model",
        src.to_str().unwrap(),
        "--out",
        root.join("x").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "quant_method is `gptq`");
    // An output folder holding someone's files is never replaced.
    let busy = root.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let o = any4(&[
        "import",
        "--from",
        "gptq",
        "--model",
        src.to_str().unwrap(),
        "--out",
        busy.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "is not an any4 checkpoint folder");
    assert!(busy.join("notes.txt").is_file());
    std::fs::remove_dir_all(&root).unwrap();
}
