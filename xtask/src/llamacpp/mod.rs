//! `cargo xtask bench llamacpp`: the project's CPU figures side by side with llama.cpp's, measured
//! back to back on this machine with the same thread count.
//!
//! llama.cpp comes from the llama-cpp-python 0.3.36 sdist on PyPI (its vendored llama.cpp, commit
//! [`LLAMA_COMMIT`]), checksum-verified by `cargo xtask fetch llama-vocab`, unpacked under
//! `.cache/llama.cpp/src`, patched with `xtask/patches/llama.cpp-test-backend-ops.patch` (GEMV
//! shapes, a thread count and repacked weights for `test-backend-ops perf`; see its header) and
//! built once into `.cache/llama.cpp/build` (cmake, Release, `GGML_NATIVE`, CPU only).
//!
//! Measured, each GEMV repeated `--repeats` times with the two sides interleaved (medians kept):
//! - GEMV (batch-1 MUL_MAT) at [`SHAPES`]: llama.cpp's [`LLAMA_TYPES`] through the patched
//!   `test-backend-ops` (plain, and in the CPU_REPACK layout llama.cpp loads models into);
//!   any4-core's `QuantizedView::matmul_with` called here (int8 and f32 activations); `Any4Linear`
//!   and a dense f32 matmul through Burn Flex (`benches/kernels.rs`).
//! - SmolLM2-135M decode (64 tokens) and prefill (512 tokens): `llama-bench` on the Q4_1 GGUF;
//!   `benches/decode.rs` (any4 with the LM head quantized, and dense) on the same GGUF.
//!
//! Output: `bench/results/cpu-vs-llamacpp.{json,md}` (or `--out DIR`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

mod decode;
mod gemv;
mod render;
mod source;

type Result<T> = std::result::Result<T, String>;

/// The llama.cpp commit vendored in the pinned sdist (checked against the sdist's submodule HEAD).
const LLAMA_COMMIT: &str = "0c1e570";
/// GEMV weight shapes `N × K` (output rows × inputs), as in issue 14.
const SHAPES: [(usize, usize); 3] = [(16384, 8192), (4096, 4096), (1024, 1024)];
/// llama.cpp weight types measured at batch 1.
const LLAMA_TYPES: [&str; 6] = ["q4_K", "iq4_nl", "q4_0", "q8_0", "f16", "f32"];
/// Types llama.cpp repacks (CPU_REPACK, 8×8 interleaved) when it loads a model on an AVX2 CPU.
const REPACK_TYPES: [&str; 3] = ["q4_K", "iq4_nl", "q4_0"];
const SMOLLM2: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const DECODE_TOKENS: usize = 64;
const PREFILL_TOKENS: usize = 512;

