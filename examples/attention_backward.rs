//! The attention backward on the GPU: FlashCore's forward (`kernels::attention`, which saves
//! the log-sum-exp), then the two backward kernels written in the DSL (`kernels::backward`:
//! dQ and Δ, then dK and dV), checked against float64 on sampled rows and timed with CUDA
//! events. Without a GPU it says so and runs the backward in the PTX simulator at a small shape
//! against float64 (exit 0 when correct).
//!
//! `cargo run --release --example attention_backward -- [--b 2 --h 16 --hkv 16 --s 8192 --sk S
//!  --d 128 --causal --dtype f16|bf16 --seed N --iters 30 --warmup 5]
//!  [--tile-m 64 --tile-n 16 --warps 4 --stages 2 --a-in-smem] [--dq-config S] [--dkdv-config S]
//!  [--dq dq.npy --dk dk.npy --dv dv.npy]
//!  [--repeat 20] [--plan DIR] [--train 6] [--softcap 30 | --window 1024,0] [--varlen 700,1,300]`
//!
//! `--varlen L1,L2,..` runs the backward of a variable-length batch instead (FlashAttention's
//! packed layout, self-attention: sequence `i` has `Li` query and key rows; `--h`, `--hkv`,
//! `--d`, `--causal`, `--dtype` apply): `kernels::backward::launch_varlen_backward_async` with
//! the offsets, dQ, dK, dV and Δ checked against each sequence's float64 gradients, and timed
//! (without a GPU: the same check in the simulator).
//! `--softcap CAP` runs softcap's forward and backward (`softcap_attention`,
//! `softcap_attention_backward_*`, causal or not), checked against the float64 gradients of `cap · tanh(x / cap)`;
//! `--window LEFT,RIGHT` sliding window's (`sliding_window_attention`,
//! `sliding_window_attention_backward_*`), the window as the mask (`LEFT,0`: causal window).
//!
//! `--train N` is the training check instead: an attention layer whose Q, K and V are the
//! parameters, loss `½‖O − target‖²`, takes N gradient-descent steps with the forward and
//! `kernels::backward::launch_backward_async` on the GPU; the loss must fall at every step.
//!
//! The backward kernels run `kernels::backward::backward_configs_for(D, target)` (the schedules
//! `launch_backward_async` takes on the device's target; the variants' pairs
//! `backward_configs(D)`), with the tile flags
//! applied to both, then `--dq-config` / `--dkdv-config` settings (`tile_n=64 stages=2
//! sm_90a`, as `Config` prints them) to one each, for tuning one kernel at a time. The
//! example's dK/dV kernels write per query head (`[B, H, SK, D]`, checked per head); with `--hkv` below `--h` a K/V head's gradient is the sum over its group, which
//! `attention_backward_dkdv_grouped` (what `launch_backward_async` runs then) computes in the
//! kernel (`tests/backward.rs`, `grouped_dkdv_runs_on_the_gpu`). `--plan DIR` writes the launch plans
//! of the three kernels at this shape (`forward.json`, `dq.json`, `dkdv.json`) for
//! `scripts/bench_backward.py`, which times them next to SDPA's backward in one process.

use std::path::PathBuf;
use std::process::ExitCode;

use flashcore::kernels::{attention, backward};
use flashcore::reference::{self, Problem, Rng};
use flashcore::runtime::{Device, DeviceTensor};
use flashcore::simulate::{check_backward_pair, AttentionShape, BackwardPair};
use flashcore::{bf16, f16, round_to, tolerance, Arg, CompiledKernel, Config, DType, HalfFloat, Target};
use std::sync::Arc;

/// A `#[flash_kernel]`'s `compile`.
type CompileFn = fn(&Config) -> Result<Arc<CompiledKernel>, flashcore::Error>;

