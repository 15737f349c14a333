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

fn run_case(name: &str, config: &flashcore::Config, (b, h, s): (usize, usize, usize), seed: u64) -> u64 {
    let d = config.head_dim as usize;
    let compiled = attention::compile(config).unwrap();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let n = b * h * s * d;
    let mut gen = || (0..n).map(|_| f16::from_f64(rng.normal())).collect::<Vec<_>>();
    let (q, k, v) = (gen(), gen(), gen());
    let mut o = vec![f16::ZERO; n];
    let scale = 1.0 / (d as f32).sqrt();
    let shape = [b, h, s, d];
    let device = SimDevice { sm_count: 2, options: Options { seed, ..Options::default() } };
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
    stats.lane_instructions
}

#[test]
fn every_snapshot_config_runs_correctly_in_the_simulator() {
    let start = std::time::Instant::now();
    let mut lane_instructions = 0;
    for (name, config) in common::snapshot_configs() {
        // Two CTAs of a tail shape (S not a multiple of any tile), and a longer sequence.
        for (shape, seed) in [((1, 2, 100), 1), ((1, 1, 256), 2)] {
            lane_instructions += run_case(name, &config, shape, seed);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "simulated {lane_instructions} lane instructions in {secs:.1} s ({:.1} M/s)",
        lane_instructions as f64 / secs / 1e6
    );
}