/// Command-line options.
struct Opts {
    /// Thread counts, each measured on both sides (`--threads 2` or `--threads 2,1`).
    threads: Vec<usize>,
    skip_build: bool,
    gemv: bool,
    decode: bool,
    out: PathBuf,
    repeats: usize,
    model: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        threads: vec![2],
        skip_build: false,
        gemv: true,
        decode: true,
        out: "bench/results".into(),
        repeats: 3,
        model: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or(format!("{arg} needs a value"));
        let num = |v: &String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{arg}: `{v}` is not a positive number"))
        };
        match arg.as_str() {
            "--threads" => {
                o.threads = val()?
                    .split(',')
                    .map(|t| num(&t.to_string()))
                    .collect::<Result<_>>()?
            }
            "--repeats" => o.repeats = num(val()?)?,
            "--skip-build" => o.skip_build = true,
            "--out" => o.out = val()?.into(),
            "--model" => o.model = Some(val()?.into()),
            "--only" => match val()?.as_str() {
                "gemv" => o.decode = false,
                "decode" => o.gemv = false,
                other => return Err(format!("--only `{other}`: gemv or decode")),
            },
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

/// One measurement: a row of the JSON list.
struct Record {
    side: &'static str,
    threads: usize,
    /// `gemv`, `decode` or `prefill`.
    what: &'static str,
    ty: String,
    /// Where the figure comes from (`test-backend-ops`, `any4-core`, `burn-flex`, ...).
    via: String,
    /// GEMV shape; `None` for decode/prefill.
    shape: Option<(usize, usize)>,
    /// Tokens per decode/prefill run.
    tokens: Option<usize>,
    /// One value per repeat (µs for GEMV, tokens/s otherwise); empty when not measured.
    samples: Vec<f64>,
    /// GEMV weights larger than the last-level cache (so streamed from DRAM on every call).
    from_dram: Option<bool>,
    note: Option<String>,
}

impl Record {
    fn value(&self) -> Option<f64> {
        (!self.samples.is_empty()).then(|| median(&self.samples))
    }

    fn to_json(&self, cpu: &str) -> Value {
        let mut v = json!({"side": self.side, "what": self.what, "type": self.ty, "via": self.via,
            "n": self.shape.map(|s| s.0), "k": self.shape.map(|s| s.1), "threads": self.threads,
            "cpu": cpu, "samples": self.samples});
        let key = if self.what == "gemv" {
            "us"
        } else {
            "tokens_per_s"
        };
        v[key] = json!(self.value());
        for (k, x) in [
            ("tokens", self.tokens.map(Value::from)),
            ("weights_from_dram", self.from_dram.map(Value::from)),
            ("note", self.note.clone().map(Value::from)),
        ] {
            if let Some(x) = x {
                v[k] = x;
            }
        }
        v
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[h - 1] + v[h]) / 2.0
    } else {
        v[h]
    }
}

/// What the report states about the run besides the records.
struct Context {
    cpu: String,
    flags: String,
    l3_bytes: Option<usize>,
    llama_commit: String,
    commit: String,
    date: String,
    commands: Vec<String>,
    /// 1-minute load averages read before each measurement.
    loads: Vec<f64>,
    start: Instant,
}

impl Context {
    /// Announce a measurement (with the time since the start) and note the load average.
    fn step(&mut self, what: &str) {
        eprintln!(
            "xtask bench llamacpp [{:>4.0} s]: {what}",
            self.start.elapsed().as_secs_f64()
        );
        if let Some(l) = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            self.loads.push(l);
        }
    }

    fn command(&mut self, c: String) {
        if !self.commands.contains(&c) {
            self.commands.push(c);
        }
    }
}