struct Options {
    b: usize,
    h: usize,
    hkv: Option<usize>,
    s: usize,
    sk: Option<usize>,
    d: usize,
    causal: bool,
    dtype: DType,
    seed: u64,
    iters: usize,
    warmup: usize,
    tile_m: Option<u32>,
    tile_n: Option<u32>,
    warps: Option<u32>,
    stages: Option<u32>,
    a_in_smem: bool,
    /// Settings for the dQ kernel alone, then for the dK/dV kernel alone (`--dq-config`,
    /// `--dkdv-config`: `Config::with_settings`), applied after the tile flags.
    kernel_settings: [Option<String>; 2],
    outputs: [Option<PathBuf>; 3],
    plan: Option<PathBuf>,
    /// Runs of the backward whose outputs are hashed and compared bitwise (`--repeat`).
    repeat: usize,
    /// Gradient-descent steps of the training check (`--train`), instead of the check and timing.
    train: usize,
    /// Softcap's forward and backward (`--softcap CAP`) instead of plain attention's.
    softcap: Option<f32>,
    /// Sliding window's forward and backward (`--window LEFT,RIGHT`) instead of plain attention's.
    window: Option<(f32, f32)>,
    /// A variable-length batch's sequence lengths (`--varlen`), for its backward instead.
    varlen: Option<Vec<usize>>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        b: 1,
        h: 8,
        hkv: None,
        s: 1024,
        sk: None,
        d: 64,
        causal: false,
        dtype: DType::F16,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        iters: 30,
        warmup: 5,
        tile_m: None,
        tile_n: None,
        warps: None,
        stages: None,
        a_in_smem: false,
        kernel_settings: [None, None],
        outputs: [None, None, None],
        plan: None,
        repeat: 0,
        train: 0,
        softcap: None,
        window: None,
        varlen: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: `{v}` is not a number"));
        match flag.as_str() {
            "--b" => o.b = number(value()?)?,
            "--h" => o.h = number(value()?)?,
            "--hkv" => o.hkv = Some(number(value()?)?),
            "--s" => o.s = number(value()?)?,
            "--sk" => o.sk = Some(number(value()?)?),
            "--d" => o.d = number(value()?)?,
            "--seed" => o.seed = number(value()?)? as u64,
            "--iters" => o.iters = number(value()?)?,
            "--warmup" => o.warmup = number(value()?)?,
            "--tile-m" => o.tile_m = Some(number(value()?)? as u32),
            "--tile-n" => o.tile_n = Some(number(value()?)? as u32),
            "--warps" => o.warps = Some(number(value()?)? as u32),
            "--stages" => o.stages = Some(number(value()?)? as u32),
            "--a-in-smem" => o.a_in_smem = true,
            "--dq-config" => o.kernel_settings[0] = Some(value()?),
            "--dkdv-config" => o.kernel_settings[1] = Some(value()?),
            "--causal" => o.causal = true,
            "--dtype" => {
                let v = value()?;
                o.dtype = DType::from_name(&v).ok_or(format!("--dtype: `{v}` is not f16 or bf16"))?;
            }
            "--dq" => o.outputs[0] = Some(value()?.into()),
            "--dk" => o.outputs[1] = Some(value()?.into()),
            "--dv" => o.outputs[2] = Some(value()?.into()),
            "--plan" => o.plan = Some(value()?.into()),
            "--repeat" => o.repeat = number(value()?)?,
            "--train" => o.train = number(value()?)?,
            "--window" => {
                let v = value()?;
                let bad = || format!("--window: `{v}` is not LEFT,RIGHT (key counts)");
                let (l, r) = v.split_once(',').ok_or_else(bad)?;
                o.window = Some((l.parse().map_err(|_| bad())?, r.parse().map_err(|_| bad())?));
            }
            "--softcap" => {
                let v = value()?;
                o.softcap = Some(v.parse().map_err(|_| format!("--softcap: `{v}` is not a number"))?);
            }
            "--varlen" => {
                let v = value()?;
                let lens: Result<Vec<usize>, _> = v.split(',').map(|x| x.trim().parse::<usize>()).collect();
                o.varlen = Some(lens.map_err(|_| format!("--varlen: `{v}` is not a list of lengths"))?);
            }
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("attention_backward.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").trim_start())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag `{other}` (see --help)")),
        }
    }
    if o.softcap.is_some() && o.train > 0 {
        return Err("--softcap runs softcap's backward, not --train (which trains plain attention)".into());
    }
    if o.window.is_some() && (o.causal || o.train > 0 || o.softcap.is_some()) {
        return Err("--window is its own mask: for a causal window give --window LEFT,0 instead of --causal (and not --train or --softcap)".into());
    }
    if o.varlen.is_some() && (o.train > 0 || o.softcap.is_some() || o.window.is_some()) {
        return Err(
            "--varlen runs plain attention's backward (not with --train, --softcap or --window)".into()
        );
    }
    let hkv = o.hkv.unwrap_or(o.h);
    if hkv == 0 || o.h % hkv != 0 {
        return Err(format!("--hkv {hkv} must divide --h {}", o.h));
    }
    Ok(o)
}

/// The kernels of one run: the forward, the dQ and the dK/dV kernel, and the f32 parameters
/// the three take after `scale`.
struct Kernels {
    forward: std::sync::Arc<flashcore::CompiledKernel>,
    dq: std::sync::Arc<flashcore::CompiledKernel>,
    dkdv: std::sync::Arc<flashcore::CompiledKernel>,
    extra: Vec<f32>,
}

impl Options {
    /// Compiles the run's kernels: plain attention's, softcap's or sliding window's forward, and
    /// the backward pair of [`Options::pair`]. On a device of `compute_capability`, each backward
    /// kernel's target is picked as `launch_backward_async` picks it (`target::choose`'s rules:
    /// `FLASHCORE_TARGET`'s, else sm_90a on 9.0 where the kernel compiles for it, else sm_89).
    /// The configs come back with their targets.
    fn kernels(&self, compute_capability: Option<(i32, i32)>) -> Result<(Kernels, [Config; 3]), String> {
        use flashcore::kernels::variants::{sliding_window_attention, softcap_attention};
        let e = |x: flashcore::Error| x.to_string();
        let requested = flashcore::target::requested().map_err(e)?;
        let target = requested.or(compute_capability.map(|(a, b)| Target::for_compute_capability(a, b)));
        let (fwd, (dq, dkdv)) = (self.forward_config(), self.backward_configs(target)?);
        let forward = match (self.window, self.softcap) {
            (Some(_), _) => sliding_window_attention::compile(&fwd).map_err(e)?,
            (None, Some(_)) => softcap_attention::compile(&fwd).map_err(e)?,
            (None, None) => attention::compile(&fwd).map_err(e)?,
        };
        let pair = self.pair();
        let on_device =
            |compile: CompileFn, config: Config| -> Result<(Arc<CompiledKernel>, Config), String> {
                let compiles = |c: &Config| compile(c).map(|_| ()).map_err(|x| x.to_string());
                let config = flashcore::target::choose_by(config, compute_capability, requested, compiles).0;
                Ok((compile(&config).map_err(e)?, config))
            };
        let (dq_kernel, dq) = on_device(pair.dq, dq)?;
        let (dkdv_kernel, dkdv) = on_device(pair.dkdv, dkdv)?;
        let kernels = Kernels { forward, dq: dq_kernel, dkdv: dkdv_kernel, extra: pair.scalars };
        Ok((kernels, [fwd, dq, dkdv]))
    }

