//! The decoder's elementwise and normalisation ops, each routed once per call: the host loop
//! of [`crate::host`] for f32 tensors on a plain Flex device, the Burn tensor ops otherwise.
//!
//! Both routes compute the same thing (tests check the host loops against the Burn ops), so the
//! model code is written once.

use std::cell::Cell;

use burn::nn::RmsNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

#[cfg(feature = "flex")]
use crate::host;

thread_local! {
    static HOST_KERNELS: Cell<bool> = const { Cell::new(true) };
}

/// Turn the Flex host path off for forwards run on this thread (`false`: every op takes the
/// Burn tensor ops, as on other backends) or back on. For tests and the decode bench, which
/// compare the two in one process.
#[doc(hidden)]
pub fn set_host_kernels(enabled: bool) {
    HOST_KERNELS.with(|h| h.set(enabled));
}

/// Whether the Flex host path is on for this thread (see [`set_host_kernels`]).
pub(crate) fn host_kernels_enabled() -> bool {
    HOST_KERNELS.with(Cell::get)
}

/// Forwards of up to this many token rows (batch × new tokens) run on the pool ([`on_pool`]).
/// Measured on SmolLM2-135M, 2 threads: decode steps take ~1.9× less CPU per token that way;
/// a 512-token prefill makes few calls for its work, and took ~5% more CPU, so it stays where
/// it is.
const ON_POOL_MAX_ROWS: usize = 8;

/// Run a forward `f` over `rows` token rows on a worker of rayon's global pool when `device`
/// is a plain Flex device, `rows` ≤ [`ON_POOL_MAX_ROWS`] and this thread is not a worker
/// already, carrying this thread's [`set_host_kernels`] switch.
///
/// Every Flex matmul (any4 or dense) splits its work over that pool. Called from outside it,
/// each call hands its work to the pool and puts the caller to sleep until the workers finish:
/// a decode step of a 30-layer model makes ~200 such calls, each a wake-up and a sleep of the
/// calling thread. From inside, the calling worker takes a share of every call itself and the
/// handoff happens once per forward. Other backends run `f` where they are (CubeCL keeps
/// per-thread streams).
pub(crate) fn on_pool<R: Send>(
    device: &burn::tensor::Device,
    rows: usize,
    f: impl FnOnce() -> R + Send,
) -> R {
    #[cfg(feature = "flex")]
    {
        use burn::backend::DispatchDevice;
        if rows <= ON_POOL_MAX_ROWS
            && matches!(device.as_dispatch(), DispatchDevice::Flex(_))
            && rayon::current_thread_index().is_none()
        {
            let host = host_kernels_enabled();
            return rayon::scope(move |_| {
                let before = host_kernels_enabled();
                set_host_kernels(host);
                let out = f();
                set_host_kernels(before);
                out
            });
        }
    }
    #[cfg(not(feature = "flex"))]
    let _ = (device, rows);
    f()
}

/// `norm(x)` over the last dimension (Burn's `RmsNorm`).
pub fn rms_norm<const D: usize>(x: Tensor<D>, norm: &RmsNorm) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if host::eligible(&x) {
        let shape = x.dims();
        let x = host::into_flex(x);
        let gamma = host::into_flex(norm.gamma.val());
        let mut out = vec![0f32; x.layout().num_elements()];
        host::rms_norm(
            host::values(&x),
            host::values(&gamma),
            norm.epsilon as f32,
            &mut out,
        );
        return host::from_flex(host::new_flex(out, shape.to_vec()));
    }
    norm.forward(x)
}

/// `x + y` (same shapes); on the host path written into `x`'s storage.
pub fn add<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if host::eligible(&x) && host::eligible(&y) && x.dims() == y.dims() {
        let (mut x, y) = (host::into_flex(x), host::into_flex(y));
        host::add(host::values_mut(&mut x), host::values(&y));
        return host::from_flex(x);
    }
    x + y
}

/// `silu(gate) ⊙ up`; on the host path written into `gate`'s storage.
pub fn silu_mul<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if host::eligible(&gate) && host::eligible(&up) && gate.dims() == up.dims() {
        let (mut g, u) = (host::into_flex(gate), host::into_flex(up));
        host::silu_mul(host::values_mut(&mut g), host::values(&u));
        return host::from_flex(g);
    }
    silu(gate) * up
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use any4_core::rng::SplitMix64;
    use burn::tensor::{Device, TensorData};

    fn random(shape: [usize; 3], seed: u64) -> Tensor<3> {
        let mut r = SplitMix64::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.next_gaussian() as f32 * 2.0).collect();
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    fn vec(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32")
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Decode-sized forwards move to a pool worker with the caller's host-kernel switch (the
    /// worker's own switch is restored afterwards); larger ones stay on the calling thread.
    #[test]
    fn on_pool_carries_the_host_kernel_switch() {
        let flex = Device::flex();
        let probe = || (rayon::current_thread_index(), host_kernels_enabled());
        set_host_kernels(false);
        let (worker, host) = on_pool(&flex, ON_POOL_MAX_ROWS, probe);
        assert!(worker.is_some(), "a decode step runs on a pool worker");
        assert!(!host, "with the caller's switch");
        let (worker, host) = on_pool(&flex, ON_POOL_MAX_ROWS + 1, probe);
        assert!(worker.is_none() && !host, "a prefill stays on the caller");
        set_host_kernels(true);
        let (worker, host) = on_pool(&flex, 1, probe);
        assert!(worker.is_some() && host);
        // Every worker's own switch is back to its default.
        let n = rayon::current_num_threads();
        let all: Vec<bool> = rayon::broadcast(|_| host_kernels_enabled());
        assert_eq!(all, vec![true; n]);
    }

    /// Each host loop against the Burn ops it replaces, on the same inputs.
    #[test]
    fn host_ops_match_burn_ops() {
        let x = random([2, 3, 40], 1);
        let y = random([2, 3, 40], 2);
        let norm = RmsNorm {
            gamma: burn::module::Param::from_tensor(random([1, 1, 40], 3).reshape([40])),
            epsilon: 1e-5,
        };
        assert!(host::eligible(&x));
        let host = (
            vec(rms_norm(x.clone(), &norm)),
            vec(add(x.clone(), y.clone())),
            vec(silu_mul(x.clone(), y.clone())),
        );
        set_host_kernels(false);
        assert!(!host::eligible(&x));
        let burn = (
            vec(rms_norm(x.clone(), &norm)),
            vec(add(x.clone(), y.clone())),
            vec(silu_mul(x.clone(), y.clone())),
        );
        set_host_kernels(true);
        assert!(max_rel(&host.0, &burn.0) < 1e-6, "rms_norm");
        assert_eq!(host.1, burn.1, "add");
        assert!(max_rel(&host.2, &burn.2) < 1e-6, "silu_mul");
        // The host add wrote into its own copy: `x` is unchanged.
        assert_eq!(vec(x.clone()), vec(random([2, 3, 40], 1)));
    }
}
