//! Timing kernels with CUDA events: the median of many launches after a warm-up, each after an
//! L2 flush, shared by the example, the autotuner and anything else that reports a time.

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
