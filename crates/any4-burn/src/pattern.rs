//! Layer-name patterns for include/exclude lists: `*` matches any run of characters, and a
//! pattern without `*` matches a whole path segment sequence anywhere (`lm_head` matches
//! `lm_head` and `model.lm_head`, not `lm_head_2`).

use crate::error::{Error, Result};

/// A compiled layer pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPattern {
    text: String,
}

impl LayerPattern {
    /// Compile `text`; refuses empty patterns and `**`.
    pub fn new(text: &str) -> Result<Self> {
        if text.is_empty() || text.contains("**") {
            return Err(Error::Pattern(text.to_string()));
        }
        Ok(LayerPattern {
            text: text.to_string(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        if self.text.contains('*') {
            glob(self.text.as_bytes(), path.as_bytes())
        } else {
            // Whole dot-separated segments, anywhere in the path.
            let segs: Vec<&str> = path.split('.').collect();
            let pat: Vec<&str> = self.text.split('.').collect();
            segs.windows(pat.len()).any(|w| w == pat.as_slice())
        }
    }
}

/// Iterative glob with `*` only (linear-time backtracking on the last star).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_and_glob_matching() {
        let lm = LayerPattern::new("lm_head").unwrap();
        assert!(lm.matches("lm_head"));
        assert!(lm.matches("model.lm_head"));
        assert!(!lm.matches("lm_head_2"));
        let mlp = LayerPattern::new("layers.*.mlp.*").unwrap();
        assert!(mlp.matches("layers.3.mlp.down_proj"));
        assert!(!mlp.matches("layers.3.self_attn.q_proj"));
        let q = LayerPattern::new("*q_proj").unwrap();
        assert!(q.matches("layers.0.self_attn.q_proj"));
        assert!(!q.matches("layers.0.self_attn.q_proj.x"));
        assert!(LayerPattern::new("").is_err());
        assert!(LayerPattern::new("a**").is_err());
    }
}