    /// The run's backward kernels and the f32 parameters they (and the forward) take after `scale`.
    fn pair(&self) -> BackwardPair {
        if let Some((left, right)) = self.window {
            return BackwardPair {
                dq: backward::sliding_window_attention_backward_dq::compile,
                dkdv: backward::sliding_window_attention_backward_dkdv::compile,
                scalars: vec![left, right],
            };
        }
        match self.softcap {
            Some(cap) => BackwardPair {
                dq: backward::softcap_attention_backward_dq::compile,
                dkdv: if self.causal {
                    backward::softcap_attention_backward_dkdv_causal::compile
                } else {
                    backward::softcap_attention_backward_dkdv::compile
                },
                scalars: vec![cap],
            },
            None => BackwardPair {
                dq: backward::attention_backward_dq::compile,
                dkdv: if self.causal {
                    backward::attention_backward_dkdv_causal::compile
                } else {
                    backward::attention_backward_dkdv::compile
                },
                scalars: vec![],
            },
        }
    }

    /// Whether query row `i` sees key `j` under `--window` (of `s` queries and `sk` keys).
    fn in_window(&self, s: usize, sk: usize) -> impl Fn(usize, usize) -> bool + Sync + Send + 'static {
        let window = self.window.map(|(l, r)| (l as i64, r as i64));
        move |i, j| match window {
            Some((left, right)) => {
                let diag = i as i64 + sk as i64 - s as i64;
                (diag - left..=diag + right).contains(&(j as i64))
            }
            None => true,
        }
    }

    /// The score modification and its derivative (−inf outside the window), for the float64
    /// reference of a problem of `s` queries and `sk` keys.
    fn score(&self, s: usize, sk: usize) -> Box<reference::ScoreWithGrad> {
        if self.window.is_some() {
            let inside = self.in_window(s, sk);
            return Box::new(move |i, j, x| (if inside(i, j) { x } else { f64::NEG_INFINITY }, 1.0));
        }
        match self.softcap {
            Some(cap) => {
                let cap = cap as f64;
                Box::new(move |_, _, x: f64| {
                    let t = (x / cap).tanh();
                    (cap * t, 1.0 - t * t)
                })
            }
            None => Box::new(|_, _, x| (x, 1.0)),
        }
    }

    /// The dQ and dK/dV kernels' configs: `backward_configs_for(D, target)` as
    /// `launch_backward_async` takes them for the plain kernels (`backward_configs(D)` for the
    /// variants' pairs), with the tile flags applied, then each kernel's own settings
    /// (`--dq-config`, `--dkdv-config`). `target`: the one the launches will take, if known.
    fn backward_configs(&self, target: Option<Target>) -> Result<(Config, Config), String> {
        let d = self.d as u32;
        let tuned = match (target, self.window, self.softcap) {
            (Some(target), None, None) => backward::backward_configs_for(d, target),
            _ => backward::backward_configs(d),
        };
        let dkdv = match (self.causal, self.softcap) {
            // Softcap's causal dK/dV kernel keeps K and V in shared memory (its declaration).
            (true, Some(_)) => Config { a_in_smem: true, ..tuned.dkdv_causal },
            (true, None) => tuned.dkdv_causal,
            (false, _) => tuned.dkdv,
        };
        let dq = Config { causal: self.causal, ..self.with_flags(tuned.dq) };
        let own = |config: Config, flag: &str, settings: &Option<String>| match settings {
            None => Ok(config),
            Some(text) => config.with_settings(text).map_err(|e| format!("{flag}: {e}")),
        };
        Ok((
            own(dq, "--dq-config", &self.kernel_settings[0])?,
            own(self.with_flags(dkdv), "--dkdv-config", &self.kernel_settings[1])?,
        ))
    }

    fn with_flags(&self, base: Config) -> Config {
        Config {
            dtype: self.dtype,
            tile_m: self.tile_m.unwrap_or(base.tile_m),
            tile_n: self.tile_n.unwrap_or(base.tile_n),
            warps: self.warps.unwrap_or(base.warps),
            stages: self.stages.unwrap_or(base.stages),
            a_in_smem: self.a_in_smem || base.a_in_smem,
            ..base
        }
    }

    /// The forward's config: the standard kernel's declared one at this head dim.
    fn forward_config(&self) -> Config {
        Config { dtype: self.dtype, causal: self.causal, ..attention::CONFIG.with_head_dim(self.d as u32) }
    }

    fn shape(&self) -> AttentionShape {
        AttentionShape {
            b: self.b,
            h: self.h,
            hk: self.hkv.unwrap_or(self.h),
            s: self.s,
            sk: self.sk.unwrap_or(self.s),
        }
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match Device::new(0) {
        Err(e) if o.varlen.is_some() => {
            println!("no GPU: {e}");
            varlen(None, &o)
        }
        Err(e) => without_gpu(&e.to_string(), &o),
        Ok(device) if o.varlen.is_some() => varlen(Some(&device), &o),
        Ok(device) if o.train > 0 => match o.dtype {
            DType::F16 => train::<f16>(&device, &o),
            DType::Bf16 => train::<bf16>(&device, &o),
        },
        Ok(device) => match o.dtype {
            DType::F16 => on_gpu::<f16>(&device, &o),
            DType::Bf16 => on_gpu::<bf16>(&device, &o),
        },
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No GPU: the backward kernels compile, and run in the simulator at a small shape with tails.
fn without_gpu(reason: &str, o: &Options) -> Result<bool, String> {
    println!("no GPU: {reason}");
    // The simulator check runs both kernels under one config: the dK/dV kernel's.
    let config = o.backward_configs(None)?.1;
    let shape = AttentionShape { b: 1, h: 2, hk: 1, s: 77, sk: 100 };
    println!(
        "The backward kernels compiled ({config}); running them in the PTX simulator at {shape:?}, D = {}.",
        o.d
    );
    let pair = o.pair();
    let score = o.score(shape.s, shape.sk);
    let check = match o.dtype {
        DType::F16 => check_backward_pair::<f16>(&pair, config, shape, o.causal, o.seed, &*score),
        DType::Bf16 => check_backward_pair::<bf16>(&pair, config, shape, o.causal, o.seed, &*score),
    }
    .map_err(|e| e.to_string())?;
    let ok = check.passes(o.dtype);
    println!(
        "simulator vs float64: dq {:.2e}, dk {:.2e}, dv {:.2e}, delta {:.2e} (rel l2; bound {:.1e}): {}",
        check.dq.rel_l2,
        check.dk.rel_l2,
        check.dv.rel_l2,
        check.delta.rel_l2,
        tolerance(o.dtype),
        if ok { "OK" } else { "FAIL" }
    );
    Ok(ok)
}

/// One set of backward inputs and outputs on the device.
struct Set<T: HalfFloat> {
    q: DeviceTensor<T>,
    k: DeviceTensor<T>,
    v: DeviceTensor<T>,
    g: DeviceTensor<T>,
    o: DeviceTensor<T>,
    lse: DeviceTensor<f32>,
}

impl<T: HalfFloat> Set<T> {
    /// The forward's arguments (`extra` after `scale`): it writes this set's O and log-sum-exp.
    fn forward_args(&mut self, scale: f32, extra: &[f32]) -> Vec<Arg<'_>> {
        let mut args = vec![
            Arg::Tensor(&self.q),
            Arg::Tensor(&self.k),
            Arg::Tensor(&self.v),
            Arg::TensorMut(&mut self.o),
            Arg::TensorMut(&mut self.lse),
            Arg::F32(scale),
        ];
        args.extend(extra.iter().map(|x| Arg::F32(*x)));
        args.extend([Arg::Absent, Arg::Absent]);
        args
    }
}

fn on_gpu<T: HalfFloat>(device: &Device, o: &Options) -> Result<bool, String> {
    let AttentionShape { b, h, hk, s, sk } = o.shape();
    let d = o.d;
    let (e, r) = (|x: flashcore::Error| x.to_string(), |x: flashcore::runtime::RuntimeError| x.to_string());
    let (Kernels { forward, dq: dq_kernel, dkdv: dkdv_kernel, extra }, [fwd_cfg, dq_cfg, dkdv_cfg]) =
        o.kernels(Some(device.info().compute_capability))?;
    let extra = &extra[..];
    println!(
        "{} [{b}, {h}, {s}, {d}], K/V [{b}, {hk}, {sk}, {d}], {}causal, {}",
        device.info().name,
        if o.causal { "" } else { "not " },
        T::DTYPE.name()
    );
    println!("forward {fwd_cfg}; dq {dq_cfg}; dkdv {dkdv_cfg}");
    let scale = 1.0 / (d as f32).sqrt();
    let mut rng = Rng::new(o.seed);
    let (q_shape, kv_shape, grad_shape, rows_shape) =
        ([b, h, s, d], [b, hk, sk, d], [b, h, sk, d], [b, h, s]);
    let mut gen = |n: usize| (0..n).map(|_| round_to(T::DTYPE, rng.normal())).collect::<Vec<f64>>();
    // Random inputs per set: several sets are rotated while timing (more than the L2 holds).
    let set_bytes = 2 * (3 * b * h * s * d + 2 * b * hk * sk * d);
    let sets = flashcore::timing::rotating_sets(set_bytes);
    let upload = |x: &[f64], shape: &[usize]| {
        device.upload(&x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>(), shape).map_err(r)
    };
    let mut host = None;
    let mut device_sets: Vec<Set<T>> = vec![];
    for i in 0..sets {
        let (q, k, v, g) =
            (gen(b * h * s * d), gen(b * hk * sk * d), gen(b * hk * sk * d), gen(b * h * s * d));
        let mut set = Set {
            q: upload(&q, &q_shape)?,
            k: upload(&k, &kv_shape)?,
            v: upload(&v, &kv_shape)?,
            g: upload(&g, &q_shape)?,
            o: upload(&vec![f64::NAN; b * h * s * d], &q_shape)?,
            lse: device.filled(&rows_shape, f32::NAN).map_err(r)?,
        };
        // The forward gives O and the log-sum-exp the backward reads.
        flashcore::launch(device, &forward, &mut set.forward_args(scale, extra)).map_err(e)?;
        if i == 0 {
            host = Some((q, k, v, g));
        }
        device_sets.push(set);
    }
    // Outputs, poisoned so that an element never written fails the check.
    let mut dq = upload(&vec![f64::NAN; b * h * s * d], &q_shape)?;
    let mut delta = device.filled(&rows_shape, f32::NAN).map_err(r)?;
    let mut dk = upload(&vec![f64::NAN; b * h * sk * d], &grad_shape)?;
    let mut dv = upload(&vec![f64::NAN; b * h * sk * d], &grad_shape)?;
    macro_rules! dq_args {
        ($set:expr) => {{
            let args = [
                Arg::Tensor(&$set.q),
                Arg::Tensor(&$set.k),
                Arg::Tensor(&$set.v),
                Arg::Tensor(&$set.o),
                Arg::Tensor(&$set.g),
                Arg::Tensor(&$set.lse),
                Arg::TensorMut(&mut dq),
                Arg::TensorMut(&mut delta),
                Arg::F32(scale),
            ]
            .into_iter()
            .chain(extra.iter().map(|x| Arg::F32(*x)))
            .collect::<Vec<_>>();
            absent_tail(&dq_kernel, args)
        }};
    }
    macro_rules! dkdv_args {
        ($set:expr, $delta:expr) => {{
            let args = [
                Arg::Tensor(&$set.q),
                Arg::Tensor(&$set.k),
                Arg::Tensor(&$set.v),
                Arg::Tensor(&$set.g),
                Arg::Tensor(&$set.lse),
                Arg::Tensor($delta),
                Arg::TensorMut(&mut dk),
                Arg::TensorMut(&mut dv),
                Arg::F32(scale),
            ]
            .into_iter()
            .chain(extra.iter().map(|x| Arg::F32(*x)))
            .collect::<Vec<_>>();
            absent_tail(&dkdv_kernel, args)
        }};
    }
    if let Some(dir) = &o.plan {
        return write_plans(dir, o, [&forward, &dq_kernel, &dkdv_kernel]).map(|_| true);
    }
    let first = &device_sets[0];
    flashcore::launch(device, &dq_kernel, &mut dq_args!(first)).map_err(e)?;
    flashcore::launch(device, &dkdv_kernel, &mut dkdv_args!(first, &delta)).map_err(e)?;
    let f = |x: Vec<T>| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    let (got_dq, got_dk, got_dv) = (
        f(device.download(&dq).map_err(r)?),
        f(device.download(&dk).map_err(r)?),
        f(device.download(&dv).map_err(r)?),
    );
    let got_delta = device.download(&delta).map_err(r)?;
    write_outputs(o, [&got_dq, &got_dk, &got_dv], [q_shape, grad_shape, grad_shape])?;

    // Against float64 on sampled rows: every head's first and last query row and random ones,
    // and 64 random keys of one random head (whose gradients sum over all its queries).
    let (q, k, v, g) = host.expect("the first set was kept");
    let problem = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale: scale as f64, causal: o.causal };
    let budget = ((4e9 / (sk as f64 * d as f64 * 3.0)) as usize).clamp(2 * b * h, b * h * s);
    let mut query_rows: Vec<usize> = (0..b * h).flat_map(|bh| [bh * s, bh * s + s - 1]).collect();
    while query_rows.len() < budget {
        query_rows.push((rng.next_u64() % (b * h * s) as u64) as usize);
    }
    query_rows.sort_unstable();
    query_rows.dedup();
    let head = (rng.next_u64() % (b * h) as u64) as usize;
    let mut key_rows: Vec<usize> =
        (0..64.min(sk)).map(|_| head * sk + (rng.next_u64() % sk as u64) as usize).collect();
    key_rows.extend([head * sk, head * sk + sk - 1]);
    key_rows.sort_unstable();
    key_rows.dedup();
    let started = std::time::Instant::now();
    let want =
        reference::attention_backward_rows_with(&problem, &g, &query_rows, &key_rows, &*o.score(s, sk));
    let pick = |x: &[f64], rows: &[usize]| {
        rows.iter().flat_map(|r| x[r * d..(r + 1) * d].iter().copied()).collect::<Vec<f64>>()
    };
    let errs = [
        ("dq", reference::compare(&pick(&got_dq, &query_rows), &want.dq)),
        ("dk", reference::compare(&pick(&got_dk, &key_rows), &want.dk)),
        ("dv", reference::compare(&pick(&got_dv, &key_rows), &want.dv)),
        (
            "delta",
            reference::compare(
                &query_rows.iter().map(|r| got_delta[*r] as f64).collect::<Vec<_>>(),
                &want.delta,
            ),
        ),
    ];
    let bound = tolerance(T::DTYPE);
    let mut ok = true;
    for (name, err) in &errs {
        let pass = err.non_finite == 0 && err.rel_l2 < bound;
        ok &= pass;
        println!(
            "{name:<5} vs float64: rel l2 {:.2e}, max abs {:.2e}, {} non-finite ({} rows checked){}",
            err.rel_l2,
            err.max_abs,
            err.non_finite,
            if *name == "dk" || *name == "dv" { key_rows.len() } else { query_rows.len() },
            if pass { "" } else { "  FAIL" }
        );
    }
    println!("(float64 reference: {:.1} s)", started.elapsed().as_secs_f64());

    // Determinism: the same inputs `--repeat` times, every gradient's bytes hashed. No kernel
    // reduces across CTAs (no atomics), so every run must give the same bits.
    if o.repeat > 0 {
        let mut hashes = std::collections::BTreeSet::new();
        for _ in 0..o.repeat {
            flashcore::launch(device, &dq_kernel, &mut dq_args!(first)).map_err(e)?;
            flashcore::launch(device, &dkdv_kernel, &mut dkdv_args!(first, &delta)).map_err(e)?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for grad in [&dq, &dk, &dv] {
                for x in device.download(grad).map_err(r)? {
                    std::hash::Hash::hash(&x.to_le_bytes(), &mut hasher);
                }
            }
            hashes.insert(std::hash::Hasher::finish(&hasher));
        }
        let same = hashes.len() == 1;
        ok &= same;
        println!(
            "determinism: {} runs, {} distinct hash{} of dq, dk, dv: {:016x}{}",
            o.repeat,
            hashes.len(),
            if same { "" } else { "es" },
            hashes.first().copied().unwrap_or(0),
            if same { "" } else { "  FAIL" }
        );
    }

    // Timing: each kernel's median over rotating sets, after an L2 flush each launch.
    let time = |what: &str, us: Result<f64, flashcore::Error>| us.map_err(|x| format!("{what}: {x}"));
    let fwd_us = time(
        "forward",
        flashcore::timing::median_launch_us(device, o.warmup, o.iters, |i| {
            flashcore::launch_async(device, &forward, &mut device_sets[i % sets].forward_args(scale, extra))
        }),
    )?;
    // The forward above rewrote every set's O and log-sum-exp with the same values.
    let dq_us = time(
        "dq",
        flashcore::timing::median_launch_us(device, o.warmup, o.iters, |i| {
            flashcore::launch_async(device, &dq_kernel, &mut dq_args!(device_sets[i % sets]))
        }),
    )?;
    let dkdv_us = time(
        "dkdv",
        flashcore::timing::median_launch_us(device, o.warmup, o.iters, |i| {
            flashcore::launch_async(device, &dkdv_kernel, &mut dkdv_args!(device_sets[i % sets], &delta))
        }),
    )?;
    // FlashAttention's count: the forward is 4·D flops per attended (query, key) pair, the
    // backward 2.5 times that.
    let inside = o.in_window(s, sk);
    let seen = |i: usize| (0..reference::keys_seen(i, s, sk, o.causal)).filter(|j| inside(i, *j)).count();
    let pairs = (b * h) as f64 * (0..s).map(seen).sum::<usize>() as f64;
    let fwd_flops = 4.0 * pairs * d as f64;
    let tflops = |flops: f64, us: f64| flops / (us * 1e-6) / 1e12;
    println!("forward   {fwd_us:>9.1} µs  {:>6.1} TFLOP/s", tflops(fwd_flops, fwd_us));
    println!("dq        {dq_us:>9.1} µs");
    println!("dkdv      {dkdv_us:>9.1} µs");
    println!(
        "backward  {:>9.1} µs  {:>6.1} TFLOP/s (dq + dkdv; median of {} each)",
        dq_us + dkdv_us,
        tflops(2.5 * fwd_flops, dq_us + dkdv_us),
        o.iters
    );
    Ok(ok)
}

