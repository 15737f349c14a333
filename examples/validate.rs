//! GPU validation of every reference configuration (issue 7): one checked launch per call for
//! compute-sanitizer, bitwise determinism over repeated runs with hashes, persistent against
//! one-CTA-per-tile schedules, and the edge-numerics cases written out for a comparison with
//! PyTorch SDPA. `scripts/gpu-validate.sh` runs all of it and builds the tables.
//!
//! ```text
//! validate list                                 reference configs: name, varlen or dense
//! validate run NAME S [--b B --h H --seed N]    one launch at S (varlen: lengths S and S/2+3), checked against float64
//! validate determinism [--runs 20]              every config at two shapes: 20 runs hashed, and its persistent twin
//! validate numerics DIR                         edge cases on the GPU, checked, and written as .npy for scripts/sdpa_numerics.py
//! ```

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::ExitCode;

use flashcore::kernels::{attention, reference_config, reference_configs};
use flashcore::reference::{self, Problem, Rng, VarlenProblem};
use flashcore::runtime::{Device, DeviceTensor};
use flashcore::{bf16, f16, round_to, tolerance, Config, DType, HalfFloat, SeqOffsets};

/// Inputs for one launch: dense `[B, H, S, D]`, or packed `[TOTAL, H, D]` under `lens` (each
/// sequence's rows; keys the same).
struct Inputs {
    b: usize,
    h: usize,
    s: usize,
    d: usize,
    lens: Option<Vec<usize>>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

impl Inputs {
    fn random(cfg: &Config, (b, h, s): (usize, usize, usize), seed: u64) -> Inputs {
        let d = cfg.head_dim as usize;
        let lens = cfg.varlen.then(|| vec![s, s / 2 + 3, 1][..b.clamp(1, 3)].to_vec());
        let rows = lens.as_ref().map_or(b * s, |l| l.iter().sum());
        let mut rng = Rng::new(seed);
        let mut gen = || (0..rows * h * d).map(|_| round_to(cfg.dtype, rng.normal())).collect::<Vec<f64>>();
        let (q, k, v) = (gen(), gen(), gen());
        Inputs { b, h, s, d, lens, q, k, v }
    }

    fn shape(&self) -> Vec<usize> {
        match &self.lens {
            None => vec![self.b, self.h, self.s, self.d],
            Some(l) => vec![l.iter().sum(), self.h, self.d],
        }
    }

