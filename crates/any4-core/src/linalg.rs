//! Dense linear algebra for calibration: a bounds-checked wrapper around the `gemm` crate's
//! micro-kernels and a blocked Cholesky factorisation (f64), both parallelised with rayon over
//! independent row tiles so that the result does not depend on the thread count.

use rayon::prelude::*;

/// A strided matrix operand: element `(i, j)` is at `offset + i·rs + j·cs` of its slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided {
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Strided {
    /// A row-major block `[rows, cols]` starting at `(r0, c0)` of a matrix with `ld` columns.
    pub fn block(ld: usize, r0: usize, c0: usize, rows: usize, cols: usize) -> Self {
        Strided {
            rows,
            cols,
            offset: r0 * ld + c0,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of this operand (same memory).
    pub fn t(self) -> Self {
        Strided {
            rows: self.cols,
            cols: self.rows,
            offset: self.offset,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// One past the largest index touched (0 for an empty operand).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
    }
}

/// f32 or f64: the element types the calibration products use.
pub(crate) trait Scalar: Copy + 'static {
    /// The multiplicative identity.
    const ONE: Self;
}
impl Scalar for f32 {
    const ONE: Self = 1.0;
}
impl Scalar for f64 {
    const ONE: Self = 1.0;
}

/// `dst += beta · lhs · rhs` (or `dst = beta · lhs · rhs` when `!accumulate`), single-threaded;
/// each operand is a slice and its layout.
///
/// Panics (a caller bug) when the shapes disagree or an operand reaches past its slice.
pub(crate) fn gemm_into<T: Scalar>(
    (dst, d): (&mut [T], Strided),
    (lhs, l): (&[T], Strided),
    (rhs, r): (&[T], Strided),
    beta: T,
    accumulate: bool,
) {
    assert!(
        d.rows == l.rows && d.cols == r.cols && l.cols == r.rows,
        "gemm_into: shapes [{}, {}] = [{}, {}] · [{}, {}]",
        d.rows,
        d.cols,
        l.rows,
        l.cols,
        r.rows,
        r.cols
    );
    assert!(
        d.end() <= dst.len() && l.end() <= lhs.len() && r.end() <= rhs.len(),
        "gemm_into: operand out of bounds"
    );
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    // SAFETY: the asserts above keep every index the kernel touches inside the three slices;
    // `dst` is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr().add(d.offset),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr().add(r.offset),
            r.cs as isize,
            r.rs as isize,
            T::ONE,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Panel width of the blocked Cholesky: the trailing update (the bulk of the work) runs as
/// `PANEL`-deep matrix products.
const PANEL: usize = 96;
/// Rows per parallel task of the panel solve and the trailing update.
const TILE: usize = 64;

/// In-place lower Cholesky `A = L·Lᵀ` of a row-major, symmetric `n × n` f64 matrix (only the
/// lower triangle is read; on success it holds `L`, the strict upper triangle is untouched).
///
/// Right-looking blocked algorithm: factor a diagonal block, solve the panel below it
/// (`L21 = A21 · L11⁻ᵀ`), then update the trailing lower triangle `A22 −= L21 · L21ᵀ` with
/// matrix products in row tiles (each tile only up to its own diagonal). On a non-positive
/// pivot returns `Err(column)`.
pub(crate) fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n, "cholesky_lower: matrix length");
    for k0 in (0..n).step_by(PANEL) {
        let k1 = (k0 + PANEL).min(n);
        let nb = k1 - k0;
        // 1. Diagonal block, unblocked (earlier panels are already subtracted from it).
        for j in k0..k1 {
            let rj = j * n;
            let d = a[rj + j] - dot(&a[rj + k0..rj + j], &a[rj + k0..rj + j]);
            if !(d > 0.0 && d.is_finite()) {
                return Err(j);
            }
            let l = d.sqrt();
            a[rj + j] = l;
            for i in j + 1..k1 {
                let ri = i * n;
                let s = dot(&a[ri + k0..ri + j], &a[rj + k0..rj + j]);
                a[ri + j] = (a[ri + j] - s) / l;
            }
        }
        if k1 == n {
            break;
        }
        // 2. Panel below: every row i ≥ k1 solves against L11 independently.
        let l11: Vec<f64> = (k0..k1)
            .flat_map(|i| a[i * n + k0..i * n + k1].to_vec())
            .collect();
        let (_, below) = a.split_at_mut(k1 * n);
        below.par_chunks_mut(n).for_each(|row| {
            let p = &mut row[k0..k1];
            for j in 0..nb {
                let s = dot(&p[..j], &l11[j * nb..j * nb + j]);
                p[j] = (p[j] - s) / l11[j * nb + j];
            }
        });
        // 3. Trailing update of the lower triangle, from a copy of the panel `L21`.
        let l21: Vec<f64> = (k1..n)
            .flat_map(|i| a[i * n + k0..i * n + k1].to_vec())
            .collect();
        let (_, below) = a.split_at_mut(k1 * n);
        below
            .par_chunks_mut(TILE * n)
            .enumerate()
            .for_each(|(t, tile)| {
                let r0 = t * TILE; // first row of the tile, relative to k1
                let rows = tile.len() / n;
                let cols = r0 + rows; // columns k1 .. k1 + cols reach the tile's diagonal
                gemm_into(
                    (tile, Strided::block(n, 0, k1, rows, cols)),
                    (&l21, Strided::block(nb, r0, 0, rows, nb)),
                    (&l21, Strided::block(nb, 0, 0, cols, nb).t()),
                    -1.0,
                    true,
                );
            });
    }
    Ok(())
}

/// `Σ a_i b_i` in f64 (short vectors; the compiler vectorises it).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random_spd(n: usize, seed: u64) -> Vec<f64> {
        let mut r = SplitMix64::new(seed);
        let m = n + 7;
        let x: Vec<f64> = (0..m * n).map(|_| r.next_gaussian()).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..m).map(|p| x[p * n + i] * x[p * n + j]).sum();
            }
        }
        a
    }

    /// L·Lᵀ reproduces the matrix for sizes below, at and across several panels.
    #[test]
    fn cholesky_reconstructs() {
        for n in [1, 5, PANEL, PANEL + 1, 2 * PANEL + 37, 300] {
            let a = random_spd(n, n as u64);
            let mut l = a.clone();
            cholesky_lower(&mut l, n).expect("positive definite");
            let mut worst = 0.0f64;
            for i in 0..n {
                for j in 0..=i {
                    let s: f64 = (0..=j).map(|p| l[i * n + p] * l[j * n + p]).sum();
                    let scale = (a[i * n + i] * a[j * n + j]).sqrt();
                    worst = worst.max((s - a[i * n + j]).abs() / scale);
                }
            }
            assert!(worst < 1e-10, "n = {n}: relative error {worst}");
        }
    }

    /// A singular matrix is refused at the first column that has no pivot left.
    #[test]
    fn cholesky_refuses_singular() {
        let n = 4;
        // Rank 2: rows 2 and 3 repeat rows 0 and 1.
        let v = [[1.0, 2.0, 1.0, 2.0], [0.5, -1.0, 0.5, -1.0]];
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = v.iter().map(|r| r[i] * r[j]).sum();
            }
        }
        assert_eq!(cholesky_lower(&mut a, n), Err(2));
    }

    /// The strided wrapper multiplies transposed and offset operands correctly.
    #[test]
    fn gemm_into_matches_naive() {
        let mut r = SplitMix64::new(3);
        let (m, k, n) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|_| r.next_gaussian() as f32).collect();
        let b: Vec<f32> = (0..n * k).map(|_| r.next_gaussian() as f32).collect(); // [n, k]
        let mut c = vec![1.0f32; m * n];
        gemm_into(
            (&mut c, Strided::block(n, 0, 0, m, n)),
            (&a, Strided::block(k, 0, 0, m, k)),
            (&b, Strided::block(k, 0, 0, n, k).t()),
            2.0,
            true,
        );
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                assert!((c[i * n + j] - (1.0 + 2.0 * s)).abs() < 1e-4);
            }
        }
    }
}
