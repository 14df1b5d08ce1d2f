//! The column-by-column error-feedback pass over a task's rows (see the module docs of
//! [`crate::gptq`] for the math).

use crate::config::{Any4Config, ParamDtype};
use crate::error::Result;
use crate::kmeans;
use crate::levels::{self, Domain};
use crate::linalg::{Strided, gemm_into};
use crate::quantize::{TABLE_LEN, group_params, learn_table};

use super::{GptqConfig, GroupParams, HessianFactor, TableWeights};

/// Columns per block of the pass. A multiple of every supported group size below it (32, 64)
/// and a divisor of those above (256 … 1024), so each group's targets are complete when the
/// pass reaches its first column.
pub const BLOCK: usize = 128;

/// Everything a task needs; shared read-only by all tasks.
pub(super) struct Pass<'a> {
    config: &'a Any4Config,
    factor: &'a HessianFactor,
    dynamic: bool,
    refit: bool,
    table_weights: TableWeights,
    cols: usize,
    group: usize,
    groups: usize,
    /// The stored group of the pass's column `j` (its input channel's group).
    col_group: Vec<usize>,
    domain: Domain,
    dtype: ParamDtype,
    fixed: Option<[f32; TABLE_LEN]>,
}

/// A task's result: codes (one byte per weight), parameters and tables, row-major.
pub(super) struct RowsOut {
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub zeros: Vec<f32>,
    pub tables: Vec<f32>,
}

/// One sweep over a task's rows with given tables.
struct Sweep {
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
    /// The value each weight's code was chosen for (`w + fed-back error`).
    targets: Vec<f32>,
    /// `Σ_j T_jj²·(t_j − q_j)²` per row: the row's output error under the dampened `H`.
    objective: Vec<f64>,
}

impl<'a> Pass<'a> {
    pub fn new(
        config: &'a Any4Config,
        gptq: &GptqConfig,
        factor: &'a HessianFactor,
        cols: usize,
    ) -> Self {
        let group = config.group_size().len_for(cols);
        debug_assert!(
            group >= cols || BLOCK.is_multiple_of(group) || group.is_multiple_of(BLOCK),
            "group {group} and block {BLOCK} must nest"
        );
        Pass {
            config,
            factor,
            // Permuted columns scatter each group over the pass: static parameters only.
            dynamic: gptq.group_params() == GroupParams::Dynamic && !factor.permuted(),
            refit: gptq.refit() && config.format().is_learned(),
            table_weights: gptq.table_weights(),
            cols,
            group,
            groups: config.group_size().groups_for(cols),
            col_group: (0..cols).map(|j| factor.channel(j) / group).collect(),
            domain: levels::domain(config.format(), config.scaling()),
            dtype: config.param_dtype(),
            fixed: levels::fixed_table(config.format(), config.scaling()),
        }
    }

    /// Quantize the rows `w` (row-major, first row index `first_row`) of the matrix.
    pub fn rows(&self, first_row: usize, w: &[f32], stats: Option<&[f32]>) -> Result<RowsOut> {
        let (cols, group, groups) = (self.cols, self.group, self.groups);
        let n = w.len() / cols;
        let cg = &self.col_group;
        // Static parameters and the initial tables, exactly as round-to-nearest makes them.
        let (mut s0, mut z0) = (vec![0.0f32; n * groups], vec![0.0f32; n * groups]);
        for r in 0..n {
            for (g, chunk) in w[r * cols..(r + 1) * cols].chunks(group).enumerate() {
                let (s, z) = group_params(chunk, self.domain, self.dtype, first_row + r, g)?;
                s0[r * groups + g] = s;
                z0[r * groups + g] = z;
            }
        }
        // Weights and statistics in the factor's column order.
        let permuted: Option<(Vec<f32>, Option<Vec<f32>>)> = self.factor.permuted().then(|| {
            let ch = |j| self.factor.channel(j);
            let wp = (0..n * cols)
                .map(|at| w[at - at % cols + ch(at % cols)])
                .collect();
            (wp, stats.map(|x| (0..cols).map(|j| x[ch(j)]).collect()))
        });
        let (w, stats) = match &permuted {
            Some((wp, sp)) => (&wp[..], sp.as_deref()),
            None => (w, stats),
        };
        let tables: Vec<[f32; TABLE_LEN]> = (0..n)
            .map(|r| match self.fixed {
                Some(t) => t,
                None => {
                    let row = &w[r * cols..(r + 1) * cols];
                    let (s, z) = (&s0[r * groups..], &z0[r * groups..]);
                    let scaled: Vec<f32> = row
                        .iter()
                        .enumerate()
                        .map(|(j, &v)| (v - z[cg[j]]) / s[cg[j]])
                        .collect();
                    let weights: Option<Vec<f32>> = match self.table_weights {
                        TableWeights::Mean => {
                            stats.map(|x| (0..cols).map(|j| x[j].abs() * s[cg[j]]).collect())
                        }
                        TableWeights::Gram => Some(
                            (0..cols)
                                .map(|j| {
                                    let sg = s[cg[j]] as f64;
                                    (self.factor.second_moment[j] * sg * sg) as f32
                                })
                                .collect(),
                        ),
                    };
                    learn_table(&scaled, weights.as_deref(), self.config, first_row + r)
                }
            })
            .collect();
        let mut best = self.sweep(first_row, w, &tables, &s0, &z0)?;
        let mut best_tables = tables;
        if self.refit {
            // Re-learn each table on the scaled targets with the objective's own weights, Lloyd
            // starting from the table the targets were made with.
            let tables: Vec<[f32; TABLE_LEN]> = (0..n)
                .map(|r| {
                    let t = &best.targets[r * cols..(r + 1) * cols];
                    let (s, z) = (&best.scales[r * groups..], &best.zeros[r * groups..]);
                    let scaled: Vec<f32> = t
                        .iter()
                        .enumerate()
                        .map(|(j, &v)| (v - z[cg[j]]) / s[cg[j]])
                        .collect();
                    let weights: Vec<f32> = (0..cols)
                        .map(|j| (self.factor.diag[j] * (s[cg[j]] as f64).powi(2)) as f32)
                        .collect();
                    let start = &best_tables[r][..self.config.format().levels()];
                    let fit = kmeans::refine(&scaled, Some(&weights), start, self.config.kmeans());
                    std::array::from_fn(|i| {
                        self.dtype
                            .round(fit.centroids[i.min(fit.centroids.len() - 1)])
                    })
                })
                .collect();
            let again = self.sweep(first_row, w, &tables, &s0, &z0)?;
            for r in 0..n {
                if again.objective[r] < best.objective[r] {
                    let (a, b) = (r * cols, (r + 1) * cols);
                    best.codes[a..b].copy_from_slice(&again.codes[a..b]);
                    let (a, b) = (r * groups, (r + 1) * groups);
                    best.scales[a..b].copy_from_slice(&again.scales[a..b]);
                    best.zeros[a..b].copy_from_slice(&again.zeros[a..b]);
                    best_tables[r] = tables[r];
                }
            }
        }
        if self.factor.permuted() {
            // Codes back to channel order.
            for row in best.codes.chunks_mut(cols) {
                let pass_order = row.to_vec();
                for (j, c) in pass_order.into_iter().enumerate() {
                    row[self.factor.channel(j)] = c;
                }
            }
        }
        Ok(RowsOut {
            codes: best.codes,
            scales: best.scales,
            zeros: best.zeros,
            tables: best_tables.into_iter().flatten().collect(),
        })
    }

