//! The main job: builds FlashCore's attention kernel (written with `#[flash_kernel]`), runs it on
//! the GPU, checks it against a float64 CPU reference, and times it with CUDA events.
//! Without a GPU it says so, prints the PTX's ptxas resource report, runs the kernel in the PTX
//! simulator at a small shape and checks it against float64 (exit 0 when correct).
//!
//! `cargo run --release --example attention -- [--kernel NAME [--softcap 30] [--window 1024,0] [--prefix 2048] [--param NAME=VALUE]
//!  [--doc-len 1000] [--table NAME=FILE.npy] [--bias bias.npy] [--doc-ids ids.npy]]
//!  [--b 1 --h 8 --hkv 8 --s 512 --sk 512 --d 64 --causal --seed N]
//!  [--layout bhsd|bshd] [--dtype f16|bf16] [--lse lse.npy] [--varlen 1,17,77 [--varlen-k 5,300,0]] [--iters 100 --warmup 20] [--q q.npy --k k.npy --v v.npy] [--out o.npy] [--sweep]
//!  [--tile-m 64 --tile-n 64 --warps 4 --load-warps 0 --softmax-warps 0 --stages 2 --persistent --a-in-smem --overlap --tma --pingpong] [--declared]
//!  [--target sm_89|sm_90a|auto] [--ptx] [--plan plan.json]`
//!
//! The config is the tuning table's entry for this GPU and shape (`tuning/attention.json`, or the
//! file `FLASHCORE_TUNING` names), the kernel's declared one with `--declared` or where no
//! entry fits, or the declared one with the tile flags applied. `--plan` writes the launch as
//! JSON (PTX, grid, parameters) for `scripts/bench.py` and runs nothing. The PTX target is
//! `--target`'s, else `FLASHCORE_TARGET`'s, else the device's (`sm_90a` on compute capability
//! 9.0 when the config compiles for it, `sm_89` otherwise: the output says which and why).
//!
//! `--kernel NAME` runs another registered kernel with the standard signature
//! (`q, k, v, o, lse, scale, <f32 parameters>, cu_q, cu_k`): the variants of
//! `flashcore::kernels::variants`, each checked against the float64 reference of its formula
//! (`variants::reference`). Their f32 parameters come from `--softcap`, `--window LEFT,RIGHT`,
//! `--prefix` or `--param NAME=VALUE`. Their tables are made per problem (document ids of
//! `--doc-len` tokens, a random bias) unless read from `.npy` files: `--table NAME=FILE` (f32 or
//! i32 by the table's type), `--bias FILE` (`--table bias=FILE`), `--doc-ids FILE` (document ids
//! `[B, S]`, i4 or i8: the `doc` table, or `doc_start` and `doc_end` made from its runs). A file's
//! shape must be the table's for the problem the flags give; without a GPU the simulator then
//! runs that problem.

#[path = "shared/variant.rs"]
mod variant;

use std::path::PathBuf;
use std::process::ExitCode;

use flashcore::autotune::{standard_args, FirstUse};
use flashcore::ir::source::Program;
use flashcore::kernels::attention;
use flashcore::reference::{self, Problem, Rng};
use flashcore::runtime::TensorArg;
use flashcore::runtime::{Device, DeviceTensor};
use flashcore::simulate::ExtraArg;
use flashcore::tuning::{Gpu, Source, Table};
use flashcore::{bf16, f16, round_to, tolerance, Config, DType, HalfFloat, Layout, Target};
use variant::{axis_sizes, table_shape, Chosen, Extra};

/// Largest difference from float64 a log-sum-exp may have (f32 statistics of the same scores:
/// about 1e-6 · |LSE| in practice).
const LSE_TOLERANCE: f64 = 1e-3;

struct Options {
    /// The registered kernel to run (`attention` unless `--kernel`).
    kernel: String,
    /// Values of the kernel's f32 parameters after `scale`, by name.
    params: Vec<(String, f32)>,
    /// Tokens per document in the document ids an `i32` table gets (`--doc-len`).
    doc_len: usize,
    /// Tables read from `.npy` files (`--table NAME=FILE`, `--bias FILE`).
    tables: Vec<(String, PathBuf)>,
    /// Document ids `[B, S]` from a `.npy` file (`--doc-ids FILE`).
    doc_ids: Option<PathBuf>,
    b: usize,
    h: usize,
    s: usize,
    d: usize,
    seed: u64,
    iters: usize,
    warmup: usize,
    q: Option<PathBuf>,
    k: Option<PathBuf>,
    v: Option<PathBuf>,
    out: Option<PathBuf>,
    /// Write the log-sum-exp output `[B, H, S]` here (and time launches that produce it).
    lse: Option<PathBuf>,
    sweep: bool,
    /// K/V rows (cross-attention); `s` when not given.
    sk: Option<usize>,
    /// K/V heads (grouped-query attention); `h` when not given.
    hkv: Option<usize>,
    causal: bool,
    /// A variable-length batch: each sequence's query rows (packed `[TOTAL, H, D]`).
    varlen: Option<Vec<usize>>,
    /// Each sequence's key rows; the query lengths when not given.
    varlen_k: Option<Vec<usize>>,
    /// How q, k, v and o are laid out in memory (and in the `.npy` files).
    layout: Layout,
    /// The element type of q, k, v and o (the kernel's `T`).
    dtype: DType,
    show_ptx: bool,
    tile_m: Option<u32>,
    stages: Option<u32>,
    load_warps: Option<u32>,
    softmax_warps: Option<u32>,
    persistent: bool,
    tile_n: Option<u32>,
    warps: Option<u32>,
    /// Keep Q in shared memory (`Config::a_in_smem`).
    a_in_smem: bool,
    /// sm_90a: the softmax of each K/V tile under P·V of the one before (`Config::overlap`).
    overlap: bool,
    /// sm_90a: K/V tiles through bulk tensor copies (TMA) from the producer (`Config::tma`).
    tma: bool,
    /// sm_90a: two compute warpgroups issue their matmuls in turns (`Config::pingpong`).
    pingpong: bool,
    /// Split each K/V tile's keys over this many groups of compute warps (`Config::kv_splits`).
    kv_splits: Option<u32>,
    /// Split each work item's K/V loop across this many CTAs (`Config::kv_ctas`).
    kv_ctas: Option<u32>,
    /// The kernel's declared config, not the tuning table's.
    declared: bool,
    /// Write the launch plan here and exit.
    plan: Option<PathBuf>,
    /// The tuning table (`FLASHCORE_TUNING` or the builtin one).
    table: Table,
    /// The device, once a GPU is found: what the tuning table is searched for.
    gpu: Option<Gpu>,
    /// The device's compute capability, once a GPU is found: it picks the PTX target.
    compute_capability: Option<(i32, i32)>,
    /// The PTX target asked for (`--target`, else `FLASHCORE_TARGET`); `None`: the device's.
    target: Option<Target>,
}

