//! Kernel selection and the per-row assembly of the int8 path (see the module docs of
//! [`crate::int8`] for the numerics).

use std::cell::RefCell;

use super::split::run_units;
use super::{Acts, BLOCK, Int8Table, PARAMS_AHEAD, RowRef, Weights, portable};
use crate::error::Result;
use crate::matmul::check_activations;
use crate::pack::code;
use crate::quantize::TABLE_LEN;
use crate::view::QuantizedView;

/// An int8 kernel this CPU supports (values exist only for supported kernels, so running one
/// is always sound). [`Int8Kernel::best`] is what
/// [`MatmulPrecision::Int8Activations`](crate::MatmulPrecision) uses; tests and benches run
/// every one of [`Int8Kernel::supported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Int8Kernel(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx512Vbmi,
}

impl Kind {
    /// Every kind built for this target, slowest first.
    const ALL: &[Kind] = &[
        Kind::Portable,
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2,
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512Vnni,
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512Vbmi,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni => "avx512-vnni",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vbmi => "avx512-vbmi",
        }
    }

    fn detected(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vnni");
            match self {
                Kind::Portable => true,
                Kind::Avx2 => avx2,
                Kind::Avx512Vnni => avx512,
                Kind::Avx512Vbmi => avx512 && has!("avx512vbmi"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            matches!(self, Kind::Portable)
        }
    }
}

impl Int8Kernel {
    /// Names of every int8 kernel built for this target, whether this CPU runs it or not.
    pub fn all_names() -> Vec<&'static str> {
        Kind::ALL.iter().map(|k| k.name()).collect()
    }

    /// The kernels this CPU runs, `portable` first.
    pub fn supported() -> Vec<Int8Kernel> {
        Kind::ALL
            .iter()
            .filter(|k| k.detected())
            .map(|&k| Int8Kernel(k))
            .collect()
    }

    /// The fastest supported SIMD kernel, or `None` without one (the portable kernel is a
    /// reference, slower than the f32 lookup path).
    pub fn best() -> Option<Int8Kernel> {
        Int8Kernel::supported()
            .into_iter()
            .rfind(|k| k.0 != Kind::Portable)
    }

    /// The supported kernel called `name` (see [`name`](Self::name)).
    pub fn by_name(name: &str) -> Option<Int8Kernel> {
        Int8Kernel::supported()
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// `portable`, `avx2`, `avx512-vnni` or `avx512-vbmi`.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    fn quantize(self, x: &[f32], m: usize, k: usize, group: usize, a: &mut Acts) {
        match self.0 {
            Kind::Portable => portable::quantize_acts(x, m, k, group, a),
            // SAFETY (every arm below): an `Int8Kernel` exists only for detected features.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => unsafe { super::avx2::quantize_acts(x, m, k, group, a) },
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni | Kind::Avx512Vbmi => unsafe {
                super::avx512::quantize_acts(x, m, k, group, a)
            },
        }
    }

    fn table(self, t: &[f32; 16]) -> Int8Table {
        match self.0 {
            Kind::Portable => super::int8_table(t),
            // SAFETY: every SIMD kind implies AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            _ => unsafe { super::avx2::int8_table(t) },
        }
    }

    fn zero_terms(self, z: &[f32], s: &[f32], xs: &[f32]) -> (f32, f32) {
        match self.0 {
            Kind::Portable => super::zero_terms(z, s, xs),
            // SAFETY: detected features.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => unsafe { super::avx2::zero_terms_avx2(z, s, xs) },
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni | Kind::Avx512Vbmi => unsafe {
                super::avx512::zero_terms_avx512(z, s, xs)
            },
        }
    }

    /// Whether the kernel looks tables up with VBMI's `vpermb`.
    #[cfg(target_arch = "x86_64")]
    fn vbmi(self) -> bool {
        self.0 == Kind::Avx512Vbmi
    }

    /// Whether the kernel reads two rows at once (`rows_dot::<2>`); the others take rows one
    /// by one in memory order.
    fn pairs_rows(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.0, Kind::Avx512Vnni | Kind::Avx512Vbmi) {
            return true;
        }
        false
    }

    /// The integer part of `R` weight rows (1 or 2) against activation rows `i0 .. i0 + MI`
    /// (see `avx512::rows_dot`): `out[r][i]`.
    fn rows_dot<const R: usize, const MI: usize>(
        self,
        rows: [RowRef<'_>; R],
        a: &Acts,
        i0: usize,
        group_blocks: usize,
    ) -> [[f32; MI]; R] {
        match self.0 {
            Kind::Portable => std::array::from_fn(|r| {
                let w = rows[r];
                std::array::from_fn(|i| {
                    portable::row_dot(w.words, w.q, a, i0 + i, w.scales, group_blocks)
                })
            }),
            // SAFETY (both arms): detected features; `a` was quantized by this kernel.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => std::array::from_fn(|r| {
                let w = rows[r];
                std::array::from_fn(|i| unsafe {
                    super::avx2::row_dot(w.words, w.q, a, i0 + i, w.scales, group_blocks)
                })
            }),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni | Kind::Avx512Vbmi => unsafe {
                super::avx512::rows_dot(self.0 == Kind::Avx512Vbmi, rows, a, i0, group_blocks)
            },
        }
    }

    /// [`rows_dot`](Self::rows_dot) for `mi` (1–4) activation rows from `i0`, into `out`.
    fn rows_dot_into<const R: usize>(
        self,
        rows: [RowRef<'_>; R],
        a: &Acts,
        i0: usize,
        mi: usize,
        group_blocks: usize,
        out: &mut [[f32; ACT_ROWS]; R],
    ) {
        fn copy<const R: usize, const MI: usize>(
            v: [[f32; MI]; R],
            out: &mut [[f32; ACT_ROWS]; R],
        ) {
            for (o, v) in out.iter_mut().zip(v) {
                o[..MI].copy_from_slice(&v);
            }
        }
        match mi {
            1 => copy(self.rows_dot::<R, 1>(rows, a, i0, group_blocks), out),
            2 => copy(self.rows_dot::<R, 2>(rows, a, i0, group_blocks), out),
            3 => copy(self.rows_dot::<R, 3>(rows, a, i0, group_blocks), out),
            _ => copy(self.rows_dot::<R, 4>(rows, a, i0, group_blocks), out),
        }
    }
}

