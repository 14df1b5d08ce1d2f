//! The patched llama.cpp tree and its cached CMake build under `.cache/llama.cpp`.

use std::fs;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{LLAMA_COMMIT, Result, read, require, run_quiet};

const SDIST_ARCHIVE: &str = "llama_cpp_python-0.3.36.tar.gz";
const SDIST_ROOT: &str = "llama_cpp_python-0.3.36";
const PATCH: &str = include_str!("../../patches/llama.cpp-test-backend-ops.patch");

/// The patched llama.cpp source under `root/src`, unpacked and patched unless its stamp (commit
/// and patch checksum) is current. Returns the full llama.cpp commit.
pub(super) fn prepare(cache: &Path, root: &Path) -> Result<String> {
    let src = root.join("src");
    let stamp_path = src.join(".burn-any4-stamp");
    let patch_sha: String = Sha256::digest(PATCH.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Ok(stamp) = read(&stamp_path)
        && stamp.lines().nth(1) == Some(patch_sha.as_str())
    {
        return Ok(stamp.lines().next().unwrap_or_default().to_string());
    }
    require(
        "pip",
        "install Python's pip: llama.cpp comes from the llama-cpp-python sdist on PyPI",
    )?;
    require("patch", "apt-get install patch")?;
    // Downloads (if absent) and checks the sdist's sha256 (fetch.rs pins it).
    crate::fetch::fetch(&["llama-vocab".to_string()])?;
    let archive = cache.join("downloads").join(SDIST_ARCHIVE);
    let tmp = root.join("tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let head = format!("{SDIST_ROOT}/.git/modules/vendor/llama.cpp/HEAD");
    let vendor = format!("{SDIST_ROOT}/vendor/llama.cpp");
    eprintln!(
        "xtask bench llamacpp: unpacking llama.cpp from {}",
        archive.display()
    );
    run_quiet(
        Command::new("tar")
            .arg("xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&tmp)
            .args([&head, &vendor]),
        "tar",
    )?;
    let commit = read(&tmp.join(&head))?.trim().to_string();
    if !commit.starts_with(LLAMA_COMMIT) {
        return Err(format!(
            "{SDIST_ARCHIVE} vendors llama.cpp {commit}, not the pinned {LLAMA_COMMIT}"
        ));
    }
    let tree = tmp.join(&vendor);
    // A submodule pointer into the sdist's .git: without it, `patch` and cmake see a plain tree.
    let _ = fs::remove_file(tree.join(".git"));
    let patch_file = tmp.join("burn-any4.patch");
    fs::write(&patch_file, PATCH).map_err(|e| format!("{}: {e}", patch_file.display()))?;
    run_quiet(
        Command::new("patch")
            .args(["-p1", "--batch", "--forward", "-i"])
            .arg(fs::canonicalize(&patch_file).map_err(|e| e.to_string())?)
            .current_dir(&tree),
        "patch (xtask/patches/llama.cpp-test-backend-ops.patch)",
    )?;
    let _ = fs::remove_dir_all(&src);
    fs::rename(&tree, &src).map_err(|e| format!("{}: {e}", src.display()))?;
    let _ = fs::remove_dir_all(&tmp);
    fs::write(&stamp_path, format!("{commit}\n{patch_sha}\n"))
        .map_err(|e| format!("{}: {e}", stamp_path.display()))?;
    Ok(commit)
}

/// CMake options: Release, tuned for this CPU, CPU backend only (no GPU, BLAS or network code).
const CMAKE_OPTIONS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_BLAS=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
];

/// Configure (once) and build `test-backend-ops` and `llama-bench`; a current build is a no-op.
pub(super) fn build(root: &Path) -> Result<()> {
    require("cmake", "apt-get install cmake")?;
    let log_path = root.join("build.log");
    let log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let build_dir = root.join("build");
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut steps = Vec::new();
    if !build_dir.join("CMakeCache.txt").exists() {
        let mut c = Command::new("cmake");
        c.arg("-S")
            .arg(root.join("src"))
            .arg("-B")
            .arg(&build_dir)
            .args(CMAKE_OPTIONS);
        steps.push(c);
    }
    let mut b = Command::new("cmake");
    b.arg("--build")
        .arg(&build_dir)
        .args(["--target", "test-backend-ops", "llama-bench", "-j"])
        .arg(jobs.to_string());
    steps.push(b);
    let first = !build_dir.join("bin/llama-bench").exists();
    eprintln!(
        "xtask bench llamacpp: {} llama.cpp (log {})",
        if first {
            "building (~8 min on 2 cores)"
        } else {
            "checking the build of"
        },
        log_path.display()
    );
    for mut step in steps {
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let ok = step
            .stdout(out)
            .stderr(err)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "llama.cpp build failed: see {}",
                log_path.display()
            ));
        }
    }
    Ok(())
}