fn write_outputs(o: &Options, grads: [&[f64]; 3], shapes: [[usize; 4]; 3]) -> Result<(), String> {
    for ((path, data), shape) in o.outputs.iter().zip(grads).zip(shapes) {
        let Some(path) = path else { continue };
        // numpy has no bf16: bf16 gradients are written as (exact) f32.
        let written = match o.dtype {
            DType::F16 => flashcore::npy::write_f16(
                path,
                &data.iter().map(|x| f16::from_f64(*x)).collect::<Vec<_>>(),
                &shape,
            ),
            DType::Bf16 => {
                flashcore::npy::write_f32(path, &data.iter().map(|x| *x as f32).collect::<Vec<_>>(), &shape)
            }
        };
        written.map_err(|x| x.to_string())?;
    }
    Ok(())
}

/// `args` followed by `Arg::Absent` for each parameter of `kernel` past them: the sequence
/// offsets the plain (not varlen) backward kernels take last. Without them the launch is refused
/// ("expected 11 arguments, got 9"), as it was on the H200 on 2026-12-03.
fn absent_tail<'a>(kernel: &CompiledKernel, mut args: Vec<Arg<'a>>) -> Vec<Arg<'a>> {
    let params = &kernel.kernel.params[args.len().min(kernel.kernel.params.len())..];
    if params.iter().all(|p| p.is_optional()) {
        args.extend(params.iter().map(|_| Arg::Absent));
    }
    args
}

