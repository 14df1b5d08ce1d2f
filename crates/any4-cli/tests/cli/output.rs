//! Never lose the user's files: `quantize` and `dequantize` refuse an output that is (or
//! contains) their input, refuse a foreign folder unless `--force` (then keep its other files),
//! replace an any4 folder whole, say plainly when the input is quantized already, and a kill at
//! any moment leaves the old folder or the new one whole.

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    any4, any4_fixture, assert_one_line_error, copy_dir, quantize, scratch, stderr, tiny_llama,
};

/// Name → bytes of every file of `dir` (not recursive).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Entries of `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `quantize --model M --out X` for each X that is M or holds M (as given, with a trailing
/// slash, through `..`, through a symbolic link, its parent); `dequantize` the same; `--force`
/// changes nothing. M is byte-for-byte intact afterwards and nothing was created.
#[test]
fn outputs_that_would_replace_the_input_are_refused() {
    let d = scratch("same");
    let model = d.join("m");
    copy_dir(&tiny_llama(), &model);
    let before = files(&model);
    std::os::unix::fs::symlink(&model, d.join("link")).unwrap();
    let m = model.to_str().unwrap().to_string();
    let cases = [
        (m.clone(), "is the input"),
        (format!("{m}/"), "is the input"),
        (format!("{m}/../m"), "is the input"),
        (d.join("link").to_str().unwrap().to_string(), "is the input"),
        (d.to_str().unwrap().to_string(), "contains the input"),
    ];
    for (out, needle) in &cases {
        for cmd in ["quantize", "dequantize"] {
            for force in [false, true] {
                let mut args = vec![cmd, "--model", &m, "--out", out];
                if force {
                    args.push("--force");
                }
                assert_one_line_error(&any4(&args), needle);
            }
        }
    }
    // A GGUF input: its folder would be replaced whole.
    let gguf_dir = d.join("g");
    std::fs::create_dir_all(&gguf_dir).unwrap();
    let gguf = gguf_dir.join("q8.gguf");
    std::fs::copy(tiny_llama().join("../tiny-gguf/tiny-gguf-q8_0.gguf"), &gguf).unwrap();
    let o = quantize(&gguf, &gguf_dir, &["--force"]);
    assert_one_line_error(&o, "contains the input");
    // The calibration text is an input too.
    let o = any4(&[
        "quantize",
        "--model",
        &m,
        "--calib-file",
        model.join("heldout.txt").to_str().unwrap(),
        "--out",
        &m,
    ]);
    assert_one_line_error(&o, "is the input");
    assert_eq!(files(&model), before, "the input changed");
    assert_eq!(names(&d), ["g", "link", "m"]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// An existing folder that is not an any4 checkpoint (here: another model, plus a note) is
/// refused naming what it holds; with `--force` the checkpoint's three files are written into
/// it and the note stays.
#[test]
fn foreign_folders_need_force_and_keep_their_other_files() {
    let d = scratch("foreign");
    let other = d.join("other");
    copy_dir(&tiny_llama(), &other);
    std::fs::write(other.join("notes.txt"), b"keep me").unwrap();
    let before = files(&other);
    let args = |force: bool| {
        let mut v = vec![
            "quantize".to_string(),
            "--model".into(),
            tiny_llama().to_str().unwrap().into(),
            "--out".into(),
            other.to_str().unwrap().into(),
            "--format".into(),
            "int4".into(),
            "--calib-tokens".into(),
            "8".into(),
        ];
        if force {
            v.push("--force".into());
        }
        v
    };
    let run = |force| {
        let a = args(force);
        any4(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(false);
    assert_one_line_error(&o, "is not an any4 checkpoint folder");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(files(&other), before, "a refused run changed the folder");

    let o = run(true);
    assert!(o.status.success(), "forced quantize failed: {}", stderr(&o));
    let after = files(&other);
    assert_eq!(after["notes.txt"], b"keep me");
    assert_eq!(after["heldout.txt"], before["heldout.txt"]);
    assert_ne!(after["model.safetensors"], before["model.safetensors"]);
    assert!(any4_burn::is_any4_checkpoint(
        &other.join("model.safetensors")
    ));
    std::fs::remove_dir_all(&d).unwrap();
}

/// Quantizing onto an any4 folder replaces it whole (a file only the old folder had is gone,
/// no temporary is left beside it); quantizing an any4 folder says it is quantized already;
/// `inspect --json` gives every layer's bytes and bits per weight.
#[test]
fn any4_folders_are_replaced_whole_and_not_requantized() {
    let d = scratch("replace");
    let out = d.join("out");
    copy_dir(any4_fixture(), &out);
    let o = quantize(any4_fixture(), &out, &[]);
    assert_one_line_error(&o, "already quantized (42 layers in int4, group 128)");
    assert!(stderr(&o).contains("any4 dequantize"), "{}", stderr(&o));

    let o = quantize(
        tiny_llama(),
        &out,
        &["--format", "nf4", "--calib-tokens", "8"],
    );
    assert!(o.status.success(), "quantize failed: {}", stderr(&o));
    assert_eq!(
        names(&out),
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    assert_eq!(names(&d), ["out"], "a temporary was left beside the folder");

    let o = any4(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "inspect failed: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let layers = v["layers"].as_object().expect("layers");
    assert_eq!(layers.len(), 42);
    let mut sum = 0;
    for (path, l) in layers {
        let bytes = l["bytes"].as_u64().unwrap_or_else(|| panic!("{path}: {l}"));
        let bpw = l["bits_per_weight"].as_f64().expect("bits_per_weight");
        let [n, k] = [
            l["shape"][0].as_u64().unwrap(),
            l["shape"][1].as_u64().unwrap(),
        ];
        // nf4: 4-bit codes, f16 scale and zero per 128 inputs, one shared 16-entry table.
        let expect = 4.0 + (2.0 * (n * k.div_ceil(128)) as f64 + 16.0) * 16.0 / (n * k) as f64;
        assert!((bpw - expect).abs() < 1e-9, "{path}: {bpw} vs {expect}");
        // Stored: codes (k/8 words per row), the table, scales, zeros; no biases here.
        let stored = n * k.div_ceil(8) * 4 + 16 * 2 + 2 * n * k.div_ceil(128) * 2;
        assert_eq!(bytes, stored, "{path}");
        sum += bytes;
    }
    assert_eq!(v["quantized_bytes"].as_u64(), Some(sum));
    assert!(
        v["bits_per_weight"]
            .as_f64()
            .is_some_and(|b| b > 4.0 && b < 5.0),
        "{v}"
    );
    assert!(v["file_bytes"].as_u64().is_some_and(|f| f > sum));
    std::fs::remove_dir_all(&d).unwrap();
}

/// `quantize` SIGKILLed at several points onto a folder holding an any4 checkpoint: afterwards
/// the folder is the old one byte for byte or a complete new one (its `config.json` describes
/// its `model.safetensors`), and it loads; the temporary folders a killed writer leaves beside
/// it are never read, and the next run removes them.
#[test]
fn killed_quantize_leaves_the_old_or_the_new_folder_whole() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let root = scratch("kill");
    let dir = root.join("out");
    copy_dir(any4_fixture(), &dir);
    let old = files(&dir);
    // The new checkpoint differs: nf4, MLPs left dense.
    let model = tiny_llama();
    let args = [
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--format",
        "nf4",
        "--calib-tokens",
        "2",
        "--skip",
        "*mlp*",
    ];
    // Temporary folders beside `out` (`.out.<pid>.<n>.tmp`).
    let temporaries = || -> Vec<String> {
        names(&root)
            .into_iter()
            .filter(|n| n.starts_with(".out."))
            .collect()
    };
    // (wait for the child to start writing first?, then wait this long); None = let it finish.
    // A kill at once (before any write: the old folder must stay), one during loading or
    // calibration, two while the folder is being written, and a run to the end.
    let plan = [
        (false, Some(0)),
        (false, Some(300)),
        (true, Some(0)),
        (true, Some(40)),
        (true, None),
    ];
    let (mut mid_write, mut saw_old, mut saw_new) = (0, 0, 0);
    for (wait_for_tmp, delay_ms) in plan {
        let mut child = Command::new(env!("CARGO_BIN_EXE_any4"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // This child's temporary folder beside `out` (or, were it writing in place, its
        // temporary files inside `out`); earlier kills left their own.
        let (tag, file_tag) = (format!(".out.{}.", child.id()), format!(".{}.", child.id()));
        let writing = || {
            temporaries().iter().any(|t| t.starts_with(&tag))
                || names(&dir)
                    .iter()
                    .any(|t| t.contains(&file_tag) && t.ends_with(".tmp"))
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        if wait_for_tmp {
            while !writing() && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "quantize never started writing");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        match delay_ms {
            Some(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                let _ = child.kill(); // SIGKILL; an error means it had already exited
                let _ = child.wait();
                mid_write += usize::from(writing());
            }
            None => {
                assert!(child.wait().unwrap().success());
                assert_eq!(
                    temporaries(),
                    Vec::<String>::new(),
                    "stale temporaries kept"
                );
            }
        }
        let now = files(&dir);
        if now == old {
            saw_old += 1;
        } else {
            assert_eq!(
                now.keys().collect::<Vec<_>>(),
                ["config.json", "model.safetensors", "tokenizer.json"]
            );
            let ckpt = any4_burn::Checkpoint::open(&dir.join("model.safetensors")).unwrap();
            let formats: Vec<String> = ckpt
                .config()
                .layers
                .values()
                .map(|l| l.config.format().to_string())
                .collect();
            assert!(
                formats.len() == 24 && formats.iter().all(|f| f == "nf4"),
                "{formats:?}"
            );
            let config: serde_json::Value =
                serde_json::from_slice(&now["config.json"]).expect("config.json");
            assert_eq!(
                config["quantization_config"],
                serde_json::to_value(ckpt.config()).unwrap(),
                "config.json does not describe the checkpoint beside it"
            );
            assert_eq!(now["tokenizer.json"], old["tokenizer.json"]);
            saw_new += 1;
        }
        any4_llm::load_auto(&dir, &burn::tensor::Device::flex())
            .unwrap_or_else(|e| panic!("folder does not load after kill ({delay_ms:?} ms): {e}"));
    }
    eprintln!(
        "{mid_write} kills left a temporary folder; folder after: old {saw_old}, new {saw_new}"
    );
    assert!(
        mid_write >= 1,
        "no kill landed while a temporary folder existed"
    );
    assert!(saw_old >= 1 && saw_new >= 1, "old {saw_old}, new {saw_new}");
    std::fs::remove_dir_all(&root).unwrap();
}
