//! Globally optimal weighted 1-D k-means by dynamic programming.
//!
//! In 1-D an optimal clustering partitions the sorted points into `k` contiguous runs, so
//! `D[m][j] = min_i D[m−1][i−1] + cost(i..=j)` over the sorted points. The cost (within-run
//! weighted SSE) satisfies the quadrangle inequality, so the optimal split index is monotone in
//! `j` and each layer is solved by divide and conquer in `O(n log n)`: `O(k n log n)` in all
//! (Wang & Song's Ckmeans.1d.dp "loglinear" method), ~16 · 4096 · 12 cost evaluations per row.

use super::Points;

/// Optimal centroids (the weighted means of the optimal runs), for `k < p.len()`.
pub(super) fn solve(p: &Points, k: usize) -> Vec<f64> {
    let n = p.len();
    debug_assert!(k >= 1 && k < n);
    // prev[j]: best cost of points 0..=j in m clusters; split[m][j]: first point of the last run.
    let mut prev: Vec<f64> = (0..n).map(|j| p.cost(0, j + 1)).collect();
    let mut cur = vec![f64::INFINITY; n];
    let mut split = vec![vec![0u32; n]; k];
    for (m, split_m) in split.iter_mut().enumerate().skip(1) {
        let layer = Layer { p, prev: &prev, m };
        cur.iter_mut().for_each(|c| *c = f64::INFINITY);
        layer.fill(m, n - 1, m, n - 1, &mut cur, split_m);
        std::mem::swap(&mut prev, &mut cur);
    }
    // Backtrack the runs from the last point.
    let mut centroids = vec![0.0; k];
    let mut end = n;
    for m in (0..k).rev() {
        let start = if m == 0 {
            0
        } else {
            split[m][end - 1] as usize
        };
        centroids[m] = p.mean(start, end);
        end = start;
    }
    centroids
}

struct Layer<'a> {
    p: &'a Points,
    prev: &'a [f64],
    m: usize,
}

impl Layer<'_> {
    /// Fill `cur[j]` for `j` in `jlo..=jhi`, knowing the optimal split lies in `ilo..=ihi`.
    fn fill(
        &self,
        jlo: usize,
        jhi: usize,
        ilo: usize,
        ihi: usize,
        cur: &mut [f64],
        split: &mut [u32],
    ) {
        if jlo > jhi {
            return;
        }
        let j = (jlo + jhi) / 2;
        let (mut best, mut best_i) = (f64::INFINITY, ilo);
        // The last run is i..=j and needs i >= m so that runs before it are non-empty.
        for i in ilo.max(self.m)..=ihi.min(j) {
            let v = self.prev[i - 1] + self.p.cost(i, j + 1);
            if v < best {
                best = v;
                best_i = i;
            }
        }
        cur[j] = best;
        split[j] = best_i as u32;
        if j > jlo {
            self.fill(jlo, j - 1, ilo, best_i, cur, split);
        }
        self.fill(j + 1, jhi, best_i, ihi, cur, split);
    }
}