    /// The pass proper: columns in blocks of [`BLOCK`], errors fed forward through `R`.
    fn sweep(
        &self,
        first_row: usize,
        w: &[f32],
        tables: &[[f32; TABLE_LEN]],
        s0: &[f32],
        z0: &[f32],
    ) -> Result<Sweep> {
        let (k, group, groups) = (self.cols, self.group, self.groups);
        let n = w.len() / k;
        let levels = self.config.format().levels();
        let r = &self.factor.r;
        // `fed[r·k + j]`: Σ_{i<j} δ_i·R_ij, kept current for the block and lazily for the rest.
        let mut fed = vec![0.0f32; n * k];
        let mut delta = vec![0.0f32; n * k];
        let mut out = Sweep {
            codes: vec![0u8; n * k],
            scales: s0.to_vec(),
            zeros: z0.to_vec(),
            targets: vec![0.0f32; n * k],
            objective: vec![0.0f64; n],
        };
        let mut target_buf = vec![0.0f32; group];
        for b0 in (0..k).step_by(BLOCK) {
            let b1 = (b0 + BLOCK).min(k);
            for j in b0..b1 {
                let g = self.col_group[j];
                if self.dynamic && j.is_multiple_of(group) {
                    let len = group.min(k - j);
                    for row in 0..n {
                        let at = row * k + j;
                        for (t, (&wv, &f)) in target_buf[..len]
                            .iter_mut()
                            .zip(w[at..at + len].iter().zip(&fed[at..at + len]))
                        {
                            *t = wv + f;
                        }
                        let (s, z) = group_params(
                            &target_buf[..len],
                            self.domain,
                            self.dtype,
                            first_row + row,
                            g,
                        )?;
                        out.scales[row * groups + g] = s;
                        out.zeros[row * groups + g] = z;
                    }
                }
                let rj = &r[j * k + j + 1..j * k + b1];
                let dj = self.factor.diag[j];
                for row in 0..n {
                    let at = row * k + j;
                    let (s, z) = (out.scales[row * groups + g], out.zeros[row * groups + g]);
                    let table = &tables[row];
                    let t = w[at] + fed[at];
                    let code = levels::nearest(&table[..levels], (t - z) / s);
                    let q = table[code] * s + z;
                    let d = w[at] - q;
                    out.codes[at] = code as u8;
                    out.targets[at] = t;
                    out.objective[row] += dj * ((t - q) as f64).powi(2);
                    delta[at] = d;
                    for (f, &rv) in fed[at + 1..row * k + b1].iter_mut().zip(rj) {
                        *f += d * rv;
                    }
                }
            }
            if b1 < k {
                // fed[:, b1..] += δ[:, b0..b1] · R[b0..b1, b1..]
                gemm_into(
                    (&mut fed, Strided::block(k, 0, b1, n, k - b1)),
                    (&delta, Strided::block(k, 0, b0, n, b1 - b0)),
                    (r, Strided::block(k, b0, b1, b1 - b0, k - b1)),
                    1.0,
                    true,
                );
            }
        }
        Ok(out)
    }
}
