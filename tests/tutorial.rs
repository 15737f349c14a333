//! The tutorial's kernel (examples/tutorial.rs, docs/tutorial.md) does what the tutorial says:
//! it compiles for its declared config and others, its output matches float64 in the simulator,
//! and the `flashcore` command finds it by name.

#[allow(dead_code)]
#[path = "../examples/tutorial.rs"]
mod tutorial;

use flashcore::reference::{self, Problem, Rng};
use flashcore::simulate::{simulate, HostArg, HostView, SimDevice};
use flashcore::{f16, Config};
use tutorial::stats_softmax_attention as kernel;

#[test]
fn the_tutorial_kernel_matches_float64_in_the_simulator() {
    let (b, h, s, sk, d) = (1, 2, 128, 160, 64);
    for config in [kernel::CONFIG, Config { stages: 3, persistent: true, ..kernel::CONFIG }] {
        let compiled = kernel::compile(&config).unwrap();
        let mut rng = Rng::new(2026);
        let mut gen =
            |n: usize| (0..n).map(|_| flashcore::round_to(config.dtype, rng.normal())).collect::<Vec<f64>>();
        let (q, k, v) = (gen(b * h * s * d), gen(b * h * sk * d), gen(b * h * sk * d));
        let half = |x: &[f64]| x.iter().map(|x| f16::from_f64(*x)).collect::<Vec<f16>>();
        let (qh, kh, vh) = (half(&q), half(&k), half(&v));
        let mut out = vec![f16::NAN; b * h * s * d];
        let scale = config.default_scale();
        let (qv, kv) = (HostView::contiguous(&[b, h, s, d]), HostView::contiguous(&[b, h, sk, d]));
        let mut args = [
            HostArg::Tensor(&qh, qv.clone()),
            HostArg::Tensor(&kh, kv.clone()),
            HostArg::Tensor(&vh, kv),
            HostArg::TensorMut(&mut out, qv),
            HostArg::F32(scale),
        ];
        simulate(&compiled, &mut args, &SimDevice::default()).unwrap();
        let p = Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk, d, scale: scale as f64, causal: false };
        let got: Vec<f64> = out.iter().map(|x| x.to_f64()).collect();
        let err = reference::compare(&got, &reference::attention(&p));
        assert!(err.rel_l2 < 1e-3, "{config}: {err:?}");
    }
}

#[test]
fn the_command_finds_the_tutorial_kernel() {
    let entry = flashcore::registry::find("stats_softmax_attention").expect("registered");
    assert_eq!(entry.module, "tutorial::tutorial");
    let mut out = Vec::new();
    flashcore::cli::run(&["check", "stats_softmax_attention", "--no-ptxas"], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    // Without a log-sum-exp output the compute warps never need the row max: the scores go
    // out and p (as f16), alpha and l come back; `m` has no channel (`attention` has one).
    assert!(text.contains("protocol   ok: 3 roles"), "{text}");
    assert!(text.contains("12 mbarriers") && !text.contains("\n  m "), "{text}");
}
