//! Weighted 1-D k-means: the table learner of anyN (docs/METHOD.md §2).
//!
//! Points are one row's scaled weights; each has a sample weight (`|x̄_j| · s` with calibration
//! statistics, 1 without). In one dimension the points can be **sorted once**: every cluster is
//! then a contiguous run of sorted values, so with prefix sums of `w`, `w·x`, `w·x²` a Lloyd
//! iteration costs `O(k log n)` (binary searches at the midpoints between centroids) instead of
//! `O(n k)`, and the globally optimal partition can be found by dynamic programming
//! ([`Solver::Exact`]).

mod exact;
mod init;
mod lloyd;

use crate::config::{KMeansConfig, Solver};
use crate::rng::SplitMix64;

/// A fitted table.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// Centroids in ascending order: `k` of them, or fewer when the data has fewer distinct
    /// values (then the centroids are exactly those values).
    pub centroids: Vec<f32>,
    /// Weighted sum of squared distances to the nearest centroid.
    pub objective: f64,
    /// Lloyd iterations run (0 for the exact solver or trivial data).
    pub iterations: u32,
}

/// Fit `k` centroids to `values` weighted by `weights` (all 1 when `None`).
///
/// Deterministic: the result depends only on the data, `cfg` and `stream` (use the row index),
/// never on threads. Negative or non-finite weights are treated as 0; if every weight is 0 the
/// points are weighted equally. Values must be finite (the caller checks).
pub fn fit(
    values: &[f32],
    weights: Option<&[f32]>,
    k: usize,
    cfg: &KMeansConfig,
    stream: u64,
) -> KMeansFit {
    assert!(k >= 1, "k-means needs k >= 1");
    let points = Points::new(values, weights);
    if points.len() <= k {
        // Fewer distinct values than clusters: the values themselves are optimal (objective 0).
        let centroids: Vec<f32> = points.x.iter().map(|&x| x as f32).collect();
        return KMeansFit {
            objective: objective(values, weights, &centroids),
            centroids,
            iterations: 0,
        };
    }
    let (centroids, iterations) = match cfg.solver() {
        Solver::Exact => (exact::solve(&points, k), 0),
        Solver::Lloyd => {
            let mut rng = SplitMix64::for_stream(cfg.seed(), stream);
            let start = init::initial_centroids(&points, k, cfg.init(), &mut rng);
            lloyd::run(&points, start, cfg.max_iter(), cfg.tol() as f64, None)
        }
    };
    finish(values, weights, &centroids, iterations)
}

/// The fit of solver output `centroids`: as f32, ascending, with its objective on `values`.
fn finish(
    values: &[f32],
    weights: Option<&[f32]>,
    centroids: &[f64],
    iterations: u32,
) -> KMeansFit {
    let mut centroids: Vec<f32> = centroids.iter().map(|&c| c as f32).collect();
    centroids.sort_by(f32::total_cmp);
    KMeansFit {
        objective: objective(values, weights, &centroids),
        centroids,
        iterations,
    }
}

/// As [`fit`], but Lloyd starts from `start` (e.g. a table learned on nearby data) instead of a
/// fresh initialisation, which is cheaper and keeps the fit close to `start`; the exact solver
/// ignores `start`. `start` must hold `k` finite values.
pub fn refine(
    values: &[f32],
    weights: Option<&[f32]>,
    start: &[f32],
    cfg: &KMeansConfig,
) -> KMeansFit {
    let k = start.len();
    assert!(k >= 1, "k-means needs k >= 1");
    let points = Points::new(values, weights);
    if points.len() <= k || cfg.solver() == Solver::Exact {
        return fit(values, weights, k, cfg, 0);
    }
    let start = start.iter().map(|&c| c as f64).collect();
    let (centroids, iterations) =
        lloyd::run(&points, start, cfg.max_iter(), cfg.tol() as f64, None);
    finish(values, weights, &centroids, iterations)
}

