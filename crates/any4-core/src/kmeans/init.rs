//! Lloyd initialisations (docs/METHOD.md §2 ablation: k-means++ best, then NF4 grid, random,
//! uniform).

use super::Points;
use crate::config::Init;
use crate::levels::NF4;
use crate::rng::SplitMix64;

/// `k` starting centroids (the caller guarantees more than `k` distinct points).
pub(super) fn initial_centroids(
    p: &Points,
    k: usize,
    init: Init,
    rng: &mut SplitMix64,
) -> Vec<f64> {
    let (lo, hi) = (p.x[0], p.x[p.len() - 1]);
    match init {
        Init::KMeansPlusPlus => kmeans_plus_plus(p, k, rng),
        Init::Random => random(p, k, rng),
        Init::Uniform => (0..k)
            .map(|i| lo + (hi - lo) * i as f64 / (k - 1).max(1) as f64)
            .collect(),
        Init::Nf4 => (0..k)
            .map(|i| {
                let level = NF4[(i * 15 + (k - 1) / 2) / (k - 1).max(1)] as f64;
                lo + (hi - lo) * (level + 1.0) / 2.0
            })
            .collect(),
    }
}

/// Index `j` with probability `mass[j] / Σ mass`.
fn sample(mass: impl Iterator<Item = f64> + Clone, rng: &mut SplitMix64) -> usize {
    let total: f64 = mass.clone().sum();
    let target = rng.next_f64() * total;
    let mut acc = 0.0;
    let mut last_positive = 0;
    for (j, m) in mass.enumerate() {
        if m > 0.0 {
            last_positive = j;
            acc += m;
            if acc > target {
                return j;
            }
        }
    }
    last_positive
}

/// Greedy weighted k-means++ (Arthur & Vassilvitskii 2007, with the `2 + ln k` local trials of
/// scikit-learn): each new centroid is the best of a few D²-sampled candidates.
fn kmeans_plus_plus(p: &Points, k: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let n = p.len();
    let trials = 2 + (k as f64).ln() as usize;
    let first = p.x[sample(p.w.iter().copied(), rng)];
    let mut centroids = vec![first];
    let mut dist: Vec<f64> = p.x.iter().map(|x| (x - first).powi(2)).collect();
    let mut cand_dist = vec![0.0; n];
    let mut best_dist = vec![0.0; n];
    while centroids.len() < k {
        let mut best: Option<(f64, f64)> = None;
        for _ in 0..trials {
            let j = sample(p.w.iter().zip(&dist).map(|(w, d)| w * d), rng);
            let c = p.x[j];
            let mut potential = 0.0;
            for i in 0..n {
                cand_dist[i] = dist[i].min((p.x[i] - c).powi(2));
                potential += p.w[i] * cand_dist[i];
            }
            if best.is_none_or(|(b, _)| potential < b) {
                best = Some((potential, c));
                std::mem::swap(&mut best_dist, &mut cand_dist);
            }
        }
        let (_, c) = best.expect("at least one trial");
        centroids.push(c);
        std::mem::swap(&mut dist, &mut best_dist);
    }
    centroids
}

/// `k` distinct points drawn without replacement in proportion to their weight.
fn random(p: &Points, k: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let mut taken = vec![false; p.len()];
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let j = sample(
            p.w.iter()
                .zip(&taken)
                .map(|(&w, &t)| if t { 0.0 } else { w.max(f64::MIN_POSITIVE) }),
            rng,
        );
        taken[j] = true;
        out.push(p.x[j]);
    }
    out
}