    /// The float64 output, row-major in `shape()`'s order.
    fn reference(&self, cfg: &Config) -> Vec<f64> {
        let scale = cfg.default_scale() as f64;
        let (h, d) = (self.h, self.d);
        match &self.lens {
            None => {
                let (b, s) = (self.b, self.s);
                let p = Problem {
                    q: &self.q,
                    k: &self.k,
                    v: &self.v,
                    b,
                    h,
                    hk: h,
                    s,
                    sk: s,
                    d,
                    scale,
                    causal: cfg.causal,
                };
                reference::attention(&p)
            }
            Some(lens) => {
                let offsets = SeqOffsets::from_lengths(lens).expect("valid lengths");
                let p = VarlenProblem {
                    q: &self.q,
                    k: &self.k,
                    v: &self.v,
                    cu_q: offsets.as_slice(),
                    cu_k: offsets.as_slice(),
                    h,
                    hk: h,
                    d,
                    scale,
                    causal: cfg.causal,
                };
                // Rows t · H + head of the packed output.
                let rows: Vec<usize> = (0..offsets.total() * h).collect();
                reference::varlen_rows_lse(&p, &rows).0
            }
        }
    }
}

/// The inputs on the device, and the shape of q and the output.
struct OnDevice<T: HalfFloat> {
    q: DeviceTensor<T>,
    k: DeviceTensor<T>,
    v: DeviceTensor<T>,
    shape: Vec<usize>,
    offsets: Option<flashcore::DeviceSeqOffsets>,
}

fn to_device<T: HalfFloat>(device: &Device, inputs: &Inputs) -> Result<OnDevice<T>, String> {
    let r = |e: flashcore::runtime::RuntimeError| e.to_string();
    let shape = inputs.shape();
    let up =
        |x: &[f64]| device.upload(&x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>(), &shape).map_err(r);
    let offsets = match &inputs.lens {
        None => None,
        Some(l) => {
            let o = SeqOffsets::from_lengths(l).map_err(|e| e.to_string())?;
            Some(o.upload(device).map_err(|e| e.to_string())?)
        }
    };
    Ok(OnDevice { q: up(&inputs.q)?, k: up(&inputs.k)?, v: up(&inputs.v)?, shape, offsets })
}

/// Launches once into a fresh output poisoned with NaN, waits, and returns its raw values.
fn launch_once<T: HalfFloat>(device: &Device, cfg: &Config, t: &OnDevice<T>) -> Result<Vec<T>, String> {
    let r = |e: flashcore::runtime::RuntimeError| e.to_string();
    let mut out = device.filled(&t.shape, T::NAN).map_err(r)?;
    let scale = cfg.default_scale();
    let offsets = t.offsets.as_ref();
    attention::launch(device, cfg, &t.q, &t.k, &t.v, &mut out, None, scale, offsets, offsets)
        .map_err(|e| e.to_string())?;
    device.download(&out).map_err(r)
}

/// Why this device cannot load `cfg`'s PTX (sm_90a needs compute capability 9.0), if it cannot.
fn cannot_run(device: &Device, cfg: &Config) -> Option<String> {
    let (major, minor) = device.info().compute_capability;
    let target = cfg.target.ptx();
    (!target.runs_on(major, minor))
        .then(|| format!("{target} PTX does not load on compute capability {major}.{minor}"))
}

fn config_named(name: &str) -> Result<Config, String> {
    reference_config(name).ok_or_else(|| {
        let names: Vec<_> = reference_configs().iter().map(|(n, _)| *n).collect();
        format!("no reference config `{name}`; they are: {}", names.join(", "))
    })
}

/// `validate run`: one launch, checked against float64; Ok(line) when within tolerance.
fn run<T: HalfFloat>(
    device: &Device,
    name: &str,
    cfg: &Config,
    dims: (usize, usize, usize),
    seed: u64,
) -> Result<String, String> {
    let inputs = Inputs::random(cfg, dims, seed);
    let t = to_device::<T>(device, &inputs)?;
    let got: Vec<f64> = launch_once(device, cfg, &t)?.iter().map(|x| x.to_f64()).collect();
    let err = reference::compare(&got, &inputs.reference(cfg));
    let line = format!(
        "{name} {:?}: rel err {:.3e}, {} non-finite",
        inputs.lens.as_ref().map_or(
            format!("{}x{}x{}x{}", dims.0, dims.1, dims.2, cfg.head_dim),
            |l| format!("varlen {l:?} x{}", dims.1)
        ),
        err.rel_l2,
        err.non_finite
    );
    if err.rel_l2 < tolerance(cfg.dtype) && err.non_finite == 0 {
        Ok(format!("{line} ok"))
    } else {
        Err(format!("{line} FAIL"))
    }
}

fn hash_of<T: HalfFloat>(out: &[T]) -> u64 {
    let mut h = DefaultHasher::new();
    for x in out {
        x.to_le_bytes().hash(&mut h);
    }
    h.finish()
}

/// `validate determinism`: `runs` launches on the same inputs must give the same bits; the
/// persistent twin (the same tiles, `persistent` flipped) must agree within rounding.
fn determinism<T: HalfFloat>(
    device: &Device,
    name: &str,
    cfg: &Config,
    dims: (usize, usize, usize),
    runs: usize,
) -> Result<String, String> {
    let inputs = Inputs::random(cfg, dims, 0xD5 ^ dims.2 as u64);
    let t = to_device::<T>(device, &inputs)?;
    let first = launch_once(device, cfg, &t)?;
    let hash = hash_of(&first);
    let mut differing = 0;
    for _ in 1..runs {
        if hash_of(&launch_once(device, cfg, &t)?) != hash {
            differing += 1;
        }
    }
    let twin = Config { persistent: !cfg.persistent, ..*cfg };
    let other = launch_once(device, &twin, &t)?;
    let twin_bitwise = hash_of(&other) == hash;
    let max_diff = first.iter().zip(&other).map(|(a, b)| (a.to_f64() - b.to_f64()).abs()).fold(0.0, f64::max);
    let err =
        reference::compare(&first.iter().map(|x| x.to_f64()).collect::<Vec<_>>(), &inputs.reference(cfg));
    let shape = inputs
        .lens
        .as_ref()
        .map_or(format!("{}x{}x{}", dims.0, dims.1, dims.2), |l| format!("varlen{l:?}x{}", dims.1));
    // Within rounding: the same tiles in another CTA order may round differently only if a
    // schedule changed the arithmetic; allow the dtype's tolerance of the largest output.
    let largest = first.iter().map(|x| x.to_f64().abs()).fold(0.0, f64::max);
    let ok =
        differing == 0 && max_diff <= tolerance(cfg.dtype) * largest && err.rel_l2 < tolerance(cfg.dtype);
    let line = format!(
        "| {name} | {shape} | {runs} | {hash:016x} | {} | {} | {max_diff:.1e} | {:.2e} | {} |",
        runs - differing,
        if twin_bitwise { "bitwise" } else { "differs" },
        err.rel_l2,
        if ok { "ok" } else { "FAIL" }
    );
    if ok {
        Ok(line)
    } else {
        Err(line)
    }
}

/// `validate numerics`: each edge case on the GPU at one config, checked against the IEEE
/// rules of `flashcore::numerics`, and written as `DIR/CONFIG.CASE.{q,k,v,o}.npy` (f16).
fn numerics(device: &Device, name: &str, cfg: &Config, dir: &Path) -> Result<Vec<String>, String> {
    let (b, h, s) = (1, 4, 333);
    let d = cfg.head_dim as usize;
    let mut lines = vec![];
    let mut failed = false;
    for case in flashcore::numerics::cases([b, h, s, d], s, cfg.dtype, 0xED6E) {
        let inputs =
            Inputs { b, h, s, d, lens: None, q: case.q.clone(), k: case.k.clone(), v: case.v.clone() };
        let t = to_device::<f16>(device, &inputs)?;
        let got: Vec<f64> = launch_once(device, cfg, &t)?.iter().map(|x| x.to_f64()).collect();
        let want = flashcore::numerics::expected(&case, cfg.default_scale() as f64, cfg.causal);
        let c = flashcore::numerics::compare(&got, &want);
        let ok = c.wrong_kind == 0 && c.finite_rel_err < tolerance(cfg.dtype);
        failed |= !ok;
        lines.push(format!(
            "| {name} | {} | {} | {} | {} | {:.1e} | {} |",
            case.name,
            c.nan,
            c.inf,
            c.wrong_kind,
            c.finite_rel_err,
            if ok { "ok" } else { "FAIL" }
        ));
        let shape = [b, h, s, d];
        let write = |tag: &str, x: &[f64]| {
            let halves: Vec<f16> = x.iter().map(|v| f16::from_f64(*v)).collect();
            flashcore::npy::write_f16(&dir.join(format!("{name}.{}.{tag}.npy", case.name)), &halves, &shape)
                .map_err(|e| e.to_string())
        };
        write("q", &case.q)?;
        write("k", &case.k)?;
        write("v", &case.v)?;
        write("o", &got)?;
        // What each element must be, for the SDPA comparison: 0 finite, 1 NaN, 2 +Inf, 3 -Inf,
        // 4 either (a special hidden by the causal mask).
        use flashcore::numerics::Expected;
        let kinds: Vec<f32> = want
            .iter()
            .map(|w| match w {
                Expected::Finite(_) => 0.0,
                Expected::Nan => 1.0,
                Expected::Inf(sign) if *sign > 0.0 => 2.0,
                Expected::Inf(_) => 3.0,
                Expected::Either(_) => 4.0,
            })
            .collect();
        flashcore::npy::write_f32(&dir.join(format!("{name}.{}.kind.npy", case.name)), &kinds, &shape)
            .map_err(|e| e.to_string())?;
    }
    if failed {
        Err(lines.join("\n"))
    } else {
        Ok(lines)
    }
}

fn flag(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("--help");
    if command == "list" {
        for (name, cfg) in reference_configs() {
            println!("{name} {}", if cfg.varlen { "varlen" } else { "dense" });
        }
        return Ok(());
    }
    if !matches!(command, "run" | "determinism" | "numerics") {
        println!("usage: validate list | run NAME S [--b B --h H --seed N] | determinism [--runs 20] | numerics DIR");
        return if command == "--help" || command == "-h" {
            Ok(())
        } else {
            Err(format!("unknown command `{command}`"))
        };
    }
    let device = Device::new(0).map_err(|e| format!("no GPU: {e} (validate needs one)"))?;
    match command {
        "run" => {
            let name = args.get(1).ok_or("run NAME S")?;
            let s: usize =
                args.get(2).and_then(|s| s.parse().ok()).ok_or("run NAME S: S must be a number")?;
            let cfg = config_named(name)?;
            if let Some(why) = cannot_run(&device, &cfg) {
                println!("{name}: skipped: {why}");
                return Ok(());
            }
            let dims = (flag(&args, "--b", 2)?, flag(&args, "--h", 2)?, s);
            let seed = flag(&args, "--seed", 7)? as u64;
            let line = match cfg.dtype {
                DType::F16 => run::<f16>(&device, name, &cfg, dims, seed),
                DType::Bf16 => run::<bf16>(&device, name, &cfg, dims, seed),
            }?;
            println!("{line}");
            Ok(())
        }
        "determinism" => {
            let runs = flag(&args, "--runs", 20)?;
            println!("| config | shape | runs | output hash | identical runs | persistent twin | twin max diff | rel err | |");
            println!("|---|---|---|---|---|---|---|---|---|");
            let mut failures = 0;
            for (name, cfg) in reference_configs() {
                if let Some(why) = cannot_run(&device, &cfg) {
                    println!("| {name} | skipped: {why} | | | | | | | |");
                    continue;
                }
                for dims in [(1, 8, 512), (2, 3, 333)] {
                    let line = match cfg.dtype {
                        DType::F16 => determinism::<f16>(&device, name, &cfg, dims, runs),
                        DType::Bf16 => determinism::<bf16>(&device, name, &cfg, dims, runs),
                    };
                    failures += line.is_err() as usize;
                    println!("{}", line.unwrap_or_else(|e| e));
                }
            }
            if failures > 0 {
                return Err(format!("{failures} determinism rows failed"));
            }
            Ok(())
        }
        _ => {
            let dir = Path::new(args.get(1).ok_or("numerics DIR")?);
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            println!("| config | case | NaN outputs | Inf outputs | of the wrong kind | finite rel err | |");
            println!("|---|---|---|---|---|---|---|");
            let mut failed = false;
            let mut manifest = String::new();
            for name in
                ["d64", "d64_causal", "d64_s2_load1_softmax4", "d64_m32_n128_w4_s2_load2_split2", "d128_s2"]
            {
                let cfg = config_named(name)?;
                manifest.push_str(&format!("{name} {}\n", cfg.causal));
                match numerics(&device, name, &cfg, dir) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(lines) => {
                        failed = true;
                        println!("{lines}");
                    }
                }
            }
            std::fs::write(dir.join("manifest.txt"), manifest).map_err(|e| e.to_string())?;
            if failed {
                return Err("some numerics cases failed".into());
            }
            Ok(())
        }
    }
}
