//! `cargo xtask report accuracy`: the format comparison of issue "Evaluation" (protocol:
//! docs/METHOD.md §5).
//!
//! For each model (the embedded tiny Llama, SmolLM2-135M) and group size (128, per row) it
//! quantizes with every format through the `any4` CLI (`quantize --json`), measures perplexity
//! with `any4 eval --dataset ptb|botchan --json`, and keeps one JSON record per run in
//! `bench/results/accuracy.json`. Records already there for the same settings are reused, so an
//! interrupted report resumes; `--fresh` starts over. `docs/RESULTS.md` and
//! `docs/results/accuracy.png` are rendered from the records.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::plot;

mod methods;
mod render;

type Result<T> = std::result::Result<T, String>;

const RECORDS: &str = "bench/results/accuracy.json";
const RESULTS_MD: &str = "docs/RESULTS.md";
const CHART: &str = "docs/results/accuracy.png";

/// A model the report covers.
struct ModelSpec {
    name: &'static str,
    path: &'static str,
    seq_len: usize,
    /// Windows per dataset (`None`: the whole text).
    windows: Option<usize>,
    /// Evaluation texts: (column name, `--dataset` name or a file path).
    texts: &'static [(&'static str, Text)],
    fetch: Option<&'static str>,
    /// Built by the report itself (into `path`) before its first measurement.
    derive: Option<Derive>,
    /// Run when `--models` is not given.
    default: bool,
    /// Formats measured besides the baseline (`None`: every setting of [`settings`]).
    only: Option<&'static [Setting0]>,
    /// Also measure [`methods::settings`].
    methods: bool,
}

/// `(format, kmeans, calibration)` of a [`Setting`], as a constant.
type Setting0 = (&'static str, Option<&'static str>, &'static str);

/// A model made from another by quantizing it (`any4 quantize`) and dequantizing the result
/// (`any4 dequantize`): the same network with every linear weight rounded onto a lattice.
struct Derive {
    /// The source model.
    from: &'static str,
    /// `--format` and `--group-size` of the rounding.
    format: &'static str,
    group: &'static str,
}

/// Where an evaluation text comes from.
#[derive(Clone, Copy)]
enum Text {
    /// `any4 eval --dataset NAME`.
    Dataset(&'static str),
    /// `any4 eval --text PATH`.
    File(&'static str),
}

/// One quantization setting (a row of the tables).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Setting {
    /// `dense` for the baseline, else a `--format` name.
    pub format: String,
    /// `lloyd` or `exact` (anyN only).
    pub kmeans: Option<String>,
    /// `one-shot` or `sequential`.
    pub calibration: Option<String>,
    /// How codes are chosen beyond round-to-nearest: `gptq`, `act-scale`, `gptq+act-scale`,
    /// `gptq+act-order`, `gptq+act-order+act-scale` (`None`: round-to-nearest, the paper's
    /// method). See [`methods`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Calibration text (`None`: the built-in prompt). See [`methods::calib_args`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calib: Option<String>,
}

impl Setting {
    fn quant(format: &str, kmeans: Option<&str>, calibration: &str) -> Setting {
        Setting {
            format: format.into(),
            kmeans: kmeans.map(Into::into),
            calibration: Some(calibration.into()),
            method: None,
            calib: None,
        }
    }

    /// Row label, e.g. `any4 (k-means++, sequential)`.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(k) = &self.kmeans {
            parts.push(if k == "exact" {
                "exact DP"
            } else {
                "k-means++"
            });
        }
        if let Some(c) = &self.calibration
            && (self.kmeans.is_some() || c == "sequential")
        {
            parts.push(c.as_str());
        }
        if let Some(m) = &self.method {
            parts.push(m.as_str());
        }
        let calib;
        if let Some(c) = &self.calib {
            calib = format!("calib {c}");
            parts.push(&calib);
        }
        if self.format == "dense" {
            return "baseline (dense f32)".into();
        }
        if parts.is_empty() {
            self.format.clone()
        } else {
            format!("{} ({})", self.format, parts.join(", "))
        }
    }

    /// Short label for charts.
    pub fn short(&self) -> String {
        let mut s = self.format.clone();
        if self.kmeans.as_deref() == Some("exact") {
            s.push_str("-dp");
        }
        if self.calibration.as_deref() == Some("sequential") {
            s.push_str("-seq");
        }
        if let Some(m) = &self.method {
            s.push('-');
            s.push_str(m);
        }
        if let Some(c) = &self.calib {
            s.push('-');
            s.push_str(c);
        }
        s
    }
}