/// `Σ_j w_j · min_c (x_j − c)²`, the quantity k-means minimises (f64 accumulation).
pub fn objective(values: &[f32], weights: Option<&[f32]>, centroids: &[f32]) -> f64 {
    values
        .iter()
        .enumerate()
        .map(|(j, &x)| {
            let w = weights.map_or(1.0, |w| sanitize(w[j]));
            let d = centroids
                .iter()
                .map(|&c| (x as f64 - c as f64).powi(2))
                .fold(f64::INFINITY, f64::min);
            w * d
        })
        .sum()
}

fn sanitize(w: f32) -> f64 {
    if w.is_finite() && w > 0.0 {
        w as f64
    } else {
        0.0
    }
}

/// Sorted distinct values with merged weights and prefix sums over centred values.
#[derive(Debug, Clone)]
pub(crate) struct Points {
    /// Distinct values, ascending.
    pub x: Vec<f64>,
    /// Total weight of each distinct value.
    pub w: Vec<f64>,
    /// Prefix sums (length n + 1) of `w`, `w·(x − mean)` and `w·(x − mean)²`; centring keeps
    /// `Σwx² − (Σwx)²/Σw` free of cancellation.
    pw: Vec<f64>,
    pwx: Vec<f64>,
    pwxx: Vec<f64>,
    mean: f64,
}

impl Points {
    pub fn new(values: &[f32], weights: Option<&[f32]>) -> Points {
        let mut pairs: Vec<(f32, f64)> = values
            .iter()
            .enumerate()
            .map(|(j, &v)| (v, weights.map_or(1.0, |w| sanitize(w[j]))))
            .collect();
        if pairs.iter().all(|p| p.1 == 0.0) {
            pairs.iter_mut().for_each(|p| p.1 = 1.0);
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut x: Vec<f64> = Vec::with_capacity(pairs.len());
        let mut w: Vec<f64> = Vec::with_capacity(pairs.len());
        for (v, wt) in pairs {
            match x.last() {
                Some(&last) if last == v as f64 => *w.last_mut().expect("parallel vectors") += wt,
                _ => {
                    x.push(v as f64);
                    w.push(wt);
                }
            }
        }
        let total: f64 = w.iter().sum();
        let mean = x.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>() / total;
        let n = x.len();
        let (mut pw, mut pwx, mut pwxx) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
        for i in 0..n {
            let c = x[i] - mean;
            pw[i + 1] = pw[i] + w[i];
            pwx[i + 1] = pwx[i] + w[i] * c;
            pwxx[i + 1] = pwxx[i] + w[i] * c * c;
        }
        Points {
            x,
            w,
            pw,
            pwx,
            pwxx,
            mean,
        }
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    /// Total weight of points `a..b`.
    pub fn weight(&self, a: usize, b: usize) -> f64 {
        self.pw[b] - self.pw[a]
    }

    /// Weighted mean of points `a..b` (plain mean of their values if their weight is 0).
    pub fn mean(&self, a: usize, b: usize) -> f64 {
        let wt = self.weight(a, b);
        if wt > 0.0 {
            self.mean + (self.pwx[b] - self.pwx[a]) / wt
        } else {
            self.x[a..b].iter().sum::<f64>() / (b - a) as f64
        }
    }

    /// `Σ w (x − mean_ab)²` over points `a..b`.
    pub fn cost(&self, a: usize, b: usize) -> f64 {
        let wt = self.weight(a, b);
        if wt <= 0.0 {
            return 0.0;
        }
        let s = self.pwx[b] - self.pwx[a];
        (self.pwxx[b] - self.pwxx[a] - s * s / wt).max(0.0)
    }

    /// Weighted variance of all points (the scale that the Lloyd tolerance is relative to).
    pub fn variance(&self) -> f64 {
        let n = self.len();
        self.cost(0, n) / self.weight(0, n)
    }
}

#[cfg(test)]
mod tests;