/// Writes the launch plans of the forward, dQ and dK/dV kernels at this shape into `dir`.
fn write_plans(
    dir: &std::path::Path,
    o: &Options,
    kernels: [&flashcore::CompiledKernel; 3],
) -> Result<(), String> {
    use flashcore::plan::{launch_plan, PlanArg};
    use flashcore::TensorView;
    let AttentionShape { b, h, hk, s, sk } = o.shape();
    let d = o.d;
    let half = o.dtype.name();
    let contiguous = |shape: &[usize]| -> Vec<usize> {
        (0..shape.len()).map(|i| shape[i + 1..].iter().product()).collect()
    };
    let shapes: [Vec<usize>; 4] = [vec![b, h, s, d], vec![b, hk, sk, d], vec![b, h, sk, d], vec![b, h, s]];
    let strides: Vec<Vec<usize>> = shapes.iter().map(|x| contiguous(x)).collect();
    let view = |i: usize, dtype: &'static str| TensorView {
        dtype,
        shape: &shapes[i],
        strides: &strides[i],
        buffer_len: shapes[i].iter().product(),
    };
    let scale = 1.0 / (d as f32).sqrt();
    let (q, kv, grad, rows) = (view(0, half), view(1, half), view(2, half), view(3, "f32"));
    let plans: [(&str, Vec<PlanArg>); 3] = [
        (
            "forward",
            vec![
                PlanArg::Tensor(q),
                PlanArg::Tensor(kv),
                PlanArg::Tensor(kv),
                PlanArg::TensorMut(q),
                PlanArg::TensorMut(rows),
                PlanArg::F32(scale),
                PlanArg::Absent,
                PlanArg::Absent,
            ],
        ),
        (
            "dq",
            vec![
                PlanArg::Tensor(q),
                PlanArg::Tensor(kv),
                PlanArg::Tensor(kv),
                PlanArg::Tensor(q),
                PlanArg::Tensor(q),
                PlanArg::Tensor(rows),
                PlanArg::TensorMut(q),
                PlanArg::TensorMut(rows),
                PlanArg::F32(scale),
            ],
        ),
        (
            "dkdv",
            vec![
                PlanArg::Tensor(q),
                PlanArg::Tensor(kv),
                PlanArg::Tensor(kv),
                PlanArg::Tensor(q),
                PlanArg::Tensor(rows),
                PlanArg::Tensor(rows),
                PlanArg::TensorMut(grad),
                PlanArg::TensorMut(grad),
                PlanArg::F32(scale),
            ],
        ),
    ];
    std::fs::create_dir_all(dir).map_err(|x| format!("{}: {x}", dir.display()))?;
    for ((name, mut args), kernel) in plans.into_iter().zip(kernels) {
        // The variant's parameters follow `scale` (the forward's optional offsets stay last).
        let at = args.iter().position(|a| matches!(a, PlanArg::F32(_))).expect("every plan has a scale") + 1;
        let extra = o.window.map_or(o.softcap.into_iter().collect(), |(l, r)| vec![l, r]);
        args.splice(at..at, extra.into_iter().map(PlanArg::F32));
        // The trailing optional parameters (the sequence offsets) are left out.
        let params = &kernel.kernel.params;
        args.extend(params.iter().skip(args.len()).take_while(|p| p.is_optional()).map(|_| PlanArg::Absent));
        let plan = launch_plan(kernel, &args).map_err(|x| x.to_string())?;
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, plan.to_json()).map_err(|x| format!("{}: {x}", path.display()))?;
    }
    println!("plans written to {}", dir.display());
    Ok(())
}

