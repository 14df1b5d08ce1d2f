//! Lloyd iterations on sorted points: assignment by binary search at centroid midpoints, update
//! by prefix-sum means, empty clusters re-seeded at the worst-served point.

use super::Points;

/// Start index of each cluster for ascending `centroids` (plus `n` at the end). A point exactly
/// at a midpoint goes to the upper centroid, as [`crate::levels::nearest`] does.
fn bounds(p: &Points, centroids: &[f64]) -> Vec<usize> {
    let mut b = Vec::with_capacity(centroids.len() + 1);
    b.push(0);
    for w in centroids.windows(2) {
        let mid = 0.5 * (w[0] + w[1]);
        b.push(p.x.partition_point(|&x| x < mid));
    }
    b.push(p.len());
    b
}

/// Objective of ascending `centroids` with nearest assignment, from prefix sums.
pub(super) fn objective(p: &Points, centroids: &[f64]) -> f64 {
    let b = bounds(p, centroids);
    (0..centroids.len())
        .map(|i| {
            let (lo, hi) = (b[i], b[i + 1]);
            if lo == hi {
                return 0.0;
            }
            // Σ w (x − c)² = cost around the mean + W (mean − c)².
            let d = p.mean(lo, hi) - centroids[i];
            p.cost(lo, hi) + p.weight(lo, hi) * d * d
        })
        .sum()
}

/// Run Lloyd from `start` until the squared centroid shift falls below `tol · variance` or
/// `max_iter` is reached. Returns the ascending centroids and the iteration count. When `trace`
/// is given, the objective after every iteration is pushed to it (used by tests).
pub(super) fn run(
    p: &Points,
    mut c: Vec<f64>,
    max_iter: u32,
    tol: f64,
    mut trace: Option<&mut Vec<f64>>,
) -> (Vec<f64>, u32) {
    c.sort_by(f64::total_cmp);
    let tol_abs = tol * p.variance();
    let mut iterations = 0;
    for _ in 0..max_iter {
        iterations += 1;
        let b = bounds(p, &c);
        let mut next: Vec<Option<f64>> = (0..c.len())
            .map(|i| (p.weight(b[i], b[i + 1]) > 0.0).then(|| p.mean(b[i], b[i + 1])))
            .collect();
        if next.iter().any(Option::is_none) {
            reseed_empty(p, &b, &mut next);
        }
        let mut next: Vec<f64> = next.into_iter().map(|c| c.expect("re-seeded")).collect();
        next.sort_by(f64::total_cmp);
        let shift: f64 = next.iter().zip(&c).map(|(a, b)| (a - b).powi(2)).sum();
        c = next;
        if let Some(t) = trace.as_deref_mut() {
            t.push(objective(p, &c));
        }
        if shift <= tol_abs {
            break;
        }
    }
    (c, iterations)
}

/// Give every empty cluster a new centroid at the point that is currently worst served
/// (largest `w · d²` to its cluster's new centroid), one distinct point per empty cluster.
/// Placing a centroid on a point never raises the objective, so Lloyd stays monotone.
fn reseed_empty(p: &Points, b: &[usize], next: &mut [Option<f64>]) {
    let mut served = vec![0.0f64; p.len()];
    for i in 0..next.len() {
        if let Some(c) = next[i] {
            for (j, s) in served.iter_mut().enumerate().take(b[i + 1]).skip(b[i]) {
                *s = p.w[j] * (p.x[j] - c).powi(2);
            }
        }
    }
    // Points of empty clusters have zero weight: leave them at 0 so they are not chosen first.
    for slot in next.iter_mut().filter(|c| c.is_none()) {
        let (j, _) = served
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .expect("non-empty points");
        *slot = Some(p.x[j]);
        served[j] = f64::NEG_INFINITY;
    }
}
