//! The autotuner's search, in the library: the candidate schedules of each round, every
//! candidate checked against float64 on a poisoned output before it is timed, and the winner
//! as a tuning-table entry. The `autotune` example drives it over many keys (and variants); the
//! first-use tuner ([`FirstUse`], `FLASHCORE_AUTOTUNE=1`) drives it for one key within a time
//! budget and stores the winner in the user's tuning cache.
//!
//! The search runs in four rounds per key, each over the best of the last: tiles (`tile_m`,
//! compute warps, `tile_n`), then the pipeline (stages, load warps, persistent CTAs, and on
//! sm_90a the overlap pass) for the two best tilings, then split-KV for the two best so far
//! where the grid is smaller than twice the SMs, then softmax placement for the best
//! warp-specialized one. An sm_90a key whose grid is
//! that small searches the sm_89 space as well (its split-KV can win there); the winner's
//! config names its target. Candidates that spill registers (ptxas, when found) or whose shared
//! memory is over the device's limit are skipped before they run.
//!
//! ```
//! use flashcore::autotune::{pipeline_candidates, tiling_candidates};
//! use flashcore::{kernels::attention, Config, Target};
//!
//! // The sm_90a space: whole warpgroups, each tiling with and without a producer warpgroup.
//! let declared = Config { target: Target::Sm90a, ..attention::CONFIG.with_head_dim(128) };
//! let tilings = tiling_candidates(declared);
//! assert!(tilings.iter().all(|c| c.warps % 4 == 0 && c.tile_m == 16 * c.warps));
//! assert!(tilings.iter().any(|c| c.load_warps == 4));
//! assert!(pipeline_candidates(tilings[0]).iter().any(|c| c.stages == 4));
//! // With a producer warpgroup, with and without the overlap pass.
//! assert!(pipeline_candidates(tilings[0]).iter().any(|c| c.load_warps == 4 && c.overlap));
//! ```

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::reference::{self, Problem, Rng, Variant};
use crate::runtime::{Device, DeviceTensor, RuntimeError, TensorArg};
use crate::tuning::{Entry, Gpu, Key, Measured, Schedule, SizeClass, Source, Table, Trial};
use crate::tuning_cache::TuningCache;
use crate::{bf16, f16, tolerance, Arg, CompiledKernel, Config, DType, Error, HalfFloat, Target};

/// Spill stores (bytes, ptxas) above which a candidate is skipped without running: none. A
/// spilling winner ships local-memory traffic that the next ptxas or GPU may make worse, and
/// every shipped config is to be spill-free (issue 20).
pub const MAX_SPILL_BYTES: u32 = 0;

/// The shape each size class is tuned at: the benchmark's representative of the class.
pub fn representative(class: SizeClass) -> [usize; 4] {
    match class {
        SizeClass::Tiny => [1, 8, 512, 512],
        SizeClass::Small => [1, 8, 1024, 1024],
        SizeClass::Medium => [4, 16, 2048, 2048],
        SizeClass::Large => [2, 16, 8192, 8192],
    }
}

/// Round 1: the tilings (with Q kept in shared memory where a warp owns 32 rows or more).
pub fn tiling_candidates(declared: Config) -> Vec<Config> {
    let mut out = vec![];
    // sm_90a: whole warpgroups of 16-row warps (the others would not compile for it).
    let tilings: &[(u32, u32)] = match declared.target {
        Target::Sm89 | Target::Auto => &[(16, 1), (32, 2), (64, 4), (64, 2), (128, 8), (128, 4)],
        Target::Sm90a => &[(64, 4), (128, 8), (192, 12), (256, 16)],
    };
    for &(tile_m, warps) in tilings {
        for tile_n in [32, 64, 128, 256] {
            for a_in_smem in [false, true] {
                if a_in_smem && tile_m / warps < 32 {
                    continue;
                }
                for &load_warps in round1_load_warps(declared.target) {
                    out.push(Config {
                        tile_m,
                        warps,
                        tile_n,
                        stages: 2,
                        load_warps,
                        softmax_warps: 0,
                        persistent: false,
                        a_in_smem,
                        ..declared
                    });
                }
            }
        }
    }
    out
}

/// Load warps of the round-1 tilings: none on sm_89 (round 2 adds them); on sm_90a the
/// producer warpgroup changes which tiling wins (its registers go to the compute warpgroups),
/// so each tiling is measured with and without it.
fn round1_load_warps(target: Target) -> &'static [u32] {
    match target {
        Target::Sm89 | Target::Auto => &[0],
        Target::Sm90a => &[0, 4],
    }
}

