//! The autotuner: searches a kernel's schedule (tiles, warps per role, stages, persistence,
//! softmax placement) on the GPU, checks every candidate against float64 before timing it, and
//! writes the fastest per (kernel, GPU, dtype, head dim, causal, size class) into the tuning
//! table that launches read by default (`tuning/attention.json`, see `flashcore::tuning`).
//!
//! `cargo run --release --example autotune -- [--kernel NAME [--softcap 30] [--window 1024,0] [--prefix 2048] [--param NAME=VALUE] [--doc-len 1000]]
//!  [--out tuning/attention.json | --cache] [--progress autotune-progress.jsonl] [--d 64,128] [--causal no,yes]
//!  [--classes tiny,small,medium,large] [--dtype f16] [--target sm_89|sm_90a] [--iters 20 --warmup 5] [--seconds N] [--seed N] [--model l4|h100|h200|gh200]`
//!
//! `--target sm_90a` searches the sm_90a (wgmma) space: whole warpgroups (tile_m = 16 · warps,
//! up to 16 warps), each with and without a producer warpgroup (4 load warps that give their
//! registers to the compute warpgroups), then stages 1 to 4; candidates sm_90a cannot compile
//! (split-KV, softmax warps) fail fast with the reason. Entries record their target.
//!
//! `--model l4|h100|h200|gh200` chooses each key's entry by the occupancy model for that GPU's limits
//! instead (`flashcore::model`: no GPU, no timing; ptxas gives the registers), marked as not
//! timed: how the shipped table's L4 section is made.
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
//! The search is the library's (`flashcore::autotune`: four rounds per key, tiles, pipeline,
//! split-KV where the grid is small, softmax placement; a small-grid sm_90a key also searches
//! sm_89's space, whose split-KV can win there). Every trial is appended to the progress file
//! as it finishes; a rerun reads it and skips what it holds (resume), and `--seconds` stops
//! cleanly before the next candidate once the time is spent (that key gets no entry).
//! `FLASHCORE_AUTOTUNE=1` tunes one key on first use with the same search, in the library.

// The tuner makes each key's tables itself (its shapes are the size classes'), so the
// example's tables from files go unused here.
#[allow(dead_code)]
#[path = "shared/variant.rs"]
mod variant;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use flashcore::autotune::{representative, Bench, Event, Search};
use flashcore::reference::Rng;
use flashcore::runtime::Device;
use flashcore::tuning::{Key, Schedule, SizeClass, Table, Trial};
use flashcore::tuning_cache::TuningCache;
use flashcore::{bf16, f16, Config, DType, Target};
use variant::{axis_sizes, Chosen};

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
    /// Choose by the occupancy model for this GPU's limits instead of timing (`--model`).
    model: Option<String>,
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
        model: None,
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
            "--model" => o.model = Some(value()?),
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

