//! `cargo xtask gpu-kit`: the GPU check of the kernels issue, packed for a device machine that has
//! CUDA but no Rust toolchain (docs/BUILD.md). Builds the CUDA kernel and Cube-route test
//! binaries and the `kernels` / `decode` benches here (release, NVRTC compiles the kernels on the device),
//! strips and xz-compresses them into `target/gpu-kit/bin`, and adds `bench/gpu/run.sh` and the
//! embedded tiny model. On the device: `bash target/gpu-kit/run.sh` (results under `$OUT`).
//!
//! All four binaries (~20 MiB each compressed) exceed what one device call carries, so the kit
//! is built in two parts, one device call each: `gpu-kit tests` (kernel and Cube-route
//! integration tests; the crates' own unit tests do not touch a GPU) and `gpu-kit benches`.

use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T> = std::result::Result<T, String>;

const KIT: &str = "target/gpu-kit";
/// The device tool carries at most 64 MiB per call; leave room for the model and the script.
const MAX_KIT_BYTES: u64 = 60 << 20;

/// Build and pack one part of the kit: `tests` or `benches`.
pub fn kit(part: &str) -> Result<()> {
    if !matches!(part, "tests" | "benches") {
        return Err(format!("part `{part}`: expected `tests` or `benches`"));
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
    let built = if part == "tests" {
        cargo_executables(
            &[
                "test",
                "--release",
                "--locked",
                "-p",
                "any4-kernels",
                "-p",
                "any4-burn",
                "--features",
                "any4-kernels/cuda,any4-burn/cuda",
                "--no-run",
            ],
            &env,
        )?
    } else {
        cargo_executables(
            &[
                "bench",
                "--locked",
                "-p",
                "burn-any4",
                "--bench",
                "kernels",
                "--bench",
                "decode",
                "--features",
                "cuda",
                "--no-run",
            ],
            &env,
        )?
    };
    let kit = Path::new(KIT);
    let _ = std::fs::remove_dir_all(kit);
    let bin = kit.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut packed = Vec::new();
    for (pkg, target, exe) in built {
        let name = if part == "tests" {
            format!("test-{pkg}-{target}")
        } else {
            format!("bench-{target}")
        };
        packed.push(pack(&exe, &bin.join(name))?);
    }
    copy(Path::new("bench/gpu/run.sh"), &kit.join("run.sh"))?;
    let model = kit.join("models/tiny-llama");
    std::fs::create_dir_all(&model).map_err(|e| format!("{}: {e}", model.display()))?;
    for entry in std::fs::read_dir("models/tiny-llama").map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.is_file() {
            copy(&p, &model.join(p.file_name().unwrap_or_default()))?;
        }
    }
    let total = dir_bytes(kit);
    for p in &packed {
        eprintln!("  {}", p.display());
    }
    eprintln!(
        "xtask gpu-kit {part}: {} ({:.1} MiB); on the device: bash {KIT}/run.sh",
        kit.display(),
        total as f64 / (1 << 20) as f64
    );
    if total > MAX_KIT_BYTES {
        return Err(format!(
            "the kit is {:.1} MiB, over the {} MiB a device call carries",
            total as f64 / (1 << 20) as f64,
            MAX_KIT_BYTES >> 20
        ));
    }
    Ok(())
}

/// Run a `cargo … --no-run` and return `(package dir name, target name, executable)` of every
/// test or bench binary it built.
fn cargo_executables(
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Vec<(String, String, PathBuf)>> {
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
        // The crates' unit tests (`lib` targets) run on no GPU: leave them out.
        let is_lib = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "lib"));
        if is_lib {
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
        found.push((pkg, target.to_string(), PathBuf::from(exe)));
    }
    if found.is_empty() {
        return Err(format!(
            "`cargo {}` reported no executables",
            args.join(" ")
        ));
    }
    Ok(found)
}

/// Copy, strip and xz-compress `exe` to `dest.xz`.
fn pack(exe: &Path, dest: &Path) -> Result<PathBuf> {
    copy(exe, dest)?;
    for (prog, args) in [
        ("strip", vec!["--strip-all"]),
        ("xz", vec!["-6", "-T2", "-f"]),
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