/// Round 2: the pipeline around one tiling (sm_90a: the producer warpgroup or none, with and
/// without the overlap pass and bulk tensor copies, and deeper rings, which its 227 KiB of shared memory holds).
pub fn pipeline_candidates(tiling: Config) -> Vec<Config> {
    let mut out = vec![];
    let (stage_counts, load_counts): (&[u32], &[u32]) = match tiling.target {
        Target::Sm89 | Target::Auto => (&[1, 2, 3], &[0, 1, 2]),
        Target::Sm90a => (&[1, 2, 3, 4], &[0, 4]),
    };
    for &stages in stage_counts {
        for &load_warps in load_counts {
            for persistent in [false, true] {
                let config = Config {
                    stages,
                    load_warps,
                    persistent,
                    softmax_warps: 0,
                    overlap: false,
                    tma: false,
                    ..tiling
                };
                out.push(config);
                if tiling.target == Target::Sm90a && load_warps > 0 {
                    // The producer with and without the overlap, each with cp.async and with
                    // bulk tensor copies.
                    out.push(Config { overlap: true, ..config });
                    out.push(Config { tma: true, ..config });
                    out.push(Config { overlap: true, tma: true, ..config });
                    if tiling.warps == 8 {
                        // Two compute warpgroups: their matmuls in turns (FlashAttention-3's
                        // pingpong), with the overlap it needs.
                        out.push(Config { overlap: true, tma: true, pingpong: true, ..config });
                    }
                }
            }
        }
    }
    out
}

/// Round 3, where the grid is small (fewer work items than twice the SMs: small B·H·S): split-KV
/// around one config. `kv_splits` groups of warps, each with the config's rows per warp, split
/// every K/V tile (of the same or twice the size) so that a warp's chain of mma shrinks.
pub fn split_candidates(best: Config, work_items: usize, sms: usize) -> Vec<Config> {
    if work_items >= 2 * sms || best.softmax_warps > 0 {
        return vec![];
    }
    let mut out = vec![];
    for kv_splits in [2, 4] {
        for tile_n in [best.tile_n, 2 * best.tile_n] {
            out.push(Config { warps: best.warps * kv_splits, kv_splits, tile_n, ..best });
        }
    }
    out.retain(|c| c.tile_n <= 256 && c.threads() <= 512);
    out
}

/// Round 4: softmax on warps of its own (a warp-specialized config only).
pub fn softmax_candidates(best: Config) -> Vec<Config> {
    if best.load_warps == 0 || best.kv_splits > 1 {
        return vec![];
    }
    vec![Config { softmax_warps: best.warps, ..best }]
}

/// A parameter after `scale` of a kernel with the standard signature, on the device.
pub enum DeviceExtra {
    /// An `f32` scalar.
    F32(f32),
    /// An `f32` table.
    F32Table(DeviceTensor<f32>),
    /// An `i32` table.
    I32Table(DeviceTensor<i32>),
}

/// The launch arguments of a kernel with the standard signature (`q, k, v, o, lse, scale`, the
/// parameters after `scale`, then the sequence offsets), in order.
pub fn standard_args<'a>(
    [q, k, v]: [&'a dyn TensorArg; 3],
    out: &'a mut dyn TensorArg,
    lse: Option<&'a mut dyn TensorArg>,
    scale: f32,
    extras: &'a [DeviceExtra],
    offsets: [Option<&'a crate::DeviceSeqOffsets>; 2],
) -> Vec<Arg<'a>> {
    let mut args = vec![Arg::Tensor(q), Arg::Tensor(k), Arg::Tensor(v), Arg::TensorMut(out)];
    args.push(lse.map_or(Arg::Absent, Arg::TensorMut));
    args.push(Arg::F32(scale));
    args.extend(extras.iter().map(|e| match e {
        DeviceExtra::F32(x) => Arg::F32(*x),
        DeviceExtra::F32Table(t) => Arg::Tensor(t),
        DeviceExtra::I32Table(t) => Arg::Tensor(t),
    }));
    args.extend(offsets.map(|c| c.map_or(Arg::Absent, Arg::Offsets)));
    args
}

/// One key's problem on the device: several input sets (rotated while timing, so L2 does not
/// hold the next launch's), the parameters after `scale`, a poisoned output, the rows checked
/// and their float64 values.
pub struct Bench<T: HalfFloat> {
    shape: [usize; 4],
    sets: Vec<(DeviceTensor<T>, DeviceTensor<T>, DeviceTensor<T>)>,
    extras: Vec<DeviceExtra>,
    out: DeviceTensor<T>,
    rows: Vec<usize>,
    want: Vec<f64>,
    /// Useful floating-point operations of one launch (the (query, key) pairs the variant keeps).
    pub flops: f64,
}

