//! Perplexity.

use crate::common::*;

#[test]
fn perplexity_is_exp_mean_nll_of_the_logits() {
    let model = Llama::random(random_config(None, 2), 13, &device()).unwrap();
    let (seq, windows) = (16, 3);
    let ids = random_ids(seq * windows + 5, 97, 6); // a partial tail to be dropped
    let mut total = 0f64;
    for w in ids.chunks_exact(seq) {
        let logits = to_vec(model.forward_all(token_tensor(w, &device())));
        for p in 0..seq - 1 {
            let row = &logits[p * 97..(p + 1) * 97];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            total += lse - row[w[p + 1] as usize] as f64;
        }
    }
    let expect = (total / (windows * (seq - 1)) as f64).exp();
    for batch_size in [1, 2] {
        let cfg = PerplexityConfig {
            seq_len: seq,
            max_windows: None,
            batch_size,
        };
        let p = perplexity_of_ids(&model, &ids, &cfg).unwrap();
        assert_eq!((p.windows, p.tokens), (windows, windows * (seq - 1)));
        assert!(
            (p.ppl - expect).abs() <= 1e-5 * expect,
            "batch {batch_size}: {} vs {expect}",
            p.ppl
        );
    }
    let capped = PerplexityConfig {
        seq_len: seq,
        max_windows: Some(2),
        batch_size: 1,
    };
    assert_eq!(perplexity_of_ids(&model, &ids, &capped).unwrap().windows, 2);
    assert!(matches!(
        perplexity_of_ids(&model, &ids[..10], &capped),
        Err(Error::Input(_))
    ));
}