/// The progress file's trials, by key and schedule (none when there is no file yet).
fn read_progress(path: &PathBuf) -> Result<HashMap<(Key, Schedule), Trial>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Trial::parse_lines(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// `--model GPU`: each key's entry chosen by the occupancy model for the GPU's limits
/// (`flashcore::model`), from ptxas's register counts, with no GPU and no timing.
fn run_model(o: &Options, chosen: &Chosen, gpu: &str) -> Result<(), String> {
    use flashcore::tuning::{Gpu, KNOWN_GPUS};
    let known = || KNOWN_GPUS.iter().map(|(alias, _, _)| *alias).collect::<Vec<_>>().join(", ");
    let gpu = Gpu::named(gpu).ok_or_else(|| format!("--model: `{gpu}` is not one of {}", known()))?;
    // The candidates are sm_89 PTX, sized for the GPU that runs them.
    let arch = flashcore::occupancy::arch_of(gpu.props.capability(), Target::Sm89)
        .ok_or_else(|| format!("--model: no occupancy model of {}", gpu.name))?;
    let ptxas =
        flashcore::ptxas::find().ok_or("--model needs ptxas (FLASHCORE_PTXAS) for register counts")?;
    let mut table =
        if o.out.exists() { Table::load(&o.out).map_err(|e| e.to_string())? } else { Table::empty() };
    let mut model = flashcore::model::Model::new((chosen.entry.program)(), &arch, &gpu, &ptxas);
    println!("occupancy model of {} ({}), ptxas {}", gpu.name, gpu.props, ptxas.display());
    for &d in &o.head_dims {
        for &causal in &o.causal {
            for &class in &o.classes {
                let declared = Config {
                    dtype: o.dtype,
                    causal,
                    target: Target::Sm89,
                    ..chosen.entry.config.with_head_dim(d)
                };
                match model.entry(chosen.entry.name, declared, class) {
                    Some((entry, score, occ)) => {
                        println!(
                            "  {}: {} score {score:.3}, {} CTAs x {} warps resident ({} limits), {} candidates scored",
                            entry.key,
                            entry.config(declared),
                            occ.ctas,
                            occ.warps / occ.ctas.max(1),
                            occ.limit,
                            entry.measured.candidates
                        );
                        table.insert(entry);
                    }
                    None => println!(
                        "  {} D={d} causal={causal} {}: no candidate qualifies",
                        chosen.entry.name,
                        class.name()
                    ),
                }
            }
        }
    }
    table.save(&o.out).map_err(|e| e.to_string())?;
    println!("done: {} entries in {}", table.entries.len(), o.out.display());
    Ok(())
}

fn run(o: &Options) -> Result<(), String> {
    let chosen = Chosen::new(&o.kernel, &o.params, o.doc_len)?;
    if let Some(gpu) = &o.model {
        return run_model(o, &chosen, gpu);
    }
    let device = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("no GPU: {e}\nThe autotuner times candidates on a GPU; nothing to do here.");
            return Ok(());
        }
    };
    let gpu = device.info().name.clone();
    let this_gpu = flashcore::tuning::Gpu::of(device.info());
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
    let compile = |cfg: &Config| chosen.compile(cfg);
    let mut search = Search::new(&device, &compile);
    search.iters = (o.warmup, o.iters);
    search.done = done;
    search.record = Some(Box::new(progress));
    search.deadline = o.seconds.map(|s| Instant::now() + std::time::Duration::from_secs_f64(s));
    search.observe = Box::new(|event| {
        println!("{event}");
        if let Event::Trial { trial, .. } = event {
            if trial.status == "wrong" {
                eprintln!("  BUG: {event}; it is left out of the search");
            }
        }
    });
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
        let shape = [b, h, s, d as usize];
        let extras = chosen.problem_extras(&axis_sizes(shape, h, s), &mut rng)?;
        let variant = chosen.reference(&extras, h, s, s)?;
        let extras = Chosen::upload(&device, &extras)?;
        // Other GPUs' winners for this key start the search (the table's, and the cache's).
        let seeds = table.seeds(&key, &this_gpu, declared);
        let entry = match o.dtype {
            DType::F16 => search.tune(
                &key,
                declared,
                seeds.clone(),
                &mut Bench::<f16>::new(&device, declared, shape, &variant, extras, &mut rng)?,
            ),
            DType::Bf16 => search.tune(
                &key,
                declared,
                seeds.clone(),
                &mut Bench::<bf16>::new(&device, declared, shape, &variant, extras, &mut rng)?,
            ),
        }?;
        if search.timed_out {
            // The key's search is incomplete: no entry; a rerun resumes it from the progress file.
            println!(
                "stopped: --seconds {} spent; rerun to resume from {}",
                o.seconds.unwrap_or(0.0),
                o.progress.display()
            );
            return Ok(());
        }
        match entry {
            Some(entry) => match &cache {
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
            None => println!("  no candidate ran correctly: no entry"),
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
