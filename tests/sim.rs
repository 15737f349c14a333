//! Every snapshot configuration of the attention kernel, executed in the PTX simulator at small
//! shapes (one to a few CTAs, S from 64 to 256 with a tail) under several schedules, and checked
//! against the float64 reference.

mod common;

use flashcore::f16;
use flashcore::kernels::attention;
use flashcore::reference::{self, Problem, Rng};
use flashcore::simulate::{simulate, HostArg, Options, SimDevice};

/// Above this relative error a result is a bug (fp16 attention lands near 3e-4).
const TOLERANCE: f64 = 2e-3;

fn run_case(
    name: &str,
    config: &flashcore::Config,
    (b, h, s): (usize, usize, usize),
    seed: u64,
    max_slice: u32,
) -> (u64, f64) {
    let d = config.head_dim as usize;
    let compiled = attention::compile(config).unwrap();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let n = b * h * s * d;
    let mut gen = || (0..n).map(|_| f16::from_f64(rng.normal())).collect::<Vec<_>>();
    let (q, k, v) = (gen(), gen(), gen());
    let mut o = vec![f16::ZERO; n];
    let scale = 1.0 / (d as f32).sqrt();
    let shape = [b, h, s, d];
    let device = SimDevice { sm_count: 2, options: Options { seed, max_slice, ..Options::default() } };
    let start = std::time::Instant::now();
    let stats = simulate(
        &compiled,
        &mut [
            HostArg::Tensor(&q, shape),
            HostArg::Tensor(&k, shape),
            HostArg::Tensor(&v, shape),
            HostArg::TensorMut(&mut o, shape),
            HostArg::F32(scale),
        ],
        &device,
    )
    .unwrap_or_else(|e| panic!("{name} {b}x{h}x{s}x{d} seed {seed}: {e}"));
    let sim_secs = start.elapsed().as_secs_f64();
    let f64s = |x: &[f16]| x.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
    let (qd, kd, vd) = (f64s(&q), f64s(&k), f64s(&v));
    let want = reference::attention(&Problem { q: &qd, k: &kd, v: &vd, b, h, s, d, scale: scale as f64 });
    let err = reference::compare(&f64s(&o), &want);
    assert!(
        err.rel_l2 < TOLERANCE,
        "{name} {b}x{h}x{s}x{d} seed {seed}: relative error {:e} ({} non-finite)",
        err.rel_l2,
        err.non_finite
    );
    eprintln!(
        "{name} {b}x{h}x{s}x{d} seed {seed}: rel err {:.3e}, {} warp instructions",
        err.rel_l2, stats.warp_instructions
    );
    (stats.lane_instructions, sim_secs)
}

/// Shapes and schedules each configuration runs at: a tail shape over two heads (S = 100 is not
/// a multiple of any tile), four KV tiles with a warp switch after every instruction, and two
/// batches of one KV tile.
const CASES: [((usize, usize, usize), u64, u32); 3] =
    [((1, 2, 100), 1, 64), ((1, 1, 256), 2, 1), ((2, 1, 64), 3, 16)];

#[test]
fn every_snapshot_config_runs_correctly_in_the_simulator() {
    let (mut lane_instructions, mut secs) = (0, 0.0);
    for (name, config) in common::snapshot_configs() {
        for (shape, seed, slice) in CASES {
            let (n, t) = run_case(name, &config, shape, seed, slice);
            lane_instructions += n;
            secs += t;
        }
    }
    eprintln!(
        "simulated {lane_instructions} lane instructions in {secs:.1} s of simulation ({:.1} M/s)",
        lane_instructions as f64 / secs / 1e6
    );
}

/// Schedules beyond the snapshots: the seed kernel's 4 load + 11 compute + 1 softmax warps (the
/// layout whose hand-written version deadlocked), four stages, and persistent warp-specialized CTAs
/// that each walk several work items.
#[test]
fn the_seed_layout_and_deeper_pipelines_run_correctly_in_the_simulator() {
    let base = attention::CONFIG;
    let seed_layout =
        flashcore::Config { tile_m: 176, warps: 11, load_warps: 4, softmax_warps: 1, stages: 2, ..base };
    let configs = [
        ("seed_d64", seed_layout),
        (
            "seed_d128_s3_persistent",
            flashcore::Config { head_dim: 128, stages: 3, persistent: true, ..seed_layout },
        ),
        ("d64_s4", flashcore::Config { stages: 4, ..base }),
        ("d64_s4_load2_persistent", flashcore::Config { stages: 4, load_warps: 2, persistent: true, ..base }),
        (
            "d128_s3_load1_softmax4_persistent",
            flashcore::Config {
                head_dim: 128,
                stages: 3,
                load_warps: 1,
                softmax_warps: 4,
                persistent: true,
                ..base
            },
        ),
    ];
    for (name, config) in configs {
        run_case(name, &config, (1, 3, 200), 4, 32);
    }
}
