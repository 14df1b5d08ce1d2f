//! `cargo xtask sass [KERNEL...] [--shape NxKxG] [--out FILE]`: the offline speed meter of the
//! CUDA kernels, without a GPU. With `KERNEL` name filters only the matching kernels are
//! recompiled; the others keep their rows of `FILE`.
//!
//! 1. `any4-kernels`' `cuda-source` example writes the CUDA C++ CubeCL generates for every kernel
//!    at an H200's plans (cubecl-cpp's compiler on the kernel definitions; no device, no LLVM);
//! 2. `nvcc -arch=sm_90a -cubin -O3 -Xptxas -v` compiles each (NVRTC gets the same source and
//!    arch on the device), giving registers and spills;
//! 3. `cuobjdump -sass` gives the machine code; the main loop is the backward branch whose body
//!    holds the most 128-bit global loads; its instructions are counted by opcode and divided by
//!    the weights one thread handles per pass through it (nvcc's unroll factor is the loop's
//!    128-bit load count over the loads one source iteration issues).
//!
//! nvcc, cuobjdump and the CUDA headers come from PyPI (`pip install nvidia-cuda-nvcc
//! nvidia-cuda-cuobjdump nvidia-cuda-cccl`); the tools are looked up on `PATH`, then in the
//! `nvidia/cu13` folder of `python3`'s site-packages. Results: `bench/results/sass-h200.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T> = std::result::Result<T, String>;

struct Tools {
    nvcc: PathBuf,
    cuobjdump: PathBuf,
    include: Option<PathBuf>,
}

fn find_tools() -> Result<Tools> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
    };
    if let (Some(nvcc), Some(cuobjdump)) = (on_path("nvcc"), on_path("cuobjdump")) {
        let include = nvcc
            .parent()
            .and_then(Path::parent)
            .map(|r| r.join("include"));
        return Ok(Tools {
            nvcc,
            cuobjdump,
            include,
        });
    }
    let out = Command::new("python3")
        .args(["-c", "import nvidia, os; print(list(nvidia.__path__)[0])"])
        .output()
        .map_err(|e| format!("no nvcc on PATH and cannot run python3: {e}"))?;
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("cu13");
    let (nvcc, cuobjdump) = (root.join("bin/nvcc"), root.join("bin/cuobjdump"));
    if !nvcc.is_file() || !cuobjdump.is_file() {
        return Err(
            "nvcc/cuobjdump not found: `pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump \
             nvidia-cuda-cccl` (or put a CUDA toolkit on PATH)"
                .into(),
        );
    }
    Ok(Tools {
        nvcc,
        cuobjdump,
        include: Some(root.join("include")),
    })
}

/// One instruction of a SASS listing.
struct Inst {
    addr: u64,
    opcode: String,
    text: String,
}

fn parse_sass(listing: &str) -> Vec<Inst> {
    let mut out = Vec::new();
    for line in listing.lines() {
        let t = line.trim();
        // `/*0370*/   LDG.E.128.CONSTANT R12, desc[UR4][R12.64] ;   /* 0x… */`
        let Some(rest) = t.strip_prefix("/*") else {
            continue;
        };
        let Some((addr, body)) = rest.split_once("*/") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        let body = body
            .split("/*")
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches(';')
            .trim();
        let mut words = body.split_whitespace();
        let mut opcode = words.next().unwrap_or("");
        if opcode.starts_with('@') {
            opcode = words.next().unwrap_or("");
        }
        if opcode.is_empty() {
            continue;
        }
        out.push(Inst {
            addr,
            opcode: opcode.to_string(),
            text: body.to_string(),
        });
    }
    out
}

/// `[start, end]` indices of every loop (a branch to an earlier address).
fn loops(insts: &[Inst]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        if inst.opcode != "BRA" {
            continue;
        }
        let target = inst
            .text
            .split_whitespace()
            .find_map(|w| w.trim_end_matches(',').strip_prefix("0x"))
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        if let Some(t) = target.filter(|&t| t < inst.addr)
            && let Some(start) = insts.iter().position(|x| x.addr == t)
        {
            found.push((start, i));
        }
    }
    found
}

fn is_ldg128(op: &str) -> bool {
    op.starts_with("LDG") && op.contains(".128")
}

struct Meta {
    name: String,
    weights_per_iter: usize,
    loads128_per_iter: usize,
    hmma_per_iter: usize,
    what: String,
}

