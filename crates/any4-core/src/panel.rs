//! The multiply of [`QuantizedView::matmul_panels`](crate::QuantizedView::matmul_panels): one
//! dequantized panel of `W` (`rows × kc`, row-major f32, in L2) times the matching columns of
//! the activations, added into the output.
//!
//! With AVX-512F an own micro-kernel runs; elsewhere the `gemm` crate's. The `gemm` crate only
//! uses AVX-512 behind its `x86-v4` feature, and even then its packing of the activations
//! (gathered with stride K for every panel) and its blocking for a 32–256-row right operand ran
//! at 35–225 GFLOP/s depending on the shape on the 2-core EPYC VM (one thread). The micro-kernel
//! needs no packing: both operands are read along K as stored. A tile of 4 activation rows ×
//! 6 panel rows keeps 24 accumulators of 16 lanes; per 16 columns it loads 4 + 6 vectors and
//! issues 24 FMAs (FMA-bound), and reduces each accumulator once per panel.

/// One panel product: `y[i, r0 + r] += Σ_j x[i, k0 + j] · panel[r, j]` for `i < m`, `r < rows`,
/// `j < kc`.
pub(crate) struct Operands<'a> {
    /// Activations, row-major `[m, k]`.
    pub x: &'a [f32],
    pub m: usize,
    pub k: usize,
    /// First column of the panel.
    pub k0: usize,
    /// Row-major `[rows, kc]`.
    pub panel: &'a [f32],
    pub rows: usize,
    pub kc: usize,
}

/// Add the panel product into `y` (`[m, n]`, row-major), columns `r0 .. r0 + rows`.
///
/// # Safety
/// `y` points to `m · n` writable floats, and no other thread accesses columns
/// `r0 .. r0 + rows` meanwhile.
pub(crate) unsafe fn panel_times(o: Operands<'_>, y: *mut f32, n: usize, r0: usize) {
    let path = *Path::supported().last().expect("gemm is always supported");
    // SAFETY: forwarded contract.
    unsafe { panel_times_with(path, o, y, n, r0) }
}

/// The micro-kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The `gemm` crate's (AVX2/FMA or portable on x86-64 without `x86-v4`).
    Gemm,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    /// The paths this CPU runs, the preferred one last.
    fn supported() -> Vec<Path> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return vec![Path::Gemm, Path::Avx512];
        }
        vec![Path::Gemm]
    }
}