/// The settings of issue "Evaluation" §3, in table order.
fn settings() -> Vec<Setting> {
    let mut v = vec![Setting {
        format: "dense".into(),
        kmeans: None,
        calibration: None,
        method: None,
        calib: None,
    }];
    for f in ["int4", "fp4", "nf4"] {
        v.push(Setting::quant(f, None, "one-shot"));
    }
    for k in ["lloyd", "exact"] {
        for c in ["one-shot", "sequential"] {
            v.push(Setting::quant("any4", Some(k), c));
        }
    }
    for f in ["any3", "any2"] {
        v.push(Setting::quant(f, Some("lloyd"), "one-shot"));
    }
    v
}

/// One measured row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Model name (`tiny-llama`, `smollm2-135m`).
    pub model: String,
    /// `128`, `per-row`, or `-` for the baseline.
    pub group: String,
    /// What was run.
    pub setting: Setting,
    /// Window length.
    pub seq_len: usize,
    /// Window cap per dataset (`None`: all).
    pub windows: Option<usize>,
    /// Storage bits per quantized weight (4-bit code slots + parameters).
    pub bits_per_weight: Option<f64>,
    /// Bits per weight if codes used only the format's bits (any3: 3).
    pub format_bits_per_weight: Option<f64>,
    /// Weight-averaged `‖W − Ŵ‖² / ‖W‖²`.
    pub rel_mse: Option<f64>,
    /// Quantization pass wall time (calibration forward not included for one-shot).
    pub pass_seconds: Option<f64>,
    /// Calibration forward(s) plus the pass, wall time (`None` in records from before it was
    /// reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_seconds: Option<f64>,
    /// Perplexity per dataset.
    pub ppl: BTreeMap<String, f64>,
    /// Predicted tokens per dataset.
    pub tokens: BTreeMap<String, usize>,
    /// The tool commit the record was measured with.
    pub commit: String,
}

impl Record {
    fn key(&self) -> (String, String, Setting, usize, Option<usize>) {
        (
            self.model.clone(),
            self.group.clone(),
            self.setting.clone(),
            self.seq_len,
            self.windows,
        )
    }
}

/// The tiny model's texts. Botchan is 95% of its training text: its own held-out split
/// replaces it.
const TINY_TEXTS: &[(&str, Text)] = &[
    ("ptb", Text::Dataset("ptb")),
    ("held-out", Text::File("models/tiny-llama/heldout.txt")),
];

fn models(smollm2_windows: Option<usize>) -> Vec<ModelSpec> {
    vec![
        ModelSpec {
            name: "tiny-llama",
            path: "models/tiny-llama",
            // Its training context (models/tiny-llama/TRAINING.md): later positions were never
            // seen, so longer windows measure extrapolation, not the format.
            seq_len: 256,
            windows: None,
            texts: TINY_TEXTS,
            fetch: None,
            derive: None,
            default: true,
            only: None,
            methods: true,
        },
        ModelSpec {
            name: "smollm2-135m",
            path: ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            seq_len: 2048,
            windows: smollm2_windows,
            texts: &[
                ("ptb", Text::Dataset("ptb")),
                ("botchan", Text::Dataset("botchan")),
            ],
            fetch: Some("smollm2"),
            derive: None,
            default: true,
            only: None,
            methods: true,
        },
        // The SmolLM2 question on a model we trained in f32: the tiny model with every linear
        // first rounded to a Q4_1-like lattice (int4 = asymmetric min/max, scale = (max − min)/15
        // and zero = min in f16, per block of 32), then requantized like the others. ~9 minutes
        // on 2 cores (11 runs of ~45 s), so only with `--models tiny-llama-q41`.
        ModelSpec {
            name: "tiny-llama-q41",
            path: "target/report-tmp/tiny-llama-q41",
            seq_len: 256,
            windows: None,
            texts: TINY_TEXTS,
            fetch: None,
            derive: Some(Derive {
                from: "models/tiny-llama",
                format: "int4",
                group: "32",
            }),
            default: false,
            only: Some(&[
                ("int4", None, "one-shot"),
                ("fp4", None, "one-shot"),
                ("nf4", None, "one-shot"),
                ("any4", Some("lloyd"), "one-shot"),
                ("any4", Some("exact"), "one-shot"),
            ]),
            methods: false,
        },
    ]
}

