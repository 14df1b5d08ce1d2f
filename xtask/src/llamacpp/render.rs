//! The Markdown table of `cargo xtask bench llamacpp`.

use std::fmt::Write as _;

use super::{
    Context, DECODE_TOKENS, LLAMA_TYPES, Opts, PREFILL_TOKENS, REPACK_TYPES, Record, SHAPES,
};

fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

fn find<'a>(
    records: &[&'a Record],
    via: &str,
    ty: &str,
    shape: (usize, usize),
) -> Option<&'a Record> {
    records
        .iter()
        .find(|r| r.via == via && r.ty == ty && r.shape == Some(shape))
        .copied()
}

/// A GEMV table cell: the median µs, `*` when the weights fit in L3 (the same weights every call).
fn cell(r: Option<&Record>) -> String {
    match r.and_then(|r| Some((r.value()?, r.from_dram))) {
        Some((us, Some(false))) => format!("{}\\*", fmt_us(us)),
        Some((us, _)) => fmt_us(us),
        None => "—".into(),
    }
}

pub(super) fn markdown(records: &[Record], o: &Opts, cx: &Context) -> String {
    let mut md = String::new();
    let threads = o
        .threads
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let w = &mut md;
    let _ = writeln!(w, "# CPU: burn-any4 vs llama.cpp, side by side\n");
    let _ = writeln!(
        w,
        "Written by `cargo xtask bench llamacpp` on {} (burn-any4 `{}`). llama.cpp `{}` from the \
        llama-cpp-python 0.3.36 sdist (its vendored llama.cpp), Release, `GGML_NATIVE=ON`, CPU backend only, \
        `test-backend-ops` patched by `xtask/patches/llama.cpp-test-backend-ops.patch`.\n",
        cx.date, cx.commit, cx.llama_commit
    );
    let _ = writeln!(
        w,
        "- CPU: {} ({} logical CPUs, L3 {}); **the same thread count on both sides** ({threads}; llama.cpp \
        `-t`, burn-any4 a rayon pool / `RAYON_NUM_THREADS`).",
        cx.cpu,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cx.l3_bytes
            .map_or("unknown".into(), |b| format!("{} MiB", b >> 20)),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (lo, hi) = cx
        .loads
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &l| (a.min(l), b.max(l)));
    let loads = if cx.loads.is_empty() {
        "was not read".to_string()
    } else {
        format!("ranged over {lo:.1}–{hi:.1} on {cpus} CPUs")
    };
    let _ = writeln!(
        w,
        "- The 1-minute load average read before each measurement {loads} (this run's own threads count \
        in it). Both sides ran back to back and the GEMV rounds alternate between them; figures are medians of {} \
        rounds (per-round values in the JSON).",
        o.repeats
    );
    // Our own threads keep the load near `cpus` on a quiet machine; more means other jobs.
    if hi > cpus as f64 + 0.5 {
        let _ = writeln!(
            w,
            "- **The machine was busy with other jobs** (load above the CPU count), so threads often \
            waited for a core. llama.cpp's threads meet at a spinning barrier after every graph node, so one \
            descheduled thread stalls each op; rayon's work stealing lets the running thread take over the \
            other's share. Under such load llama.cpp's figures fall far below its speed on a quiet machine \
            and the ratios overstate burn-any4: re-run on a quiet machine before comparing."
        );
    }
    let _ = writeln!(w);
    let simd: Vec<&str> = cx
        .flags
        .split_whitespace()
        .filter(|f| {
            f.starts_with("avx")
                || f.starts_with("sse")
                || f.starts_with("ssse")
                || [
                    "fma",
                    "f16c",
                    "amx_bf16",
                    "amx_int8",
                    "amx_tile",
                    "gfni",
                    "vaes",
                    "vpclmulqdq",
                    "bmi2",
                ]
                .contains(f)
        })
        .collect();
    let _ = writeln!(w, "SIMD flags: `{}`\n", simd.join(" "));

    if records.iter().any(|r| r.what == "gemv") {
        let _ = writeln!(w, "## GEMV, batch 1 (µs per call, lower is better)\n");
        let _ = writeln!(
            w,
            "llama.cpp cells of q4_K, iq4_nl and q4_0 read `plain / repacked`: the type's own layout, \
            then the CPU_REPACK 8×8 layout llama.cpp's loader puts these types in on AVX2 CPUs (`--repack`). \
            `*`: the weights fit in L3 and every call reads the same ones (test-backend-ops repeats one node; \
            any4-core is timed the same way); otherwise they stream from DRAM. Burn Flex cells read `rotating / one \
            weight`: weight copies rotated (> 128 MiB, always from DRAM, as in decode), then one weight called again \
            and again as test-backend-ops does. The ratio columns divide by the faster q4_K figure; the Flex ratio \
            takes the one-weight figure, in the same cache state as q4_K's.\n"
        );
        for &t in &o.threads {
            let records: Vec<&Record> = records
                .iter()
                .filter(|r| r.what == "gemv" && r.threads == t)
                .collect();
            let records = &records[..];
            let _ = writeln!(w, "### {t} thread{}\n", if t == 1 { "" } else { "s" });
            let _ = writeln!(
                w,
                "| N × K | q4_K | iq4_nl | q4_0 | q8_0 | f16 | f32 | any4-core int8 | any4-core f32 act. | Flex any4 | Flex dense f32 | core int8 ÷ q4_K | Flex any4 ÷ q4_K |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for shape in SHAPES {
                let mut row = format!("| {} × {} |", shape.0, shape.1);
                for ty in LLAMA_TYPES {
                    let plain = cell(find(records, "test-backend-ops", ty, shape));
                    let _ = if REPACK_TYPES.contains(&ty) {
                        write!(
                            row,
                            " {plain} / {} |",
                            cell(find(records, "test-backend-ops --repack", ty, shape))
                        )
                    } else {
                        write!(row, " {plain} |")
                    };
                }
                for (via, ty) in [("any4-core", "any4-int8"), ("any4-core", "any4")] {
                    let _ = write!(row, " {} |", cell(find(records, via, ty, shape)));
                }
                for ty in ["any4", "dense-f32"] {
                    let _ = write!(
                        row,
                        " {} / {} |",
                        cell(find(records, "burn-flex", ty, shape)),
                        cell(find(records, "burn-flex one weight", ty, shape))
                    );
                }
                let q4k = ["test-backend-ops", "test-backend-ops --repack"]
                    .iter()
                    .filter_map(|via| find(records, via, "q4_K", shape)?.value())
                    .fold(f64::INFINITY, f64::min);
                for (via, ty) in [("any4-core", "any4-int8"), ("burn-flex one weight", "any4")] {
                    let _ = match find(records, via, ty, shape).and_then(Record::value) {
                        Some(us) if q4k.is_finite() => write!(row, " {:.2}× |", us / q4k),
                        _ => write!(row, " — |"),
                    };
                }
                let _ = writeln!(w, "{row}");
            }
            let _ = writeln!(w);
        }
    }

    if records.iter().any(|r| r.what != "gemv") {
        let _ = writeln!(w, "## SmolLM2-135M (tokens/s, higher is better)\n");
        let _ = writeln!(
            w,
            "llama.cpp: `llama-bench` on the Q4_1 GGUF (median of its 5 repetitions). burn-any4: \
            `benches/decode.rs` on the same GGUF on Burn Flex: any4 (group 128, LM head quantized too) and the dense \
            f32 model, median of 5 alternating runs.\n"
        );
        for &t in &o.threads {
            let records: Vec<&Record> = records
                .iter()
                .filter(|r| r.what != "gemv" && r.threads == t)
                .collect();
            let _ = writeln!(w, "### {t} thread{}\n", if t == 1 { "" } else { "s" });
            let _ = writeln!(
                w,
                "| | llama.cpp Q4_1 | burn-any4 any4 (`--lm-head`) | burn-any4 dense f32 | any4 ÷ llama.cpp |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|");
            for (what, label) in [
                ("decode", format!("decode ({DECODE_TOKENS} tokens)")),
                (
                    "prefill",
                    format!("prefill ({PREFILL_TOKENS}-token prompt)"),
                ),
            ] {
                let get = |side: &str, ty: Option<&str>| {
                    records
                        .iter()
                        .find(|r| r.what == what && r.side == side && ty.is_none_or(|t| r.ty == t))
                        .copied()
                };
                let fmt = |r: Option<&Record>| match r.and_then(Record::value) {
                    Some(v) => format!("{v:.1}"),
                    None => "not measured".into(),
                };
                let (l, a, d) = (
                    get("llama.cpp", None),
                    get("burn-any4", Some("any4")),
                    get("burn-any4", Some("dense-f32")),
                );
                let ratio = match (l.and_then(Record::value), a.and_then(Record::value)) {
                    (Some(l), Some(a)) => format!("{:.2}×", a / l),
                    _ => "—".into(),
                };
                let _ = writeln!(
                    w,
                    "| {label} | {} | {} | {} | {ratio} |",
                    fmt(l),
                    fmt(a),
                    fmt(d)
                );
            }
            if let Some(r) = records
                .iter()
                .find(|r| r.what == "prefill" && r.side == "burn-any4" && r.samples.is_empty())
            {
                let _ = writeln!(
                    w,
                    "\nburn-any4 prefill: {}.",
                    r.note.as_deref().unwrap_or("not measured")
                );
            }
            let _ = writeln!(w);
        }
    }

    let _ = writeln!(w, "## Commands\n");
    let _ = writeln!(
        w,
        "`cargo xtask bench llamacpp --threads {} --repeats {}` ran, in this order (FILE: a temporary JSON):\n",
        threads, o.repeats
    );
    for c in &cx.commands {
        let _ = writeln!(w, "- `{c}`");
    }
    let _ = writeln!(
        w,
        "\n<details><summary>All CPU flags (/proc/cpuinfo)</summary>\n\n`{}`\n\n</details>",
        cx.flags
    );
    md
}