impl<T: HalfFloat> Bench<T> {
    /// A `[b, h, s, d]` self-attention problem (S = SK, K/V heads = H) of fresh normal inputs
    /// for `declared` (its causal flag and scale), checked against `variant`'s float64 formula
    /// on 64 rows (the first and last rows of the first and last heads, tile boundaries, a
    /// random sample). `extras` are the kernel's parameters after `scale` (none for `attention`).
    pub fn new(
        device: &Device,
        declared: Config,
        shape: [usize; 4],
        variant: &Variant,
        extras: Vec<DeviceExtra>,
        rng: &mut Rng,
    ) -> Result<Bench<T>, String> {
        let [b, h, s, d] = shape;
        let r = |x: RuntimeError| x.to_string();
        let n = b * h * s * d;
        let mut gen = |n: usize| (0..n).map(|_| T::from_f64(rng.normal()).to_f64()).collect::<Vec<f64>>();
        let (q, k, v) = (gen(n), gen(n), gen(n));
        let upload = |x: &[f64]| {
            let typed: Vec<T> = x.iter().map(|x| T::from_f64(*x)).collect();
            device.upload(&typed, &shape).map_err(r)
        };
        let mut sets = vec![(upload(&q)?, upload(&k)?, upload(&v)?)];
        for _ in 1..crate::timing::rotating_sets(3 * n * 2) {
            sets.push((upload(&gen(n))?, upload(&gen(n))?, upload(&gen(n))?));
        }
        let scale = declared.default_scale() as f64;
        let problem =
            Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk: s, d, scale, causal: declared.causal };
        let total = b * h * s;
        let mut rows = vec![0, 63.min(s - 1), 64.min(s - 1), s - 1, total - s, total - 1];
        while rows.len() < 64 {
            rows.push((rng.next_u64() % total as u64) as usize);
        }
        rows.sort_unstable();
        rows.dedup();
        let (want, _) = reference::variant_rows_lse(&problem, &rows, variant);
        let pairs: usize = (0..s)
            .map(|i| {
                (0..reference::keys_seen(i, s, s, declared.causal))
                    .filter(|j| (variant.keep)(0, 0, i, *j))
                    .count()
            })
            .sum();
        let flops = 4.0 * (b * h) as f64 * pairs as f64 * d as f64;
        let out = device.filled(&shape, T::NAN).map_err(r)?;
        Ok(Bench { shape, sets, extras, out, rows, want, flops })
    }

    /// Checks `kernel` (compiled for `cfg`) against float64 on a poisoned output, then times it
    /// (median of `iters` after `warmup`, inputs rotated). `Ok((median_us, rel_err))`, or the
    /// trial's status and why.
    fn check_and_time(
        &mut self,
        device: &Device,
        kernel: &CompiledKernel,
        cfg: &Config,
        (warmup, iters): (usize, usize),
    ) -> Result<(f64, f64), (&'static str, String)> {
        let error = |e: String| ("error", e);
        let scale = cfg.default_scale();
        self.out = device.filled(&self.shape, T::NAN).map_err(|e| error(e.to_string()))?;
        let (q, k, v) = &self.sets[0];
        let mut args = standard_args([q, k, v], &mut self.out, None, scale, &self.extras, [None, None]);
        crate::launch(device, kernel, &mut args).map_err(|e| error(e.to_string()))?;
        let stored = device.download(&self.out).map_err(|e| error(e.to_string()))?;
        let d = self.shape[3];
        let got: Vec<f64> = self
            .rows
            .iter()
            .flat_map(|row| stored[row * d..(row + 1) * d].iter().map(|x| x.to_f64()))
            .collect();
        let err = reference::compare(&got, &self.want);
        if err.rel_l2.is_nan() || err.rel_l2 > tolerance(cfg.dtype) {
            return Err(("wrong", format!("rel err {:.3e}, {} non-finite", err.rel_l2, err.non_finite)));
        }
        let Bench { sets, out, extras, .. } = self;
        let median = crate::timing::median_launch_us(device, warmup, iters, |i| {
            let (q, k, v) = &sets[i % sets.len()];
            crate::launch_async(
                device,
                kernel,
                &mut standard_args([q, k, v], out, None, scale, extras, [None, None]),
            )
        })
        .map_err(|e: Error| error(e.to_string()))?;
        Ok((median, err.rel_l2))
    }
}

