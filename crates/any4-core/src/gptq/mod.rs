//! Error feedback (GPTQ, Frantar et al. 2023) with learned per-row tables.
//!
//! Round-to-nearest picks every code on its own. The output error of a row `w` quantized to
//! `q` (`δ = w − q`) over the calibration tokens is `δ·H·δᵀ` (see [`crate::gram`]). Factor the
//! dampened Gram matrix as `H = T·Tᵀ` with `T` **upper** triangular; then
//!
//! `δ·H·δᵀ = ‖δ·T‖² = Σ_j ( Σ_{i≤j} δ_i·T_ij )²`,
//!
//! and term `j` only involves columns `0..=j`. Choosing the codes column by column, each to zero
//! its own term given the earlier ones, means rounding the **target**
//!
//! `t_j = w_j + Σ_{i<j} δ_i·R_ij`, with `R_ij = T_ij / T_jj`,
//!
//! to the nearest table entry: the earlier columns' errors are fed forward through `R`. Term
//! `j` is then `T_jj²·(t_j − q_j)²`, so the objective of a row is known as the pass goes. This
//! is GPTQ's update (its Cholesky factor of `H⁻¹` is `T⁻¹`), obtained without inverting `H`:
//! `T` is the lower Cholesky factor of `H` with rows and columns reversed.
//!
//! The pass runs in blocks of [`BLOCK`] columns: inside a block each column's error is
//! propagated at once to the rest of the block; the later columns receive a block's errors in
//! one matrix product (GPTQ's lazy batch update). Rows are independent and run in parallel.
//!
//! **Learned tables.** Each row's table is learned first, exactly as round-to-nearest learns it
//! (weighted k-means on the group-scaled weights). With `refit`, the table is then re-learned by
//! weighted k-means on the pass's scaled targets, with sample weights `T_jj²·s_g²` — the weights
//! of the pass's own objective, `Σ_j T_jj²·s_g²·(t̃_j − table[c_j])²` in the scaled domain — and
//! the pass is rerun with it; each row keeps whichever pass had the lower objective.
//!
//! **Group scales.** [`GroupParams::Static`] takes each group's scale and zero from the
//! original weights (as round-to-nearest); [`GroupParams::Dynamic`] computes them from the
//! targets when the pass reaches the group's first column, so the range covers what the error
//! feedback asks the group to represent (GPTQ's default). The block size is a multiple of
//! every supported group size below it and divides those above, so a group's targets are final
//! when its first column is reached.
//!
//! **Column order (`act_order`).** The pass may take the columns in decreasing order of
//! `E[x_j²]` (GPTQ's act-order): the channels that weigh most in the output are quantized first,
//! while the most later columns remain to absorb their error. The factor is then built for the
//! permuted `H` ([`HessianFactor::for_config`]); groups stay the stored ones (consecutive input
//! channels), so their scales and zeros are static (taken from the original weights) — a
//! group's columns are scattered over the pass.
//!
//! **Damping and dead channels.** `H` is normalised per token and `damp · mean(diag H)` is added
//! to its diagonal. A channel the calibration never excited (`H_jj = 0`, hence a zero row and
//! column) gets the mean diagonal instead: its column is rounded on its own and passes no error
//! on (its weight is kept, not zeroed). If nothing was excited at all, `H` becomes the identity
//! and the pass is round-to-nearest.

mod pass;
#[cfg(test)]
mod tests;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::Any4Config;
use crate::error::{Error, Result};
use crate::gram::Gram;
use crate::linalg::cholesky_lower;
use crate::pack;
use crate::quantize::{QuantizedMatrix, TABLE_LEN, validate_input};

pub use pass::BLOCK;

/// Where group scales and zeros come from during error feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupParams {
    /// From the original weights' group min/max (or absmax), before the pass.
    Static,
    /// From the error-fed targets, when the pass reaches the group.
    #[default]
    Dynamic,
}