impl ModelSpec {
    /// The settings measured on this model, in table order (the baseline first).
    fn settings(&self) -> Vec<Setting> {
        settings()
            .into_iter()
            .filter(|s| {
                s.format == "dense"
                    || self.only.is_none_or(|o| {
                        o.iter().any(|&(f, k, c)| {
                            s.format == f
                                && s.kmeans.as_deref() == k
                                && s.calibration.as_deref() == Some(c)
                        })
                    })
            })
            .collect()
    }
}

/// Build a derived model into `spec.path`: `any4 quantize` into a scratch folder, then
/// `any4 dequantize` from it. Rebuilt on every run that measures something (a second or so),
/// so a stale folder from another commit is never measured.
fn derive_model(spec: &ModelSpec, d: &Derive) -> Result<()> {
    let s = |x: &str| x.to_string();
    let lattice = format!("{}-{}-g{}", spec.path, d.format, d.group);
    let q = any4_json(&[
        s("quantize"),
        s("--model"),
        s(d.from),
        s("--out"),
        lattice.clone(),
        s("--format"),
        s(d.format),
        s("--group-size"),
        s(d.group),
        s("--json"),
    ])?;
    any4_json(&[
        s("dequantize"),
        s("--model"),
        lattice.clone(),
        s("--out"),
        s(spec.path),
        s("--json"),
    ])?;
    let _ = fs::remove_dir_all(&lattice);
    eprintln!(
        "report: {} = {} rounded to {} group {} (rel. MSE {:.3e}) and dequantized",
        spec.name,
        d.from,
        d.format,
        d.group,
        q["rel_mse"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// `report accuracy [--models tiny-llama,smollm2-135m,tiny-llama-q41] [--windows N|all] [--fresh]
/// [--render]`; without `--models`, the models marked `default`.
pub fn accuracy(args: &[String]) -> Result<()> {
    let mut only: Option<Vec<String>> = None;
    // SmolLM2 windows of 2048 tokens per text: 2 (4094 tokens, the same for every format, so
    // the comparison is paired) keeps a full report near an hour on 2 CPU cores; the committed
    // records are at 2. `--windows all` is the whole texts (hours).
    let mut windows = Some(2);
    let mut fresh = false;
    let mut render_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--models" => {
                let v = it.next().ok_or("--models needs a value")?;
                only = Some(v.split(',').map(String::from).collect());
            }
            "--windows" => {
                let v = it.next().ok_or("--windows needs a value")?;
                windows = if v == "all" {
                    None
                } else {
                    Some(v.parse().map_err(|e| format!("--windows {v}: {e}"))?)
                };
            }
            "--fresh" => fresh = true,
            "--render" => render_only = true,
            other => return Err(format!("report accuracy: unknown argument `{other}`")),
        }
    }
    let mut records: Vec<Record> = if fresh { Vec::new() } else { load_records()? };
    if !render_only {
        build_cli()?;
        let commit = git_commit();
        for spec in models(windows) {
            let selected = match &only {
                Some(o) => o.iter().any(|n| n == spec.name),
                None => spec.default,
            };
            if !selected {
                continue;
            }
            let mut todo = Vec::new();
            let extra = if spec.methods {
                methods::settings()
            } else {
                Vec::new()
            };
            let runs = ["128", "per-row"]
                .into_iter()
                .flat_map(|g| spec.settings().into_iter().map(move |s| (g, s)))
                .chain(extra);
            for (group, setting) in runs {
                {
                    let group = if setting.format == "dense" {
                        "-"
                    } else {
                        group
                    };
                    let rec = Record {
                        model: spec.name.into(),
                        group: group.into(),
                        setting: setting.clone(),
                        seq_len: spec.seq_len,
                        windows: spec.windows,
                        bits_per_weight: None,
                        format_bits_per_weight: None,
                        rel_mse: None,
                        pass_seconds: None,
                        quant_seconds: None,
                        ppl: BTreeMap::new(),
                        tokens: BTreeMap::new(),
                        commit: commit.clone(),
                    };
                    if !records.iter().any(|r| r.key() == rec.key())
                        && !todo.iter().any(|r: &Record| r.key() == rec.key())
                    {
                        todo.push(rec);
                    }
                }
            }
            if todo.is_empty() {
                continue;
            }
            match &spec.derive {
                Some(d) => derive_model(&spec, d)?,
                None if !Path::new(spec.path).exists() => {
                    return Err(format!(
                        "{}: not found (run `cargo xtask fetch {}`)",
                        spec.path,
                        spec.fetch.unwrap_or("?")
                    ));
                }
                None => {}
            }
            for rec in todo {
                let t = Instant::now();
                let rec = measure(&spec, rec)?;
                eprintln!(
                    "report: {} group {} {}: ppl {:?} ({:.0}s)",
                    rec.model,
                    rec.group,
                    rec.setting.label(),
                    rec.ppl,
                    t.elapsed().as_secs_f64()
                );
                records.push(rec);
                save_records(&records)?;
            }
        }
    }
    render::render(&records)
}

