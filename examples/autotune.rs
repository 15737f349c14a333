//! The autotuner: searches a kernel's schedule (tiles, warps per role, stages, persistence,
//! softmax placement) on the GPU, checks every candidate against float64 before timing it, and
//! writes the fastest per (kernel, GPU, dtype, head dim, causal, size class) into the tuning
//! table that launches read by default (`tuning/attention.json`, see `flashcore::tuning`).
//!
//! `cargo run --release --example autotune -- [--kernel NAME [--softcap 30] [--window 1024,0] [--prefix 2048] [--param NAME=VALUE] [--doc-len 1000]]
//!  [--out tuning/attention.json | --cache] [--progress autotune-progress.jsonl] [--d 64,128] [--causal no,yes]
//!  [--classes tiny,small,medium,large] [--dtype f16] [--target sm_89|sm_90a] [--iters 20 --warmup 5] [--seconds N] [--seed N]`
//!
//! `--target sm_90a` searches the sm_90a (wgmma) space: whole warpgroups (tile_m = 16 · warps,
//! up to 16 warps), each with and without a producer warpgroup (4 load warps that give their
//! registers to the compute warpgroups), then stages 1 to 4; candidates sm_90a cannot compile
//! (split-KV, softmax warps) fail fast with the reason. Entries record their target.
//!
//! `--cache` stores each winner in the user's tuning cache (`flashcore::tuning_cache`:
//! `$XDG_CACHE_HOME/flashcore/tuning-<version>.json`) instead of `--out`; every later launch
//! of this FlashCore version on this machine then finds it (`Table::active`).
//!
//! `--kernel` tunes another registered kernel with the standard signature (the variants of
//! `flashcore::kernels::variants`, default `attention`), with its parameters given as the
//! `attention` example takes them; each candidate is checked against the float64 reference of
//! the variant's formula, and its entries are keyed by the kernel's name.
//!
//! The search runs in four rounds per key, each over the best of the last: tiles (`tile_m`,
//! compute warps, `tile_n`), then the pipeline (stages, load warps, persistent CTAs) for the two
//! best tilings, then split-KV (`kv_splits` groups of warps sharing each K/V tile, merged by
//! log-sum-exp) for the two best so far where the grid is smaller than twice the SMs, then
//! softmax placement (softmax warps) for the best warp-specialized one.
//! Candidates whose PTX spills registers (ptxas, when found) or whose shared memory is over
//! the device's limit are skipped before they run. Every trial is appended to the progress file
//! as it finishes; a rerun reads it and skips what it holds (resume), and `--seconds` stops
//! cleanly before the next candidate once the time is spent.

// The tuner makes each key's tables itself (its shapes are the size classes'), so the
// example's tables from files go unused here.
#[allow(dead_code)]
#[path = "shared/variant.rs"]
mod variant;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use flashcore::reference::{self, Problem, Rng};
use flashcore::runtime::{Device, DeviceTensor};
use flashcore::tuning::{Entry, Gpu, Key, Measured, Schedule, SizeClass, Table, Trial};
use flashcore::tuning_cache::TuningCache;
use flashcore::{bf16, f16, tolerance, Config, DType, HalfFloat, Target};
use variant::{axis_sizes, Chosen, DeviceExtra};

