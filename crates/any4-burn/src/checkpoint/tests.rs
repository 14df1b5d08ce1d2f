//! Interrupted, concurrent and non-finite saves and loads.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use any4_core::rng::SplitMix64;
use burn::tensor::Device;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;

use super::write::save_with;
use super::{Checkpoint, check_finite, save};
use crate::atomic::{temporary_pid, write_file_atomically, write_file_with};
use crate::error::Error;
use crate::linear::QLinear;
use crate::{QuantizeConfig, quantize_model};

#[derive(Module, Debug)]
struct Two {
    a: QLinear,
    b: QLinear,
}
crate::impl_qlinear_container!(Two { a, b });

fn two(seed: u64) -> Two {
    let device = Device::flex();
    let lin = |o: usize, i: usize, s: u64| {
        let mut r = SplitMix64::new(s);
        let v: Vec<f32> = (0..o * i).map(|_| r.next_f64() as f32 - 0.5).collect();
        QLinear::from_hf(Tensor::from_data(TensorData::new(v, [o, i]), &device), None)
    };
    Two {
        a: lin(32, 64, seed),
        b: lin(16, 32, seed + 1),
    }
}

fn quantized(seed: u64) -> Two {
    quantize_model(two(seed), &QuantizeConfig::default(), None)
        .expect("quantize")
        .0
}

/// A writer that accepts `budget` bytes, then fails like a full disk (or a killed write).
struct FailAfter {
    file: File,
    budget: Arc<AtomicUsize>,
}

