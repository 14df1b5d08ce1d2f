//! Spreading the rows of one int8 call over the calling thread and the rayon pool.
//!
//! A decode-sized call takes tens to hundreds of microseconds, so how the work is handed out
//! matters as much as the kernel. Called from outside the pool (a Burn forward on the user's
//! thread), a parallel iterator injects the work, wakes the workers and puts the caller to
//! sleep until they finish: the call then waits for two wake-ups, and on a busy machine for a
//! worker to be scheduled at all (tens of milliseconds were measured on the shared 2-core VM).
//! Here the caller works from the start: it posts helper jobs to the pool, and everyone claims
//! chunks of rows from a shared counter. The caller then waits only for chunks that were
//! claimed, never for a helper to start; a helper that runs late finds nothing left and leaves
//! without touching the call's data.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

/// `task(u)` for every `u < units`, in chunks of `chunk`: on the calling thread when not
/// `parallel`, else spread over the caller and the rayon pool (module docs). Inside the pool,
/// rayon's own splitting is used (the caller is a worker and steals work while it waits).
pub(super) fn run_units(
    units: usize,
    chunk: usize,
    parallel: bool,
    task: impl Fn(usize) + Sync + Send,
) {
    let threads = rayon::current_num_threads();
    let chunk = chunk.max(1);
    if !parallel || threads < 2 || units <= chunk {
        (0..units).for_each(task);
    } else if rayon::current_thread_index().is_some() {
        (0..units)
            .into_par_iter()
            .with_min_len(chunk)
            .for_each(task);
    } else {
        share(units, chunk, threads - 1, &task);
    }
}

/// The state helpers reach after the call may have returned, so it lives on the heap.
struct Shared {
    /// First unit not yet claimed (`units` once all are claimed).
    next: AtomicUsize,
    /// Units finished (successfully or not).
    done: AtomicUsize,
    /// A chunk's task panicked.
    panicked: AtomicBool,
    units: usize,
    /// The smallest claim.
    chunk: usize,
    /// Threads sharing the work (caller and helpers).
    threads: usize,
    /// The caller's task, its lifetime erased: dereferenced only by a thread holding a claimed
    /// chunk, and the caller does not return before every claimed chunk is done.
    task: *const (dyn Fn(usize) + Sync + 'static),
}

// SAFETY: `task` is `Sync` and only called while the caller keeps it alive (see the field).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The next claim, `start .. end`, or `None` when every unit is claimed. Claims shrink with
    /// what is left (guided scheduling: a share of the rest per thread, at least `chunk`): a
    /// claim moves the counter's cache line between cores, and claiming a 16384-row call 16
    /// rows at a time cost ~10% of it; the shrinking tail keeps the threads finishing together.
    fn claim(&self) -> Option<(usize, usize)> {
        let mut start = self.next.load(Ordering::Relaxed);
        loop {
            if start >= self.units {
                return None;
            }
            let size = ((self.units - start) / (2 * self.threads)).max(self.chunk);
            let end = (start + size).min(self.units);
            match self
                .next
                .compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some((start, end)),
                Err(now) => start = now,
            }
        }
    }

    /// Claim and run chunks until none are left.
    fn work(&self) {
        while let Some((start, end)) = self.claim() {
            // SAFETY: this chunk was claimed, so the caller is still waiting for it (its `done`
            // count is not reached) and the task it points to is alive.
            let task = unsafe { &*self.task };
            if catch_unwind(AssertUnwindSafe(|| (start..end).for_each(task))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            // Release: the chunk's writes happen before the caller sees it done.
            self.done.fetch_add(end - start, Ordering::Release);
        }
    }
}

fn share(units: usize, chunk: usize, helpers: usize, task: &(dyn Fn(usize) + Sync)) {
    let chunks = units.div_ceil(chunk);
    // SAFETY: only the lifetime changes (same fat pointer); see `Shared::task`.
    let task: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task) };
    let helpers = helpers.min(chunks - 1);
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        units,
        chunk,
        threads: helpers + 1,
        task,
    });
    for _ in 0..helpers {
        let s = Arc::clone(&shared);
        rayon::spawn(move || s.work());
    }
    shared.work();
    // Every unit is claimed; wait for those still running on helpers (at most one claim each).
    let mut spins = 0u32;
    while shared.done.load(Ordering::Acquire) < units {
        if spins < 64 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
    if shared.panicked.load(Ordering::Relaxed) {
        resume_unwind(Box::new("any4 int8 matmul: a row task panicked"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit runs exactly once, from outside the pool (caller and helpers) and inside it.
    #[test]
    fn every_unit_runs_once() {
        for (units, chunk) in [(0, 4), (1, 4), (5, 4), (1000, 8), (1001, 16)] {
            let hits: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
            let task = |u: usize| {
                hits[u].fetch_add(1, Ordering::Relaxed);
            };
            run_units(units, chunk, true, task);
            rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap()
                .install(|| run_units(units, chunk, true, task));
            run_units(units, chunk, false, task);
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 3),
                "units {units}, chunk {chunk}"
            );
        }
    }

    /// A panicking row task surfaces on the caller after the other chunks are done, instead of
    /// aborting the process or leaving helpers on freed data.
    #[test]
    fn a_panicking_task_panics_the_caller() {
        let ran: Vec<AtomicBool> = (0..64).map(|_| AtomicBool::new(false)).collect();
        let r = catch_unwind(AssertUnwindSafe(|| {
            share(64, 4, 2, &|u: usize| {
                ran[u].store(true, Ordering::Relaxed);
                assert!(u != 37, "unit 37");
            })
        }));
        assert!(r.is_err());
        // Every other claim ran whole; the panicking one stopped after unit 37, so what did
        // not run is the rest of that claim: 38 up to its end.
        let missing: Vec<usize> = (0..64)
            .filter(|&u| !ran[u].load(Ordering::Relaxed))
            .collect();
        assert!(ran[37].load(Ordering::Relaxed));
        assert!(
            missing.iter().enumerate().all(|(i, &u)| u == 38 + i),
            "{missing:?}"
        );
    }

    /// Claims start large and shrink to the minimum chunk, cover every unit once, in order.
    #[test]
    fn claims_shrink_and_cover_every_unit() {
        fn nothing(_: usize) {}
        let task: &'static (dyn Fn(usize) + Sync) = &nothing;
        let shared = Shared {
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            units: 1000,
            chunk: 4,
            threads: 2,
            task,
        };
        let mut claims = Vec::new();
        while let Some(c) = shared.claim() {
            claims.push(c);
        }
        assert_eq!(claims[0], (0, 250), "a quarter of the rest first");
        assert!(claims.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
        assert_eq!(claims.last().unwrap().1, 1000);
        assert!(claims.iter().all(|&(a, b)| b - a >= 4 || b == 1000));
        assert!(claims.len() < 40, "{} claims", claims.len());
    }
}