/// [`panel_times`] on a given path (which must be supported).
///
/// # Safety
/// As [`panel_times`].
unsafe fn panel_times_with(path: Path, o: Operands<'_>, y: *mut f32, n: usize, r0: usize) {
    assert!(
        o.x.len() == o.m * o.k
            && o.k0 + o.kc <= o.k
            && o.panel.len() == o.rows * o.kc
            && r0 + o.rows <= n,
        "panel_times: shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if path == Path::Avx512 {
        // SAFETY: `Avx512` is only supported with the features; shapes checked; the caller
        // owns the columns.
        unsafe { avx512::panel_times(&o, y, n, r0) };
        return;
    }
    // dst (i, r) at y[i·n + r0 + r]: column stride 1, row stride n; lhs x (i, j) at
    // x[i·k + k0 + j]: (cs 1, rs k); rhs panelᵀ (j, r) at panel[r·kc + j]: (cs kc, rs 1).
    // SAFETY: indices stay within the shapes checked above; the caller owns the columns.
    unsafe {
        gemm::gemm(
            o.m,
            o.rows,
            o.kc,
            y.add(r0),
            1,
            n as isize,
            true,
            o.x.as_ptr().add(o.k0),
            1,
            o.k as isize,
            o.panel.as_ptr(),
            o.kc as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Operands;

    /// Activation rows per tile.
    const MI: usize = 4;
    /// Panel rows per tile.
    const R: usize = 6;

    /// # Safety
    /// AVX-512F and FMA; shapes as checked by `panel_times`; `y` as its contract.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn panel_times(o: &Operands<'_>, y: *mut f32, n: usize, r0: usize) {
        let (m, k, kc, rows) = (o.m, o.k, o.kc, o.rows);
        let steps = kc / 16;
        let tail: u16 = ((1u32 << (kc % 16)) - 1) as u16;
        // SAFETY: loads read x[i·k + k0 .. + kc] for i < m and panel[r·kc .. + kc] for
        // r < rows (edge tiles repeat the last valid row and drop its results; the last step
        // is masked to kc); stores write y[i·n + r0 + r] for valid i, r only.
        unsafe {
            for i0 in (0..m).step_by(MI) {
                let xr: [*const f32; MI] =
                    std::array::from_fn(|ii| o.x.as_ptr().add((i0 + ii).min(m - 1) * k + o.k0));
                for p0 in (0..rows).step_by(R) {
                    let pr: [*const f32; R] = std::array::from_fn(|rr| {
                        o.panel.as_ptr().add((p0 + rr).min(rows - 1) * kc)
                    });
                    let mut acc = [[_mm512_setzero_ps(); R]; MI];
                    let step = |acc: &mut [[__m512; R]; MI], j: usize, mask: u16| {
                        let xv: [__m512; MI] =
                            std::array::from_fn(|ii| _mm512_maskz_loadu_ps(mask, xr[ii].add(j)));
                        for rr in 0..R {
                            let p = _mm512_maskz_loadu_ps(mask, pr[rr].add(j));
                            for ii in 0..MI {
                                acc[ii][rr] = _mm512_fmadd_ps(xv[ii], p, acc[ii][rr]);
                            }
                        }
                    };
                    for s in 0..steps {
                        step(&mut acc, 16 * s, u16::MAX);
                    }
                    if tail != 0 {
                        step(&mut acc, 16 * steps, tail);
                    }
                    for (ii, row) in acc.iter().enumerate() {
                        if i0 + ii >= m {
                            break;
                        }
                        for (rr, a) in row.iter().enumerate() {
                            if p0 + rr >= rows {
                                break;
                            }
                            *y.add((i0 + ii) * n + r0 + p0 + rr) += _mm512_reduce_add_ps(*a);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Every supported path against an f64 reference: tile edges (m mod 4, rows mod 6), a
    /// masked last column step (kc mod 16), a panel inside wider x and y, accumulation into y.
    #[test]
    fn every_path_matches_the_reference() {
        let mut r = SplitMix64::new(5);
        let paths = Path::supported();
        for (m, rows, kc) in [
            (1, 1, 16),
            (3, 7, 40),
            (9, 13, 512),
            (4, 6, 33),
            (17, 20, 100),
        ] {
            let (k, k0, n, r0) = (kc + 24, 8, rows + 5, 3);
            let x: Vec<f32> = (0..m * k).map(|_| r.next_gaussian() as f32).collect();
            let panel: Vec<f32> = (0..rows * kc).map(|_| r.next_gaussian() as f32).collect();
            let y0: Vec<f32> = (0..m * n).map(|_| r.next_gaussian() as f32).collect();
            for &path in &paths {
                let mut y = y0.clone();
                let o = Operands {
                    x: &x,
                    m,
                    k,
                    k0,
                    panel: &panel,
                    rows,
                    kc,
                };
                // SAFETY: `y` is `[m, n]`, this thread owns it.
                unsafe { panel_times_with(path, o, y.as_mut_ptr(), n, r0) };
                for i in 0..m {
                    for c in 0..n {
                        let mut want = y0[i * n + c] as f64;
                        if (r0..r0 + rows).contains(&c) {
                            want += (0..kc)
                                .map(|j| x[i * k + k0 + j] as f64 * panel[(c - r0) * kc + j] as f64)
                                .sum::<f64>();
                        }
                        let got = y[i * n + c] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{path:?} m={m} rows={rows} kc={kc} ({i}, {c}): {got} vs {want}"
                        );
                    }
                }
            }
        }
        let not_run: Vec<&str> = ["Gemm", "Avx512"]
            .into_iter()
            .filter(|n| !paths.iter().any(|p| format!("{p:?}") == *n))
            .collect();
        eprintln!(
            "panel micro-kernels checked: {paths:?}; not run (this CPU or target lacks them): {not_run:?}"
        );
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let expected = 1 + usize::from(has!("avx512f") && has!("fma"));
            assert_eq!(paths.len(), expected, "paths checked vs the CPU's features");
        }
    }
}
