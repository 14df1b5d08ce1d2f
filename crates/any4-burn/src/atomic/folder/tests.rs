//! The output-folder rules: inputs protected (symbolic links followed), foreign folders refused
//! unless forced (and then kept), checkpoints replaced whole, failures and killed writers
//! leaving the old folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("any4-outdir-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch");
    d
}

/// A header-only safetensors file tagged as an any4 checkpoint (what `state` looks at).
fn checkpoint_bytes(tag: &str) -> Vec<u8> {
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "any4".to_string()),
        ("note".to_string(), tag.to_string()),
    ]);
    let none: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    safetensors::serialize(none, Some(meta)).expect("serialize")
}

/// Write a complete fake checkpoint folder whose three files all carry `tag`.
fn fill_checkpoint(dir: &Path, tag: &str) -> Result<()> {
    let w = |name: &str, bytes: &[u8]| super::super::write_file_atomically(&dir.join(name), bytes);
    w("model.safetensors", &checkpoint_bytes(tag))?;
    w("config.json", tag.as_bytes())?;
    w("tokenizer.json", tag.as_bytes())
}

/// Name → bytes of every entry of `dir` (sub-folders marked as such).
fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap_or_else(|_| b"<folder>".to_vec());
            (name, bytes)
        })
        .collect()
}

fn err(r: Result<OutputDir>) -> String {
    r.expect_err("refused").to_string()
}

#[test]
fn a_new_folder_is_written_whole_and_leaves_no_temporary() {
    let root = scratch("new");
    let out = root.join("a/b/out");
    let dir = check_output_dir(&out, &[], false).expect("allowed");
    assert!(!out.exists(), "checking must not create anything");
    assert!(!dir.replaces_checkpoint());
    dir.write(|d| fill_checkpoint(d, "new")).expect("write");
    assert_eq!(listing(&out)["config.json"], b"new");
    assert_eq!(
        listing(&root.join("a/b")).keys().collect::<Vec<_>>(),
        ["out"]
    );
    std::fs::remove_dir_all(root).expect("cleanup");
}

/// `--out M`, `M/`, `M/../M`, a symbolic link to `M`, a folder above `M`, or the folder of a
/// GGUF input: all would replace the input, all are refused; a folder inside the input is not.
#[test]
fn outputs_that_are_or_contain_an_input_are_refused() {
    let root = scratch("input");
    let model = root.join("models/m");
    std::fs::create_dir_all(&model).expect("mkdir");
    std::fs::write(model.join("config.json"), b"{}").expect("write");
    let gguf = root.join("models/x.gguf");
    std::fs::write(&gguf, b"GGUF").expect("write");
    let link = root.join("link");
    std::os::unix::fs::symlink(&model, &link).expect("symlink");
    let inputs: [&Path; 2] = [&model, &gguf];
    for out in [
        model.clone(),
        PathBuf::from(format!("{}/", model.display())),
        model.join("../m"),
        link.clone(),
    ] {
        let e = err(check_output_dir(&out, &inputs, true));
        assert!(e.contains("is the input"), "{}: {e}", out.display());
    }
    for out in [root.join("models"), root.clone(), link.join("..")] {
        let e = err(check_output_dir(&out, &inputs, true));
        assert!(e.contains("contains the input"), "{}: {e}", out.display());
    }
    check_output_dir(&model.join("quantized"), &inputs, false).expect("inside the input is fine");
    std::fs::remove_dir_all(root).expect("cleanup");
}

/// A folder that is not an any4 checkpoint (an HF model, a home folder) is refused, naming what
/// it holds; forced, the three files are written into it and everything else stays.
#[test]
fn foreign_folders_are_refused_unless_forced_and_then_kept() {
    let root = scratch("foreign");
    let out = root.join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("notes.txt"), b"mine").expect("write");
    std::fs::write(out.join("config.json"), b"user config").expect("write");
    let e = err(check_output_dir(&out, &[], false));
    assert!(
        e.contains("not an any4 checkpoint folder") && e.contains("notes.txt"),
        "{e}"
    );
    // An HF model folder (a safetensors file without the any4 tag) is foreign too.
    let hf = root.join("hf");
    std::fs::create_dir_all(&hf).expect("mkdir");
    std::fs::write(hf.join("model.safetensors"), b"\x08\0\0\0\0\0\0\0{}      ").expect("write");
    let e = err(check_output_dir(&hf, &[], false));
    assert!(e.contains("not an any4 checkpoint"), "{e}");

    let dir = check_output_dir(&out, &[], true).expect("forced");
    dir.write(|d| fill_checkpoint(d, "new")).expect("write");
    let after = listing(&out);
    assert_eq!(after["notes.txt"], b"mine");
    assert_eq!(after["config.json"], b"new");
    assert_eq!(after.len(), 4, "{:?}", after.keys());
    std::fs::remove_dir_all(root).expect("cleanup");
}