struct Options {
    /// The registered kernel to tune, its f32 parameters and documents' length (`--kernel`).
    kernel: String,
    params: Vec<(String, f32)>,
    doc_len: usize,
    out: PathBuf,
    /// Store winners in the user's tuning cache (`--cache`) instead of `out`.
    cache: bool,
    progress: PathBuf,
    head_dims: Vec<u32>,
    causal: Vec<bool>,
    classes: Vec<SizeClass>,
    dtype: DType,
    iters: usize,
    warmup: usize,
    seconds: Option<f64>,
    seed: u64,
    /// The PTX target the candidates compile for (`--target`, default sm_89).
    target: Target,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        kernel: "attention".into(),
        params: vec![],
        doc_len: 1000,
        out: "tuning/attention.json".into(),
        cache: false,
        progress: "autotune-progress.jsonl".into(),
        head_dims: vec![64, 128],
        causal: vec![false, true],
        classes: SizeClass::ALL.to_vec(),
        dtype: DType::F16,
        iters: 20,
        warmup: 5,
        seconds: None,
        seed: 7,
        target: Target::Sm89,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let list = |v: String| v.split(',').map(str::to_string).collect::<Vec<_>>();
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: `{v}` is not a number"));
        if let Some(params) = variant::param_flag(&flag, &mut value) {
            o.params.extend(params?);
            continue;
        }
        match flag.as_str() {
            "--kernel" => o.kernel = value()?,
            "--doc-len" => o.doc_len = number(value()?)?.max(1) as usize,
            "--out" => o.out = value()?.into(),
            "--cache" => o.cache = true,
            "--progress" => o.progress = value()?.into(),
            "--d" => {
                o.head_dims = list(value()?)
                    .into_iter()
                    .map(|d| d.parse().map_err(|_| format!("--d: `{d}` is not a head dim")))
                    .collect::<Result<_, _>>()?
            }
            "--causal" => {
                o.causal = list(value()?)
                    .iter()
                    .map(|c| match c.as_str() {
                        "no" => Ok(false),
                        "yes" => Ok(true),
                        _ => Err(format!("--causal: `{c}` is not `no` or `yes`")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--classes" => {
                o.classes = list(value()?)
                    .iter()
                    .map(|c| {
                        SizeClass::ALL
                            .into_iter()
                            .find(|k| k.name() == c)
                            .ok_or_else(|| format!("--classes: `{c}` is not tiny, small, medium or large"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--dtype" => {
                let name = value()?;
                o.dtype =
                    DType::from_name(&name).ok_or_else(|| format!("--dtype: `{name}` is not f16 or bf16"))?
            }
            "--target" => {
                let name = value()?;
                o.target = Target::from_name(&name)
                    .filter(|t| *t != Target::Auto)
                    .ok_or_else(|| format!("--target: `{name}` is not a target (sm_89, sm_90a)"))?
            }
            "--iters" => o.iters = number(value()?)?.max(1) as usize,
            "--warmup" => o.warmup = number(value()?)? as usize,
            "--seconds" => o.seconds = Some(number(value()?)? as f64),
            "--seed" => o.seed = number(value()?)?,
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("autotune.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//! ").trim_start_matches("//!"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown flag {flag} (try --help)")),
        }
    }
    Ok(o)
}

/// The shape each size class is tuned at: the benchmark's representative of the class.
fn representative(class: SizeClass) -> [usize; 4] {
    match class {
        SizeClass::Tiny => [1, 8, 512, 512],
        SizeClass::Small => [1, 8, 1024, 1024],
        SizeClass::Medium => [4, 16, 2048, 2048],
        SizeClass::Large => [2, 16, 8192, 8192],
    }
}

/// Spill stores (bytes, ptxas) above which a candidate is skipped without running: none. A
/// spilling winner ships local-memory traffic that the next ptxas or GPU may make worse, and
/// every shipped config is to be spill-free (issue 20); the 128 bytes allowed before let three
/// H100 sm_89 entries in with 8 to 76 bytes.
const MAX_SPILL_BYTES: u32 = 0;

/// Round 1: the tilings (with Q kept in shared memory where a warp owns 32 rows or more).
fn tiling_candidates(declared: Config) -> Vec<Config> {
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

/// Round 2: the pipeline around one tiling (sm_90a: the producer warpgroup or none, and deeper
/// rings, which its 227 KiB of shared memory holds).
fn pipeline_candidates(tiling: Config) -> Vec<Config> {
    let mut out = vec![];
    let (stage_counts, load_counts): (&[u32], &[u32]) = match tiling.target {
        Target::Sm89 | Target::Auto => (&[1, 2, 3], &[0, 1, 2]),
        Target::Sm90a => (&[1, 2, 3, 4], &[0, 4]),
    };
    for &stages in stage_counts {
        for &load_warps in load_counts {
            for persistent in [false, true] {
                out.push(Config { stages, load_warps, persistent, softmax_warps: 0, ..tiling });
            }
        }
    }
    out
}

/// Round 3, where the grid is small (fewer work items than twice the SMs: small B·H·S): split-KV
/// around one config. `kv_splits` groups of warps, each with the config's rows per warp, split
/// every K/V tile (of the same or twice the size) so that a warp's chain of mma shrinks.
fn split_candidates(best: Config, work_items: usize, sms: usize) -> Vec<Config> {
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
fn softmax_candidates(best: Config) -> Vec<Config> {
    if best.load_warps == 0 || best.kv_splits > 1 {
        return vec![];
    }
    vec![Config { softmax_warps: best.warps, ..best }]
}

/// A key's problem: inputs (several sets, rotated while timing), the rows checked and their
/// float64 values.
struct Bench<T: HalfFloat> {
    shape: [usize; 4],
    sets: Vec<(DeviceTensor<T>, DeviceTensor<T>, DeviceTensor<T>)>,
    /// The kernel's parameters after `scale`, on the device.
    extras: Vec<DeviceExtra>,
    out: DeviceTensor<T>,
    rows: Vec<usize>,
    want: Vec<f64>,
    flops: f64,
}

fn prepare<T: HalfFloat>(
    device: &Device,
    chosen: &Chosen,
    declared: Config,
    shape: [usize; 4],
    rng: &mut Rng,
) -> Result<Bench<T>, String> {
    let [b, h, s, d] = shape;
    let r = |x: flashcore::runtime::RuntimeError| x.to_string();
    let n = b * h * s * d;
    let mut gen = |n: usize| (0..n).map(|_| T::from_f64(rng.normal()).to_f64()).collect::<Vec<f64>>();
    let (q, k, v) = (gen(n), gen(n), gen(n));
    let upload = |x: &[f64]| {
        let typed: Vec<T> = x.iter().map(|x| T::from_f64(*x)).collect();
        device.upload(&typed, &shape).map_err(r)
    };
    let mut sets = vec![(upload(&q)?, upload(&k)?, upload(&v)?)];
    // About 64 MB of inputs in all, so L2 does not hold the next launch's.
    let extra = flashcore::timing::rotating_sets(3 * n * 2) - 1;
    for _ in 0..extra {
        sets.push((upload(&gen(n))?, upload(&gen(n))?, upload(&gen(n))?));
    }
    let scale = declared.default_scale() as f64;
    let problem = Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk: s, d, scale, causal: declared.causal };
    // The first and last row of the first and last head, the tile boundaries around them, and
    // a random sample: 64 rows, each checked over every key.
    let total = b * h * s;
    let mut rows = vec![0, 63, 64, s - 1, total - s, total - 1];
    while rows.len() < 64 {
        rows.push((rng.next_u64() % total as u64) as usize);
    }
    rows.sort_unstable();
    rows.dedup();
    let extras = chosen.problem_extras(&axis_sizes(shape, h, s), rng)?;
    let variant = chosen.reference(&extras, h, s, s)?;
    let (want, _) = reference::variant_rows_lse(&problem, &rows, &variant);
    let extras = Chosen::upload(device, &extras)?;
    // Useful work: the (query, key) pairs the variant keeps.
    let pairs = if chosen.entry.name == "attention" {
        reference::attended_pairs(s, s, declared.causal)
    } else {
        (0..s)
            .map(|i| {
                (0..reference::keys_seen(i, s, s, declared.causal))
                    .filter(|j| (variant.keep)(0, 0, i, *j))
                    .count()
            })
            .sum()
    };
    let flops = 4.0 * (b * h) as f64 * pairs as f64 * d as f64;
    let out = device.filled(&shape, T::NAN).map_err(r)?;
    Ok(Bench { shape, sets, extras, out, rows, want, flops })
}

/// Checks `cfg` against float64 on a poisoned output, then times it. `Ok((median_us, rel_err))`,
/// or the trial's status and why.
fn try_candidate<T: HalfFloat>(
    device: &Device,
    chosen: &Chosen,
    bench: &mut Bench<T>,
    cfg: &Config,
    iters: (usize, usize),
) -> Result<(f64, f64), (&'static str, String)> {
    let fail = |status: &'static str| move |e: String| (status, e);
    let compiled = chosen.compile(cfg).map_err(|e| ("error", e))?;
    if compiled.ptx.shared_bytes > device.info().max_shared_per_block {
        return Err(("smem", format!("{} bytes of shared memory", compiled.ptx.shared_bytes)));
    }
    if let Some(ptxas) = flashcore::ptxas::find() {
        let arch = match cfg.target {
            flashcore::Target::Sm89 | flashcore::Target::Auto => {
                format!("sm_{}{}", device.info().compute_capability.0, device.info().compute_capability.1)
            }
            target => target.name().to_string(),
        };
        let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, &arch)
            .map_err(|e| ("error", e.to_string()))?;
        // A few spilled bytes can be a cold path: time those; skip the heavy spillers.
        if report.spill_store_bytes > MAX_SPILL_BYTES {
            return Err((
                "spills",
                format!("{} registers, {} bytes spilled", report.registers, report.spill_store_bytes),
            ));
        }
    }
    let e = |x: flashcore::Error| x.to_string();
    let r = |x: flashcore::runtime::RuntimeError| x.to_string();
    let scale = cfg.default_scale();
    bench.out = device.filled(&bench.shape, T::NAN).map_err(r).map_err(fail("error"))?;
    let (q, k, v) = &bench.sets[0];
    let mut args = Chosen::args([q, k, v], &mut bench.out, None, scale, &bench.extras, [None, None]);
    flashcore::launch(device, &compiled, &mut args).map_err(e).map_err(fail("error"))?;
    let stored = device.download(&bench.out).map_err(r).map_err(fail("error"))?;
    let d = bench.shape[3];
    let got: Vec<f64> =
        bench.rows.iter().flat_map(|row| stored[row * d..(row + 1) * d].iter().map(|x| x.to_f64())).collect();
    let err = reference::compare(&got, &bench.want);
    if err.rel_l2.is_nan() || err.rel_l2 > tolerance(cfg.dtype) {
        return Err(("wrong", format!("rel err {:.3e}, {} non-finite", err.rel_l2, err.non_finite)));
    }
    let (warmup, iters) = iters;
    let Bench { sets, out, extras, .. } = bench;
    let median = flashcore::timing::median_launch_us(device, warmup, iters, |i| {
        let (q, k, v) = &sets[i % sets.len()];
        flashcore::launch_async(
            device,
            &compiled,
            &mut Chosen::args([q, k, v], out, None, scale, extras, [None, None]),
        )
    })
    .map_err(e)
    .map_err(fail("error"))?;
    Ok((median, err.rel_l2))
}

/// The progress file's trials, by key and schedule (none when there is no file yet).
fn read_progress(path: &PathBuf) -> Result<HashMap<(Key, Schedule), Trial>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Trial::parse_lines(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

struct Tuner<'a> {
    device: &'a Device,
    chosen: &'a Chosen,
    o: &'a Options,
    done: HashMap<(Key, Schedule), Trial>,
    progress: std::fs::File,
    started: Instant,
}

impl Tuner<'_> {
    fn out_of_time(&self) -> bool {
        self.o.seconds.is_some_and(|s| self.started.elapsed().as_secs_f64() > s)
    }

    /// Runs (or recalls) each of `candidates`, printing progress; returns the ok ones.
    fn round<T: HalfFloat>(
        &mut self,
        bench: &mut Bench<T>,
        key: &Key,
        label: &str,
        candidates: Vec<Config>,
    ) -> Result<Vec<(Config, Trial)>, String> {
        let valid: Vec<Config> = candidates.into_iter().filter(|c| c.validate().is_ok()).collect();
        let mut ok = vec![];
        for (i, cfg) in valid.iter().enumerate() {
            let schedule = Schedule::of(cfg);
            let trial = match self.done.get(&(key.clone(), schedule)) {
                Some(t) => t.clone(),
                None => {
                    if self.out_of_time() {
                        return Err("time is up".into());
                    }
                    let (status, median_us, rel_err, note) = match try_candidate(
                        self.device,
                        self.chosen,
                        bench,
                        cfg,
                        (self.o.warmup, self.o.iters),
                    ) {
                        Ok((us, rel)) => ("ok", us, rel, String::new()),
                        Err((status, why)) => (status, f64::NAN, f64::NAN, why),
                    };
                    let trial =
                        Trial { key: key.clone(), schedule, status: status.into(), median_us, rel_err, note };
                    writeln!(self.progress, "{}", trial.to_line()).map_err(|e| e.to_string())?;
                    self.done.insert((key.clone(), schedule), trial.clone());
                    trial
                }
            };
            let what = if trial.status == "ok" {
                format!(
                    "{:>9.2} us {:>6.1} TF/s  rel err {:.2e}",
                    trial.median_us,
                    bench.flops / trial.median_us / 1e6,
                    trial.rel_err
                )
            } else {
                format!("{}: {}", trial.status, trial.note)
            };
            println!("  {label} {}/{}: {cfg:<78} {what}", i + 1, valid.len());
            if trial.status == "wrong" {
                eprintln!("  BUG: {cfg} gives wrong results ({}); it is left out of the search", trial.note);
            }
            if trial.status == "ok" {
                ok.push((*cfg, trial));
            }
        }
        ok.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        Ok(ok)
    }

    /// Tunes one key; returns its table entry.
    fn tune<T: HalfFloat>(
        &mut self,
        key: &Key,
        declared: Config,
        class: SizeClass,
        rng: &mut Rng,
    ) -> Result<Option<Entry>, String> {
        let shape = representative(class);
        let [b, h, s, d] = [shape[0], shape[1], shape[2], declared.head_dim as usize];
        let mut bench = prepare::<T>(self.device, self.chosen, declared, [b, h, s, d], rng)?;
        let declared_trial = self.round(&mut bench, key, "declared", vec![declared])?;
        let tilings = self.round(&mut bench, key, "tiles", tiling_candidates(declared))?;
        let mut all = tilings.clone();
        for (tiling, _) in tilings.iter().take(2) {
            all.extend(self.round(&mut bench, key, "pipeline", pipeline_candidates(*tiling))?);
        }
        all.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        let sms = self.device.info().sm_count as usize;
        let leaders: Vec<Config> = all.iter().take(2).map(|(c, _)| *c).collect();
        for leader in leaders {
            let work_items = b * h * s.div_ceil(leader.tile_m as usize);
            all.extend(self.round(&mut bench, key, "split-kv", split_candidates(leader, work_items, sms))?);
        }
        all.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        if let Some((best, _)) = all.first().cloned() {
            all.extend(self.round(&mut bench, key, "softmax", softmax_candidates(best))?);
        }
        all.extend(declared_trial.iter().cloned());
        all.sort_by(|a, b| a.1.median_us.total_cmp(&b.1.median_us));
        let Some((best, trial)) = all.first() else { return Ok(None) };
        let declared_us = declared_trial.first().map_or(f64::NAN, |(_, t)| t.median_us);
        let candidates = self.done.keys().filter(|(k, _)| k == key).count();
        println!(
            "  best: {best}: {:.2} us, {:.1} TF/s ({:.2}x the declared config's {declared_us:.2} us) of {candidates} candidates",
            trial.median_us,
            bench.flops / trial.median_us / 1e6,
            declared_us / trial.median_us
        );
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

fn run(o: &Options) -> Result<(), String> {
    let chosen = Chosen::new(&o.kernel, &o.params, o.doc_len)?;
    let device = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("no GPU: {e}\nThe autotuner times candidates on a GPU; nothing to do here.");
            return Ok(());
        }
    };
    let gpu = device.info().name.clone();
    let cache = match o.cache {
        true => Some(
            TuningCache::user()
                .ok_or("--cache: no cache directory (set FLASHCORE_CACHE_DIR, XDG_CACHE_HOME or HOME)")?,
        ),
        false => None,
    };
    let mut table =
        if o.out.exists() { Table::load(&o.out).map_err(|e| e.to_string())? } else { Table::empty() };
    let done = read_progress(&o.progress)?;
    let progress = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&o.progress)
        .map_err(|e| format!("{}: {e}", o.progress.display()))?;
    println!(
        "autotune on {gpu}: {} trials already in {} (resuming); table {}; ptxas {}",
        done.len(),
        o.progress.display(),
        o.out.display(),
        flashcore::ptxas::find()
            .map_or("not found: spilling candidates are timed too".into(), |p| p.display().to_string())
    );
    let mut tuner = Tuner { device: &device, chosen: &chosen, o, done, progress, started: Instant::now() };
    let mut rng = Rng::new(o.seed);
    let mut keys = vec![];
    for &d in &o.head_dims {
        for &causal in &o.causal {
            for &class in &o.classes {
                keys.push((d, causal, class));
            }
        }
    }
    for (i, &(d, causal, class)) in keys.iter().enumerate() {
        let declared =
            Config { dtype: o.dtype, causal, target: o.target, ..chosen.entry.config.with_head_dim(d) };
        declared.validate().map_err(|e| e.to_string())?;
        let key = Key::new(chosen.entry.name, &gpu, o.dtype, d, causal, class);
        let [b, h, s, _] = representative(class);
        println!("[{}/{}] {key}: tuned at {b}x{h}x{s}x{d}", i + 1, keys.len());
        let result = match o.dtype {
            DType::F16 => tuner.tune::<f16>(&key, declared, class, &mut rng),
            DType::Bf16 => tuner.tune::<bf16>(&key, declared, class, &mut rng),
        };
        match result {
            Ok(Some(entry)) => match &cache {
                Some(cache) => {
                    if let Some(why) = cache.insert(entry).map_err(|e| e.to_string())? {
                        println!("  replaced an unusable cache file: {why}");
                    }
                    println!("  cached in {}", cache.path().display());
                }
                None => {
                    table.insert(entry);
                    table.save(&o.out).map_err(|e| e.to_string())?;
                }
            },
            Ok(None) => println!("  no candidate ran correctly: no entry"),
            Err(e) if e == "time is up" => {
                println!(
                    "stopped: --seconds {} spent; rerun to resume from {}",
                    o.seconds.unwrap_or(0.0),
                    o.progress.display()
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    match &cache {
        Some(cache) => println!("done: winners cached in {}", cache.path().display()),
        None => println!("done: {} entries in {}", table.entries.len(), o.out.display()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