/// Why `cfg` cannot run on `device` before launching it: shared memory over the limit, or
/// (where ptxas is found) register spills.
fn precheck(device: &Device, kernel: &CompiledKernel, cfg: &Config) -> Result<(), (&'static str, String)> {
    if kernel.ptx.shared_bytes > device.info().max_shared_per_block {
        return Err(("smem", format!("{} bytes of shared memory", kernel.ptx.shared_bytes)));
    }
    if let Some(ptxas) = crate::ptxas::find() {
        let (major, minor) = device.info().compute_capability;
        let arch = match cfg.target {
            Target::Sm89 | Target::Auto => format!("sm_{major}{minor}"),
            target => target.name().to_string(),
        };
        let report =
            crate::ptxas::assemble(&ptxas, &kernel.ptx.text, &arch).map_err(|e| ("error", e.to_string()))?;
        if report.spill_store_bytes > MAX_SPILL_BYTES {
            return Err((
                "spills",
                format!("{} registers, {} bytes spilled", report.registers, report.spill_store_bytes),
            ));
        }
    }
    Ok(())
}

/// What the search reports as it goes.
pub enum Event<'e> {
    /// A candidate ran (or was recalled from the progress file, or skipped).
    Trial {
        /// The round: `declared`, `tiles`, `pipeline`, `split-kv` or `softmax`.
        round: &'static str,
        /// Its place in the round (from 1).
        index: usize,
        /// The round's size.
        of: usize,
        /// The candidate.
        config: &'e Config,
        /// How it went.
        trial: &'e Trial,
        /// Whether it ran in an earlier round (or an earlier run: the progress file), not now.
        recalled: bool,
        /// Useful floating-point operations of one launch.
        flops: f64,
    },
    /// The key's winner.
    Best {
        /// The winning config.
        config: &'e Config,
        /// Its trial.
        trial: &'e Trial,
        /// The declared config's time (NaN if it did not run).
        declared_us: f64,
        /// Candidates tried for this key.
        candidates: usize,
        /// Useful floating-point operations of one launch.
        flops: f64,
    },
}

impl std::fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Trial { round, index, of, config, trial, flops, .. } => {
                write!(f, "  {round} {index}/{of}: {:<78} ", config.to_string())?;
                match trial.status.as_str() {
                    "ok" => write!(
                        f,
                        "{:>9.2} us {:>6.1} TF/s  rel err {:.2e}",
                        trial.median_us,
                        flops / trial.median_us / 1e6,
                        trial.rel_err
                    ),
                    status => write!(f, "{status}: {}", trial.note),
                }
            }
            Event::Best { config, trial, declared_us, candidates, flops } => write!(
                f,
                "  best: {config}: {:.2} us, {:.1} TF/s ({:.2}x the declared config's {declared_us:.2} us) of {candidates} candidates",
                trial.median_us,
                flops / trial.median_us / 1e6,
                declared_us / trial.median_us
            ),
        }
    }
}

/// The search over one device: its trials so far (by key and schedule), where each new trial is
/// appended, and when to stop.
pub struct Search<'a> {
    device: &'a Device,
    compile: &'a dyn Fn(&Config) -> Result<Arc<CompiledKernel>, String>,
    /// (warmup, timed) launches of each candidate.
    pub iters: (usize, usize),
    /// Every trial so far, by key and schedule: a candidate found here is not run again.
    pub done: HashMap<(Key, Schedule), Trial>,
    /// Where each new trial's line goes ([`Trial::to_line`]), if anywhere.
    pub record: Option<Box<dyn Write + 'a>>,
    /// No candidate starts after this.
    pub deadline: Option<Instant>,
    /// Set once a candidate was left out because the deadline passed.
    pub timed_out: bool,
    /// Called with each trial and each key's winner.
    pub observe: Box<dyn FnMut(&Event) + 'a>,
}