/// `17,77,4097`: one length per sequence.
fn lengths(flag: &str, list: String) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|_| format!("{flag}: `{x}` is not a length")))
        .collect()
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        kernel: "attention".into(),
        params: vec![],
        doc_len: 1000,
        tables: vec![],
        doc_ids: None,
        b: 1,
        h: 8,
        s: 512,
        d: 64,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        iters: 100,
        warmup: 20,
        q: None,
        k: None,
        v: None,
        out: None,
        lse: None,
        sweep: false,
        sk: None,
        hkv: None,
        causal: false,
        varlen: None,
        varlen_k: None,
        layout: Layout::Bhsd,
        dtype: DType::F16,
        show_ptx: false,
        tile_m: None,
        stages: None,
        load_warps: None,
        softmax_warps: None,
        persistent: false,
        tile_n: None,
        warps: None,
        a_in_smem: false,
        overlap: false,
        tma: false,
        pingpong: false,
        kv_splits: None,
        kv_ctas: None,
        declared: false,
        plan: None,
        table: Table::active().map_err(|e| format!("FLASHCORE_TUNING: {e}"))?,
        gpu: None,
        compute_capability: None,
        target: flashcore::target::requested().map_err(|e| e.to_string())?,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |s: String| s.parse::<usize>().map_err(|_| format!("{flag}: `{s}` is not a number"));
        match flag.as_str() {
            "--kernel" => o.kernel = value()?,
            "--doc-len" => o.doc_len = number(value()?)?.max(1),
            "--table" => {
                let v = value()?;
                let (name, file) =
                    v.split_once('=').ok_or_else(|| format!("--table takes NAME=FILE.npy, got `{v}`"))?;
                o.tables.push((name.to_string(), file.into()));
            }
            "--bias" => o.tables.push(("bias".to_string(), value()?.into())),
            "--doc-ids" => o.doc_ids = Some(value()?.into()),
            "--softcap" | "--prefix" | "--window" | "--param" => {
                let params = variant::param_flag(&flag, &mut value).unwrap_or_else(|| Ok(vec![]))?;
                o.params.extend(params);
            }
            "--b" => o.b = number(value()?)?,
            "--h" => o.h = number(value()?)?,
            "--s" => o.s = number(value()?)?,
            "--d" => o.d = number(value()?)?,
            "--seed" => o.seed = number(value()?)? as u64,
            "--iters" => o.iters = number(value()?)?.max(1),
            "--warmup" => o.warmup = number(value()?)?,
            "--q" => o.q = Some(value()?.into()),
            "--k" => o.k = Some(value()?.into()),
            "--v" => o.v = Some(value()?.into()),
            "--out" => o.out = Some(value()?.into()),
            "--lse" => o.lse = Some(value()?.into()),
            "--sweep" => o.sweep = true,
            "--sk" => o.sk = Some(number(value()?)?),
            "--hkv" => o.hkv = Some(number(value()?)?),
            "--causal" => o.causal = true,
            "--varlen" => o.varlen = Some(lengths(&flag, value()?)?),
            "--varlen-k" => o.varlen_k = Some(lengths(&flag, value()?)?),
            "--layout" => o.layout = value()?.parse()?,
            "--dtype" => {
                let name = value()?;
                o.dtype = DType::from_name(&name)
                    .ok_or_else(|| format!("--dtype: `{name}` is not a supported dtype (f16, bf16)"))?
            }
            "--tile-m" => o.tile_m = Some(number(value()?)? as u32),
            "--tile-n" => o.tile_n = Some(number(value()?)? as u32),
            "--warps" => o.warps = Some(number(value()?)? as u32),
            "--stages" => o.stages = Some(number(value()?)? as u32),
            "--persistent" => o.persistent = true,
            "--load-warps" => o.load_warps = Some(number(value()?)? as u32),
            "--softmax-warps" => o.softmax_warps = Some(number(value()?)? as u32),
            "--ptx" => o.show_ptx = true,
            "--declared" => o.declared = true,
            "--a-in-smem" => o.a_in_smem = true,
            "--overlap" => o.overlap = true,
            "--tma" => o.tma = true,
            "--pingpong" => o.pingpong = true,
            "--kv-splits" => o.kv_splits = Some(number(value()?)? as u32),
            "--kv-ctas" => o.kv_ctas = Some(number(value()?)? as u32),
            "--plan" => o.plan = Some(value()?.into()),
            "--target" => {
                o.target = flashcore::target::parse(&value()?).map_err(|e| format!("--target: {e}"))?
            }
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("attention.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//! ").trim_start_matches("//!"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag `{other}` (try --help)")),
        }
    }
    if o.varlen_k.is_some() && o.varlen.is_none() {
        return Err("--varlen-k needs --varlen (the query lengths)".into());
    }
    if o.varlen.is_some() && (o.q.is_some() || o.sweep || o.layout != Layout::Bhsd) {
        return Err(
            "--varlen runs packed [TOTAL, H, D] random inputs: not with --q/--k/--v, --sweep or --layout"
                .into(),
        );
    }
    if (!o.tables.is_empty() || o.doc_ids.is_some()) && (o.varlen.is_some() || o.sweep || o.plan.is_some()) {
        return Err("tables from files (--table, --bias, --doc-ids) fix one problem's shape: not with --varlen, --sweep or --plan".into());
    }
    Ok(o)
}