/// An existing checkpoint folder (or an empty one) is replaced whole: files the new one does
/// not write are gone; a failing write leaves the old folder byte for byte and no temporary.
#[test]
fn checkpoints_are_replaced_whole_and_failures_leave_the_old_one() {
    let root = scratch("replace");
    let out = root.join("out");
    check_output_dir(&out, &[], false)
        .expect("new")
        .write(|d| fill_checkpoint(d, "old"))
        .expect("first");
    let old = listing(&out);
    let dir = check_output_dir(&out, &[], false).expect("a checkpoint may be replaced");
    assert!(dir.replaces_checkpoint());
    let failed = dir.write(|d| {
        fill_checkpoint(d, "new")?;
        Err::<(), _>(Error::Data("injected failure".into()))
    });
    assert!(failed.is_err());
    assert_eq!(listing(&out), old);
    assert_eq!(listing(&root).keys().collect::<Vec<_>>(), ["out"]);

    dir.write(|d| {
        super::super::write_file_atomically(&d.join("model.safetensors"), &checkpoint_bytes("n"))
    })
    .expect("replace");
    assert_eq!(
        listing(&out).keys().collect::<Vec<_>>(),
        ["model.safetensors"]
    );
    assert_eq!(listing(&root).keys().collect::<Vec<_>>(), ["out"]);

    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    check_output_dir(&empty, &[], false)
        .expect("an empty folder is fine")
        .write(|d| fill_checkpoint(d, "e"))
        .expect("write");
    assert_eq!(listing(&empty).len(), 3);
    std::fs::remove_dir_all(root).expect("cleanup");
}

/// A file at the output, a file as a parent, a link to nowhere: one clear error each.
#[test]
fn impossible_outputs_fail_before_any_work() {
    let root = scratch("impossible");
    let file = root.join("file");
    std::fs::write(&file, b"x").expect("write");
    assert!(err(check_output_dir(&file, &[], true)).contains("is a file"));
    let e = err(check_output_dir(&file.join("out"), &[], true));
    assert!(e.contains("is not a folder"), "{e}");
    let dangling = root.join("dangling");
    std::os::unix::fs::symlink(root.join("nowhere"), &dangling).expect("symlink");
    let e = err(check_output_dir(&dangling, &[], true));
    assert!(e.contains("symbolic link"), "{e}");
    std::fs::remove_dir_all(root).expect("cleanup");
}

/// A killed writer's temporary folder is removed by the next write to the same place; a
/// two-rename swap killed half-way (old folder parked as `.out.<pid>.old`, nothing at `out`) is
/// put back first. (No process has pid `u32::MAX - 1`: Linux pids stay below 2^22.)
#[test]
fn killed_writers_leftovers_are_cleaned_or_restored() {
    if !Path::new("/proc/self").exists() {
        return; // Without /proc a writer's liveness is unknown and its files are kept.
    }
    let root = scratch("leftovers");
    let out = root.join("out");
    let dead = u32::MAX - 1;
    let stale = root.join(format!(".out.{dead}.0.tmp"));
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join("model.safetensors"), b"partial").expect("write");
    // The parked old folder of a killed two-rename swap.
    let parked = root.join(format!(".out.{dead}.old"));
    std::fs::create_dir_all(&parked).expect("mkdir");
    fill_checkpoint(&parked, "old").expect("fill");
    let unrelated = root.join(".other.1.tmp");
    std::fs::create_dir_all(&unrelated).expect("mkdir");

    let dir = check_output_dir(&out, &[], false).expect("allowed");
    // The first write finds the parked folder, puts it back, then replaces it.
    dir.write(|d| {
        assert_eq!(
            listing(&out)["config.json"],
            b"old",
            "restored before the swap"
        );
        fill_checkpoint(d, "new")
    })
    .expect("write");
    assert_eq!(listing(&out)["config.json"], b"new");
    let left: Vec<String> = listing(&root).into_keys().collect();
    assert_eq!(left, [".other.1.tmp", "out"]);
    std::fs::remove_dir_all(root).expect("cleanup");
}

/// The atomic swap itself: on Linux (and this file system) `renameat2(RENAME_EXCHANGE)` is
/// available, so the two-rename fallback and its window are not what runs here.
#[cfg(target_os = "linux")]
#[test]
fn folders_trade_places_atomically() {
    let root = scratch("exchange");
    let (a, b) = (root.join("a"), root.join("b"));
    for (d, tag) in [(&a, "a"), (&b, "b")] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::write(d.join("tag"), tag).expect("write");
    }
    rename_exchange(&a, &b).expect("RENAME_EXCHANGE");
    assert_eq!(std::fs::read(a.join("tag")).expect("read"), b"b");
    assert_eq!(std::fs::read(b.join("tag")).expect("read"), b"a");
    std::fs::remove_dir_all(root).expect("cleanup");
}