/// `cargo xtask bench llamacpp [--threads N[,N..]] [--repeats N] [--skip-build] [--only gemv|decode]
/// [--out DIR] [--model GGUF]`.
pub fn bench(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let start = Instant::now();
    let cache = PathBuf::from(std::env::var("ANY4_CACHE").unwrap_or_else(|_| ".cache".into()));
    let root = cache.join("llama.cpp");
    let bin = root.join("build/bin");
    let llama_commit = if o.skip_build {
        let stamp = read(&root.join("src/.burn-any4-stamp")).map_err(|_| {
            format!(
                "no llama.cpp build in {}: run without --skip-build",
                root.display()
            )
        })?;
        stamp.lines().next().unwrap_or_default().to_string()
    } else {
        let c = source::prepare(&cache, &root)?;
        source::build(&root)?;
        c
    };
    for b in ["test-backend-ops", "llama-bench"] {
        if !bin.join(b).exists() {
            return Err(format!(
                "{} missing: run without --skip-build",
                bin.join(b).display()
            ));
        }
    }
    let model = match &o.model {
        Some(m) => m.clone(),
        None => cache.join(SMOLLM2),
    };
    if o.decode && !model.exists() {
        if o.model.is_some() {
            return Err(format!("{}: no such model", model.display()));
        }
        require(
            "pip",
            "install Python's pip: the SmolLM2 GGUF comes from PyPI",
        )?;
        crate::fetch::fetch(&["smollm2".to_string()])?;
    }
    let (cpu, flags) = cpu_info();
    let mut cx = Context {
        cpu,
        flags,
        l3_bytes: l3_bytes(),
        llama_commit,
        commit: stdout_of("git", &["rev-parse", "--short", "HEAD"]).unwrap_or("unknown".into()),
        date: stdout_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        commands: Vec::new(),
        loads: Vec::new(),
        start,
    };
    // Build the project's benches first, so no compilation runs between measurements.
    let mut benches = vec!["bench", "-p", "burn-any4", "--no-run"];
    if o.gemv {
        benches.extend(["--bench", "kernels"]);
    }
    if o.decode {
        benches.extend(["--bench", "decode"]);
    }
    eprintln!("xtask bench llamacpp: cargo {}", benches.join(" "));
    let built = Command::new("cargo").args(&benches).status();
    if !built.is_ok_and(|s| s.success()) {
        return Err(format!("`cargo {}` failed", benches.join(" ")));
    }

    let mut records = Vec::new();
    for &threads in &o.threads {
        if o.gemv {
            records.extend(gemv::run(&o, threads, &bin, &mut cx)?);
        }
        if o.decode {
            records.extend(decode::run(threads, &bin, &model, &mut cx)?);
        }
    }
    let json: Vec<Value> = records.iter().map(|r| r.to_json(&cx.cpu)).collect();
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    let out_json = o.out.join("cpu-vs-llamacpp.json");
    crate::report::write_atomic(&out_json, text.as_bytes())?;
    let out_md = o.out.join("cpu-vs-llamacpp.md");
    crate::report::write_atomic(&out_md, render::markdown(&records, &o, &cx).as_bytes())?;
    eprintln!(
        "xtask bench llamacpp: wrote {} and {}",
        out_json.display(),
        out_md.display()
    );
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn stdout_of(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Fail with `hint` when `program` cannot be started.
fn require(program: &str, hint: &str) -> Result<()> {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        Ok(())
    } else {
        Err(format!("`{program}` not found: {hint}"))
    }
}

/// Run `cmd`, showing its output only when it fails.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({}):\n{}",
        out.status,
        tail.join("\n")
    ))
}

fn cpu_info() -> (String, String) {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_string(), |(_, v)| v.trim().to_string())
    };
    let model = format!(
        "{} (family {}, model {})",
        field("model name"),
        field("cpu family"),
        field("model")
    );
    (model, field("flags"))
}

/// Size of the last-level (L3) cache, from sysfs (`32768K`).
fn l3_bytes() -> Option<usize> {
    let s = fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index3/size").ok()?;
    let s = s.trim();
    let (num, mul) = match s.strip_suffix('K') {
        Some(n) => (n, 1 << 10),
        None => match s.strip_suffix('M') {
            Some(n) => (n, 1 << 20),
            None => (s, 1),
        },
    };
    num.parse::<usize>().ok().map(|n| n * mul)
}

/// Bits per weight of a GEMV weight type (block scales included).
fn bits_per_weight(ty: &str) -> f64 {
    match ty {
        "q8_0" => 8.5,
        "f16" => 16.0,
        "f32" | "dense-f32" => 32.0,
        // q4_K, iq4_nl, q4_0 and any4 at group 128 (f32 scale and zero per 128 weights).
        _ => 4.5,
    }
}

fn exceeds_l3(cx: &Context, ty: &str, (n, k): (usize, usize)) -> Option<bool> {
    cx.l3_bytes
        .map(|l3| (n * k) as f64 * bits_per_weight(ty) / 8.0 > l3 as f64)
}

fn shapes_arg() -> String {
    SHAPES.map(|(n, k)| format!("{n}x{k}")).join(",")
}

#[cfg(test)]
mod tests {
    use super::{median, parse};

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.threads, o.repeats, o.gemv, o.decode),
            (vec![2], 3, true, true)
        );
        let o = parse(&args("--threads 4 --only decode --skip-build --out x")).unwrap();
        assert_eq!(
            (o.threads, o.gemv, o.decode, o.skip_build),
            (vec![4], false, true, true)
        );
        assert_eq!(o.out, std::path::PathBuf::from("x"));
        assert_eq!(parse(&args("--threads 2,1")).unwrap().threads, [2, 1]);
        for bad in [
            "--threads 0",
            "--threads 2,",
            "--threads",
            "--only both",
            "--fast",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
