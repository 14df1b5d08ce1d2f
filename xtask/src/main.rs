//! `cargo xtask <command>`: project automation that is easier to keep correct in Rust than in
//! shell. Commands grow with the project; `cargo xtask help` lists them.
#![warn(missing_docs)]

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("ci") => run("bash", &[".ci/run"]),
        None | Some("help") | Some("--help") | Some("-h") => {
            println!("usage: cargo xtask <command>\n");
            println!(
                "  bench core     run the any4-core benches (quantization time, CPU matmul vs dense)"
            );
            println!("  ci             run .ci/run (what CI runs)");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}` (try `cargo xtask help`)");
            ExitCode::from(2)
        }
    }
}

fn bench(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        None | Some("core") => run("cargo", &["bench", "-p", "any4-core", "--bench", "core"]),
        Some(other) => {
            eprintln!("xtask bench: unknown suite `{other}` (available: core)");
            ExitCode::from(2)
        }
    }
}

fn run(program: &str, args: &[&str]) -> ExitCode {
    match Command::new(program).args(args).status() {
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