fn read_index(dir: &Path) -> Result<Vec<Meta>> {
    let text = std::fs::read_to_string(dir.join("kernels.json")).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let items = v.as_array().ok_or("kernels.json: not an array")?;
    Ok(items
        .iter()
        .map(|k| Meta {
            name: k["name"].as_str().unwrap_or_default().to_string(),
            weights_per_iter: k["weights_per_iter"].as_u64().unwrap_or(0) as usize,
            loads128_per_iter: k["loads128_per_iter"].as_u64().unwrap_or(0) as usize,
            hmma_per_iter: k["hmma_per_iter"].as_u64().unwrap_or(0) as usize,
            what: k["what"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

/// What one kernel's machine code says.
struct Figures {
    registers: String,
    spills: String,
    total: usize,
    loop_len: usize,
    loop_weights: Option<usize>,
    counts: BTreeMap<String, usize>,
}

fn category(op: &str) -> &'static str {
    let head = op.split('.').next().unwrap_or(op);
    match head {
        "LDG" => "LDG",
        "LDS" | "LDSM" => "LDS",
        "STS" => "STS",
        "PRMT" => "PRMT",
        "IDP" => "IDP",
        "HMMA" => "HMMA",
        "FFMA" | "FMUL" | "FADD" | "FMNMX" | "HADD2" | "HFMA2" | "F2F" | "I2F" | "F2I" | "I2FP"
        | "F2FP" => "float",
        "LOP3" | "SHF" | "SHL" | "LEA" | "IADD3" | "IMAD" | "VIADD" | "ISETP" | "SEL" | "IABS"
        | "FSETP" | "LOP" => "int/logic",
        "BAR" | "BRA" | "BSYNC" | "BSSY" | "EXIT" | "WARPSYNC" | "NOP" => "control",
        "SHFL" => "SHFL",
        _ => "other",
    }
}

fn analyse(tools: &Tools, cu: &Path, meta: &Meta) -> Result<Figures> {
    // nvcc includes the CUDA runtime headers, which already define the 64-bit integer types
    // the NVRTC source declares itself: drop those two typedefs.
    let source = std::fs::read_to_string(cu).map_err(|e| e.to_string())?;
    let source: String = source
        .lines()
        .filter(|l| !(l.starts_with("typedef") && l.contains("int64_t;")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(cu, source).map_err(|e| e.to_string())?;
    let cubin = cu.with_extension("cubin");
    let mut cmd = Command::new(&tools.nvcc);
    cmd.args(["-arch=sm_90a", "-cubin", "-O3", "-Xptxas", "-v", "-o"])
        .arg(&cubin)
        .arg(cu);
    if let Some(inc) = &tools.include {
        cmd.arg(format!("-I{}", inc.display()));
    }
    let out = cmd.output().map_err(|e| format!("nvcc: {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(format!("nvcc {}:\n{log}", cu.display()));
    }
    let registers = log
        .lines()
        .find_map(|l| l.split("Used ").nth(1).and_then(|r| r.split(' ').next()))
        .unwrap_or("?")
        .to_string();
    let spills = log
        .lines()
        .find(|l| l.contains("spill stores"))
        .map(|l| {
            let n = |key: &str| {
                l.split(',')
                    .find(|p| p.contains(key))
                    .and_then(|p| p.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string()
            };
            format!("{}/{}", n("spill stores"), n("spill loads"))
        })
        .unwrap_or_else(|| "?".into());
    let sass = Command::new(&tools.cuobjdump)
        .arg("-sass")
        .arg(&cubin)
        .output()
        .map_err(|e| format!("cuobjdump: {e}"))?;
    let insts = parse_sass(&String::from_utf8_lossy(&sass.stdout));
    std::fs::write(cu.with_extension("sass"), &sass.stdout).map_err(|e| e.to_string())?;
    // Trailing `BRA self` padding is not code.
    let total = insts.iter().filter(|i| i.opcode != "NOP").count();
    let count = |body: &[Inst], f: fn(&str) -> bool| body.iter().filter(|i| f(&i.opcode)).count();
    let is_hmma: fn(&str) -> bool = |op| op.starts_with("HMMA");
    let main = loops(&insts).into_iter().max_by_key(|&(s, e)| {
        let body = &insts[s..=e];
        (
            count(body, is_ldg128),
            count(body, is_hmma),
            std::cmp::Reverse(e - s),
        )
    });
    let (body, loop_weights) = match main {
        Some((s, e)) => {
            let body = &insts[s..=e];
            // nvcc's unroll factor: the loop's 128-bit loads (or tensor-core instructions) over
            // what one source iteration issues.
            let per_iter = if meta.loads128_per_iter > 0 {
                Some((count(body, is_ldg128), meta.loads128_per_iter))
            } else if meta.hmma_per_iter > 0 {
                Some((count(body, is_hmma), meta.hmma_per_iter))
            } else {
                None
            };
            let unroll = per_iter
                .filter(|(found, per)| found.is_multiple_of(*per))
                .map(|(found, per)| found / per);
            (
                body,
                unroll.map(|u| u * meta.weights_per_iter).filter(|&w| w > 0),
            )
        }
        None => (
            &insts[..],
            (meta.weights_per_iter > 0).then_some(meta.weights_per_iter),
        ),
    };
    let mut counts = BTreeMap::new();
    for i in body.iter().filter(|i| i.opcode != "NOP") {
        *counts.entry(category(&i.opcode).to_string()).or_insert(0) += 1;
    }
    Ok(Figures {
        registers,
        spills,
        total,
        loop_len: body.iter().filter(|i| i.opcode != "NOP").count(),
        loop_weights,
        counts,
    })
}

/// The decode kernel the instruction target applies to.
const INT8_GEMV_M1: &str = "gemv-int8-f16-m1";
/// Instructions per weight the int8 GEMV main loop should stay under (issue 17).
const INT8_TARGET: f64 = 2.5;

/// Entry point: `args` are kernel-name filters and options.
pub fn sass(args: &[String]) -> Result<()> {
    let mut filters = Vec::new();
    let mut shape = "8192x8192x128".to_string();
    let mut out_md = PathBuf::from("bench/results/sass-h200.md");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shape" => shape = it.next().ok_or("--shape needs NxKxG")?.clone(),
            "--out" => out_md = it.next().ok_or("--out needs a file")?.into(),
            f => filters.push(f.to_string()),
        }
    }
    let dims: Vec<&str> = shape.split(['x', '×']).collect();
    if dims.len() != 3 || dims.iter().any(|d| d.parse::<usize>().is_err()) {
        return Err(format!(
            "--shape `{shape}`: expected NxKxG, e.g. 8192x8192x128"
        ));
    }
    let tools = find_tools()?;
    let dir = PathBuf::from("target/sass");
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new("cargo")
        .args([
            "run",
            "--quiet",
            "-p",
            "any4-kernels",
            "--example",
            "cuda-source",
            "--features",
            "cuda-source",
            "--",
        ])
        .arg(&dir)
        .args(&dims)
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err("the cuda-source example failed".into());
    }
    let metas = read_index(&dir)?;
    let mut md = format!(
        "# SASS of the CUDA kernels (sm_90a, offline)\n\n\
         `cargo xtask sass` — CubeCL's CUDA C++ for each kernel at an H200's plans, compiled with \
         `nvcc -arch=sm_90a -cubin -O3` (the source and arch NVRTC gets on the device), read with \
         `cuobjdump -sass`. Weight shape {shape} (N×K×G). *Main loop*: the loop with the most \
         128-bit global loads; *instr/weight*: its instructions over the weights one thread \
         handles per pass (nvcc's unrolling included). No GPU ran: these are instruction counts, \
         not timings.\n\n\
         | kernel | what | registers | spills (st/ld B) | instructions | main loop | weights/pass | instr/weight | LDG/weight | LDS/weight | PRMT | IDP | HMMA | float | int/logic |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    // With filters, the other kernels keep their rows from the existing file (same shape only).
    let previous = std::fs::read_to_string(&out_md)
        .ok()
        .filter(|t| t.contains(&format!("Weight shape {shape} ")))
        .unwrap_or_default();
    let previous_row = |name: &str| {
        previous
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .map(str::to_string)
    };
    for meta in &metas {
        if !filters.is_empty() && !filters.iter().any(|f| meta.name.contains(f.as_str())) {
            if let Some(row) = previous_row(&meta.name) {
                md.push_str(&row);
                md.push('\n');
            }
            continue;
        }
        let cu = dir.join(format!("{}.cu", meta.name));
        let f = analyse(&tools, &cu, meta)?;
        let c = |k: &str| f.counts.get(k).copied().unwrap_or(0);
        let per = |n: usize| match f.loop_weights {
            Some(w) => format!("{:.2}", n as f64 / w as f64),
            None => "–".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            meta.name,
            meta.what,
            f.registers,
            f.spills,
            f.total,
            f.loop_len,
            f.loop_weights.map_or("–".into(), |w| w.to_string()),
            per(f.loop_len),
            per(c("LDG")),
            per(c("LDS")),
            c("PRMT"),
            c("IDP"),
            c("HMMA"),
            c("float"),
            c("int/logic"),
        ));
        eprintln!(
            "  {:28} regs {:>3} spills {:>5} loop {:>4} instr, {:>4} weights/pass, {} instr/weight",
            meta.name,
            f.registers,
            f.spills,
            f.loop_len,
            f.loop_weights.map_or("–".into(), |w| w.to_string()),
            per(f.loop_len)
        );
    }
    // Issue 17's offline target: the int8 GEMV main loop at ≤ 2.5 instructions per weight.
    let int8_m1 = md
        .lines()
        .find(|l| l.starts_with(&format!("| {INT8_GEMV_M1} |")))
        .and_then(|l| l.split('|').nth(8))
        .and_then(|v| v.trim().parse::<f64>().ok());
    if let Some(v) = int8_m1 {
        let verdict = if v <= INT8_TARGET { "met" } else { "NOT met" };
        md.push_str(&format!(
            "\nTarget: the int8 GEMV main loop (`{INT8_GEMV_M1}`) at ≤ {INT8_TARGET} \
             instructions per weight: {v:.2}, {verdict}.\n"
        ));
    }
    if let Some(parent) = out_md.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(&out_md, md).map_err(|e| format!("{}: {e}", out_md.display()))?;
    eprintln!(
        "xtask sass: wrote {} (sources, cubins and SASS in {})",
        out_md.display(),
        dir.display()
    );
    Ok(())
}
