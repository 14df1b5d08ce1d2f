//! Quantizing a matrix: group scaling, table learning or lookup, code assignment.

use rayon::prelude::*;

use crate::config::{Any4Config, Format, GroupSize, ParamDtype};
use crate::error::{Error, Result};
use crate::kmeans;
use crate::levels::{self, Domain};
use crate::pack::{self, words_per_row};
use crate::view::QuantizedView;

/// Entries of every stored table (anyN with N < 4 pads the unused ones; codes never index them).
pub const TABLE_LEN: usize = 16;

/// Smallest group range / absmax used to form a scale, so constant groups get a finite scale.
const MIN_RANGE: f32 = 1e-6;

/// A `[rows, cols]` weight matrix in any4 form:
/// `w[i, j] ≈ table[i, code(i, j)] · scale[i, j / G] + zero[i, j / G]`.
///
/// Layout (the portable storage layout, see [`crate::pack`] for the bit order):
/// - `codes`: `rows × ceil(cols / 8)` u32 words;
/// - `table`: `table_rows × 16` f32, one table per row for learned formats, a single shared
///   table (`table_rows = 1`) for int4, nf4 and fp4;
/// - `scales`, `zeros`: `rows × groups` f32, `groups = ceil(cols / G)`; the last group of a row
///   is shorter when `G` does not divide `cols`.
///
/// Tables, scales and zeros hold values exactly representable in the config's
/// [`ParamDtype`](crate::ParamDtype), so storing them in that dtype is lossless.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    config: Any4Config,
    rows: usize,
    cols: usize,
    codes: Vec<u32>,
    table: Vec<f32>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
}

/// Quantize a row-major `[rows, cols]` f32 matrix.
///
/// `stats`, when given, holds the calibration statistic `x̄_j` of each of the `cols` input
/// channels (the mean over tokens of the layer input, signed); learned tables then weight each
/// weight's k-means sample by `|x̄_j| · scale` (docs/METHOD.md §2). Fixed-table formats ignore it.
///
/// Rows are processed in parallel; each row's k-means is seeded from `(seed, row)`, so the
/// result is identical for any number of threads.
pub fn quantize_matrix(
    weights: &[f32],
    shape: [usize; 2],
    stats: Option<&[f32]>,
    config: &Any4Config,
) -> Result<QuantizedMatrix> {
    let [rows, cols] = shape;
    validate_input(weights, shape, stats)?;
    let group = config.group_size().len_for(cols);
    let groups = config.group_size().groups_for(cols);
    let wpr = words_per_row(cols);
    let fixed = levels::fixed_table(config.format(), config.scaling());
    let (mut codes, mut scales, mut zeros) = (
        vec![0u32; rows * wpr],
        vec![0.0f32; rows * groups],
        vec![0.0f32; rows * groups],
    );
    // One table per row while working; fixed formats keep a single shared copy at the end.
    let mut table = vec![0.0f32; rows * TABLE_LEN];
    let ctx = RowContext {
        config,
        cols,
        group,
        stats,
        fixed,
    };
    weights
        .par_chunks(cols)
        .zip(codes.par_chunks_mut(wpr))
        .zip(scales.par_chunks_mut(groups))
        .zip(zeros.par_chunks_mut(groups))
        .zip(table.par_chunks_mut(TABLE_LEN))
        .enumerate()
        .try_for_each(|(i, ((((w, c), s), z), t))| ctx.row(i, w, c, s, z, t))?;
    if fixed.is_some() {
        table.truncate(TABLE_LEN);
    }
    let q = QuantizedMatrix {
        config: *config,
        rows,
        cols,
        codes,
        table,
        scales,
        zeros,
    };
    Ok(q)
}

