//! A tiny deterministic PRNG (SplitMix64): seeding must not depend on threads or crate versions.

/// SplitMix64 (Steele, Lea & Flood 2014): 64-bit state, passes BigCrush, trivially seedable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator for stream `index` of `seed` (e.g. one per matrix row), so that each row's
    /// result is independent of the order and thread in which rows are processed.
    pub fn for_stream(seed: u64, index: u64) -> Self {
        let mut g = SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index.wrapping_add(1)));
        g.next_u64();
        g
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample (Box–Muller), for tests and benches.
    pub fn next_gaussian(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A Student-t sample with `nu` degrees of freedom (a normal over the root of a χ²/ν), for
    /// tests and benches: heavier-tailed than a normal, as LLM weights are.
    pub fn next_student_t(&mut self, nu: u32) -> f64 {
        let z = self.next_gaussian();
        let chi2: f64 = (0..nu).map(|_| self.next_gaussian().powi(2)).sum();
        z / (chi2 / nu as f64).sqrt()
    }
}
