//! Batch-1 GEMV on both sides: llama.cpp's patched `test-backend-ops`, any4-core called here, and
//! `Any4Linear` / dense through Burn Flex (`benches/kernels.rs`).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use any4_core::rng::SplitMix64;
use any4_core::{MatmulPrecision, QuantizedMatrix};
use serde_json::Value;

use super::{
    Context, LLAMA_TYPES, Opts, REPACK_TYPES, Record, Result, SHAPES, exceeds_l3, median, read,
    run_quiet, shapes_arg,
};

/// `(type, (n, k), µs)` of one GEMV measurement.
type Gemv = (String, (usize, usize), f64);

pub(super) fn run(o: &Opts, threads: usize, bin: &Path, cx: &mut Context) -> Result<Vec<Record>> {
    let mut records: Vec<Record> = Vec::new();
    let add =
        |records: &mut Vec<Record>, side, ty: &str, via: &str, shape, us: f64, dram| match records
            .iter_mut()
            .find(|r| r.ty == ty && r.via == via && r.shape == Some(shape))
        {
            Some(r) => r.samples.push(us),
            None => records.push(Record {
                side,
                threads,
                what: "gemv",
                ty: ty.to_string(),
                via: via.to_string(),
                shape: Some(shape),
                tokens: None,
                samples: vec![us],
                from_dram: dram,
                note: None,
            }),
        };
    let tbo = bin.join("test-backend-ops");
    let t = threads.to_string();
    let flex_json = std::env::temp_dir().join(format!("any4-llamacpp-{}.json", std::process::id()));
    for rep in 0..o.repeats {
        for repack in [false, true] {
            let types = if repack {
                &REPACK_TYPES[..]
            } else {
                &LLAMA_TYPES[..]
            };
            let spec = format!("{}:{}", types.join(","), shapes_arg());
            let mut args = vec!["perf", "-b", "CPU", "-t", &t, "--gemv", &spec];
            if repack {
                args.push("--repack");
            }
            cx.command(format!("{} {}", tbo.display(), args.join(" ")));
            let layout = if repack { " --repack" } else { "" };
            cx.step(&format!(
                "GEMV round {}/{}: test-backend-ops{layout}",
                rep + 1,
                o.repeats
            ));
            let out = run_quiet(Command::new(&tbo).args(&args), "test-backend-ops")?;
            let via = if repack {
                "test-backend-ops --repack"
            } else {
                "test-backend-ops"
            };
            for (ty, shape, us) in parse_test_backend_ops(&out, types)? {
                let dram = exceeds_l3(cx, &ty, shape);
                add(&mut records, "llama.cpp", &ty, via, shape, us, dram);
            }
        }
        cx.command(format!(
            "in-process: any4_core QuantizedView::matmul_with(x, 1, Int8Activations | Exact) on a {}-thread rayon pool (xtask/src/llamacpp/gemv.rs)",
            threads
        ));
        cx.step(&format!("GEMV round {}/{}: any4-core", rep + 1, o.repeats));
        for (ty, shape, us) in core_gemv(threads)? {
            let dram = exceeds_l3(cx, &ty, shape);
            add(&mut records, "burn-any4", &ty, "any4-core", shape, us, dram);
        }
        // Two Flex runs: weights rotated over copies (> 128 MiB, from DRAM, as in decode), and
        // one weight called again and again (`--copies-mb 1`), the cache state of
        // test-backend-ops and any4-core above.
        for (copies, via) in [(None, "burn-flex"), (Some("1"), "burn-flex one weight")] {
            let shapes = shapes_arg();
            let mut args = vec![
                "bench",
                "-p",
                "burn-any4",
                "--bench",
                "kernels",
                "--",
                "--backend",
                "flex",
                "--shapes",
                &shapes,
                "--batch",
                "1",
                "--precision",
                "int8",
            ];
            if let Some(mb) = copies {
                args.extend(["--copies-mb", mb]);
            }
            args.push("--json");
            cx.command(format!(
                "RAYON_NUM_THREADS={} cargo {} FILE",
                threads,
                args.join(" ")
            ));
            cx.step(&format!(
                "GEMV round {}/{}: Burn Flex (bench kernels{})",
                rep + 1,
                o.repeats,
                if copies.is_some() { ", one weight" } else { "" }
            ));
            run_quiet(
                Command::new("cargo")
                    .args(&args)
                    .arg(&flex_json)
                    .env("RAYON_NUM_THREADS", &t),
                "cargo bench --bench kernels",
            )?;
            let rows: Vec<Value> = serde_json::from_str(&read(&flex_json)?)
                .map_err(|e| format!("{}: {e}", flex_json.display()))?;
            // The default (int8) path; the bench also times the exact one against the same
            // baseline.
            for r in rows
                .iter()
                .filter(|r| r["m"] == 1 && r["precision"] == "int8")
            {
                let (Some(n), Some(k)) = (r["n"].as_u64(), r["k"].as_u64()) else {
                    return Err(format!("kernels bench: record without n/k: {r}"));
                };
                let shape = (n as usize, k as usize);
                for (ty, key) in [("any4", "any4_us"), ("dense-f32", "baseline_us")] {
                    // Rotated copies: from DRAM when they are well over the last-level cache;
                    // one weight: when that weight alone is over it.
                    let dram = match copies {
                        None => r["copies_mb"]
                            .as_f64()
                            .zip(super::l3_bytes())
                            .map(|(mb, l3)| mb * 1e6 > 2.0 * l3 as f64),
                        Some(_) => exceeds_l3(cx, ty, shape),
                    };
                    let us = r[key]
                        .as_f64()
                        .ok_or(format!("kernels bench: no `{key}` in {r}"))?;
                    add(&mut records, "burn-any4", ty, via, shape, us, dram);
                }
            }
        }
    }
    let _ = fs::remove_file(&flex_json);
    Ok(records)
}