impl<'a> Search<'a> {
    /// A search on `device` whose candidates `compile` builds (the kernel's program for a config).
    pub fn new(
        device: &'a Device,
        compile: &'a dyn Fn(&Config) -> Result<Arc<CompiledKernel>, String>,
    ) -> Search<'a> {
        Search {
            device,
            compile,
            iters: (5, 20),
            done: HashMap::new(),
            record: None,
            deadline: None,
            timed_out: false,
            observe: Box::new(|_| {}),
        }
    }

    fn out_of_time(&mut self) -> bool {
        self.timed_out |= self.deadline.is_some_and(|d| Instant::now() >= d);
        self.timed_out
    }

    /// Runs (or recalls) each valid candidate; returns the correct ones, fastest first. Once the
    /// deadline passes, the rest are left out.
    fn round<T: HalfFloat>(
        &mut self,
        bench: &mut Bench<T>,
        key: &Key,
        round: &'static str,
        candidates: Vec<Config>,
    ) -> Result<Vec<(Config, Trial)>, String> {
        let valid: Vec<Config> = candidates.into_iter().filter(|c| c.validate().is_ok()).collect();
        let mut ok = vec![];
        for (i, cfg) in valid.iter().enumerate() {
            let schedule = Schedule::of(cfg);
            let recalled = self.done.contains_key(&(key.clone(), schedule));
            let trial = match self.done.get(&(key.clone(), schedule)) {
                Some(t) => t.clone(),
                None => {
                    if self.out_of_time() {
                        break;
                    }
                    let outcome = (self.compile)(cfg).map_err(|e| ("error", e)).and_then(|kernel| {
                        precheck(self.device, &kernel, cfg)?;
                        bench.check_and_time(self.device, &kernel, cfg, self.iters)
                    });
                    let (status, median_us, rel_err, note) = match outcome {
                        Ok((us, rel)) => ("ok", us, rel, String::new()),
                        Err((status, why)) => (status, f64::NAN, f64::NAN, why),
                    };
                    let trial =
                        Trial { key: key.clone(), schedule, status: status.into(), median_us, rel_err, note };
                    if let Some(record) = self.record.as_mut() {
                        writeln!(record, "{}", trial.to_line()).map_err(|e| e.to_string())?;
                    }
                    self.done.insert((key.clone(), schedule), trial.clone());
                    trial
                }
            };
            let event = Event::Trial {
                round,
                index: i + 1,
                of: valid.len(),
                config: cfg,
                trial: &trial,
                recalled,
                flops: bench.flops,
            };
            (self.observe)(&event);
            if trial.status == "ok" {
                ok.push((*cfg, trial));
            }
        }
        ok.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        Ok(ok)
    }

    /// The four rounds for `declared`'s target: the correct candidates, fastest first.
    fn rounds<T: HalfFloat>(
        &mut self,
        bench: &mut Bench<T>,
        key: &Key,
        declared: Config,
    ) -> Result<Vec<(Config, Trial)>, String> {
        let [b, h, s, _] = bench.shape;
        let tilings = self.round(bench, key, "tiles", tiling_candidates(declared))?;
        let mut all = tilings.clone();
        for (tiling, _) in tilings.iter().take(2) {
            all.extend(self.round(bench, key, "pipeline", pipeline_candidates(*tiling))?);
        }
        all.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        let sms = self.device.info().sm_count as usize;
        let leaders: Vec<Config> = all.iter().take(2).map(|(c, _)| *c).collect();
        for leader in leaders {
            let work_items = b * h * s.div_ceil(leader.tile_m as usize);
            all.extend(self.round(bench, key, "split-kv", split_candidates(leader, work_items, sms))?);
        }
        all.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        if let Some((best, _)) = all.first().cloned() {
            all.extend(self.round(bench, key, "softmax", softmax_candidates(best))?);
        }
        all.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        Ok(all)
    }

    /// Tunes `key` (whose declared config is `declared`) on `bench`'s problem, starting from
    /// `seeds` (other GPUs' winners, [`Table::seeds`]); its entry, or `None` when no candidate
    /// ran correctly. Should the deadline pass, the entry is the best of what ran
    /// ([`Search::timed_out`] says so).
    pub fn tune<T: HalfFloat>(
        &mut self,
        key: &Key,
        declared: Config,
        seeds: Vec<Config>,
        bench: &mut Bench<T>,
    ) -> Result<Option<Entry>, String> {
        let [b, h, s, _] = bench.shape;
        let declared_trial = self.round(bench, key, "declared", vec![declared])?;
        let mut all = self.round(bench, key, "seeds", seeds)?;
        all.extend(self.rounds(bench, key, declared)?);
        // A small grid on Hopper: sm_89 PTX runs there too, and its split-KV (which sm_90a does
        // not compile) can win where too few tiles fill the SMs. The entry names its target.
        let work_items = b * h * s.div_ceil(declared.tile_m as usize);
        if declared.target == Target::Sm90a && work_items < 2 * self.device.info().sm_count as usize {
            all.extend(self.rounds(bench, key, Config { target: Target::Sm89, ..declared })?);
        }
        all.extend(declared_trial.iter().cloned());
        all.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        let Some((best, trial)) = all.first() else { return Ok(None) };
        let declared_us = declared_trial.first().map_or(f64::NAN, |(_, t)| t.median_us);
        let candidates = self.done.keys().filter(|(k, _)| k == key).count();
        (self.observe)(&Event::Best { config: best, trial, declared_us, candidates, flops: bench.flops });
        Ok(Some(Entry {
            key: key.clone(),
            // Recorded so that the entry also serves GPUs of the same kind (Table::pick).
            device: Some(Gpu::of(self.device.info()).props),
            schedule: Schedule::of(best),
            measured: Measured {
                shape: [b, h, s, s],
                median_us: trial.median_us,
                tflops: bench.flops / trial.median_us / 1e6,
                rel_err: trial.rel_err,
                candidates,
                declared_us,
            },
        }))
    }
}