/// The config for a `[b, h, s, d]` problem with `sk` keys, and where it came from: the tile
/// flags applied to the declared config, else the tuning table's entry for this GPU and shape,
/// else (or with `--declared`) the declared config at this head dim.
fn config_for(o: &Options, shape: [usize; 4], sk: usize) -> (Config, String) {
    let program = flashcore::registry::find(&o.kernel).map_or_else(attention::program, |k| (k.program)());
    let (config, source) = schedule_for(o, &program, shape, sk);
    // A tuned entry runs the target it was timed on (its config names it), unless one is asked for.
    let (config, target) = flashcore::target::choose(&program, config, o.compute_capability, o.target);
    (config, format!("{source}; target {target}"))
}

/// The schedule half of [`config_for`]: everything but the target (a tuned entry names its own).
fn schedule_for(o: &Options, program: &Program, [b, h, s, d]: [usize; 4], sk: usize) -> (Config, String) {
    let base = base_config(o, d);
    if tile_flags_given(o) {
        let cfg = Config {
            tile_m: o.tile_m.unwrap_or(base.tile_m),
            tile_n: o.tile_n.unwrap_or(base.tile_n),
            warps: o.warps.unwrap_or(base.warps),
            stages: o.stages.unwrap_or(base.stages),
            load_warps: o.load_warps.unwrap_or(base.load_warps),
            softmax_warps: o.softmax_warps.unwrap_or(base.softmax_warps),
            persistent: o.persistent || base.persistent,
            a_in_smem: o.a_in_smem || base.a_in_smem,
            overlap: o.overlap || base.overlap,
            tma: o.tma || base.tma,
            pingpong: o.pingpong || base.pingpong,
            kv_splits: o.kv_splits.unwrap_or(base.kv_splits),
            kv_ctas: o.kv_ctas.unwrap_or(base.kv_ctas),
            ..base
        };
        return (cfg, "the declared config with the tile flags applied".into());
    }
    match (&o.gpu, o.declared) {
        (Some(gpu), false) => {
            let (cfg, source) = o.table.pick_kernel(program, &o.kernel, gpu, base, [b, h, s, sk], o.target);
            match source {
                // A variant with no entry of its own runs the plain kernel's schedule: the same
                // loop with a little more score code.
                Source::Tuned(ref key, _) | Source::Modeled(ref key, _) if key.kernel != o.kernel => {
                    (cfg, format!("{source} (no entry for {})", o.kernel))
                }
                source => (cfg, source.to_string()),
            }
        }
        (Some(_), true) => (base, "declared (--declared)".into()),
        (None, _) => (base, "declared (no GPU to look up in the tuning table)".into()),
    }
}

/// The kernel's declared config at head dim `d` with the flags' dtype, causal and varlen: what the
/// tuning table's entries apply to (`with_head_dim`: smaller K/V tiles at D = 256).
fn base_config(o: &Options, d: usize) -> Config {
    let declared = flashcore::registry::find(&o.kernel).map_or(attention::CONFIG, |k| k.config);
    Config {
        causal: o.causal || declared.causal,
        dtype: o.dtype,
        varlen: o.varlen.is_some(),
        ..declared.with_head_dim(d as u32)
    }
}

/// Whether a tile flag sets the schedule (the tuning table is then not read).
fn tile_flags_given(o: &Options) -> bool {
    let flags =
        [o.tile_m, o.tile_n, o.warps, o.stages, o.load_warps, o.softmax_warps, o.kv_splits, o.kv_ctas];
    flags.iter().any(Option::is_some) || o.persistent || o.a_in_smem || o.overlap || o.tma || o.pingpong
}

