//! Plain-Rust reference for the portable any4 layout: the ground truth every kernel test
//! compares against. Deliberately naive (one element at a time, f64-free, no tricks) so that it
//! is obviously correct; `any4-core` will later provide the canonical version.

/// Shape of a quantized weight `W[N, K]` with groups of `group_size` input columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefShape {
    /// Output rows `N`.
    pub n: usize,
    /// Input columns `K`.
    pub k: usize,
    /// Group size `G` (the last group of a row may be shorter).
    pub group_size: usize,
}

impl RefShape {
    /// `ceil(K / 8)`: u32 words per row of codes.
    pub fn words_per_row(&self) -> usize {
        self.k.div_ceil(8)
    }
    /// `ceil(K / G)`: scale/zero entries per row.
    pub fn n_groups(&self) -> usize {
        self.k.div_ceil(self.group_size)
    }
}

/// The 4-bit code of element `(row, col)`: nibble `col % 8` (lowest first) of word `col / 8`.
pub fn code(codes: &[u32], shape: RefShape, row: usize, col: usize) -> usize {
    ((codes[row * shape.words_per_row() + col / 8] >> (4 * (col % 8))) & 0xF) as usize
}

/// Dense `W[N, K]`: `w[n,k] = table[n, code(n,k)] * scales[n, k/G] + zeros[n, k/G]`.
pub fn dequantize(
    codes: &[u32],
    table: &[f32],
    scales: &[f32],
    zeros: &[f32],
    shape: RefShape,
) -> Vec<f32> {
    let ng = shape.n_groups();
    let mut w = vec![0.0f32; shape.n * shape.k];
    for row in 0..shape.n {
        for col in 0..shape.k {
            let g = col / shape.group_size;
            let t = table[row * 16 + code(codes, shape, row, col)];
            w[row * shape.k + col] = t * scales[row * ng + g] + zeros[row * ng + g];
        }
    }
    w
}

/// `y[M, N] = x[M, K] · W[N, K]ᵀ`, f32 accumulation in k order.
pub fn matmul(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for l in 0..k {
                acc += x[i * k + l] * w[j * k + l];
            }
            y[i * n + j] = acc;
        }
    }
    y
}

/// Packs codes (one `u8` in `0..16` per element, row-major `[N, K]`) into the u32 layout,
/// padding nibbles 0.
pub fn pack_codes(codes: &[u8], n: usize, k: usize) -> Vec<u32> {
    let wpr = k.div_ceil(8);
    let mut out = vec![0u32; n * wpr];
    for row in 0..n {
        for col in 0..k {
            let c = u32::from(codes[row * k + col] & 0xF);
            out[row * wpr + col / 8] |= c << (4 * (col % 8));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: K = 10 (two words, last one padded), G = 4 (groups 4, 4, 2).
    #[test]
    fn dequantize_and_matmul_by_hand() {
        let shape = RefShape {
            n: 1,
            k: 10,
            group_size: 4,
        };
        let raw: Vec<u8> = vec![0, 1, 2, 3, 15, 14, 13, 12, 5, 6];
        let codes = pack_codes(&raw, 1, 10);
        assert_eq!(codes, vec![0xCDEF_3210, 0x65]);
        let table: Vec<f32> = (0..16).map(|i| i as f32 * 10.0).collect();
        let (scales, zeros) = (vec![1.0, 2.0, 0.5], vec![0.0, 1.0, -1.0]);
        let w = dequantize(&codes, &table, &scales, &zeros, shape);
        let want = [
            0.0, 10.0, 20.0, 30.0, 301.0, 281.0, 261.0, 241.0, 24.0, 29.0,
        ];
        assert_eq!(w, want);
        let x = [1.0f32; 10];
        assert_eq!(matmul(&x, &w, 1, 1, 10), vec![want.iter().sum::<f32>()]);
    }
}