/// How the k-means samples of a learned table are weighted before the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableWeights {
    /// `|x̄_j|·s_g`, the paper's activation weighting (as round-to-nearest uses).
    Mean,
    /// `E[x_j²]·s_g²` from the Gram matrix's diagonal: the diagonal of the output error
    /// `Σ_j E[x_j²]·(w_j − ŵ_j)²` written in the scaled domain.
    #[default]
    Gram,
}

/// Options of error feedback.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "GptqRepr", into = "GptqRepr")]
pub struct GptqConfig {
    damp: f64,
    group_params: GroupParams,
    refit: bool,
    table_weights: TableWeights,
    act_order: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            damp: 0.01,
            group_params: GroupParams::Dynamic,
            refit: true,
            table_weights: TableWeights::Gram,
            act_order: false,
        }
    }
}

impl GptqConfig {
    /// Fraction of the mean diagonal added to `H`'s diagonal (default 0.01).
    pub fn damp(&self) -> f64 {
        self.damp
    }
    /// Where group scales come from (default [`GroupParams::Dynamic`]).
    pub fn group_params(&self) -> GroupParams {
        self.group_params
    }
    /// Whether learned tables are refit on the pass's targets (default true; fixed tables
    /// ignore it).
    pub fn refit(&self) -> bool {
        self.refit
    }
    /// Set the damping fraction (finite, in `[0, 1]`).
    pub fn with_damp(mut self, damp: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&damp) {
            return Err(Error::InvalidMethodOption("GPTQ damping must be in [0, 1]"));
        }
        self.damp = damp;
        Ok(self)
    }
    /// Set where group scales come from.
    pub fn with_group_params(mut self, g: GroupParams) -> Self {
        self.group_params = g;
        self
    }
    /// Set whether learned tables are refit.
    pub fn with_refit(mut self, refit: bool) -> Self {
        self.refit = refit;
        self
    }
    /// How the first learned tables weight their samples (default [`TableWeights::Gram`]).
    pub fn table_weights(&self) -> TableWeights {
        self.table_weights
    }
    /// Set how the first learned tables weight their samples.
    pub fn with_table_weights(mut self, w: TableWeights) -> Self {
        self.table_weights = w;
        self
    }
    /// Whether columns are taken in decreasing order of `E[x_j²]` (default false; implies
    /// static group parameters, see the module docs).
    pub fn act_order(&self) -> bool {
        self.act_order
    }
    /// Set the column order.
    pub fn with_act_order(mut self, act_order: bool) -> Self {
        self.act_order = act_order;
        self
    }
}

#[derive(Serialize, Deserialize)]
struct GptqRepr {
    damp: f64,
    group_params: GroupParams,
    refit: bool,
    #[serde(default)]
    table_weights: TableWeights,
    #[serde(default)]
    act_order: bool,
}

impl TryFrom<GptqRepr> for GptqConfig {
    type Error = Error;
    fn try_from(r: GptqRepr) -> Result<Self> {
        Ok(GptqConfig::default()
            .with_damp(r.damp)?
            .with_group_params(r.group_params)
            .with_refit(r.refit)
            .with_table_weights(r.table_weights)
            .with_act_order(r.act_order))
    }
}

impl From<GptqConfig> for GptqRepr {
    fn from(c: GptqConfig) -> Self {
        GptqRepr {
            damp: c.damp,
            group_params: c.group_params,
            refit: c.refit,
            table_weights: c.table_weights,
            act_order: c.act_order,
        }
    }
}

/// The factor error feedback runs on: `H = T·Tᵀ` (`T` upper), stored as `R_ij = T_ij / T_jj`
/// (f32, row-major `K × K`, zero below the diagonal) and `T_jj²` (the weight of column `j`'s
/// term in the objective).
#[derive(Debug, Clone, PartialEq)]
pub struct HessianFactor {
    k: usize,
    r: Vec<f32>,
    diag: Vec<f64>,
    /// `E[x_j²]`, the per-token diagonal of `H` before damping.
    second_moment: Vec<f64>,
    /// The input channel of each of the factor's columns (`None`: the identity). Every other
    /// field is in this order.
    order: Option<Vec<usize>>,
}