/// One problem's inputs on the host in logical BHSD order, each value rounded to the dtype (the
/// reference sees exactly what the GPU sees). `shape` is Q's (and O's) `[B, H, S, D]`; K and V
/// are `[B, hk, sk, D]`.
struct Inputs {
    shape: [usize; 4],
    hk: usize,
    sk: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

impl Inputs {
    fn kv_shape(&self) -> [usize; 4] {
        [self.shape[0], self.hk, self.sk, self.shape[3]]
    }
}

fn random_inputs(shape: [usize; 4], hk: usize, sk: usize, dtype: DType, rng: &mut Rng) -> Inputs {
    let [b, _, _, d] = shape;
    let mut gen = |n: usize| (0..n).map(|_| round_to(dtype, rng.normal())).collect::<Vec<_>>();
    let (q, k, v) = (gen(shape.iter().product()), gen(b * hk * sk * d), gen(b * hk * sk * d));
    Inputs { shape, hk, sk, q, k, v }
}

fn npy_inputs(o: &Options) -> Result<Option<Inputs>, String> {
    let (Some(q), Some(k), Some(v)) = (&o.q, &o.k, &o.v) else {
        if o.q.is_some() || o.k.is_some() || o.v.is_some() {
            return Err("--q, --k and --v go together".into());
        }
        return Ok(None);
    };
    let read = |p: &PathBuf| flashcore::npy::read(p).map_err(|e| e.to_string());
    let (q, k, v) = (read(q)?, read(k)?, read(v)?);
    // The kernel's argument checks name any disagreement in B, H/HKV or D; here only the rank.
    if q.shape.len() != 4 || k.shape.len() != 4 || k.shape != v.shape {
        return Err(format!(
            "q must be [B, H, S, D] and k, v one [B, HKV, SK, D] shape; got {:?}, {:?}, {:?}",
            q.shape, k.shape, v.shape
        ));
    }
    // The files hold the layout's storage order: [B, S, H, D] for BSHD.
    let logical = |a: &flashcore::npy::Array| {
        let [b, x, y, d] = [a.shape[0], a.shape[1], a.shape[2], a.shape[3]];
        let shape = match o.layout {
            Layout::Bhsd => [b, x, y, d],
            Layout::Bshd => [b, y, x, d],
        };
        let data: Vec<f64> = a.data.iter().map(|x| round_to(o.dtype, *x as f64)).collect();
        (shape, o.layout.load(&data, shape))
    };
    let ((shape, q), (kv_shape, k), (_, v)) = (logical(&q), logical(&k), logical(&v));
    Ok(Some(Inputs { shape, hk: kv_shape[1], sk: kv_shape[2], q, k, v }))
}

struct Outcome {
    err: reference::ErrorStats,
    lse_ok: bool,
    rows_checked: usize,
    rows_total: usize,
    median_us: f64,
    tflops: f64,
}

/// Rows to check against the reference: all of them when that is cheap, else a fixed random
/// sample that always includes the first and last row of every head.
fn rows_to_check(shape: [usize; 4], sk: usize, rng: &mut Rng) -> Vec<usize> {
    let [b, h, s, d] = shape;
    let total = b * h * s;
    let cost = (total as f64) * (sk as f64) * (d as f64);
    if cost <= 4e9 {
        return (0..total).collect();
    }
    let mut rows: Vec<usize> = (0..b * h).flat_map(|bh| [bh * s, bh * s + s - 1]).collect();
    let budget = (4e9 / (sk as f64 * d as f64)) as usize;
    while rows.len() < budget.max(rows.len() + 1).min(total) {
        rows.push((rng.next_u64() % total as u64) as usize);
    }
    rows.sort_unstable();
    rows.dedup();
    rows
}

fn run_one(
    device: &Device,
    chosen: &Chosen,
    inputs: &Inputs,
    o: &Options,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    match o.dtype {
        DType::F16 => run_typed::<f16>(device, chosen, inputs, o, rng),
        DType::Bf16 => run_typed::<bf16>(device, chosen, inputs, o, rng),
    }
}

fn run_typed<T: HalfFloat>(
    device: &Device,
    chosen: &Chosen,
    inputs: &Inputs,
    o: &Options,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let [b, h, s, d] = inputs.shape;
    let (cfg, _) = config_for(o, inputs.shape, inputs.sk);
    let compiled = chosen.compile(&cfg)?;
    let e = |x: flashcore::Error| x.to_string();
    let r = |x: flashcore::runtime::RuntimeError| x.to_string();
    let (shape, kv_shape) = (inputs.shape, inputs.kv_shape());
    // Tensors live on the device in the chosen layout; the kernel gets their strides.
    let layout = o.layout;
    let upload = |data: &[f64], shape: [usize; 4]| {
        let typed: Vec<T> = data.iter().map(|x| T::from_f64(*x)).collect();
        device.upload_strided(&layout.store(&typed, shape), &shape, &layout.strides(shape)).map_err(r)
    };
    let (q, k, v) = (upload(&inputs.q, shape)?, upload(&inputs.k, kv_shape)?, upload(&inputs.v, kv_shape)?);
    // Poison the output so that an element the kernel never writes fails the check.
    let mut out = upload(&vec![f64::NAN; shape.iter().product()], shape)?;
    // The log-sum-exp of every row, checked on the correctness launch (poisoned likewise).
    let mut lse = device.filled(&[b, h, s], f32::NAN).map_err(r)?;
    let scale = cfg.default_scale();
    let extras = chosen.problem_extras(&axis_sizes(shape, inputs.hk, inputs.sk), rng)?;
    let device_extras = Chosen::upload(device, &extras)?;
    let mut args = standard_args([&q, &k, &v], &mut out, Some(&mut lse), scale, &device_extras, [None, None]);
    flashcore::launch(device, &compiled, &mut args).map_err(e)?;
    device.synchronize().map_err(r)?;
    let stored = device.download(&out).map_err(r)?;
    let got_lse = device.download(&lse).map_err(r)?;
    if let Some(path) = &o.lse {
        flashcore::npy::write_f32(path, &got_lse, &[b, h, s]).map_err(|x| x.to_string())?;
    }
    if let Some(path) = &o.out {
        // numpy has no bf16: bf16 results are written as (exact) f32.
        let storage_shape = layout.storage_shape(shape);
        let written = match T::DTYPE {
            DType::F16 => {
                let halves: Vec<f16> = stored.iter().map(|x| f16::from_f64(x.to_f64())).collect();
                flashcore::npy::write_f16(path, &halves, &storage_shape)
            }
            DType::Bf16 => {
                let floats: Vec<f32> = stored.iter().map(|x| x.to_f64() as f32).collect();
                flashcore::npy::write_f32(path, &floats, &storage_shape)
            }
        };
        written.map_err(|x| x.to_string())?;
    }
    let got: Vec<f64> = layout.load(&stored, shape).iter().map(|x| x.to_f64()).collect();

    let (qd, kd, vd) = (&inputs.q, &inputs.k, &inputs.v);
    let (hk, sk) = (inputs.hk, inputs.sk);
    let problem =
        Problem { q: qd, k: kd, v: vd, b, h, hk, s, sk, d, scale: scale as f64, causal: cfg.causal };
    let rows = rows_to_check(shape, sk, rng);
    let variant = chosen.reference(&extras, h, s, sk)?;
    let want = reference::variant_rows_lse(&problem, &rows, &variant);
    let (err, lse_ok) = compare_rows(&got, |r| got_lse[r], &rows, want, d);

    // Timing inputs: several sets, rotated, as well as the flush below.
    let set_bytes = (shape.iter().product::<usize>() + 2 * kv_shape.iter().product::<usize>()) * 2;
    let sets = flashcore::timing::rotating_sets(set_bytes);
    let mut rotating: Vec<(DeviceTensor<T>, DeviceTensor<T>, DeviceTensor<T>)> = vec![];
    for _ in 0..sets.saturating_sub(1) {
        let fresh = random_inputs(shape, hk, sk, T::DTYPE, rng);
        rotating.push((upload(&fresh.q, shape)?, upload(&fresh.k, kv_shape)?, upload(&fresh.v, kv_shape)?));
    }
    rotating.push((q, k, v));
    let median_us = flashcore::timing::median_launch_us(device, o.warmup, o.iters, |i| {
        let (q, k, v) = &rotating[i % rotating.len()];
        let lse = o.lse.is_some().then_some(&mut lse as &mut dyn TensorArg);
        flashcore::launch_async(
            device,
            &compiled,
            &mut standard_args([q, k, v], &mut out, lse, scale, &device_extras, [None, None]),
        )
    })
    .map_err(e)?;
    // Useful work: 4·D flops per (query, key) pair a row attends to (about half when causal,
    // and what the variant's mask keeps).
    let pairs = if chosen.entry.name == "attention" {
        reference::attended_pairs(s, sk, cfg.causal)
    } else {
        (0..s)
            .map(|i| {
                (0..reference::keys_seen(i, s, sk, cfg.causal))
                    .filter(|j| (variant.keep)(0, 0, i, *j))
                    .count()
            })
            .sum()
    };
    let flops = 4.0 * (b * h) as f64 * pairs as f64 * d as f64;
    Ok(Outcome {
        err,
        lse_ok,
        rows_checked: rows.len(),
        rows_total: b * h * s,
        median_us,
        tflops: flops / (median_us * 1e-6) / 1e12,
    })
}

/// Compares output rows `rows` of `got` (`d` values each) and their log-sum-exps (`lse_of(row)`)
/// with the float64 `want` (rows, log-sum-exps) and prints the log-sum-exp line. Returns the
/// output's error and whether every log-sum-exp is within `LSE_TOLERANCE`.
fn compare_rows(
    got: &[f64],
    lse_of: impl Fn(usize) -> f32,
    rows: &[usize],
    (want, want_lse): (Vec<f64>, Vec<f64>),
    d: usize,
) -> (reference::ErrorStats, bool) {
    let got_rows: Vec<f64> = rows.iter().flat_map(|r| got[r * d..(r + 1) * d].iter().copied()).collect();
    let err = reference::compare(&got_rows, &want);
    let lse_rows: Vec<f64> = rows.iter().map(|r| lse_of(*r) as f64).collect();
    let (lse_max_abs, lse_mismatched) = reference::compare_lse(&lse_rows, &want_lse);
    let lse_ok = lse_max_abs < LSE_TOLERANCE && lse_mismatched == 0;
    println!(
        "log-sum-exp: max abs err {lse_max_abs:.3e} vs float64 over {} rows, {lse_mismatched} infinite where float64 is not (or back){}",
        rows.len(),
        if lse_ok { "" } else { "  FAIL" }
    );
    (err, lse_ok)
}

/// A variable-length batch (`--varlen`): packed `[TOTAL, H, D]` random inputs, sequence offsets
/// on the device, every output row (and log-sum-exp, `[H, TOTAL_Q]`) checked against float64
/// per sequence, then timed like the dense problems.
fn run_varlen<T: HalfFloat>(
    device: &Device,
    o: &Options,
    (lens_q, lens_k): (&[usize], &[usize]),
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let (h, hk, d) = (o.h, o.hkv.unwrap_or(o.h), o.d);
    let longest = |lens: &[usize]| lens.iter().copied().max().unwrap_or(0);
    let (cfg, _) = config_for(o, [lens_q.len(), h, longest(lens_q), d], longest(lens_k));
    let e = |x: flashcore::Error| x.to_string();
    let r = |x: flashcore::runtime::RuntimeError| x.to_string();
    let cu_q = flashcore::SeqOffsets::from_lengths(lens_q).map_err(e)?;
    let cu_k = flashcore::SeqOffsets::from_lengths(lens_k).map_err(e)?;
    let (tq, tk) = (cu_q.total(), cu_k.total());
    let (dev_q_offsets, dev_k_offsets) = (cu_q.upload(device).map_err(e)?, cu_k.upload(device).map_err(e)?);
    let mut gen = |n: usize| (0..n).map(|_| round_to(o.dtype, rng.normal())).collect::<Vec<f64>>();
    let upload = |data: &[f64], shape: &[usize]| {
        let typed: Vec<T> = data.iter().map(|x| T::from_f64(*x)).collect();
        device.upload(&typed, shape).map_err(r)
    };
    let (q_shape, kv_shape) = ([tq, h, d], [tk, hk, d]);
    let mut sets = vec![];
    // Rotating input sets (about 64 MB in all), as for the dense problems.
    let set_bytes = (tq * h + 2 * tk * hk) * d * 2;
    for _ in 0..flashcore::timing::rotating_sets(set_bytes) {
        let (q, k, v) = (gen(tq * h * d), gen(tk * hk * d), gen(tk * hk * d));
        let dev = (upload(&q, &q_shape)?, upload(&k, &kv_shape)?, upload(&v, &kv_shape)?);
        sets.push(((q, k, v), dev));
    }
    let mut out = device.filled(&q_shape, T::NAN).map_err(r)?;
    let mut lse = device.filled(&[h, tq], f32::NAN).map_err(r)?;
    let scale = cfg.default_scale();
    let ((qd, kd, vd), (q, k, v)) = &sets[0];
    let offsets = (Some(&dev_q_offsets), Some(&dev_k_offsets));
    attention::launch(device, &cfg, q, k, v, &mut out, Some(&mut lse), scale, offsets.0, offsets.1)
        .map_err(e)?;
    let got: Vec<f64> = device.download(&out).map_err(r)?.iter().map(|x| x.to_f64()).collect();
    let got_lse = device.download(&lse).map_err(r)?;
    if let Some(path) = &o.lse {
        flashcore::npy::write_f32(path, &got_lse, &[h, tq]).map_err(|x| x.to_string())?;
    }
    let problem = reference::VarlenProblem {
        q: qd,
        k: kd,
        v: vd,
        cu_q: cu_q.as_slice(),
        cu_k: cu_k.as_slice(),
        h,
        hk,
        d,
        scale: scale as f64,
        causal: cfg.causal,
    };
    // Rows t · H + head; a sample of them when checking all would be slow.
    let all_pairs: usize =
        lens_q.iter().zip(lens_k).map(|(sq, sk)| reference::attended_pairs(*sq, *sk, cfg.causal)).sum();
    let total_rows = tq * h;
    // All rows when that is cheap, else the first and last row of every sequence and head plus
    // a random sample (the budget is about 4e9 multiply-adds, as for the dense problems).
    let keys_per_row = all_pairs as f64 / tq.max(1) as f64;
    let budget = (4e9 / (keys_per_row.max(1.0) * d as f64)) as usize;
    let rows: Vec<usize> = if total_rows <= budget {
        (0..total_rows).collect()
    } else {
        let ends = (0..lens_q.len())
            .filter(|i| lens_q[*i] > 0)
            .flat_map(|i| [cu_q.range(i).start, cu_q.range(i).end - 1]);
        let mut rows: Vec<usize> = ends.flat_map(|t| (0..h).map(move |head| t * h + head)).collect();
        while rows.len() < budget {
            rows.push((rng.next_u64() % total_rows as u64) as usize);
        }
        rows.sort_unstable();
        rows.dedup();
        rows
    };
    let want = reference::varlen_rows_lse(&problem, &rows);
    // The log-sum-exp is [H, TOTAL_Q]; the rows are t · H + head.
    let (err, lse_ok) = compare_rows(&got, |r| got_lse[(r % h) * tq + r / h], &rows, want, d);
    let median_us = flashcore::timing::median_launch_us(device, o.warmup, o.iters, |i| {
        let (_, (q, k, v)) = &sets[i % sets.len()];
        let lse = o.lse.is_some().then_some(&mut lse);
        attention::launch_async(device, &cfg, q, k, v, &mut out, lse, scale, offsets.0, offsets.1)
    })
    .map_err(e)?;
    let flops = 4.0 * h as f64 * all_pairs as f64 * d as f64;
    Ok(Outcome {
        err,
        lse_ok,
        rows_checked: rows.len(),
        rows_total: total_rows,
        median_us,
        tflops: flops / (median_us * 1e-6) / 1e12,
    })
}

fn report_without_gpu(reason: &str, o: &Options, chosen: &Chosen) -> ExitCode {
    println!("no GPU: {reason}");
    let (cfg, _) = config_for(o, [o.b, o.h, o.s, o.d], o.sk.unwrap_or(o.s));
    let compiled = match chosen.compile(&cfg) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ptx = compiled.ptx.text.clone();
    println!("The {} kernel was compiled; here is what can be checked without a GPU.", chosen.entry.name);
    println!(
        "config: {cfg}; {} threads per CTA, {} bytes of dynamic shared memory; PTX: {} lines",
        compiled.ptx.threads_per_cta,
        compiled.ptx.shared_bytes,
        ptx.lines().count()
    );
    if o.show_ptx {
        println!("{ptx}");
    }
    match flashcore::ptxas::find() {
        None => {
            println!("ptxas not found (run scripts/test.sh once to install it): no resource report")
        }
        Some(path) => {
            for arch in flashcore::occupancy::archs_for(compiled.kernel.config.target).iter().map(|a| a.sm) {
                match flashcore::ptxas::assemble(&path, &ptx, arch) {
                    Ok(r) => println!(
                        "ptxas {arch}: {} registers, {} bytes spill stores, {} bytes spill loads, {} bytes stack",
                        r.registers, r.spill_store_bytes, r.spill_load_bytes, r.stack_bytes
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    match run_in_simulator(&compiled, o, chosen) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Runs the kernel in FlashCore's PTX simulator at a small shape (two heads, four KV tiles; with
/// `--varlen`, those sequence lengths) and checks it against the float64 reference, so the
/// generated code is seen to work without a GPU.
fn run_in_simulator(
    kernel: &flashcore::CompiledKernel,
    o: &Options,
    chosen: &Chosen,
) -> Result<String, String> {
    use flashcore::simulate::{check_variant, check_varlen_attention, AttentionShape, Options, SimDevice};
    let d = kernel.kernel.config.head_dim;
    let device = SimDevice { sm_count: 2, options: Options { seed: o.seed, ..Options::default() } };
    let (check, what) = match &o.varlen {
        Some(lens_q) => {
            let lens_k = o.varlen_k.as_deref().unwrap_or(lens_q);
            let (h, hk) = (2, 2);
            let check = check_varlen_attention(kernel, lens_q, lens_k, (h, hk), o.seed, &device);
            (check, format!("varlen {lens_q:?} x {lens_k:?} x{h}x{d}"))
        }
        None => {
            // Tables from files fix the problem's shape: the flags' (kept small).
            let shape = if chosen.reads_files() {
                let shape = AttentionShape {
                    b: o.b,
                    h: o.h,
                    hk: o.hkv.unwrap_or(o.h),
                    s: o.s,
                    sk: o.sk.unwrap_or(o.s),
                };
                if shape.b * shape.h * shape.s * shape.sk > 1 << 22 {
                    return Err(format!(
                        "tables from files set the simulator's problem to {}x{}x{}x{d} (SK {}): over 2^22 (query, key) pairs, too slow to simulate; use a smaller one, or a GPU",
                        shape.b, shape.h, shape.s, shape.sk
                    ));
                }
                shape
            } else {
                AttentionShape { b: 1, h: 2, hk: 2, s: 256, sk: 256 }
            };
            let sizes = axis_sizes([shape.b, shape.h, shape.s, d as usize], shape.hk, shape.sk);
            let extras = chosen.problem_extras(&sizes, &mut Rng::new(o.seed))?;
            let variant = chosen.reference(&extras, shape.h, shape.s, shape.sk)?;
            let args: Vec<ExtraArg> = extras.into_iter().map(|(_, e)| e).collect();
            let check = check_variant(kernel, shape, o.layout, o.seed, &device, &args, &variant);
            (check, format!("{}x{}x{}x{d} {}", shape.b, shape.h, shape.s, o.layout))
        }
    };
    let check = check.map_err(|e| e.to_string())?;
    let line = format!(
        "simulator (no GPU needed): {what}, {} CTAs, {} warp instructions ({:.1} M lane instructions/s), rel err {:.3e} vs float64, log-sum-exp max abs err {:.1e}",
        check.stats.ctas,
        check.stats.warp_instructions,
        check.stats.lane_instructions as f64 / check.seconds / 1e6,
        check.err.rel_l2,
        check.lse_max_abs
    );
    let bound = tolerance(kernel.kernel.config.dtype);
    let lse_ok = check.lse_max_abs < LSE_TOLERANCE && check.lse_mismatched == 0;
    if check.err.rel_l2 < bound && check.err.non_finite == 0 && lse_ok {
        Ok(format!("{line}  ok"))
    } else {
        Err(format!("{line}: above the {bound:e} bound"))
    }
}

/// Prints one row of the results table (`S` is the longest sequence of a varlen batch); true
/// when the result is within `bound` of float64.
fn print_outcome([b, h, s, d]: [usize; 4], result: Result<Outcome, String>, bound: f64) -> bool {
    match result {
        Ok(r) => {
            let ok = r.err.rel_l2 < bound && r.err.non_finite == 0 && r.lse_ok;
            println!(
                "{b:>4} {h:>4} {s:>6} {d:>4}  {:>10.3e} {:>10.3e} {:>6}/{:<6}  {:>10.2} {:>9.1}  {}",
                r.err.rel_l2,
                r.err.max_abs,
                r.rows_checked,
                r.rows_total,
                r.median_us,
                r.tflops,
                if ok { "ok" } else { "FAIL" }
            );
            ok
        }
        Err(e) => {
            println!("{b:>4} {h:>4} {s:>6} {d:>4}  error: {e}");
            false
        }
    }
}

/// Writes the launch plan of `o`'s problem (dense, contiguous `[B, H, S, D]`, no log-sum-exp) to
/// `path` for `scripts/bench.py`; returns what to print.
fn write_plan(o: &Options, chosen: &Chosen, path: &PathBuf) -> Result<String, String> {
    use flashcore::plan::{launch_plan, PlanArg};
    use flashcore::TensorView;
    if o.varlen.is_some() || o.q.is_some() || o.sweep {
        return Err(
            "--plan describes one dense random problem: not with --varlen, --q/--k/--v or --sweep".into()
        );
    }
    let (hk, sk) = (o.hkv.unwrap_or(o.h), o.sk.unwrap_or(o.s));
    let (cfg, source) = config_for(o, [o.b, o.h, o.s, o.d], sk);
    let compiled = chosen.compile(&cfg)?;
    let shapes = [[o.b, o.h, o.s, o.d], [o.b, hk, sk, o.d]];
    let strides = shapes.map(|s| flashcore::runtime::contiguous_strides(&s));
    let view = |i: usize| TensorView {
        dtype: o.dtype.name(),
        shape: &shapes[i],
        strides: &strides[i],
        buffer_len: shapes[i].iter().product(),
    };
    let mut args = vec![
        PlanArg::Tensor(view(0)),
        PlanArg::Tensor(view(1)),
        PlanArg::Tensor(view(1)),
        PlanArg::TensorMut(view(0)),
        PlanArg::Absent,
        PlanArg::F32(cfg.default_scale()),
    ];
    // Tables are the caller's: the plan names their shape (contiguous) and dtype, no data.
    let sizes = axis_sizes(shapes[0], hk, sk);
    let table_shapes: Vec<Vec<usize>> = chosen
        .extras
        .iter()
        .map(|(name, e)| match e {
            Extra::Table { axes, .. } => table_shape(name, axes, &sizes),
            Extra::F32(_) => Ok(vec![]),
        })
        .collect::<Result<_, String>>()?;
    let table_strides: Vec<Vec<usize>> =
        table_shapes.iter().map(|s| flashcore::runtime::contiguous_strides(s)).collect();
    args.extend(chosen.extras.iter().zip(table_shapes.iter().zip(&table_strides)).map(
        |((_, e), (shape, strides))| match e {
            Extra::F32(x) => PlanArg::F32(*x),
            Extra::Table { int, .. } => PlanArg::Tensor(TensorView {
                dtype: if *int { "i32" } else { "f32" },
                shape,
                strides,
                buffer_len: shape.iter().product(),
            }),
        },
    ));
    args.extend([PlanArg::Absent, PlanArg::Absent]);
    let plan = launch_plan(&compiled, &args).map_err(|e| e.to_string())?;
    std::fs::write(path, plan.to_json()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("plan: {} ({cfg}; {source})", path.display()))
}

fn main() -> ExitCode {
    let mut o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let chosen = match Chosen::new(&o.kernel, &o.params, o.doc_len)
        .and_then(|c| c.with_files(o.tables.clone(), o.doc_ids.clone()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if o.varlen.is_some() && o.kernel != "attention" {
        eprintln!("error: --varlen runs the plain `attention` kernel (its reference is the varlen one)");
        return ExitCode::from(2);
    }
    let device = match Device::new(0) {
        Ok(d) => d,
        Err(e) => return report_without_gpu(&e.to_string(), &o, &chosen),
    };
    let info = device.info();
    o.gpu = Some(Gpu::of(info));
    o.compute_capability = Some(info.compute_capability);
    // Tuning on first use (FLASHCORE_AUTOTUNE=1): the run's shape, unless its schedule is given.
    if !o.declared && !tile_flags_given(&o) {
        let tuner = match FirstUse::from_env() {
            Ok(tuner) => tuner,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        if let Some(tuner) = tuner {
            let (base, shape) = (base_config(&o, o.d), [o.b, o.h, o.s, o.sk.unwrap_or(o.s)]);
            let kernel = o.kernel.clone();
            if let Err(e) = tuner.config(&device, &mut o.table, &kernel, base, shape, o.target) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &o.plan {
        return match write_plan(&o, &chosen, path) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    println!(
        "device: {} (sm_{}{}, {} SMs); seed {}",
        info.name, info.compute_capability.0, info.compute_capability.1, info.sm_count, o.seed
    );
    let mut rng = Rng::new(o.seed);
    let problems: Vec<Inputs> = match npy_inputs(&o) {
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Ok(Some(inputs)) => vec![inputs],
        Ok(None) if o.varlen.is_some() => vec![],
        Ok(None) if o.sweep => {
            let mut v = vec![];
            for d in [64, 128] {
                for (b, h) in [(1, 8), (4, 16)] {
                    for s in [128, 512, 1024, 4096] {
                        v.push(random_inputs([b, h, s, d], h, s, o.dtype, &mut rng));
                    }
                }
            }
            v
        }
        Ok(None) => {
            vec![random_inputs(
                [o.b, o.h, o.s, o.d],
                o.hkv.unwrap_or(o.h),
                o.sk.unwrap_or(o.s),
                o.dtype,
                &mut rng,
            )]
        }
    };
    let (cfg, source) = config_for(&o, [o.b, o.h, o.s, o.d], o.sk.unwrap_or(o.s));
    println!("config source: {source}");
    if o.kernel != "attention" {
        println!("kernel: {} ({})", chosen.entry.name, chosen.entry.summary);
    }
    match chosen.compile(&cfg).and_then(|k| {
        device
            .ctas_per_sm(&k.image())
            .map(|n| (n, k.ptx.threads_per_cta, k.ptx.shared_bytes))
            .map_err(|e| e.to_string())
    }) {
        Ok((n, threads, smem)) => {
            println!(
                "config: {cfg}; {threads} threads and {smem} bytes of shared memory per CTA, {n} CTAs per SM"
            )
        }
        Err(e) => println!("config: {cfg}; error: {e}"),
    }
    if o.dtype != DType::F16 {
        println!("dtype: {} (q, k, v and o; f32 accumulation)", o.dtype.name());
    }
    if o.layout != Layout::Bhsd {
        println!("layout: {} (q, k, v and o stored as [B, S, H, D], passed as strides)", o.layout);
    }
    if o.sk.is_some_and(|sk| sk != o.s) || cfg.causal {
        println!(
            "K/V rows: SK = {}{}",
            o.sk.unwrap_or(o.s),
            if cfg.causal { "; causal (bottom-right)" } else { "" }
        );
    }
    println!(
        "{:>4} {:>4} {:>6} {:>4}  {:>10} {:>10} {:>13}  {:>10} {:>9}",
        "B", "H", "S", "D", "rel_err", "max_abs", "rows checked", "median_us", "TFLOP/s"
    );
    let bound = tolerance(o.dtype);
    let mut failed = false;
    if let Some(lens_q) = &o.varlen {
        let lens_k = o.varlen_k.as_deref().unwrap_or(lens_q);
        if lens_k.len() != lens_q.len() {
            eprintln!("error: --varlen gives {} sequences but --varlen-k {}", lens_q.len(), lens_k.len());
            return ExitCode::from(2);
        }
        println!(
            "varlen: {} sequences of {lens_q:?} query and {lens_k:?} key rows, packed [TOTAL, H, D]",
            lens_q.len()
        );
        let result = match o.dtype {
            DType::F16 => run_varlen::<f16>(&device, &o, (lens_q, lens_k), &mut rng),
            DType::Bf16 => run_varlen::<bf16>(&device, &o, (lens_q, lens_k), &mut rng),
        };
        let (b, s) = (lens_q.len(), lens_q.iter().max().copied().unwrap_or(0));
        failed |= !print_outcome([b, o.h, s, o.d], result, bound);
    }
    for inputs in &problems {
        let result = run_one(&device, &chosen, inputs, &o, &mut rng);
        failed |= !print_outcome(inputs.shape, result, bound);
    }
    if failed {
        eprintln!("FAILED: some results are above the {bound:e} relative-error bound or errored");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