/// `--train N`: gradient descent on an attention layer's Q, K, V (the parameters, kept in f64 on
/// the host) with loss `½‖O − target‖²`: each step runs the forward, `dO = O − target`, and
/// `launch_backward_async`, then moves each parameter against its gradient. Succeeds when the
/// loss falls at every step.
fn train<T: HalfFloat>(device: &Device, o: &Options) -> Result<bool, String> {
    use backward::{launch_backward_async, BackwardInputs, BackwardOutputs};
    let AttentionShape { b, h, hk, s, sk } = o.shape();
    if hk != h || sk != s {
        return Err("--train runs self-attention: leave out --hkv and --sk".into());
    }
    let (d, n) = (o.d, b * h * s * o.d);
    let (e, r) = (|x: flashcore::Error| x.to_string(), |x: flashcore::runtime::RuntimeError| x.to_string());
    let forward = attention::compile(&o.forward_config()).map_err(e)?;
    let mut rng = Rng::new(o.seed);
    let mut gen = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
    let (mut q, mut k, mut v, target) = (gen(n), gen(n), gen(n), gen(n));
    let (shape, rows) = ([b, h, s, d], [b, h, s]);
    let upload =
        |x: &[f64]| device.upload(&x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>(), &shape).map_err(r);
    let scale = 1.0 / (d as f32).sqrt();
    // A step small enough that the loss falls: 0.5 overshot at D = 128 causal on its 8th step.
    let rate = 0.2;
    let mut losses = vec![];
    for _ in 0..o.train {
        let poison = || upload(&vec![f64::NAN; n]);
        let mut set = Set {
            q: upload(&q)?,
            k: upload(&k)?,
            v: upload(&v)?,
            g: poison()?,
            o: poison()?,
            lse: device.filled(&rows, f32::NAN).map_err(r)?,
        };
        flashcore::launch(device, &forward, &mut set.forward_args(scale, &[])).map_err(e)?;
        let got: Vec<f64> = device.download(&set.o).map_err(r)?.iter().map(|x| x.to_f64()).collect();
        let grad_out: Vec<f64> = got.iter().zip(&target).map(|(o, t)| o - t).collect();
        losses.push(0.5 * grad_out.iter().map(|g| g * g).sum::<f64>());
        set.g = upload(&grad_out)?;
        let (mut dq, mut dk, mut dv) = (poison()?, poison()?, poison()?);
        let mut delta = device.filled(&rows, f32::NAN).map_err(r)?;
        let inputs =
            BackwardInputs { q: &set.q, k: &set.k, v: &set.v, o: &set.o, lse: &set.lse, d_out: &set.g };
        let outputs = BackwardOutputs { dq: &mut dq, dk: &mut dk, dv: &mut dv, delta: &mut delta };
        launch_backward_async(device, inputs, outputs, scale, o.causal).map_err(e)?;
        device.synchronize_within(device.launch_timeout(), "the backward").map_err(r)?;
        for (param, grad) in [(&mut q, &dq), (&mut k, &dk), (&mut v, &dv)] {
            for (x, g) in param.iter_mut().zip(device.download(grad).map_err(r)?) {
                *x -= rate * g.to_f64();
            }
        }
    }
    let falls = losses.windows(2).all(|w| w[1] < w[0]);
    println!(
        "training: {} steps of gradient descent on Q, K, V ([{b}, {h}, {s}, {d}], {}causal), loss {}{}",
        o.train,
        if o.causal { "" } else { "not " },
        losses.iter().map(|l| format!("{l:.1}")).collect::<Vec<_>>().join(" → "),
        if falls { "" } else { "  FAIL: the loss must fall at every step" }
    );
    Ok(falls)
}