impl Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.budget.load(Ordering::Relaxed);
        if left == 0 {
            return Err(std::io::Error::other("injected failure"));
        }
        let n = self.file.write(&buf[..buf.len().min(left)])?;
        self.budget.fetch_sub(n, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn fail_after(n: usize) -> impl Fn(File) -> Box<dyn Write> {
    move |file| {
        Box::new(FailAfter {
            file,
            budget: Arc::new(AtomicUsize::new(n)),
        })
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("any4-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A save that fails after N bytes, for N at every boundary of the format (length prefix,
/// header, tensor data, last byte), leaves the previous checkpoint byte-identical and
/// loadable, and no temporary file behind; with enough bytes it succeeds.
#[test]
fn interrupted_saves_leave_the_previous_checkpoint() {
    let dir = temp_dir("interrupt");
    let target = dir.join("model.safetensors");
    save(&mut quantized(1), &target).expect("first save");
    let old = std::fs::read(&target).expect("read");
    let mut new_model = quantized(7);
    let reference = dir.join("reference.safetensors");
    save(&mut new_model, &reference).expect("reference save");
    let new = std::fs::read(&reference).expect("read");
    std::fs::remove_file(&reference).expect("remove");
    assert_ne!(
        old, new,
        "the two checkpoints must differ for this test to mean anything"
    );
    let header = u64::from_le_bytes(new[..8].try_into().expect("8 bytes")) as usize;
    for n in [
        0,
        1,
        7,
        8,
        9,
        8 + header / 2,
        8 + header,
        9 + header,
        new.len() / 2,
        new.len() - 1,
    ] {
        let err = save_with(&mut new_model, &target, &fail_after(n))
            .expect_err("a failing writer must fail the save");
        assert!(
            err.to_string().contains("injected failure"),
            "N = {n}: {err}"
        );
        assert_eq!(std::fs::read(&target).expect("read"), old, "N = {n}");
        assert_eq!(entries(&dir), ["model.safetensors"], "N = {n}");
        Checkpoint::open(&target)
            .and_then(|c| c.load_into(two(99)))
            .unwrap_or_else(|e| panic!("N = {n}: previous checkpoint unreadable: {e}"));
    }
    save_with(&mut new_model, &target, &fail_after(new.len())).expect("exactly enough bytes");
    assert_eq!(std::fs::read(&target).expect("read"), new);

    let json = dir.join("config.json");
    write_file_atomically(&json, b"{\"old\": true}").expect("write");
    for n in [0, 1, 5] {
        assert!(write_file_with(&json, b"{\"new\": true}", &fail_after(n)).is_err());
        assert_eq!(std::fs::read(&json).expect("read"), b"{\"old\": true}");
    }
    assert_eq!(entries(&dir), ["config.json", "model.safetensors"]);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// A one-row layer in a learned format keeps its per-row table kind: the writer used to call a
/// one-row table "shared" (it looked at the table's row count), which the reader then refused
/// as not matching the format.
#[test]
fn one_row_learned_layers_round_trip() {
    let dir = temp_dir("one-row");
    let target = dir.join("model.safetensors");
    let device = Device::flex();
    let one_row = |s: u64| {
        let mut r = SplitMix64::new(s);
        let v: Vec<f32> = (0..64).map(|_| r.next_f64() as f32 - 0.5).collect();
        QLinear::from_hf(
            Tensor::from_data(TensorData::new(v, [1, 64]), &device),
            None,
        )
    };
    let model = Two {
        a: one_row(1),
        b: one_row(2),
    };
    let (mut model, _) = quantize_model(model, &QuantizeConfig::default(), None).expect("quantize");
    let meta = save(&mut model, &target).expect("save");
    assert!(
        meta.layers.values().all(|l| l.table == "per-row"),
        "{meta:?}"
    );
    let skeleton = Two {
        a: one_row(3),
        b: one_row(4),
    };
    Checkpoint::open(&target)
        .and_then(|c| c.load_into(skeleton))
        .expect("a one-row any4 checkpoint loads");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// Two threads of one process saving to the same path at once: every save succeeds and the
/// file is always one of the two complete checkpoints. (Temporaries used to be named by
/// pid only, so both threads wrote into one file and one rename found it gone.)
#[test]
fn concurrent_saves_in_one_process_do_not_collide() {
    let dir = temp_dir("concurrent-saves");
    let target = dir.join("model.safetensors");
    let mut models = [quantized(11), quantized(12)];
    let refs: Vec<Vec<u8>> = models
        .iter_mut()
        .enumerate()
        .map(|(i, m)| {
            let f = dir.join(format!("ref{i}"));
            save(m, &f).expect("save");
            let b = std::fs::read(&f).expect("read");
            std::fs::remove_file(f).expect("remove");
            b
        })
        .collect();
    let [a, b] = &mut models;
    std::thread::scope(|s| {
        for m in [a, b] {
            let target = &target;
            s.spawn(move || {
                for _ in 0..8 {
                    save(m, target).expect("every concurrent save succeeds");
                }
            });
        }
    });
    let now = std::fs::read(&target).expect("read");
    assert!(now == refs[0] || now == refs[1]);
    assert_eq!(entries(&dir), ["model.safetensors"]);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// Temporaries of writers that no longer run are removed by the next save; a live writer's
/// (this process's) and other files are kept.
#[test]
fn stale_temporaries_are_cleaned_up() {
    assert_eq!(
        temporary_pid(".model.safetensors.123.4.tmp", "model.safetensors"),
        Some(123)
    );
    assert_eq!(
        temporary_pid(".model.safetensors.77.tmp", "model.safetensors"),
        Some(77)
    );
    assert_eq!(
        temporary_pid(".config.json.77.0.tmp", "model.safetensors"),
        None
    );
    assert_eq!(
        temporary_pid("model.safetensors", "model.safetensors"),
        None
    );
    let dir = temp_dir("stale");
    let target = dir.join("model.safetensors");
    // No process has pid u32::MAX - 1 (Linux pids stay below 2^22).
    let stale = dir.join(format!(".model.safetensors.{}.0.tmp", u32::MAX - 1));
    let live = dir.join(format!(".model.safetensors.{}.999.tmp", std::process::id()));
    let other = dir.join(".notes.txt.1.tmp");
    for f in [&stale, &live, &other] {
        std::fs::write(f, b"partial").expect("write");
    }
    save(&mut quantized(3), &target).expect("save");
    assert_eq!(!stale.exists(), Path::new("/proc/self").exists());
    assert!(live.exists() && other.exists());
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// A NaN in a dense parameter refuses the save and names the tensor and position (in the
/// file's `[out, in]` layout); the same check is `check_finite`.
#[test]
fn non_finite_parameters_are_refused_by_name() {
    let dir = temp_dir("nan");
    let target = dir.join("model.safetensors");
    let mut model = two(5);
    let device = Device::flex();
    let mut w = vec![0.5f32; 16 * 32];
    w[3 * 32 + 9] = f32::NEG_INFINITY;
    model.b = QLinear::from_hf(
        Tensor::from_data(TensorData::new(w, [16, 32]), &device),
        None,
    );
    let err = save(&mut model, &target).expect_err("refused");
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "tensor `b.weight` has a non-finite value (-inf) at row 3, column 9"
    );
    assert!(!target.exists());
    assert_eq!(
        check_finite(&model).expect_err("refused").to_string(),
        err.to_string()
    );
    check_finite(&two(5)).expect("finite model");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// A stored NaN (a damaged file, or one written by another tool) is refused at load with
/// the file, the tensor and the position, instead of loading a model that outputs NaN.
#[test]
fn non_finite_stored_tensors_are_refused_at_load() {
    let dir = temp_dir("stored-nan");
    let file = dir.join("model.safetensors");
    save(&mut two(6), &file).expect("save");
    let mut bytes = std::fs::read(&file).expect("read");
    let start = {
        let st = SafeTensors::deserialize(&bytes).expect("valid");
        let t = st.tensor("a.weight").expect("present");
        t.data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    let at = start + 4 * (2 * 64 + 3);
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, &bytes).expect("write");
    let err = Checkpoint::open(&file)
        .and_then(|c| c.load_into(two(1)))
        .expect_err("refused")
        .to_string();
    assert!(
        err.ends_with(
            "model.safetensors: tensor `a.weight` has a non-finite value (NaN) at row 2, column 3"
        ),
        "{err}"
    );
    let err = Checkpoint::open(&dir)
        .err()
        .expect("a folder is refused")
        .to_string();
    assert!(err.contains("is a folder"), "{err}");
    std::fs::remove_dir_all(dir).expect("cleanup");
}
