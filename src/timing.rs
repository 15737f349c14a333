//! Timing kernels with CUDA events: the median of many launches after a warm-up, each after an
//! L2 flush, shared by the example, the autotuner and anything else that reports a time.
//!
//! ```no_run
//! use flashcore::kernels::attention;
//! use flashcore::runtime::Device;
//!
//! // Needs a GPU: the median of 50 timed launches after 5 warm-up ones.
//! let device = Device::new(0)?;
//! let shape = [1, 8, 512, 64];
//! let (q, k, v) = (device.filled(&shape, flashcore::f16::ONE)?, device.filled(&shape, flashcore::f16::ONE)?,
//!                  device.filled(&shape, flashcore::f16::ONE)?);
//! let mut out = device.filled(&shape, flashcore::f16::NAN)?;
//! let us = flashcore::timing::median_launch_us::<flashcore::Error>(&device, 5, 50, |_| {
//!     attention::launch_async(&device, &attention::CONFIG, &q, &k, &v, &mut out, None, 0.125, None, None)
//! })?;
//! println!("{us:.2} µs");
//! # Ok::<(), flashcore::Error>(())
//! ```

use crate::runtime::{Device, RuntimeError};

/// How many input sets to rotate through while timing, each `set_bytes` large: enough for about
/// 64 MB in all (more than the L2 holds, so a launch does not find its inputs cached), 1 to 8.
pub fn rotating_sets(set_bytes: usize) -> usize {
    (64usize << 20).div_ceil(set_bytes.max(1)).clamp(1, 8)
}

/// The median time in µs of `iters` launches after `warmup`, with CUDA events. Each timed
/// launch follows an L2 flush (a 256 MB memset, ~0.1 ms of GPU work) so that the host enqueues
/// the launch while the GPU is still busy: the events then bracket the kernel only. `launch(i)`
/// enqueues launch `i` (the caller rotates its inputs by `i`). Errors from `launch` come back
/// as they are; the driver's as `E::from`.
pub fn median_launch_us<E: From<RuntimeError>>(
    device: &Device,
    warmup: usize,
    iters: usize,
    mut launch: impl FnMut(usize) -> Result<(), E>,
) -> Result<f64, E> {
    let mut flush = device.l2_flush_buffer(256 << 20)?;
    let mut events = vec![];
    for i in 0..warmup + iters.max(1) {
        device.flush_l2(&mut flush)?;
        let start = device.record()?;
        launch(i)?;
        let stop = device.record()?;
        if i >= warmup {
            events.push((start, stop));
        }
        if i % 64 == 63 {
            device.synchronize()?;
        }
    }
    device.synchronize()?;
    let mut times = events
        .iter()
        .map(|(a, b)| a.elapsed_ms(b).map(|ms| ms as f64 * 1e3))
        .collect::<Result<Vec<f64>, _>>()?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}
