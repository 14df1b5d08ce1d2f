//! `cargo xtask gpu-kit kernels|decode`: the GPU check, packed for a device machine that has
//! CUDA but no Rust toolchain (docs/BUILD.md).
//!
//! One release build here (CubeCL's C++ backend: NVRTC compiles the kernels on the device)
//! gives the CUDA kernel and Cube-route test binaries and the `kernels` / `decode` benches, in
//! one `cargo test --no-run` so the features unify and nothing is built twice (12–40 min on this
//! shared machine; the second part reuses it). Binaries are stripped and `xz -9`'d into
//! `target/gpu-kit/bin` with `bench/gpu/run.sh`; a device call carries at most 64 MiB, so the kit
//! comes in two parts, one device call each:
//! - `kernels`: both test binaries, the kernels bench, the anchors (`anchors.py`, `probe.py`);
//! - `decode`: the decode bench, the embedded tiny model, `decode_anchor.py`.
//!
//! On the device: `bash target/gpu-kit/run.sh` (results under `$OUT`).

use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T> = std::result::Result<T, String>;

const KIT: &str = "target/gpu-kit";
/// The device tool carries at most 64 MiB per call; leave room for the checkout itself.
const MAX_KIT_BYTES: u64 = 60 << 20;

/// Build and pack one part of the kit: `kernels` or `decode`.
pub fn kit(part: &str) -> Result<()> {
    if !matches!(part, "kernels" | "decode") {
        return Err(format!("part `{part}`: expected `kernels` or `decode`"));
    }
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let shim = root.join(".ci/llvm-shim");
    if !shim.exists() {
        return Err("no .ci/llvm-shim: run `bash .ci/setup-kernel-runtimes.sh` first".into());
    }
    let env = [
        ("XDG_DATA_HOME", shim.display().to_string()),
        (
            "CUDARC_CUDA_VERSION",
            std::env::var("CUDARC_CUDA_VERSION").unwrap_or_else(|_| "13000".into()),
        ),
        (
            "CARGO_TARGET_DIR",
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target-cuda".into()),
        ),
    ];
    // Burn's autotuned dense kernels in the bench baseline, where the workspace offers them.
    let manifest = std::fs::read_to_string("Cargo.toml").map_err(|e| e.to_string())?;
    let mut features = "any4-kernels/cuda,any4-burn/cuda,burn-any4/cuda".to_string();
    if manifest
        .lines()
        .any(|l| l.trim_start().starts_with("autotune ="))
    {
        features.push_str(",burn-any4/autotune");
    }
    let built = cargo_executables(
        &[
            "test",
            "--release",
            "--locked",
            "--no-run",
            "-p",
            "any4-kernels",
            "-p",
            "any4-burn",
            "-p",
            "burn-any4",
            "--features",
            &features,
            "--test",
            "kernels",
            "--test",
            "burn",
            "--bench",
            "kernels",
            "--bench",
            "decode",
        ],
        &env,
    )?;
    let kit = Path::new(KIT);
    let _ = std::fs::remove_dir_all(kit);
    let bin = kit.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut packed = Vec::new();
    for (pkg, kind, target, exe) in built {
        let name = match (kind.as_str(), target.as_str()) {
            ("test", _) if part == "kernels" => format!("test-{pkg}-{target}"),
            ("bench", "kernels") if part == "kernels" => "bench-kernels".to_string(),
            ("bench", "decode") if part == "decode" => "bench-decode".to_string(),
            _ => continue,
        };
        packed.push(pack(&exe, &bin.join(name))?);
    }
    copy(Path::new("bench/gpu/run.sh"), &kit.join("run.sh"))?;
    let scripts: &[&str] = if part == "kernels" {
        &["anchors.py", "probe.py"]
    } else {
        &["decode_anchor.py"]
    };
    for s in scripts {
        copy(&Path::new("bench/gpu").join(s), &kit.join(s))?;
    }
    if part == "decode" {
        let model = kit.join("models/tiny-llama");
        std::fs::create_dir_all(&model).map_err(|e| format!("{}: {e}", model.display()))?;
        for entry in std::fs::read_dir("models/tiny-llama").map_err(|e| e.to_string())? {
            let p = entry.map_err(|e| e.to_string())?.path();
            if p.is_file() {
                copy(&p, &model.join(p.file_name().unwrap_or_default()))?;
            }
        }
    }
    for p in &packed {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "  {} ({:.1} MiB)",
            p.display(),
            size as f64 / (1 << 20) as f64
        );
    }
    let total = dir_bytes(kit);
    eprintln!(
        "xtask gpu-kit {part}: {} ({:.1} MiB); on the device: bash {KIT}/run.sh",
        kit.display(),
        total as f64 / (1 << 20) as f64
    );
    if total > MAX_KIT_BYTES {
        return Err(format!(
            "the kit is {:.1} MiB, over the {} MiB budget of a device call",
            total as f64 / (1 << 20) as f64,
            MAX_KIT_BYTES >> 20
        ));
    }
    Ok(())
}

/// Run a `cargo … --no-run` and return `(package dir name, target kind, target name,
/// executable)` of every test or bench binary it built (the crates' unit tests left out: they
/// touch no GPU).
fn cargo_executables(
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Vec<(String, String, String, PathBuf)>> {
    let mut cmd = Command::new("cargo");
    cmd.args(args)
        .arg("--message-format=json-render-diagnostics");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo {}` failed ({})",
            args.join(" "),
            out.status
        ));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let kind = v["target"]["kind"]
            .as_array()
            .and_then(|k| k.first())
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        if !matches!(kind.as_str(), "test" | "bench") {
            continue;
        }
        let (Some(exe), Some(target), Some(manifest)) = (
            v["executable"].as_str(),
            v["target"]["name"].as_str(),
            v["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let pkg = Path::new(manifest)
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push((pkg, kind, target.to_string(), PathBuf::from(exe)));
    }
    if found.is_empty() {
        return Err(format!(
            "`cargo {}` reported no executables",
            args.join(" ")
        ));
    }
    Ok(found)
}

/// Copy, strip and `xz -9` `exe` to `dest.xz`.
fn pack(exe: &Path, dest: &Path) -> Result<PathBuf> {
    copy(exe, dest)?;
    for (prog, args) in [
        ("strip", vec!["--strip-all"]),
        ("xz", vec!["-9", "-T2", "-f"]),
    ] {
        let ok = Command::new(prog)
            .args(&args)
            .arg(dest)
            .status()
            .map_err(|e| format!("cannot run {prog}: {e}"))?
            .success();
        if !ok {
            return Err(format!("{prog} {} failed", dest.display()));
        }
    }
    Ok(dest.with_file_name(format!(
        "{}.xz",
        dest.file_name().unwrap_or_default().to_string_lossy()
    )))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} → {}: {e}", from.display(), to.display()))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}