fn any4_bin() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    target.join("release/any4")
}

fn build_cli() -> Result<()> {
    let st = Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "any4-cli"])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("cargo build -p any4-cli failed ({st})"))
    }
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Run `any4 ARGS` and parse the last stdout line as JSON.
fn any4_json(args: &[String]) -> Result<serde_json::Value> {
    let out = Command::new(any4_bin())
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", any4_bin().display()))?;
    if !out.status.success() {
        return Err(format!(
            "`any4 {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("`any4 {}`: bad JSON {line:?}: {e}", args[0]))
}

fn measure(spec: &ModelSpec, mut rec: Record) -> Result<Record> {
    let s = |x: &str| x.to_string();
    let tmp = PathBuf::from("target/report-tmp").join(format!(
        "{}-{}-{}",
        spec.name,
        rec.group,
        rec.setting.short()
    ));
    let model = if rec.setting.format == "dense" {
        PathBuf::from(spec.path)
    } else {
        let mut a = vec![
            s("quantize"),
            s("--model"),
            s(spec.path),
            s("--out"),
            tmp.display().to_string(),
            s("--format"),
            rec.setting.format.clone(),
            s("--group-size"),
            rec.group.clone(),
            s("--json"),
        ];
        if let Some(k) = &rec.setting.kmeans {
            a.extend([s("--kmeans"), k.clone()]);
        }
        if rec.setting.calibration.as_deref() == Some("sequential") {
            a.push(s("--sequential"));
        }
        a.extend(methods::method_args(rec.setting.method.as_deref())?);
        a.extend(methods::calib_args(rec.setting.calib.as_deref())?);
        let q = any4_json(&a)?;
        rec.bits_per_weight = q["bits_per_weight"].as_f64();
        rec.format_bits_per_weight = q["format_bits_per_weight"].as_f64();
        rec.rel_mse = q["rel_mse"].as_f64();
        rec.pass_seconds = q["pass_seconds"].as_f64();
        rec.quant_seconds = q["quant_seconds"].as_f64();
        tmp.clone()
    };
    for (d, text) in spec.texts {
        let (flag, value) = match text {
            Text::Dataset(n) => ("--dataset", n),
            Text::File(p) => ("--text", p),
        };
        let mut a = vec![
            s("eval"),
            s("--model"),
            model.display().to_string(),
            s(flag),
            s(value),
            s("--seq-len"),
            spec.seq_len.to_string(),
            s("--json"),
        ];
        if let Some(w) = spec.windows {
            a.extend([s("--max-windows"), w.to_string()]);
        }
        let e = any4_json(&a)?;
        let ppl = e["ppl"]
            .as_f64()
            .ok_or(format!("eval {d}: no ppl in {e}"))?;
        rec.ppl.insert(d.to_string(), ppl);
        rec.tokens
            .insert(d.to_string(), e["tokens"].as_u64().unwrap_or(0) as usize);
    }
    let _ = fs::remove_dir_all(&tmp);
    Ok(rec)
}

fn load_records() -> Result<Vec<Record>> {
    match fs::read_to_string(RECORDS) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| format!("{RECORDS}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{RECORDS}: {e}")),
    }
}

/// Write `text` to `path` through a temp file and a rename, so an interrupted report never
/// leaves a half-written record file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn save_records(records: &[Record]) -> Result<()> {
    let json = serde_json::to_string_pretty(records).map_err(|e| e.to_string())?;
    write_atomic(Path::new(RECORDS), json.as_bytes())
}