pub(crate) fn validate_input(
    weights: &[f32],
    [rows, cols]: [usize; 2],
    stats: Option<&[f32]>,
) -> Result<()> {
    if rows == 0 {
        return Err(Error::NoRows);
    }
    if cols < 16 {
        return Err(Error::KTooSmall { k: cols });
    }
    if weights.len() != rows * cols {
        return Err(Error::ShapeMismatch {
            what: "weights [rows, cols]",
            expected: rows * cols,
            got: weights.len(),
        });
    }
    if let Some(s) = stats {
        if s.len() != cols {
            return Err(Error::ShapeMismatch {
                what: "activation statistics [cols]",
                expected: cols,
                got: s.len(),
            });
        }
        if let Some((channel, &value)) = s.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteStat { channel, value });
        }
    }
    if let Some(idx) = weights.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteWeight {
            row: idx / cols,
            col: idx % cols,
            value: weights[idx],
        });
    }
    Ok(())
}

/// What every row needs; rows are independent.
struct RowContext<'a> {
    config: &'a Any4Config,
    cols: usize,
    group: usize,
    stats: Option<&'a [f32]>,
    fixed: Option<[f32; TABLE_LEN]>,
}

impl RowContext<'_> {
    fn row(
        &self,
        row: usize,
        w: &[f32],
        codes: &mut [u32],
        scales: &mut [f32],
        zeros: &mut [f32],
        table_out: &mut [f32],
    ) -> Result<()> {
        let dtype = self.config.param_dtype();
        let domain = levels::domain(self.config.format(), self.config.scaling());
        // 1. Per-group scale and zero, rounded to the stored precision first so that the codes
        //    are chosen against exactly the parameters that will be stored.
        for (g, chunk) in w.chunks(self.group).enumerate() {
            let (s, z) = group_params(chunk, domain, dtype, row, g)?;
            scales[g] = s;
            zeros[g] = z;
        }
        // 2. Scaled values `ws = (w − zero) / scale` on the format's domain.
        let scaled: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(j, &v)| (v - zeros[j / self.group]) / scales[j / self.group])
            .collect();
        // 3. The table: fixed, or learned by weighted k-means on the scaled values.
        let levels = self.config.format().levels();
        let table = match self.fixed {
            Some(t) => t,
            None => {
                let sample_weights: Option<Vec<f32>> = self.stats.map(|x| {
                    (0..self.cols)
                        .map(|j| x[j].abs() * scales[j / self.group])
                        .collect()
                });
                learn_table(&scaled, sample_weights.as_deref(), self.config, row)
            }
        };
        table_out.copy_from_slice(&table);
        // 4. Nearest table entry for every weight.
        let valid = &table[..levels];
        let row_codes: Vec<u8> = scaled
            .iter()
            .map(|&v| levels::nearest(valid, v) as u8)
            .collect();
        pack::pack_row(&row_codes, codes);
        Ok(())
    }
}

/// The learned table of one row: weighted k-means on its scaled values (seeded by the row),
/// centroids rounded to the parameter dtype; entries past the fitted centroids repeat the last.
pub(crate) fn learn_table(
    scaled: &[f32],
    sample_weights: Option<&[f32]>,
    config: &Any4Config,
    row: usize,
) -> [f32; TABLE_LEN] {
    let levels = config.format().levels();
    let fit = kmeans::fit(scaled, sample_weights, levels, config.kmeans(), row as u64);
    std::array::from_fn(|i| {
        config
            .param_dtype()
            .round(fit.centroids[i.min(fit.centroids.len() - 1)])
    })
}

/// [`raw_group_params`] of group `g` of `row`, refusing a non-finite scale or zero (naming the
/// row and group).
pub(crate) fn group_params(
    chunk: &[f32],
    domain: Domain,
    dtype: ParamDtype,
    row: usize,
    g: usize,
) -> Result<(f32, f32)> {
    let (s, z) = raw_group_params(chunk, domain, dtype);
    for (what, value) in [("scale", s), ("zero", z)] {
        if !value.is_finite() {
            return Err(Error::InvalidParameter {
                what,
                row,
                index: g,
                value,
            });
        }
    }
    Ok((s, z))
}