/// Activation rows per kernel pass.
const ACT_ROWS: usize = 4;

thread_local! {
    /// Quantized activations, reused by the calls of a thread.
    static SCRATCH: RefCell<Acts> = RefCell::new(Acts::default());
}

/// The output pointer shared by the row tasks, which write disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint indices (`i · rows + row`, each row owned by one task).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the `Send + Sync` wrapper, not the field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Rows per task (claimed from a shared counter, or at least that many per rayon task).
const ROWS_PER_TASK: usize = 16;

/// Multiply-adds below which a call stays on the calling thread (2¹⁶: 32 KB of codes at batch
/// 1). With the batch-1 loops a 576² call takes ~9 µs on one thread and ~6.5 µs on two; more
/// than that, a decode step whose small projections stay on one thread lets the other worker
/// fall asleep, and the next large call pays for waking it (SmolLM2's gate_proj: 26 µs after
/// single-threaded calls, 13.5 µs when the calls before it were shared). Measured on the 2-core
/// EPYC VM, SmolLM2-135M decode on Flex: 252–256 → 283–308 tokens/s (2¹⁹ → 2¹⁶), at ~5% fewer
/// tokens per CPU-second (the second worker spins between calls instead of sleeping).
const PARALLEL_MIN_INT8_MACS: usize = 1 << 16;