impl HessianFactor {
    /// Factor the calibration Gram matrix of `gram`, dampened by `damp · mean(diag H)`.
    ///
    /// Errors: no tokens; a damping outside `[0, 1]`; a matrix that is still not positive
    /// definite (e.g. `damp = 0` with fewer tokens than channels), naming the column.
    pub fn new(gram: &Gram, damp: f64) -> Result<Self> {
        Self::ordered(gram, damp, None)
    }

    /// The factor `gptq` runs on: dampened by its `damp`, with its columns in decreasing order
    /// of `E[x_j²]` when it asks for act-order (ties and dead channels keep channel order).
    pub fn for_config(gram: &Gram, gptq: &GptqConfig) -> Result<Self> {
        let order = gptq.act_order().then(|| {
            let mut o: Vec<usize> = (0..gram.k()).collect();
            o.sort_by(|&a, &b| gram.get(b, b).total_cmp(&gram.get(a, a)));
            o
        });
        Self::ordered(gram, gptq.damp(), order)
    }

    fn ordered(gram: &Gram, damp: f64, order: Option<Vec<usize>>) -> Result<Self> {
        if gram.tokens() == 0 {
            return Err(Error::NoCalibrationTokens);
        }
        if !(0.0..=1.0).contains(&damp) {
            return Err(Error::InvalidMethodOption("GPTQ damping must be in [0, 1]"));
        }
        let k = gram.k();
        let inv = 1.0 / gram.tokens() as f64;
        // Channel of the factor's column `j`.
        let ch = |j: usize| order.as_ref().map_or(j, |o| o[j]);
        let h = |i: usize, j: usize| gram.get(ch(i), ch(j));
        let diag: Vec<f64> = (0..k).map(|j| h(j, j) * inv).collect();
        let second_moment = diag.clone();
        let live: Vec<f64> = diag.iter().copied().filter(|&d| d > 0.0).collect();
        let mean = if live.is_empty() {
            1.0
        } else {
            diag.iter().sum::<f64>() / k as f64
        };
        // Reversed order: a[i][j] = H[k-1-i][k-1-j], lower triangle only.
        let mut a = vec![0.0f64; k * k];
        for i in 0..k {
            for j in 0..=i {
                let (oi, oj) = (k - 1 - i, k - 1 - j);
                a[i * k + j] = if i == j {
                    let d = diag[oi];
                    (if d > 0.0 { d } else { mean }) + damp * mean
                } else if diag[oi] > 0.0 && diag[oj] > 0.0 {
                    h(oi, oj) * inv
                } else {
                    0.0
                };
            }
        }
        cholesky_lower(&mut a, k).map_err(|c| Error::NotPositiveDefinite {
            column: ch(k - 1 - c),
            damp,
        })?;
        // T_ij = L[k-1-i][k-1-j] for i ≤ j.
        let t = |i: usize, j: usize| a[(k - 1 - i) * k + (k - 1 - j)];
        let diag: Vec<f64> = (0..k).map(|j| t(j, j) * t(j, j)).collect();
        let mut r = vec![0.0f32; k * k];
        r.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate().skip(i) {
                *v = (t(i, j) / t(j, j)) as f32;
            }
        });
        Ok(HessianFactor {
            k,
            r,
            diag,
            second_moment,
            order,
        })
    }

    /// The input channel of the factor's column `j`.
    pub(crate) fn channel(&self, j: usize) -> usize {
        self.order.as_ref().map_or(j, |o| o[j])
    }

    /// Whether the columns are permuted (act-order).
    pub(crate) fn permuted(&self) -> bool {
        self.order.is_some()
    }

    /// Input width `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The factor for inputs rescaled per channel, `x' = x / s` (activation-aware scales):
    /// `H' = S⁻¹·H·S⁻¹` gives `T' = S⁻¹·T`, so `R'_ij = R_ij·s_j / s_i` and `T'_jj² = T_jj² / s_j²`
    /// (the damping is carried along, i.e. scaled the same way).
    pub fn rescaled(&self, s: &[f32]) -> Result<Self> {
        let k = self.k;
        if s.len() != k {
            return Err(Error::ShapeMismatch {
                what: "activation scales [K]",
                expected: k,
                got: s.len(),
            });
        }
        if let Some(j) = s.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::InvalidParameter {
                what: "activation scale",
                row: 0,
                index: j,
                value: s[j],
            });
        }
        // `s` in the factor's column order.
        let s: Vec<f32> = (0..k).map(|j| s[self.channel(j)]).collect();
        let mut r = self.r.clone();
        r.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate().skip(i) {
                *v = *v * s[j] / s[i];
            }
        });
        let per_channel = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(&s)
                .map(|(d, &sj)| d / (sj as f64 * sj as f64))
                .collect()
        };
        Ok(HessianFactor {
            k,
            r,
            diag: per_channel(&self.diag),
            second_moment: per_channel(&self.second_moment),
            order: self.order.clone(),
        })
    }
}