/// Turns first-use tuning on: `FLASHCORE_AUTOTUNE=1`.
pub const AUTOTUNE_VARIABLE: &str = "FLASHCORE_AUTOTUNE";
/// First-use tuning's time budget per key in seconds (default [`DEFAULT_BUDGET`]).
pub const BUDGET_VARIABLE: &str = "FLASHCORE_AUTOTUNE_SECONDS";
/// First-use tuning's default time budget per key.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// Tuning on first use: a launch key (kernel, GPU, dtype, head dim, causal, size class) with no
/// entry tuned on this GPU is tuned on the spot, within a time budget, with a progress bar on
/// stderr; the winner goes into the user's tuning cache ([`TuningCache`], versioned by
/// FlashCore's version), so the next process finds it and does not tune again.
///
/// It tunes the plain `attention` kernel at the size class's representative shape: the
/// variants share its loop (a variant without entries of its own launches attention's schedule,
/// [`Table::pick_kernel`]), and its float64 reference checks every candidate before it is
/// timed. Opt-in: `FLASHCORE_AUTOTUNE=1` for [`crate::tuning::tuned_config`] and the example,
/// or a `FirstUse` in the API.
///
/// ```no_run
/// use flashcore::autotune::FirstUse;
/// use flashcore::kernels::attention;
/// use flashcore::runtime::Device;
/// use flashcore::tuning::Table;
///
/// let device = Device::new(0)?;
/// let mut table = Table::active()?;
/// let tuner = FirstUse::new(std::time::Duration::from_secs(30));
/// let base = attention::CONFIG.with_head_dim(128);
/// let (config, source) = tuner.config(&device, &mut table, "attention", base, [2, 16, 8192, 8192], None)?;
/// println!("{config} ({source})");
/// # Ok::<(), flashcore::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct FirstUse {
    /// The most time one key's tuning may take (no candidate starts after it).
    pub budget: Duration,
    /// Where winners are stored (`None`: kept in the table passed in only).
    pub cache: Option<TuningCache>,
    /// Draw the progress bar on stderr.
    pub progress: bool,
}

impl FirstUse {
    /// A tuner with this budget per key, storing winners in the user's cache.
    pub fn new(budget: Duration) -> FirstUse {
        FirstUse { budget, cache: TuningCache::user(), progress: true }
    }

    /// The tuner `FLASHCORE_AUTOTUNE=1` asks for (budget `FLASHCORE_AUTOTUNE_SECONDS`, default
    /// 60), or `None` when tuning on first use is off.
    pub fn from_env() -> Result<Option<FirstUse>, Error> {
        let var = |name| std::env::var(name).ok();
        Ok(FirstUse::budget_from(var(AUTOTUNE_VARIABLE).as_deref(), var(BUDGET_VARIABLE).as_deref())?
            .map(FirstUse::new))
    }