impl QuantizedView<'_> {
    /// `y = x · Wᵀ` on the int8 path (module docs of [`MatmulPrecision`](crate::MatmulPrecision))
    /// with the given kernel, for row-major `x: [m, cols]`; returns row-major `[m, rows]`.
    /// Uses the view's precomputed int8 tables when it has them
    /// ([`with_int8_tables`](Self::with_int8_tables)). Errors if `x` is not `m × cols`.
    pub fn matmul_int8(&self, x: &[f32], m: usize, kernel: Int8Kernel) -> Result<Vec<f32>> {
        let (n, k) = (self.rows(), self.cols());
        check_activations(x, m, k)?;
        let mut y = vec![0.0f32; m * n];
        if m == 0 {
            return Ok(y);
        }
        // Without stored int8 tables, convert them once for this call (the kernels read every
        // row's table in its packed form, in place).
        let owned: Vec<u32>;
        let view = if self.has_int8_tables() {
            *self
        } else {
            owned = self
                .tables()
                .chunks_exact(TABLE_LEN)
                .flat_map(|t| kernel.table(t.try_into().expect("16 entries")).to_words())
                .collect();
            self.with_int8_tables(&owned)?
        };
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut acts) => view.int8_into(kernel, x, m, &mut acts, &mut y),
            // A nested call on this thread (e.g. from a task it runs while waiting).
            Err(_) => view.int8_into(kernel, x, m, &mut Acts::default(), &mut y),
        });
        Ok(y)
    }

    fn int8_into(&self, kernel: Int8Kernel, x: &[f32], m: usize, acts: &mut Acts, y: &mut [f32]) {
        let (n, k) = (self.rows(), self.cols());
        kernel.quantize(x, m, k, self.group_len(), acts);
        let acts = &*acts;
        let w = self.int8_weights();
        let out = Out(y.as_mut_ptr());
        let write = move |row: usize, i: usize, v: f32| {
            // SAFETY: i < m, row < n: in bounds; only the task owning `row` writes column `row`.
            unsafe { *out.ptr().add(i * n + row) = v }
        };
        let parallel = n * k * m >= PARALLEL_MIN_INT8_MACS;
        if kernel.pairs_rows() {
            // Rows in pairs (p, p + half): two distant rows are two concurrent memory streams
            // per core and share the activation loads (see `avx512::rows_dot`).
            let half = n.div_ceil(2);
            #[cfg(target_arch = "x86_64")]
            if m == 1 && k.is_multiple_of(BLOCK) {
                // Batch 1 (decode): whole chunks of rows in one AVX-512 call.
                let chunk = ROWS_PER_TASK / 2;
                let task = |c: usize| {
                    let units = c * chunk..((c + 1) * chunk).min(half);
                    // SAFETY: an AVX-512 kernel exists only on CPUs with its features; `y`
                    // has `n` elements and chunks own disjoint rows; `acts` is this call's.
                    unsafe {
                        super::avx512::gemv_units(kernel.vbmi(), &w, acts, units, half, out.ptr())
                    }
                };
                run_units(half.div_ceil(chunk), 1, parallel, task);
                return;
            }
            let task = |p: usize| {
                w.prefetch(p + PARAMS_AHEAD);
                w.prefetch(p + half + PARAMS_AHEAD);
                if p + half < n {
                    self.int8_rows(kernel, &w, [p, p + half], x, acts, write);
                } else {
                    self.int8_rows(kernel, &w, [p], x, acts, write);
                }
            };
            run_units(half, ROWS_PER_TASK / 2, parallel, task);
        } else {
            #[cfg(target_arch = "x86_64")]
            if m == 1 && k.is_multiple_of(BLOCK) && kernel.0 == Kind::Avx2 {
                // Batch 1 (decode): whole chunks of rows in one AVX2 call.
                let task = |c: usize| {
                    let rows = c * ROWS_PER_TASK..((c + 1) * ROWS_PER_TASK).min(n);
                    // SAFETY: an AVX2 kernel exists only on CPUs with AVX2 and FMA; `y` has
                    // `n` elements and chunks own disjoint rows; `acts` is this call's.
                    unsafe { super::avx2::gemv_rows(&w, acts, rows, out.ptr()) }
                };
                run_units(n.div_ceil(ROWS_PER_TASK), 1, parallel, task);
                return;
            }
            let task = |row: usize| {
                w.prefetch(row + PARAMS_AHEAD);
                self.int8_rows(kernel, &w, [row], x, acts, write)
            };
            run_units(n, ROWS_PER_TASK, parallel, task);
        }
    }

    /// `R` weight rows against every activation row: the integer kernel over full blocks, the
    /// zero term (with `mid` folded in) and the f32 tail.
    fn int8_rows<const R: usize>(
        &self,
        kernel: Int8Kernel,
        w: &Weights<'_>,
        rows: [usize; R],
        x: &[f32],
        a: &Acts,
        write: impl Fn(usize, usize, f32),
    ) {
        let (k, group) = (self.cols(), self.group_len());
        let parts = rows.map(|row| w.row(row));
        let refs: [RowRef<'_>; R] = std::array::from_fn(|r| parts[r].0);
        let group_blocks = w.group_blocks;
        let full = a.blocks * BLOCK;
        let m = x.len() / k;
        let mut dots = [[0.0f32; ACT_ROWS]; R];
        for i0 in (0..m).step_by(ACT_ROWS) {
            let mi = ACT_ROWS.min(m - i0);
            kernel.rows_dot_into(refs, a, i0, mi, group_blocks, &mut dots);
            for (r, row_dots) in dots.iter().enumerate() {
                let (scales, (_, scale, mid, zeros)) = (refs[r].scales, parts[r]);
                for (i, &dot) in (i0..i0 + mi).zip(row_dots) {
                    let xs = &a.xsum[i * a.groups..][..a.groups];
                    let (zx, sx) = kernel.zero_terms(zeros, scales, xs);
                    let mut acc = scale * dot + zx + mid * sx;
                    if full < k {
                        let table = self.row_table(rows[r]);
                        for j in full..k {
                            let c = code(refs[r].words, j) as usize;
                            acc += scales[j / group] * (table[c] - mid) * x[i * k + j];
                        }
                    }
                    write(rows[r], i, acc);
                }
            }
        }
    }
}