/// `--varlen`: the backward of a variable-length batch (self-attention, the given lengths) on
/// the GPU through `launch_varlen_backward_async`, or without one in the simulator; dQ, dK, dV
/// and Δ against each sequence's float64 gradients.
fn varlen(device: Option<&Device>, o: &Options) -> Result<bool, String> {
    match o.dtype {
        DType::F16 => varlen_typed::<f16>(device, o),
        DType::Bf16 => varlen_typed::<bf16>(device, o),
    }
}

fn varlen_typed<T: HalfFloat>(device: Option<&Device>, o: &Options) -> Result<bool, String> {
    use flashcore::simulate::{check_varlen_backward, SimDevice, VarlenBackwardProblem};
    let (e, r) = (|x: flashcore::Error| x.to_string(), |x: flashcore::runtime::RuntimeError| x.to_string());
    let lens = o.varlen.clone().unwrap_or_default();
    let (h, hkv) = (o.h, o.hkv.unwrap_or(o.h));
    let grouped = hkv != h;
    let configs = backward::backward_configs(o.d as u32);
    let set = |c: Config| Config { varlen: true, dtype: o.dtype, ..c };
    let (check, us) = match device {
        None => {
            let dq =
                backward::attention_backward_dq::compile(&Config { causal: o.causal, ..set(configs.dq) })
                    .map_err(e)?;
            let in_smem = |c: Config| Config { a_in_smem: true, ..c };
            let dkdv = match (o.causal, grouped) {
                (false, false) => backward::attention_backward_dkdv::compile(&set(configs.dkdv)),
                (true, false) => backward::attention_backward_dkdv_causal::compile(&set(configs.dkdv_causal)),
                (false, true) => {
                    backward::attention_backward_dkdv_grouped::compile(&in_smem(set(configs.dkdv_grouped)))
                }
                (true, true) => backward::attention_backward_dkdv_grouped_causal::compile(&in_smem(set(
                    configs.dkdv_grouped_causal,
                ))),
            }
            .map_err(e)?;
            let check = check_varlen_backward::<T>(
                (&dq, &dkdv, grouped),
                &lens,
                &lens,
                (h, hkv),
                o.seed,
                &SimDevice::default(),
            )
            .map_err(e)?;
            (check, None)
        }
        Some(device) => {
            let p =
                VarlenBackwardProblem::<T>::random(&lens, &lens, (h, hkv), (o.d, o.causal, grouped), o.seed)
                    .map_err(e)?;
            let [qs, ks, gs, rs] = p.shapes();
            let up = |x: &[T], shape: &[usize]| device.upload(x, shape).map_err(r);
            let (q, k, v, out, d_out) =
                (up(&p.q, &qs)?, up(&p.k, &ks)?, up(&p.v, &ks)?, up(&p.o, &qs)?, up(&p.d_out, &qs)?);
            let lse = device.upload(&p.lse, &rs).map_err(r)?;
            let n = |shape: &[usize]| shape.iter().product::<usize>();
            let mut dq = up(&vec![T::NAN; n(&qs)], &qs)?;
            let (mut dk, mut dv) = (up(&vec![T::NAN; n(&gs)], &gs)?, up(&vec![T::NAN; n(&gs)], &gs)?);
            let mut delta = device.upload(&vec![f32::NAN; n(&rs)], &rs).map_err(r)?;
            let (cu_q, cu_k) = (p.cu_q.upload(device).map_err(e)?, p.cu_k.upload(device).map_err(e)?);
            let run = |dq: &mut DeviceTensor<T>,
                       dk: &mut DeviceTensor<T>,
                       dv: &mut DeviceTensor<T>,
                       delta: &mut DeviceTensor<f32>| {
                let inputs =
                    backward::BackwardInputs { q: &q, k: &k, v: &v, o: &out, lse: &lse, d_out: &d_out };
                let outputs = backward::BackwardOutputs { dq, dk, dv, delta };
                backward::launch_varlen_backward_async(
                    device,
                    inputs,
                    outputs,
                    (&cu_q, &cu_k),
                    p.scale,
                    o.causal,
                )
            };
            run(&mut dq, &mut dk, &mut dv, &mut delta).map_err(e)?;
            device.synchronize().map_err(r)?;
            let (gq, gk, gv) = (
                device.download(&dq).map_err(r)?,
                device.download(&dk).map_err(r)?,
                device.download(&dv).map_err(r)?,
            );
            let gd = device.download(&delta).map_err(r)?;
            let check = p.compare([&gq, &gk, &gv], &gd);
            let us =
                flashcore::timing::median_launch_us::<flashcore::Error>(device, o.warmup, o.iters, |_| {
                    run(&mut dq, &mut dk, &mut dv, &mut delta)
                })
                .map_err(e)?;
            (check, Some(us))
        }
    };
    let ok = check.passes(o.dtype);
    println!(
        "varlen backward, lengths {lens:?}, H={h} HKV={hkv} D={} {:?}{}: dq {:.2e}, dk {:.2e}, dv {:.2e}, delta {:.2e} vs float64 (rel l2; bound {:.1e}){}: {}",
        o.d,
        o.dtype,
        if o.causal { " causal" } else { "" },
        check.dq.rel_l2,
        check.dk.rel_l2,
        check.dv.rel_l2,
        check.delta.rel_l2,
        tolerance(o.dtype),
        us.map(|us| format!(", {us:.1} µs (dQ + dK/dV)")).unwrap_or_default(),
        if ok { "OK" } else { "FAIL" }
    );
    Ok(ok)
}