    /// The budget the values of `FLASHCORE_AUTOTUNE` and `FLASHCORE_AUTOTUNE_SECONDS` ask for
    /// (`None`: tuning on first use is off), or why they cannot be used.
    ///
    /// ```
    /// use flashcore::autotune::{FirstUse, DEFAULT_BUDGET};
    /// use std::time::Duration;
    ///
    /// assert_eq!(FirstUse::budget_from(None, Some("10")).unwrap(), None);
    /// assert_eq!(FirstUse::budget_from(Some("0"), None).unwrap(), None);
    /// assert_eq!(FirstUse::budget_from(Some("1"), None).unwrap(), Some(DEFAULT_BUDGET));
    /// assert_eq!(FirstUse::budget_from(Some("1"), Some("2.5")).unwrap(), Some(Duration::from_millis(2500)));
    /// assert!(FirstUse::budget_from(Some("yes"), None).is_err());
    /// assert!(FirstUse::budget_from(Some("1"), Some("-3")).is_err());
    /// ```
    pub fn budget_from(autotune: Option<&str>, seconds: Option<&str>) -> Result<Option<Duration>, Error> {
        match autotune.map(str::trim) {
            None | Some("") | Some("0") => return Ok(None),
            Some("1") => {}
            Some(other) => {
                return Err(Error::Tuning(format!("{AUTOTUNE_VARIABLE}={other}: use 1 (on) or 0 (off)")))
            }
        }
        match seconds {
            None => Ok(Some(DEFAULT_BUDGET)),
            Some(text) => match text.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
                _ => {
                    Err(Error::Tuning(format!("{BUDGET_VARIABLE}={text}: not a positive number of seconds")))
                }
            },
        }
    }

    /// The config to launch the registered kernel `kernel` with on `device` for a `[b, h, s, sk]`
    /// problem ([`Table::pick_kernel`] over `table`), tuning its key first when `table` has no
    /// entry tuned on this GPU: the winner goes into `table` and the cache. `base` is the launch's
    /// config before tuning (the declared one at its head dim, dtype, causal flag and target);
    /// `requested` a target asked for. Tuning that finds nothing (or fails) leaves the pick as it
    /// was, and says why on stderr.
    pub fn config(
        &self,
        device: &Device,
        table: &mut Table,
        kernel: &str,
        base: Config,
        shape: [usize; 4],
        requested: Option<Target>,
    ) -> Result<(Config, Source), Error> {
        let entry = crate::registry::find(kernel)
            .ok_or_else(|| Error::Tuning(format!("no kernel `{kernel}` is registered (`flashcore list`)")))?;
        self.config_of(device, table, kernel, &(entry.program)(), base, shape, requested)
    }

    /// [`FirstUse::config`] for the kernel `kernel` whose source is `program`.
    #[allow(clippy::too_many_arguments)]
    pub fn config_of(
        &self,
        device: &Device,
        table: &mut Table,
        kernel: &str,
        program: &crate::ir::source::Program,
        base: Config,
        shape: [usize; 4],
        requested: Option<Target>,
    ) -> Result<(Config, Source), Error> {
        let gpu = Gpu::of(device.info());
        let picked = table.pick_kernel(program, kernel, &gpu, base, shape, requested);
        // Timed on this GPU already, for the kernel or for the `attention` key it falls back on.
        let this_gpu = |source: &Source| matches!(source, Source::Tuned(_, crate::tuning::Match::ThisGpu));
        let attention_timed = || {
            let plain = crate::kernels::attention::program();
            this_gpu(&table.pick_kernel(&plain, "attention", &gpu, base, shape, requested).1)
        };
        if this_gpu(&picked.1) || (kernel != "attention" && attention_timed()) {
            return Ok(picked);
        }
        let [b, h, s, sk] = shape;
        let class = SizeClass::of(b, h, s, sk);
        let target = match requested {
            Some(t) => t,
            None => self.target_of(device, base)?,
        };
        // A key is tuned at most once a process, whatever came of it.
        static TRIED: std::sync::Mutex<Vec<(Key, Target)>> = std::sync::Mutex::new(vec![]);
        let key = Key::new("attention", &gpu.name, base.dtype, base.head_dim, base.causal, class);
        {
            let mut tried = TRIED.lock().unwrap_or_else(|p| p.into_inner());
            if tried.contains(&(key.clone(), target)) {
                return Ok(picked);
            }
            tried.push((key, target));
        }
        match self.tune_attention(device, table, Config { target, ..base }, class) {
            Ok(Some(tuned)) => {
                table.insert(tuned);
                Ok(table.pick_kernel(program, kernel, &gpu, base, shape, requested))
            }
            Ok(None) => Ok(picked),
            Err(why) => {
                eprintln!("flashcore: tuning on first use failed ({why}); launching {}", picked.1);
                Ok(picked)
            }
        }
    }

    /// The target a launch of `base` takes on `device` with none asked for: `base`'s own, else
    /// (`Target::Auto`) `FLASHCORE_TARGET`'s, else the device's (sm_90a on 9.0, sm_89 elsewhere),
    /// as `KernelCache::get_or_compile_on` resolves it.
    fn target_of(&self, device: &Device, base: Config) -> Result<Target, Error> {
        if base.target != Target::Auto {
            return Ok(base.target);
        }
        if let Some(t) = crate::target::requested()? {
            return Ok(t);
        }
        let program = crate::kernels::attention::program();
        Ok(crate::target::choose(&program, base, Some(device.info().compute_capability), None).0.target)
    }

    /// Tunes the plain `attention` kernel's key for `base`'s head dim, dtype, causal flag and
    /// target (`Target::Auto`: the device's) and `class` on `device`, within the budget,
    /// starting from `table`'s entries for the key on other GPUs of this kind
    /// ([`Table::seeds`]); stores the winner in the cache and returns it (`None`: no candidate
    /// ran correctly within the budget).
    pub fn tune_attention(
        &self,
        device: &Device,
        table: &Table,
        base: Config,
        class: SizeClass,
    ) -> Result<Option<Entry>, String> {
        let program = crate::kernels::attention::program();
        let declared = Config {
            dtype: base.dtype,
            causal: base.causal,
            ..crate::kernels::attention::CONFIG.with_head_dim(base.head_dim)
        };
        let target = self.target_of(device, base).map_err(|e| e.to_string())?;
        let declared = Config { target, ..declared };
        declared.validate().map_err(|e| e.to_string())?;
        let key = Key::new(
            "attention",
            &device.info().name,
            declared.dtype,
            declared.head_dim,
            declared.causal,
            class,
        );
        let started = Instant::now();
        let compile = |cfg: &Config| crate::compile(&program, cfg).map(Arc::new).map_err(|e| e.to_string());
        let mut search = Search::new(device, &compile);
        search.deadline = Some(started + self.budget);
        let mut bar = ProgressBar::new(&key, self.budget, self.progress);
        search.observe = Box::new(move |event| bar.show(event, started.elapsed()));
        let shape = representative(class);
        let shape = [shape[0], shape[1], shape[2], declared.head_dim as usize];
        // Fresh inputs every time.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut rng = Rng::new(nanos as u64 ^ u64::from(std::process::id()));
        let seeds = table.seeds(&key, &Gpu::of(device.info()), declared);
        let entry = match declared.dtype {
            DType::F16 => search.tune(
                &key,
                declared,
                seeds.clone(),
                &mut Bench::<f16>::new(device, declared, shape, &Variant::plain(), vec![], &mut rng)?,
            ),
            DType::Bf16 => search.tune(
                &key,
                declared,
                seeds.clone(),
                &mut Bench::<bf16>::new(device, declared, shape, &Variant::plain(), vec![], &mut rng)?,
            ),
        }?;
        let timed_out = search.timed_out;
        drop(search);
        let took = started.elapsed().as_secs_f64();
        let Some(entry) = entry else {
            eprintln!("flashcore: tuned {key} for {took:.1} s: no candidate ran correctly; nothing stored");
            return Ok(None);
        };
        let stored = match &self.cache {
            Some(cache) => match cache.insert(entry.clone()) {
                Ok(_) => format!("stored in {}", cache.path().display()),
                Err(e) => format!("not stored: {e}"),
            },
            None => "not stored (no cache directory)".to_string(),
        };
        eprintln!(
            "flashcore: tuned {key} in {took:.1} s{}: {} at {:.2} us ({:.2}x the declared config), {} candidates; {stored}",
            if timed_out { " (budget spent: the best of what ran)" } else { "" },
            entry.config(declared),
            entry.measured.median_us,
            entry.measured.declared_us / entry.measured.median_us,
            entry.measured.candidates,
        );
        Ok(Some(entry))
    }
}