/// `(type, (n, k), µs)` of every `MUL_MAT(type=..,n=..,k=..): ... X us/run` line; an error for a
/// line that reports no time (unsupported, no repacked layout) or a requested case missing.
fn parse_test_backend_ops(out: &str, types: &[&str]) -> Result<Vec<Gemv>> {
    let mut found = Vec::new();
    for line in out
        .lines()
        .filter(|l| l.trim_start().starts_with("MUL_MAT("))
    {
        let params = line
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(p, _)| p)
            .unwrap_or_default();
        let get = |key: &str| {
            params
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_default()
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let us = words
            .iter()
            .position(|w| *w == "us/run")
            .and_then(|i| words.get(i.checked_sub(1)?)?.parse::<f64>().ok())
            .ok_or(format!("test-backend-ops: {}", line.trim()))?;
        let n = get("n")
            .parse()
            .map_err(|_| format!("test-backend-ops: no n in `{line}`"))?;
        let k = get("k")
            .parse()
            .map_err(|_| format!("test-backend-ops: no k in `{line}`"))?;
        found.push((get("type").to_string(), (n, k), us));
    }
    for ty in types {
        for shape in SHAPES {
            if !found.iter().any(|(t, s, _)| t == ty && *s == shape) {
                return Err(format!(
                    "test-backend-ops printed no time for {ty} {}x{}:\n{out}",
                    shape.0, shape.1
                ));
            }
        }
    }
    Ok(found)
}

/// Median µs of `f` over at least 20 calls and half a second, after 3 warm-up calls.
fn time_us(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let start = Instant::now();
    let mut t = Vec::new();
    while t.len() < 20 || start.elapsed().as_secs_f64() < 0.5 {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&t))
}

/// any4-core's batch-1 matmul on a `threads`-thread pool, the same weights on every call (as
/// test-backend-ops does: the large shape streams from DRAM, the small ones stay in cache).
fn core_gemv(threads: usize) -> Result<Vec<Gemv>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("rayon pool: {e}"))?;
    pool.install(|| {
        let mut out = Vec::new();
        for (n, k) in SHAPES {
            let q = QuantizedMatrix::random(n, k, (n * 31 + k) as u64);
            let mut r = SplitMix64::new(7);
            let x: Vec<f32> = (0..k).map(|_| r.next_gaussian() as f32).collect();
            for (ty, precision) in [
                ("any4-int8", MatmulPrecision::Int8Activations),
                ("any4", MatmulPrecision::Exact),
            ] {
                let us = time_us(|| {
                    let y = q
                        .view()
                        .matmul_with(&x, 1, precision)
                        .map_err(|e| e.to_string())?;
                    std::hint::black_box(y);
                    Ok(())
                })?;
                out.push((ty.to_string(), (n, k), us));
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_test_backend_ops;

    /// Console output of the patched `test-backend-ops perf --gemv q4_K:...` (colour codes kept).
    fn output(extra: &str) -> String {
        let mut s = String::from("Testing 1 devices\n\nBackend 1/1: CPU\n");
        for (n, k, us) in [
            (16384, 8192, "1590.12"),
            (4096, 4096, "165.40"),
            (1024, 1024, "9.87"),
        ] {
            s.push_str(&format!(
                "  MUL_MAT(type=q4_K,n={n},k={k}):     150 runs -  {us} us/run - 268.44 MFLOP/run - \x1b[1;34m 30.48 GFLOPS\x1b[0m\n"
            ));
        }
        s + extra + "  Backend CPU: OK\n"
    }

    #[test]
    fn parses_every_case_and_rejects_gaps() {
        let got = parse_test_backend_ops(&output(""), &["q4_K"]).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("q4_K".to_string(), (16384, 8192), 1590.12));
        assert_eq!(got[2], ("q4_K".to_string(), (1024, 1024), 9.87));
        // A requested type without a timing line is an error, not a silent gap.
        let err = parse_test_backend_ops(&output(""), &["q4_K", "f16"]).unwrap_err();
        assert!(err.contains("f16 16384x8192"), "{err}");
        // A case that printed no time (unsupported, no repacked layout) is an error too.
        let err = parse_test_backend_ops(
            &output("  MUL_MAT(type=f16,n=1024,k=1024): no CPU_REPACK layout\n"),
            &["q4_K"],
        )
        .unwrap_err();
        assert!(err.contains("no CPU_REPACK layout"), "{err}");
    }
}
