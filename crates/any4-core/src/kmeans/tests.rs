use proptest::prelude::*;

use super::*;
use crate::config::Init;

fn lloyd_cfg(init: Init, seed: u64) -> KMeansConfig {
    KMeansConfig::default().with_init(init).with_seed(seed)
}

/// Values with heavy duplication and a few zero weights: the cases that create empty clusters.
fn data() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    (20usize..300).prop_flat_map(|n| {
        (
            prop::collection::vec(
                prop_oneof![(-50i32..50).prop_map(|v| v as f32 / 4.0), -15f32..15.0],
                n,
            ),
            prop::collection::vec(prop_oneof![Just(0.0f32), 0.01f32..5.0], n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn lloyd_objective_never_increases((x, w) in data(), seed in 0u64..1000, k in 2usize..17) {
        let p = Points::new(&x, Some(&w));
        prop_assume!(p.len() > k);
        for init in [Init::KMeansPlusPlus, Init::Random, Init::Uniform, Init::Nf4] {
            let mut rng = SplitMix64::for_stream(seed, 0);
            let start = init::initial_centroids(&p, k, init, &mut rng);
            let mut sorted = start.clone();
            sorted.sort_by(f64::total_cmp);
            let mut trace = vec![lloyd::objective(&p, &sorted)];
            let (c, _) = lloyd::run(&p, start, 300, 0.0, Some(&mut trace));
            prop_assert!(c.iter().all(|v| v.is_finite()));
            for t in trace.windows(2) {
                prop_assert!(t[1] <= t[0] * (1.0 + 1e-9) + 1e-9, "{init:?}: {} -> {}", t[0], t[1]);
            }
        }
    }

    #[test]
    fn exact_is_never_worse_than_lloyd((x, w) in data(), seed in 0u64..1000, k in 2usize..17) {
        let lloyd = fit(&x, Some(&w), k, &lloyd_cfg(Init::KMeansPlusPlus, seed), 0);
        let exact = fit(&x, Some(&w), k, &KMeansConfig::default().with_solver(Solver::Exact), 0);
        prop_assert!(exact.centroids.len() <= k);
        prop_assert!(exact.centroids.iter().all(|c| c.is_finite()));
        // Centroids are rounded to f32 after solving in f64, hence the small slack.
        prop_assert!(exact.objective <= lloyd.objective * (1.0 + 1e-5) + 1e-6,
            "exact {} > lloyd {}", exact.objective, lloyd.objective);
    }

    #[test]
    fn fit_is_deterministic((x, w) in data(), seed in 0u64..1000) {
        let cfg = lloyd_cfg(Init::KMeansPlusPlus, seed);
        prop_assert_eq!(fit(&x, Some(&w), 16, &cfg, 7), fit(&x, Some(&w), 16, &cfg, 7));
    }
}

/// Brute force over every assignment of a handful of points: the DP must find the optimum.
#[test]
fn exact_matches_brute_force() {
    let mut rng = SplitMix64::new(3);
    for trial in 0..40 {
        let n: usize = 5 + trial % 4;
        let k: usize = 2 + trial % 3;
        let x: Vec<f32> = (0..n).map(|_| (rng.next_gaussian() * 3.0) as f32).collect();
        let w: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 + 0.1).collect();
        let mut best = f64::INFINITY;
        for code in 0..k.pow(n as u32) {
            let mut assign = vec![0usize; n];
            let mut c = code;
            for a in assign.iter_mut() {
                *a = c % k;
                c /= k;
            }
            let cost: f64 = (0..k)
                .map(|cl| {
                    let idx: Vec<usize> = (0..n).filter(|&i| assign[i] == cl).collect();
                    let sw: f64 = idx.iter().map(|&i| w[i] as f64).sum();
                    if sw == 0.0 {
                        return 0.0;
                    }
                    let mean = idx.iter().map(|&i| (w[i] * x[i]) as f64).sum::<f64>() / sw;
                    idx.iter()
                        .map(|&i| w[i] as f64 * (x[i] as f64 - mean).powi(2))
                        .sum::<f64>()
                })
                .sum();
            best = best.min(cost);
        }
        let exact = fit(
            &x,
            Some(&w),
            k,
            &KMeansConfig::default().with_solver(Solver::Exact),
            0,
        );
        assert!(
            (exact.objective - best).abs() <= 1e-5 * (1.0 + best),
            "trial {trial}: {} vs {best}",
            exact.objective
        );
    }
}

#[test]
fn few_distinct_values_are_kept_exactly() {
    let x = [1.0f32, 1.0, 2.0, 2.0, 2.0, 5.0];
    for solver in [Solver::Lloyd, Solver::Exact] {
        let f = fit(
            &x,
            None,
            16,
            &KMeansConfig::default().with_solver(solver),
            0,
        );
        assert_eq!(f.centroids, vec![1.0, 2.0, 5.0]);
        assert_eq!(f.objective, 0.0);
    }
}

#[test]
fn zero_weights_everywhere_fall_back_to_uniform_weights() {
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let zeros = vec![0.0f32; 64];
    let a = fit(&x, Some(&zeros), 4, &KMeansConfig::default(), 0);
    let b = fit(&x, None, 4, &KMeansConfig::default(), 0);
    assert_eq!(a.centroids, b.centroids);
    assert!(a.centroids.iter().all(|c| c.is_finite()));
}