/// First-use tuning's progress on stderr: one line redrawn in place on a terminal (time spent of
/// the budget, candidates run, the best so far), a line per round elsewhere.
struct ProgressBar {
    title: String,
    budget: Duration,
    on: bool,
    terminal: bool,
    ran: usize,
    best_us: f64,
    round: &'static str,
}

impl ProgressBar {
    fn new(key: &Key, budget: Duration, on: bool) -> ProgressBar {
        let terminal = std::io::stderr().is_terminal();
        ProgressBar {
            title: format!("tuning {key}"),
            budget,
            on,
            terminal,
            ran: 0,
            best_us: f64::INFINITY,
            round: "",
        }
    }

    fn show(&mut self, event: &Event, elapsed: Duration) {
        if !self.on {
            return;
        }
        let round = match event {
            Event::Trial { round, trial, recalled, .. } => {
                self.ran += usize::from(!recalled);
                if trial.status == "ok" {
                    self.best_us = self.best_us.min(trial.median_us);
                }
                if trial.status == "wrong" {
                    eprintln!("\nflashcore: BUG: {event} (left out of the search)");
                }
                *round
            }
            Event::Best { .. } => "done",
        };
        let fraction = (elapsed.as_secs_f64() / self.budget.as_secs_f64()).min(1.0);
        let filled = (fraction * 24.0).round() as usize;
        let line = format!(
            "flashcore: {} [{}{}] {:.0}/{:.0} s, {} candidates, best {} ({round})",
            self.title,
            "#".repeat(filled),
            ".".repeat(24 - filled),
            elapsed.as_secs_f64(),
            self.budget.as_secs_f64(),
            self.ran,
            if self.best_us.is_finite() { format!("{:.1} us", self.best_us) } else { "none yet".into() },
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}\x1b[K");
            if round == "done" {
                let _ = writeln!(err);
            }
        } else if round != self.round {
            let _ = writeln!(err, "{line}");
        }
        self.round = round;
    }
}
