//! `cargo xtask <command>`: project automation that is easier to keep correct in Rust than in
//! shell. Commands grow with the project; `cargo xtask help` lists them.
#![warn(missing_docs)]

use std::process::{Command, ExitCode};

mod fetch;
mod gpu;
mod llamacpp;
mod make_model;
mod plot;
mod report;
mod sass;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("ci") => run("bash", &[".ci/run"], &[]),
        Some("gpu-kit") => report_result(
            "gpu-kit",
            gpu::kit(args.get(1).map_or("kernels", String::as_str)),
        ),
        Some("sass") => report_result("sass", sass::sass(&args[1..])),
        Some("report") => match args.get(1).map(String::as_str) {
            Some("accuracy") => report_result("report accuracy", report::accuracy(&args[2..])),
            _ => {
                eprintln!("xtask report: expected `accuracy`");
                ExitCode::from(2)
            }
        },
        Some("plot") => match args.get(1).map(String::as_str) {
            Some("kernels") => report_result("plot kernels", plot_kernels(&args[2..])),
            _ => {
                eprintln!("xtask plot: expected `kernels`");
                ExitCode::from(2)
            }
        },
        Some("make-model") => report_result("make-model", make_model::make_model(&args[1..])),
        Some("fetch") => match fetch::fetch(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask fetch: {e}");
                ExitCode::FAILURE
            }
        },
        None | Some("help") | Some("--help") | Some("-h") => {
            println!("usage: cargo xtask <command>\n");
            println!(
                "  bench core     run the any4-core benches (quantization time, CPU matmul vs dense)"
            );
            println!(
                "  bench kernels [--backend flex|cpu|wgpu|cuda] [--sizes 1024,4096] [--shapes NxK] [--batch 1,16] [--dtype f32|f16|bf16] [--repeats N] [--json FILE]"
            );
            println!("                 any4 vs dense matmul on one backend, same run");
            println!(
                "  bench decode [--backend flex|cpu|wgpu|cuda] [--models PATH,...] [--random-config smollm2-135m|llama-3.2-1b|llama-3-8b]"
            );
            println!(
                "               [--prompt N] [--tokens N] [--prefill N] [--repeats N] [--lm-head] [--dtype f32|bf16|f16] [--no-dense] [--breakdown] [--tensor-ops]"
            );
            println!(
                "                 end-to-end decode and prefill tokens/s, dense vs any4, same run (all flags: cargo bench --bench decode -- --help)"
            );
            println!(
                "  bench llamacpp [--threads 2[,1]] [--repeats 3] [--only gemv|decode] [--skip-build] [--out DIR] [--model GGUF]"
            );
            println!(
                "                 builds llama.cpp (cached in .cache/llama.cpp), runs its GEMV and llama-bench next to ours"
            );
            println!("                 → bench/results/cpu-vs-llamacpp.{{json,md}} (not in CI)");
            println!(
                "  fetch NAME...  smollm2, ptb, botchan, shakespeare, mistral-tokenizer, llama-vocab, all (into .cache/)"
            );
            println!(
                "  report accuracy [--models tiny-llama,smollm2-135m,tiny-llama-q41] [--windows N|all] [--fresh] [--render]"
            );
            println!(
                "                 format comparison (perplexity, bits, time) → docs/RESULTS.md + PNG"
            );
            println!(
                "  plot kernels [FILE.json...]  bench/results/kernels-*.json → bench/results/kernels.png"
            );
            println!(
                "  make-model --preset llama-3-8b|llama-3-8b-mini --random --out DIR [--seed S]"
            );
            println!(
                "                 sharded bf16 safetensors of the preset's shapes, random weights"
            );
            println!("  ci             run .ci/run (what CI runs)");
            println!(
                "  sass [KERNEL...] [--shape NxKxG] [--out FILE]  CUDA kernels → nvcc sm_90a → SASS figures (no GPU)"
            );
            println!(
                "  gpu-kit kernels|decode  build that part of the GPU check into target/gpu-kit (run.sh on a device)"
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}` (try `cargo xtask help`)");
            ExitCode::from(2)
        }
    }
}

fn report_result(what: &str, r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `plot kernels [FILES]`: every `bench/results/kernels-*.json` by default.
fn plot_kernels(args: &[String]) -> Result<(), String> {
    let mut inputs: Vec<std::path::PathBuf> = args.iter().map(Into::into).collect();
    if inputs.is_empty() {
        let dir = std::fs::read_dir("bench/results").map_err(|e| format!("bench/results: {e}"))?;
        inputs = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("kernels-"))
            })
            .collect();
        inputs.sort();
    }
    let out = std::path::Path::new("bench/results/kernels.png");
    plot::kernels_chart(&inputs, out)?;
    eprintln!("xtask plot kernels: wrote {}", out.display());
    Ok(())
}

fn bench(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        None | Some("core") => run(
            "cargo",
            &["bench", "-p", "any4-core", "--bench", "core"],
            &[],
        ),
        Some(suite @ ("kernels" | "decode")) => bench_backend(suite, &args[1..]),
        Some("llamacpp") => report_result("bench llamacpp", llamacpp::bench(&args[1..])),
        Some(other) => {
            eprintln!(
                "xtask bench: unknown suite `{other}` (available: core, kernels, decode, llamacpp)"
            );
            ExitCode::from(2)
        }
    }
}

/// `bench kernels|decode [--backend B] ...`: builds the bench with the backend's feature and the
/// runtime environment it needs, and writes `bench/results/<suite>-<backend>.{json,md}` by default.
fn bench_backend(suite: &str, args: &[String]) -> ExitCode {
    let backend = args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map_or("flex", String::as_str)
        .to_string();
    let mut cargo: Vec<String> = ["bench", "-p", "burn-any4", "--bench", suite]
        .map(String::from)
        .to_vec();
    let mut env: Vec<(String, String)> = Vec::new();
    let root = std::env::current_dir().unwrap_or_default();
    match backend.as_str() {
        "flex" => {}
        "wgpu" | "cpu" | "cuda" => {
            cargo.extend(["--features".to_string(), backend.clone()]);
            if backend != "wgpu" {
                let shim = root.join(".ci/llvm-shim");
                env.push(("XDG_DATA_HOME".into(), shim.display().to_string()));
            }
            if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                env.push(("XDG_RUNTIME_DIR".into(), "/tmp/xdg-runtime-0".into()));
            }
        }
        other => {
            eprintln!("xtask bench {suite}: unknown backend `{other}` (flex, cpu, wgpu, cuda)");
            return ExitCode::from(2);
        }
    }
    cargo.push("--".into());
    cargo.extend(args.iter().cloned());
    if !args.iter().any(|a| a == "--json") {
        let _ = std::fs::create_dir_all("bench/results");
        cargo.extend([
            "--json".to_string(),
            format!("bench/results/{suite}-{backend}.json"),
        ]);
    }
    let refs: Vec<&str> = cargo.iter().map(String::as_str).collect();
    run("cargo", &refs, &env)
}

fn run(program: &str, args: &[&str], env: &[(String, String)]) -> ExitCode {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("xtask: `{program} {}` failed ({s})", args.join(" "));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask: cannot run `{program}`: {e}");
            ExitCode::FAILURE
        }
    }
}