/// `(scale, zero)` of one group, rounded to `dtype` (scale kept strictly positive).
fn raw_group_params(chunk: &[f32], domain: Domain, dtype: ParamDtype) -> (f32, f32) {
    let round_scale = |s: f32| dtype.round(s).max(dtype.min_positive());
    match domain {
        Domain::Range { lo, hi } => {
            let (mn, mx) = chunk
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            if mx - mn < MIN_RANGE {
                // (Nearly) constant group: put the table's zero entry — or, for grids starting
                // at 0, its first entry — exactly on the value, so it round-trips.
                return (round_scale(MIN_RANGE / (hi - lo)), dtype.round(mn));
            }
            let s = round_scale((mx - mn) / (hi - lo));
            (s, dtype.round(mn - lo * s))
        }
        Domain::Symmetric { bound } => {
            let absmax = chunk.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            (round_scale(absmax.max(MIN_RANGE) / bound), 0.0)
        }
    }
}

impl QuantizedMatrix {
    /// A random any4 weight `[n, k]` at group 128 (random codes, an ascending f16-exact table
    /// per row, small scales and zeros): for benchmarks, whose speed does not depend on the
    /// values. The same `seed` gives the same matrix.
    pub fn random(n: usize, k: usize, seed: u64) -> Self {
        let mut r = crate::rng::SplitMix64::new(seed);
        let cfg = Any4Config::new(Format::Any4).with_group_size(GroupSize::G128);
        let groups = cfg.group_size().groups_for(k);
        let codes = (0..n * k.div_ceil(8))
            .map(|_| r.next_u64() as u32)
            .collect();
        let table = (0..n)
            .flat_map(|_| {
                let mut t: Vec<f32> = (0..16)
                    .map(|_| half::f16::from_f64(r.next_f64() * 15.0).to_f32())
                    .collect();
                t.sort_by(f32::total_cmp);
                t
            })
            .collect();
        let scales = (0..n * groups)
            .map(|_| 1e-3 + r.next_f64() as f32 * 1e-3)
            .collect();
        let zeros = (0..n * groups)
            .map(|_| -0.01 * r.next_f64() as f32)
            .collect();
        Self::from_parts(cfg, [n, k], codes, table, scales, zeros)
            .expect("random parts are consistent by construction")
    }

