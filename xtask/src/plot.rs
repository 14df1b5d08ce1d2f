//! PNG charts (plotters, bitmap backend) for the accuracy report and the kernel bench.
//!
//! Text needs a TrueType font: the first of [`FONTS`] that exists is registered as
//! `sans-serif` (Debian: `fonts-dejavu-core`), so the charts render the same on any machine
//! that has it, without a system font library.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

type Result<T> = std::result::Result<T, String>;

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    let path = FONTS.iter().find(|p| Path::new(p).exists()).ok_or(format!(
        "no TrueType font found (tried {}; `apt-get install fonts-dejavu-core`)",
        FONTS.join(", ")
    ))?;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    // plotters keeps registered fonts for the process lifetime.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path}: not a usable TrueType font"))
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("chart: {e:?}")
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A chart panel: its title and bars of `(label, value)` (a missing value draws no bar).
pub type Panel = (String, Vec<(String, Option<f64>)>);

/// One bar chart per panel, log-scaled perplexity.
pub fn accuracy_chart(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols);
    let root = BitMapBackend::new(path, (1400, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, (title, bars)) in root.split_evenly((rows, cols)).iter().zip(panels) {
        bar_panel(area, title, bars)?;
    }
    root.present().map_err(err)
}

fn bar_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    bars: &[(String, Option<f64>)],
) -> Result<()> {
    let values: Vec<f64> = bars.iter().filter_map(|b| b.1).collect();
    let (Some(lo), Some(hi)) = (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    ) else {
        return Ok(());
    };
    // Log scale drawn as ln(v) on a linear axis, so ticks are labelled at any range (plotters'
    // log axis labels only powers of ten).
    let (lo, hi) = ((lo * 0.8).ln(), (hi * 1.5).ln());
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..bars.len()).into_segmented(), lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                labels.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_label_style(("sans-serif", 12))
        .y_desc("perplexity (log scale)")
        .y_label_formatter(&|v| format!("{:.1}", v.exp()))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().filter_map(|(i, (label, v))| {
            let v = (*v)?;
            let color = if label == "dense" {
                RGBColor(120, 120, 120)
            } else if label.starts_with("any") {
                PALETTE[0]
            } else {
                PALETTE[1]
            };
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), lo),
                    (SegmentValue::Exact(i + 1), v.ln()),
                ],
                color.filled(),
            );
            r.set_margin(0, 0, 6, 6);
            Some(r)
        }))
        .map_err(err)?;
    Ok(())
}

/// A record of `bench/results/kernels-<backend>.json`.
#[derive(Debug, Deserialize)]
struct KernelRecord {
    backend: String,
    m: usize,
    n: usize,
    k: usize,
    speedup: f64,
}

/// `bench/results/kernels-*.json` → one PNG: any4 speed-up over dense vs K = N, a line per batch,
/// a panel per backend.
pub fn kernels_chart(inputs: &[std::path::PathBuf], out: &Path) -> Result<()> {
    register_font()?;
    let mut panels: Vec<(String, Vec<KernelRecord>)> = Vec::new();
    for p in inputs {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut recs: Vec<KernelRecord> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        // Lines over K = N: non-square shapes (`--shapes`) stay in the tables only.
        recs.retain(|r| r.n == r.k);
        if let Some(first) = recs.first() {
            panels.push((first.backend.clone(), recs));
        }
    }
    if panels.is_empty() {
        return Err("no kernel bench records (run `cargo xtask bench kernels` first)".into());
    }
    let root = BitMapBackend::new(out, (700 * panels.len() as u32, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, (backend, recs)) in root.split_evenly((1, panels.len())).iter().zip(&panels) {
        let kmin = recs.iter().map(|r| r.k).min().unwrap_or(1) as f64;
        let kmax = recs.iter().map(|r| r.k).max().unwrap_or(1) as f64;
        let smax = recs.iter().map(|r| r.speedup).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("any4 vs dense matmul, {backend}"),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((kmin * 0.8..kmax * 1.25).log_scale(), 0.0..smax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("K = N")
            .y_desc("speed-up (dense time / any4 time)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                [(kmin * 0.8, 1.0), (kmax * 1.25, 1.0)],
                BLACK.mix(0.4),
            ))
            .map_err(err)?;
        let mut batches: Vec<usize> = recs.iter().map(|r| r.m).collect();
        batches.sort_unstable();
        batches.dedup();
        for (ci, m) in batches.iter().enumerate() {
            let color = PALETTE[ci % PALETTE.len()];
            let mut pts: Vec<(f64, f64)> = recs
                .iter()
                .filter(|r| r.m == *m)
                .map(|r| (r.k as f64, r.speedup))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(format!("batch {m}"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}