/// Rows of `W` per parallel task (each task runs the whole pass on its rows).
const ROWS_PER_TASK: usize = 32;

/// Quantize a row-major `[rows, cols]` matrix with error feedback against `factor`.
///
/// `stats` (the signed mean `x̄`, as for [`quantize_matrix`](crate::quantize_matrix)) weights the
/// k-means samples of the initial learned tables. Every format, group size, scaling and
/// parameter dtype of [`Any4Config`] is supported; the stored layout is the usual one.
pub fn quantize_gptq(
    weights: &[f32],
    shape: [usize; 2],
    stats: Option<&[f32]>,
    factor: &HessianFactor,
    config: &Any4Config,
    gptq: &GptqConfig,
) -> Result<QuantizedMatrix> {
    let [rows, cols] = shape;
    validate_input(weights, shape, stats)?;
    if factor.k != cols {
        return Err(Error::ShapeMismatch {
            what: "calibration Gram matrix [K, K] for the weight's K",
            expected: cols * cols,
            got: factor.k * factor.k,
        });
    }
    let groups = config.group_size().groups_for(cols);
    let wpr = pack::words_per_row(cols);
    let learned = config.format().is_learned();
    let (mut codes, mut scales, mut zeros) = (
        vec![0u32; rows * wpr],
        vec![0.0f32; rows * groups],
        vec![0.0f32; rows * groups],
    );
    let mut tables = vec![0.0f32; rows * TABLE_LEN];
    let pass = pass::Pass::new(config, gptq, factor, cols);
    weights
        .par_chunks(ROWS_PER_TASK * cols)
        .zip(codes.par_chunks_mut(ROWS_PER_TASK * wpr))
        .zip(scales.par_chunks_mut(ROWS_PER_TASK * groups))
        .zip(zeros.par_chunks_mut(ROWS_PER_TASK * groups))
        .zip(tables.par_chunks_mut(ROWS_PER_TASK * TABLE_LEN))
        .enumerate()
        .try_for_each(|(task, ((((w, c), s), z), t))| {
            let out = pass.rows(task * ROWS_PER_TASK, w, stats)?;
            for (i, row_codes) in out.codes.chunks(cols).enumerate() {
                pack::pack_row(row_codes, &mut c[i * wpr..(i + 1) * wpr]);
            }
            s.copy_from_slice(&out.scales);
            z.copy_from_slice(&out.zeros);
            t.copy_from_slice(&out.tables);
            Ok::<(), Error>(())
        })?;
    if !learned {
        tables.truncate(TABLE_LEN);
    }
    QuantizedMatrix::from_parts(*config, shape, codes, tables, scales, zeros)
}