    /// Assemble a matrix from stored parts (e.g. a checkpoint), checking every length, that the
    /// parameters are finite and that each code is within the format's table.
    pub fn from_parts(
        config: Any4Config,
        [rows, cols]: [usize; 2],
        codes: Vec<u32>,
        table: Vec<f32>,
        scales: Vec<f32>,
        zeros: Vec<f32>,
    ) -> Result<Self> {
        // Lengths of codes, scales and zeros (and rows/cols limits) are the view's checks.
        QuantizedView::new(
            [rows, cols],
            config.group_size(),
            &codes,
            &table,
            &scales,
            &zeros,
        )?;
        let groups = config.group_size().groups_for(cols);
        let table_rows = config.format().table_rows(rows);
        if table.len() != table_rows * TABLE_LEN {
            return Err(Error::ShapeMismatch {
                what: "table [table_rows, 16]",
                expected: table_rows * TABLE_LEN,
                got: table.len(),
            });
        }
        for (what, values, width) in [
            ("table", &table, TABLE_LEN),
            ("scale", &scales, groups),
            ("zero", &zeros, groups),
        ] {
            if let Some(p) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidParameter {
                    what,
                    row: p / width,
                    index: p % width,
                    value: values[p],
                });
            }
        }
        let q = QuantizedMatrix {
            config,
            rows,
            cols,
            codes,
            table,
            scales,
            zeros,
        };
        let levels = config.format().levels();
        if levels < TABLE_LEN {
            for row in 0..rows {
                let words = q.row_codes(row);
                if let Some(col) = (0..cols).find(|&j| pack::code(words, j) as usize >= levels) {
                    return Err(Error::CodeOutOfRange {
                        row,
                        col,
                        code: pack::code(words, col),
                        levels,
                    });
                }
            }
        }
        Ok(q)
    }

    /// The configuration it was quantized with.
    pub fn config(&self) -> &Any4Config {
        &self.config
    }
    /// Number of rows (output features, `N`).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (input features, `K`).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
    /// Length of a (full) group for this matrix: the group size, or `cols` when per row.
    pub fn group_len(&self) -> usize {
        self.config.group_size().len_for(self.cols)
    }
    /// Groups per row.
    pub fn groups(&self) -> usize {
        self.config.group_size().groups_for(self.cols)
    }
    /// Packed codes, `rows × ceil(cols / 8)` words.
    pub fn codes(&self) -> &[u32] {
        &self.codes
    }
    /// Borrowed view (what [`matmul`](QuantizedView::matmul) and dequantization run on).
    pub fn view(&self) -> QuantizedView<'_> {
        QuantizedView::new(
            self.shape(),
            self.config.group_size(),
            &self.codes,
            &self.table,
            &self.scales,
            &self.zeros,
        )
        .expect("a QuantizedMatrix is consistent by construction")
    }
    /// Packed codes of one row.
    pub fn row_codes(&self, row: usize) -> &[u32] {
        self.view().row_codes(row)
    }
    /// Stored tables, `table_rows × 16`.
    pub fn table(&self) -> &[f32] {
        &self.table
    }
    /// 1 for shared fixed tables, `rows` for learned ones.
    pub fn table_rows(&self) -> usize {
        self.table.len() / TABLE_LEN
    }
    /// The table used by `row`.
    pub fn row_table(&self, row: usize) -> &[f32; TABLE_LEN] {
        self.view().row_table(row)
    }
    /// Per-group scales, `rows × groups`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// Per-group zeros, `rows × groups`.
    pub fn zeros(&self) -> &[f32] {
        &self.zeros
    }
    /// Code of element `(row, col)`.
    pub fn code(&self, row: usize, col: usize) -> u8 {
        pack::code(self.row_codes(row), col)
    }
    /// The same matrix with tables expanded to one per row (what per-row kernels consume).
    pub fn table_per_row(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|r| *self.row_table(r)).collect()
    }

    /// Storage in bits per weight: 4-bit codes, plus scale and zero per group and the tables, in
    /// the parameter dtype (4.3125 for per-row any4 tables at K = 4096, G = 128 in 16-bit).
    pub fn bits_per_weight(&self) -> f64 {
        self.config.bits_per_weight(self.shape())
    }

    /// Dequantize one row into `out` (`cols` values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        self.view().dequantize_row(row, out)
    }

    /// The dense `[rows, cols]` matrix the codes represent.
    pub fn dequantize(&self) -> Vec<f32> {
        self.view().dequantize()
    }

    /// `y = x · Wᵀ` for row-major `x: [m, cols]` → `[m, rows]` (see [`QuantizedView::matmul`]).
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.view().matmul(x, m)
    }

    /// Reconstruction error against the original weights (see [`Reconstruction`]).
    pub fn reconstruction_error(
        &self,
        original: &[f32],
        stats: Option<&[f32]>,
    ) -> Result<Reconstruction> {
        validate_input(original, self.shape(), stats)?;
        let deq = self.dequantize();
        let cols = self.cols;
        let (mut sq, mut wsq, mut wsum, mut max_abs) = (0.0f64, 0.0f64, 0.0f64, 0.0f32);
        for (idx, (&a, &b)) in original.iter().zip(&deq).enumerate() {
            let e = a - b;
            let w = stats.map_or(1.0, |s| s[idx % cols].abs() as f64);
            sq += (e as f64).powi(2);
            wsq += w * (e as f64).powi(2);
            wsum += w;
            max_abs = max_abs.max(e.abs());
        }
        let n = original.len() as f64;
        Ok(Reconstruction {
            mse: sq / n,
            weighted_mse: if wsum > 0.0 { wsq / wsum } else { sq / n },
            max_abs,
        })
    }

    /// Whether this format learns its table.
    pub fn format(&self) -> Format {
        self.config.format()
    }
}

/// How far a quantized matrix is from the original.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconstruction {
    /// Mean squared error over all weights.
    pub mse: f64,
    /// `Σ |x̄_j| (w − ŵ)² / Σ |x̄_j|`: squared error weighted by activation magnitude, a proxy
    /// for output error (equals `mse` without statistics).
    pub weighted_mse: f64,
    /// Largest absolute error.
    pub max_abs: f32,
}
