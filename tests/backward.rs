//! The attention backward (`flashcore::kernels::backward`) against float64 in the PTX
//! simulator: dQ, dK, dV and Δ at tails (S, SK not multiples of the tiles, S ≠ SK), causal and
//! not, grouped K/V heads, f16 and bf16, under several schedules; and the rule beneath it, that
//! a product's columns past the end of the sequence count in no reduction.

use flashcore::kernels::backward::*;
use flashcore::reference::{attention_backward_rows, Problem};
use flashcore::simulate::{
    check_backward, simulate, simulate_backward, AttentionShape, BackwardPair, BackwardResult, HostArg,
    HostView, SimDevice,
};
use flashcore::{flash_kernel, Config, DType, HalfFloat};

/// `[B, H, HKV, S, SK, D]`.
type Shape = (usize, usize, usize, usize, usize, usize);

/// [`check_backward`] of `shape` (`[B, H, HKV, S, SK, D]`) under `config`: the relative errors
/// of dQ, dK, dV and Δ, all finite.
fn check<T: HalfFloat>(config: Config, shape: Shape, causal: bool, seed: u64) -> [f64; 4] {
    let (b, h, hk, s, sk, d) = shape;
    let config = Config { head_dim: d as u32, ..config };
    let got = check_backward::<T>(config, AttentionShape { b, h, hk, s, sk }, causal, seed)
        .unwrap_or_else(|e| panic!("{config} {shape:?}: {e}"));
    let errs = [got.dq, got.dk, got.dv, got.delta];
    for e in &errs {
        assert_eq!(e.non_finite, 0, "{config} {shape:?} causal {causal}: {errs:?}");
    }
    errs.map(|e| e.rel_l2)
}

/// Shapes with tails, S ≠ SK both ways, and grouped K/V heads.
const SHAPES: [Shape; 3] = [(1, 2, 1, 77, 150, 64), (2, 2, 2, 130, 100, 64), (1, 4, 2, 64, 64, 64)];

/// Schedules: the declared one, load warps with 3 stages, and 128-row tiles with
/// `a_in_smem` (which these kernels, loading several tiles into one region, must ignore: they
/// computed garbage, rel err 0.8, before the emitter checked for other loads).
fn configs() -> Vec<Config> {
    let declared = attention_backward_dq::CONFIG;
    vec![
        declared,
        Config { stages: 3, load_warps: 1, ..declared },
        Config { tile_m: 128, warps: 8, a_in_smem: true, ..declared },
    ]
}

fn check_all<T: HalfFloat>() {
    let bound = flashcore::tolerance(T::DTYPE);
    for (c, config) in configs().into_iter().enumerate() {
        for (i, &shape) in SHAPES.iter().enumerate() {
            for causal in [false, true] {
                let [dq, dk, dv, delta] =
                    check::<T>(config, shape, causal, (10 * c + 2 * i) as u64 + causal as u64);
                println!(
                    "{:<5} {config:<60} {shape:?} causal {causal:<5} dq {dq:.2e} dk {dk:.2e} dv {dv:.2e} delta {delta:.1e}",
                    T::DTYPE.name()
                );
                assert!(dq < bound && dk < bound && dv < bound, "{config} {shape:?} causal {causal}");
                assert!(delta < bound, "{config} {shape:?}: Δ {delta}");
            }
        }
    }
}

/// The dK/dV kernels on sm_90a (wgmma; each matmul's transposed operand read through a
/// descriptor), next to the dQ kernel on sm_89 (`dq_on_sm90a_matches_float64` runs its sm_90a
/// form), at D = 64 and 128, causal and not, with tails and grouped
/// heads.
#[test]
fn dkdv_on_sm90a_matches_float64() {
    let bound = flashcore::tolerance(DType::F16);
    for (i, &(b, h, hk, s, sk, d)) in [(1, 2, 1, 77, 150, 64), (2, 2, 2, 130, 100, 128)].iter().enumerate() {
        let dq = Config { head_dim: d as u32, ..attention_backward_dq::CONFIG };
        let dkdv = Config { target: flashcore::Target::Sm90a, ..dq };
        for causal in [false, true] {
            let shape = AttentionShape { b, h, hk, s, sk };
            let got = check_plain_split((dq, dkdv), shape, causal, 40 + i as u64);
            println!(
                "sm_90a dK/dV D={d} causal {causal}: dq {:.2e} dk {:.2e} dv {:.2e}",
                got.dq.rel_l2, got.dk.rel_l2, got.dv.rel_l2
            );
            assert!(
                got.dq.rel_l2 < bound && got.dk.rel_l2 < bound && got.dv.rel_l2 < bound,
                "{dkdv} {shape:?} causal {causal}: {got:?}"
            );
        }
    }
}

/// D = 128 under `backward_configs`: K and V (Q in the dQ kernel) each stay in a shared-memory
/// region of their own, re-read by every mma, with 32-wide score tiles (the dQ kernel's and the
/// dK/dV kernel's schedules differ; `check` runs both kernels under one, so each is tried).
#[test]
fn backward_at_d128_keeps_its_operands_in_shared_memory() {
    let configs = backward_configs(128);
    assert!(configs.dkdv.a_in_smem && configs.dkdv.tile_n == 32, "{configs:?}");
    for (i, (config, causal)) in
        [(configs.dq, false), (configs.dkdv, false), (configs.dq, true), (configs.dkdv_causal, true)]
            .into_iter()
            .enumerate()
    {
        let shape = (1, 2, 1, 77, 100, 128);
        let [dq, dk, dv, delta] = check::<flashcore::f16>(config, shape, causal, 40 + i as u64);
        println!("{config} {shape:?} causal {causal}: dq {dq:.2e} dk {dk:.2e} dv {dv:.2e} delta {delta:.1e}");
        assert!(dq < 2e-3 && dk < 2e-3 && dv < 2e-3 && delta < 2e-3, "causal {causal}");
    }
}

#[test]
fn backward_f16_matches_float64() {
    check_all::<flashcore::f16>();
}

#[test]
fn backward_bf16_matches_float64() {
    check_all::<flashcore::bf16>();
}

/// Row statistics of raw products `q·k − 100`: data, not scores, so the columns past the end
/// of the keys (zeros from the loads, −100 here) must count in neither the sum nor the max.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn product_row_stats<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, H, SK, D>,
    sums: TensorMut<f32, B, H, S>,
    maxes: TensorMut<f32, B, H, S>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut l = fill([TILE_M], 0.0);
        let mut m = fill([TILE_M], NEG_INF);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            let ks = stage(k.tile(b, h, kt));
            #[role(compute)]
            {
                let x = mma(qf, ks.t()) - 100.0;
                l = l + row_sum(x + 101.0);
                m = max(m, row_max(x));
            }
        }
        store(sums.tile(b, h, qt), l);
        store(maxes.tile(b, h, qt), m);
    }
}

#[test]
fn data_tails_count_in_no_reduction() {
    let (b, h, s, sk, d) = (1, 2, 70, 77, 64);
    let mut rng = flashcore::reference::Rng::new(9);
    let mut gen =
        |n: usize| (0..n).map(|_| flashcore::round_to(DType::F16, rng.normal() * 0.3)).collect::<Vec<f64>>();
    let (q, k) = (gen(b * h * s * d), gen(b * h * sk * d));
    let half = |x: &[f64]| x.iter().map(|v| flashcore::f16::from_f64(*v)).collect::<Vec<_>>();
    let (qh, kh) = (half(&q), half(&k));
    let (mut sums, mut maxes) = (vec![f32::NAN; b * h * s], vec![f32::NAN; b * h * s]);
    let rows = HostView::contiguous(&[b, h, s]);
    let kernel = product_row_stats::compile(&product_row_stats::CONFIG).unwrap();
    let mut args = [
        HostArg::Tensor(&qh, HostView::contiguous(&[b, h, s, d])),
        HostArg::Tensor(&kh, HostView::contiguous(&[b, h, sk, d])),
        HostArg::F32Mut(&mut sums, rows.clone()),
        HostArg::F32Mut(&mut maxes, rows),
    ];
    simulate(&kernel, &mut args, &SimDevice::default()).unwrap();
    let (mut want_sums, mut want_maxes) = (vec![], vec![]);
    for bh in 0..b * h {
        for i in 0..s {
            let dots: Vec<f64> = (0..sk)
                .map(|j| (0..d).map(|x| q[(bh * s + i) * d + x] * k[(bh * sk + j) * d + x]).sum::<f64>())
                .collect();
            want_sums.push(dots.iter().map(|x| x + 1.0).sum::<f64>());
            want_maxes.push(dots.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - 100.0);
        }
    }
    let f = |x: &[f32]| x.iter().map(|v| *v as f64).collect::<Vec<f64>>();
    let (serr, merr) = (
        flashcore::reference::compare(&f(&sums), &want_sums),
        flashcore::reference::compare(&f(&maxes), &want_maxes),
    );
    println!("sums {serr:?}\nmaxes {merr:?}");
    assert!(serr.rel_l2 < 1e-5 && merr.rel_l2 < 1e-6, "{serr:?} {merr:?}");
}

/// A training step works end to end: an attention layer whose Q, K and V are the parameters,
/// with loss `½‖O − target‖²` (so `dO = O − target`), takes gradient-descent steps with
/// FlashCore's forward (`kernels::attention`, saving the log-sum-exp) and backward, all in the
/// simulator; the loss falls at every step, and the first step's gradients match float64.
#[test]
fn gradient_descent_with_the_forward_and_backward_lowers_the_loss() {
    use flashcore::f16;
    use flashcore::kernels::attention;
    let (b, h, s, d) = (1, 2, 96, 64);
    let mut rng = flashcore::reference::Rng::new(2026);
    let mut gen = |n: usize, scale: f64| (0..n).map(|_| rng.normal() * scale).collect::<Vec<f64>>();
    let n = b * h * s * d;
    let (mut q, mut k, mut v, target) = (gen(n, 1.0), gen(n, 1.0), gen(n, 1.0), gen(n, 1.0));
    let scale = 1.0 / (d as f32).sqrt();
    let (view, rows) = (HostView::contiguous(&[b, h, s, d]), HostView::contiguous(&[b, h, s]));
    let device = SimDevice::default();
    let forward = attention::compile(&attention::CONFIG).unwrap();
    let configs = backward_configs(d as u32);
    let half = |x: &[f64]| x.iter().map(|v| f16::from_f64(*v)).collect::<Vec<f16>>();
    let wide = |x: &[f16]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    let (rate, mut losses) = (0.5, vec![]);
    for step in 0..6 {
        let (qh, kh, vh) = (half(&q), half(&k), half(&v));
        let (mut o, mut lse) = (vec![f16::NAN; n], vec![f32::NAN; b * h * s]);
        let mut args = [
            HostArg::Tensor(&qh, view.clone()),
            HostArg::Tensor(&kh, view.clone()),
            HostArg::Tensor(&vh, view.clone()),
            HostArg::TensorMut(&mut o, view.clone()),
            HostArg::F32Mut(&mut lse, rows.clone()),
            HostArg::F32(scale),
            HostArg::Absent,
            HostArg::Absent,
        ];
        simulate(&forward, &mut args, &device).unwrap();
        let out = wide(&o);
        let grad_out: Vec<f64> = out.iter().zip(&target).map(|(o, t)| o - t).collect();
        losses.push(0.5 * grad_out.iter().map(|g| g * g).sum::<f64>());
        let gh = half(&grad_out);
        let pair = BackwardPair {
            dq: attention_backward_dq::compile,
            dkdv: attention_backward_dkdv::compile,
            scalars: vec![],
        };
        let shape = AttentionShape { b, h, hk: h, s, sk: s };
        let BackwardResult { dq, dk, dv, .. } = simulate_backward(
            &pair,
            (configs.dq, configs.dkdv),
            shape,
            [&qh, &kh, &vh, &o, &gh],
            &lse,
            scale,
        )
        .unwrap();
        let (dq, dk, dv) = (wide(&dq), wide(&dk), wide(&dv));
        if step == 0 {
            // The gradients of this step's inputs (as f16 holds them), in float64.
            let (q16, k16, v16, g16) = (wide(&qh), wide(&kh), wide(&vh), wide(&gh));
            let p = Problem {
                q: &q16,
                k: &k16,
                v: &v16,
                b,
                h,
                hk: h,
                s,
                sk: s,
                d,
                scale: scale as f64,
                causal: false,
            };
            let all: Vec<usize> = (0..b * h * s).collect();
            let want = attention_backward_rows(&p, &g16, &all, &all);
            for (name, got, want) in [("dq", &dq, &want.dq), ("dk", &dk, &want.dk), ("dv", &dv, &want.dv)] {
                let err = flashcore::reference::compare(got, want);
                assert!(err.rel_l2 < 2e-3, "{name}: {err:?}");
            }
        }
        for (param, grad) in [(&mut q, &dq), (&mut k, &dk), (&mut v, &dv)] {
            for (x, g) in param.iter_mut().zip(grad) {
                *x -= rate * g;
            }
        }
    }
    println!("losses: {losses:.3?}");
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "the loss must fall at every step: {losses:?}");
    assert!(losses[5] < 0.9 * losses[0], "six steps must cut the loss by 10% at least: {losses:?}");
}

/// Softcap's backward (Gemma 2's `cap · tanh(x / cap)`), written in the DSL next to the plain
/// one, against float64 gradients through `f'(x) = 1 − tanh²(x / cap)`: at tails, GQA, f16 and
/// bf16. The dQ kernel runs causal too (its `causal` flag), with the plain dK/dV pair's check
/// left to the causal kernels above.
#[test]
fn softcap_backward_matches_float64() {
    use flashcore::simulate::{check_backward_pair, BackwardPair};
    let cap = 2.0f64;
    let score = move |_, _, x: f64| {
        let t = (x / cap).tanh();
        (cap * t, 1.0 - t * t)
    };
    for ((i, &(b, h, hk, s, sk, d)), causal) in
        SHAPES.iter().enumerate().flat_map(|s| [(s, false), (s, true)])
    {
        let pair = BackwardPair {
            dq: softcap_attention_backward_dq::compile,
            dkdv: if causal {
                softcap_attention_backward_dkdv_causal::compile
            } else {
                softcap_attention_backward_dkdv::compile
            },
            scalars: vec![cap as f32],
        };
        let shape = AttentionShape { b, h, hk, s, sk };
        for dtype in [DType::F16, DType::Bf16] {
            let config = Config { head_dim: d as u32, ..softcap_attention_backward_dq::CONFIG };
            let got = match dtype {
                DType::F16 => {
                    check_backward_pair::<flashcore::f16>(&pair, config, shape, causal, 60 + i as u64, &score)
                }
                DType::Bf16 => check_backward_pair::<flashcore::bf16>(
                    &pair,
                    config,
                    shape,
                    causal,
                    60 + i as u64,
                    &score,
                ),
            }
            .unwrap();
            println!(
                "softcap {dtype:?} {shape:?} causal {causal}: dq {:.2e} dk {:.2e} dv {:.2e} delta {:.2e}",
                got.dq.rel_l2, got.dk.rel_l2, got.dv.rel_l2, got.delta.rel_l2
            );
            assert!(got.passes(dtype), "{dtype:?} {shape:?}: {got:?}");
        }
    }
}

/// Warp instructions the dK/dV kernel `compile` simulates at `[1, 2, s, s, 64]`, with `extra`
/// f32 parameters after `scale`.
fn dkdv_instructions(
    compile: fn(&Config) -> Result<std::sync::Arc<flashcore::CompiledKernel>, flashcore::Error>,
    s: usize,
    extra: &[f32],
) -> u64 {
    let (b, h, d) = (1, 2, 64);
    let n = b * h * s * d;
    let x: Vec<flashcore::f16> =
        (0..n).map(|i| flashcore::f16::from_f32(((i % 7) as f32 - 3.0) * 0.1)).collect();
    let lse = vec![1.0f32; b * h * s];
    let (view, rows) = (HostView::contiguous(&[b, h, s, d]), HostView::contiguous(&[b, h, s]));
    let (mut dk, mut dv) = (vec![flashcore::f16::NAN; n], vec![flashcore::f16::NAN; n]);
    let kernel = compile(&attention_backward_dkdv::CONFIG).unwrap();
    let mut args = vec![
        HostArg::Tensor(&x, view.clone()),
        HostArg::Tensor(&x, view.clone()),
        HostArg::Tensor(&x, view.clone()),
        HostArg::Tensor(&x, view.clone()),
        HostArg::F32Table(&lse, rows.clone()),
        HostArg::F32Table(&lse, rows),
        HostArg::TensorMut(&mut dk, view.clone()),
        HostArg::TensorMut(&mut dv, view),
        HostArg::F32(0.125),
    ];
    args.extend(extra.iter().map(|x| HostArg::F32(*x)));
    // Optional parameters after those (sequence offsets): left out.
    args.resize_with(kernel.kernel.params.len().max(args.len()), || HostArg::Absent);
    simulate(&kernel, &mut args, &SimDevice::default()).unwrap().warp_instructions
}

/// The causal dK/dV kernel states its mask and nothing else: the compiler skips the Q tiles
/// that the mask empties for a K/V tile, since the loop only adds products of probabilities
/// (0 there). At S = 512 (8 tiles a side) the K/V tiles visit 36 of the 64 (key, query) tile
/// pairs (0.5625); with the per-tile overhead the instructions come to 0.636 of the full kernel's,
/// the same as with the loop's start written by hand (0.637 measured so).
#[test]
fn the_causal_backward_skips_the_tiles_its_mask_empties() {
    let s = 512;
    let (full, causal) = (
        dkdv_instructions(attention_backward_dkdv::compile, s, &[]),
        dkdv_instructions(attention_backward_dkdv_causal::compile, s, &[]),
    );
    let ratio = causal as f64 / full as f64;
    println!("dK/dV warp instructions at S = {s}: causal {causal}, full {full}, ratio {ratio:.3}");
    assert!(ratio < 0.66, "causal / full = {ratio:.3}: the masked tiles are not skipped");
}

/// Sliding window's backward against float64 gradients with the window as the mask, at tails,
/// GQA, f16 and bf16, causal window (right 0) and two-sided; and the compiler skipping the
/// tiles outside the window: at S = 1024 with a 64-key window both kernels run far fewer warp
/// instructions than the plain backward.
#[test]
fn sliding_window_backward_matches_float64_and_skips_outside_the_window() {
    use flashcore::simulate::{check_backward_pair, BackwardPair};
    for (i, &(b, h, hk, s, sk, d)) in SHAPES.iter().enumerate() {
        for (left, right) in [(20i64, 0i64), (20, 5)] {
            let pair = BackwardPair {
                dq: sliding_window_attention_backward_dq::compile,
                dkdv: sliding_window_attention_backward_dkdv::compile,
                scalars: vec![left as f32, right as f32],
            };
            let score = move |q: usize, j: usize, x: f64| {
                let diag = q as i64 + sk as i64 - s as i64;
                let inside = (diag - left..=diag + right).contains(&(j as i64));
                (if inside { x } else { f64::NEG_INFINITY }, 1.0)
            };
            let shape = AttentionShape { b, h, hk, s, sk };
            let config = Config { head_dim: d as u32, ..sliding_window_attention_backward_dq::CONFIG };
            let f16 =
                check_backward_pair::<flashcore::f16>(&pair, config, shape, false, 80 + i as u64, &score)
                    .unwrap();
            let bf16 =
                check_backward_pair::<flashcore::bf16>(&pair, config, shape, false, 90 + i as u64, &score)
                    .unwrap();
            println!(
                "window ({left}, {right}) {shape:?}: f16 dq {:.2e} dk {:.2e} dv {:.2e}; bf16 dq {:.2e}",
                f16.dq.rel_l2, f16.dk.rel_l2, f16.dv.rel_l2, bf16.dq.rel_l2
            );
            assert!(f16.passes(DType::F16), "({left}, {right}) {shape:?}: {f16:?}");
            assert!(bf16.passes(DType::Bf16), "({left}, {right}) {shape:?}: {bf16:?}");
        }
    }
    let s = 1024;
    let (full, windowed) = (
        dkdv_instructions(attention_backward_dkdv::compile, s, &[]),
        dkdv_instructions(sliding_window_attention_backward_dkdv::compile, s, &[64.0, 0.0]),
    );
    let ratio = windowed as f64 / full as f64;
    println!(
        "dK/dV warp instructions at S = {s}, window (64, 0): {windowed} against {full}, ratio {ratio:.3}"
    );
    // Each 64-key tile meets at most 3 of the 16 query tiles its window reaches.
    assert!(ratio < 0.3, "windowed / full = {ratio:.3}: the tiles outside the window are not skipped");
}

/// `attention_backward_dkdv_grouped` (and its causal twin), whose range loop walks a K/V head's
/// query heads, against float64 summed over each group, at tails and group sizes 1, 2 and 4,
/// causal and not, under the declared
/// schedule, load warps (whose copies compute the query head themselves), 3 stages with
/// persistent CTAs, and bf16.
#[test]
fn grouped_dkdv_sums_the_query_heads_of_each_kv_head_in_the_kernel() {
    let declared = attention_backward_dkdv_grouped::CONFIG;
    let configs = [
        declared,
        Config { load_warps: 1, stages: 3, ..declared },
        Config { persistent: true, stages: 3, tile_n: 32, ..declared },
        Config { dtype: DType::Bf16, ..declared },
    ];
    for (config, causal) in configs.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let compile = if causal {
            attention_backward_dkdv_grouped_causal::compile
        } else {
            attention_backward_dkdv_grouped::compile
        };
        let kernel = compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        for (i, (b, h, hk, s, sk)) in
            [(1, 4, 2, 77, 150), (2, 2, 2, 130, 100), (1, 4, 1, 64, 64)].into_iter().enumerate()
        {
            let d = config.head_dim as usize;
            let mut rng = flashcore::reference::Rng::new(90 + i as u64);
            let mut gen = |n: usize| {
                (0..n).map(|_| flashcore::round_to(config.dtype, rng.normal())).collect::<Vec<f64>>()
            };
            let (q, k, v, g) =
                (gen(b * h * s * d), gen(b * hk * sk * d), gen(b * hk * sk * d), gen(b * h * s * d));
            let scale = 1.0 / (d as f64).sqrt();
            let problem = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale, causal };
            let all_q: Vec<usize> = (0..b * h * s).collect();
            let all_k: Vec<usize> = (0..b * h * sk).collect();
            let want = attention_backward_rows(&problem, &g, &all_q, &all_k);
            // Per K/V head: the sum over its query heads.
            let group = h / hk;
            let mut want_dk = vec![0.0; b * hk * sk * d];
            let mut want_dv = vec![0.0; b * hk * sk * d];
            for bi in 0..b {
                for hi in 0..h {
                    for r in 0..sk * d {
                        let (from, to) =
                            (((bi * h + hi) * sk) * d + r, ((bi * hk + hi / group) * sk) * d + r);
                        want_dk[to] += want.dk[from];
                        want_dv[to] += want.dv[from];
                    }
                }
            }
            let lse: Vec<f32> = want.lse.iter().map(|x| *x as f32).collect();
            let delta: Vec<f32> = want.delta.iter().map(|x| *x as f32).collect();
            let (dk, dv) = match config.dtype {
                DType::F16 => grouped::<flashcore::f16>(
                    &kernel,
                    (b, h, hk, s, sk, d),
                    [&q, &k, &v, &g],
                    &lse,
                    &delta,
                    scale,
                ),
                DType::Bf16 => grouped::<flashcore::bf16>(
                    &kernel,
                    (b, h, hk, s, sk, d),
                    [&q, &k, &v, &g],
                    &lse,
                    &delta,
                    scale,
                ),
            };
            let bound = flashcore::tolerance(config.dtype);
            for (what, got, want) in [("dk", &dk, &want_dk), ("dv", &dv, &want_dv)] {
                let err = flashcore::reference::compare(got, want);
                assert!(
                    err.non_finite == 0 && err.rel_l2 < bound,
                    "{config} causal {causal} {:?} {what}: {err:?}",
                    (b, h, hk, s, sk)
                );
                println!(
                    "grouped {config} causal {causal} {:?} {what}: rel_l2 {:.2e}",
                    (b, h, hk, s, sk),
                    err.rel_l2
                );
            }
        }
    }
}

/// Runs the grouped dK/dV kernel on `[q, k, v, d_out]` (float64, rounded to `T`), outputs
/// poisoned with NaN: dK and dV per K/V head.
fn grouped<T: HalfFloat>(
    kernel: &flashcore::CompiledKernel,
    (b, h, hk, s, sk, d): Shape,
    [q, k, v, g]: [&[f64]; 4],
    lse: &[f32],
    delta: &[f32],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let half = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
    let (qh, kh, vh, gh) = (half(q), half(k), half(v), half(g));
    let (mut dk, mut dv) = (vec![T::NAN; b * hk * sk * d], vec![T::NAN; b * hk * sk * d]);
    let (qv, kv, rows) = (
        HostView::contiguous(&[b, h, s, d]),
        HostView::contiguous(&[b, hk, sk, d]),
        HostView::contiguous(&[b, h, s]),
    );
    let mut args = vec![
        HostArg::Tensor(&qh, qv.clone()),
        HostArg::Tensor(&kh, kv.clone()),
        HostArg::Tensor(&vh, kv.clone()),
        HostArg::Tensor(&gh, qv),
        HostArg::F32Table(lse, rows.clone()),
        HostArg::F32Table(delta, rows),
        HostArg::TensorMut(&mut dk, kv.clone()),
        HostArg::TensorMut(&mut dv, kv),
        HostArg::F32(scale as f32),
        HostArg::Absent, // cu_q, cu_k: dense
        HostArg::Absent,
    ];
    simulate(kernel, &mut args, &SimDevice::default())
        .unwrap_or_else(|e| panic!("{}: {e}", kernel.kernel.config));
    drop(args);
    let f = |x: &[T]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    (f(&dk), f(&dv))
}

/// On a GPU (skipped with a message without one): the grouped dK/dV kernel through its typed
/// launcher at 1x8(2)x1000x1100, D = 64 and 128, against float64 summed over each group, with
/// 5 runs bitwise identical; then timed at 2x32(8)x4096x128 next to the per-query-head kernel
/// (the same flops; it writes 4x the gradients and reads each K/V tile 4 times).
/// `scripts/gpu-stores.sh` runs this binary on the GPU machine.
#[test]
fn grouped_dkdv_runs_on_the_gpu() {
    use flashcore::runtime::Device;
    let device = match Device::new(0) {
        Ok(d) => d,
        Err(e) => return eprintln!("skipping the GPU check: {e}"),
    };
    type F = flashcore::f16;
    for d in [64usize, 128] {
        let (b, h, hk, s, sk) = (1, 8, 2, 1000, 1100);
        let config = Config { dtype: DType::F16, ..backward_configs(d as u32).dkdv_grouped };
        let mut rng = flashcore::reference::Rng::new(5 + d as u64);
        let mut gen =
            |n: usize| (0..n).map(|_| flashcore::round_to(DType::F16, rng.normal())).collect::<Vec<f64>>();
        let (q, k, v, g) =
            (gen(b * h * s * d), gen(b * hk * sk * d), gen(b * hk * sk * d), gen(b * h * s * d));
        let scale = 1.0 / (d as f64).sqrt();
        let problem = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale, causal: false };
        let want = attention_backward_rows(
            &problem,
            &g,
            &(0..b * h * s).collect::<Vec<_>>(),
            &(0..b * h * sk).collect::<Vec<_>>(),
        );
        let group = h / hk;
        let (mut want_dk, mut want_dv) = (vec![0.0; b * hk * sk * d], vec![0.0; b * hk * sk * d]);
        for hi in 0..h {
            for r in 0..sk * d {
                want_dk[(hi / group) * sk * d + r] += want.dk[hi * sk * d + r];
                want_dv[(hi / group) * sk * d + r] += want.dv[hi * sk * d + r];
            }
        }
        let half = |x: &[f64]| x.iter().map(|v| F::from_f64(*v)).collect::<Vec<F>>();
        let up = |x: &[f64], shape: &[usize]| device.upload(&half(x), shape).unwrap();
        let (qd, kd, vd, gd) =
            (up(&q, &[b, h, s, d]), up(&k, &[b, hk, sk, d]), up(&v, &[b, hk, sk, d]), up(&g, &[b, h, s, d]));
        let lse: Vec<f32> = want.lse.iter().map(|x| *x as f32).collect();
        let delta: Vec<f32> = want.delta.iter().map(|x| *x as f32).collect();
        let (lsed, deltad) =
            (device.upload(&lse, &[b, h, s]).unwrap(), device.upload(&delta, &[b, h, s]).unwrap());
        let mut hashes = std::collections::HashSet::new();
        for run in 0..5 {
            let mut dk = device.filled(&[b, hk, sk, d], F::NAN).unwrap();
            let mut dv = device.filled(&[b, hk, sk, d], F::NAN).unwrap();
            attention_backward_dkdv_grouped::launch(
                &device,
                &config,
                &qd,
                &kd,
                &vd,
                &gd,
                &lsed,
                &deltad,
                &mut dk,
                &mut dv,
                scale as f32,
                None,
                None,
            )
            .unwrap();
            let (dk, dv) = (device.download(&dk).unwrap(), device.download(&dv).unwrap());
            hashes.insert(dk.iter().chain(&dv).map(|x| x.to_bits()).collect::<Vec<u16>>());
            if run == 0 {
                for (what, got, want) in [("dk", &dk, &want_dk), ("dv", &dv, &want_dv)] {
                    let got: Vec<f64> = got.iter().map(|x| x.to_f64()).collect();
                    let err = flashcore::reference::compare(&got, want);
                    println!(
                        "GPU grouped dK/dV {config} D={d} {what}: rel_l2 {:.2e}, max abs {:.2e}",
                        err.rel_l2, err.max_abs
                    );
                    assert!(
                        err.non_finite == 0 && err.rel_l2 < flashcore::tolerance(DType::F16),
                        "{what}: {err:?}"
                    );
                }
            }
        }
        println!("GPU grouped dK/dV D={d}: 5 runs, {} distinct outputs", hashes.len());
        assert_eq!(hashes.len(), 1);
        // The whole backward through `launch_backward_async`: dQ, and dK/dV per K/V head.
        let od = up(&want.o, &[b, h, s, d]);
        let (mut dq, mut dk, mut dv) = (
            device.filled(&[b, h, s, d], F::NAN).unwrap(),
            device.filled(&[b, hk, sk, d], F::NAN).unwrap(),
            device.filled(&[b, hk, sk, d], F::NAN).unwrap(),
        );
        let mut delta_out = device.filled(&[b, h, s], f32::NAN).unwrap();
        let inputs = BackwardInputs { q: &qd, k: &kd, v: &vd, o: &od, lse: &lsed, d_out: &gd };
        let outputs = BackwardOutputs { dq: &mut dq, dk: &mut dk, dv: &mut dv, delta: &mut delta_out };
        launch_backward_async(&device, inputs, outputs, scale as f32, false).unwrap();
        device.synchronize().unwrap();
        let f = |x: Vec<F>| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        let (dq, dk, dv) = (
            f(device.download(&dq).unwrap()),
            f(device.download(&dk).unwrap()),
            f(device.download(&dv).unwrap()),
        );
        for (what, got, want) in [("dq", &dq, &want.dq), ("dk", &dk, &want_dk), ("dv", &dv, &want_dv)] {
            let err = flashcore::reference::compare(got, want);
            println!("GPU launch_backward_async D={d} {what}: rel_l2 {:.2e}", err.rel_l2);
            assert!(err.non_finite == 0 && err.rel_l2 < flashcore::tolerance(DType::F16), "{what}: {err:?}");
        }
    }
    // Time: 2x32(8)x4096x128, the tuned dK/dV schedule, next to the per-query-head kernel.
    let (b, h, hk, s, d) = (2, 32, 8, 4096, 128);
    let config = Config { dtype: DType::F16, ..backward_configs(d as u32).dkdv_grouped };
    let t = |shape: &[usize], x: f32| device.filled(shape, F::from_f32(x)).unwrap();
    let (qd, kd, vd, gd) =
        (t(&[b, h, s, d], 0.01), t(&[b, hk, s, d], 0.02), t(&[b, hk, s, d], 0.03), t(&[b, h, s, d], 0.5));
    let (lsed, deltad) =
        (device.filled(&[b, h, s], 8.0f32).unwrap(), device.filled(&[b, h, s], 0.1f32).unwrap());
    let (mut dk_g, mut dv_g) = (t(&[b, hk, s, d], 0.0), t(&[b, hk, s, d], 0.0));
    let (mut dk_h, mut dv_h) = (t(&[b, h, s, d], 0.0), t(&[b, h, s, d], 0.0));
    let grouped_us = flashcore::timing::median_launch_us::<flashcore::Error>(&device, 3, 20, |_| {
        attention_backward_dkdv_grouped::launch_async(
            &device, &config, &qd, &kd, &vd, &gd, &lsed, &deltad, &mut dk_g, &mut dv_g, 0.088, None, None,
        )
    })
    .unwrap();
    let per_head_us = flashcore::timing::median_launch_us::<flashcore::Error>(&device, 3, 20, |_| {
        attention_backward_dkdv::launch_async(
            &device, &config, &qd, &kd, &vd, &gd, &lsed, &deltad, &mut dk_h, &mut dv_h, 0.088, None, None,
        )
    })
    .unwrap();
    println!(
        "GPU dK/dV at {:?} ({config}): grouped {grouped_us:.1} µs, per query head {per_head_us:.1} µs (without the host's sum over groups)",
        (b, h, hk, s, d)
    );
}

/// The varlen backward (FlashAttention's packed layout, `cu_q`/`cu_k` given; the log-sum-exp
/// and Δ `[H, TOTAL_Q]` tables read packed): dQ, dK, dV and Δ against each sequence's float64
/// gradients, causal and not, per query head and grouped (dK/dV per K/V head), f16 at D = 64
/// and bf16 at D = 128 with the schedules `backward_configs` picks there, and f16 at D = 128
/// with Hopper's (`backward_configs_for`: a producer warpgroup, which copies by cp.async under
/// varlen); sequences of 1 row, more queries than keys (causal: the first rows see no key) and
/// tails.
#[test]
fn varlen_backward_matches_float64() {
    use flashcore::simulate::check_varlen_backward;
    let (lens_q, lens_k) = ([70, 1, 130], [100, 33, 64]);
    let hopper = backward_configs_for(128, flashcore::Target::Sm90a);
    for (d, dtype, configs) in [
        (64u32, DType::F16, backward_configs(64)),
        (128, DType::Bf16, backward_configs(128)),
        (128, DType::F16, hopper),
    ] {
        for (causal, grouped) in [(false, false), (true, false), (false, true), (true, true)] {
            let set = |c: Config| Config { varlen: true, dtype, ..c };
            let dq = attention_backward_dq::compile(&Config { causal, ..set(configs.dq) }).unwrap();
            let in_smem = |c: Config| Config { a_in_smem: true, ..c };
            let dkdv = match (causal, grouped) {
                (false, false) => attention_backward_dkdv::compile(&set(configs.dkdv)),
                (true, false) => attention_backward_dkdv_causal::compile(&set(configs.dkdv_causal)),
                (false, true) => attention_backward_dkdv_grouped::compile(&in_smem(set(configs.dkdv))),
                (true, true) => {
                    attention_backward_dkdv_grouped_causal::compile(&in_smem(set(configs.dkdv_causal)))
                }
            }
            .unwrap();
            let heads = if grouped { (4, 2) } else { (2, 1) };
            let device = SimDevice::default();
            let got = match dtype {
                DType::F16 => check_varlen_backward::<flashcore::f16>(
                    (&dq, &dkdv, grouped),
                    &lens_q,
                    &lens_k,
                    heads,
                    7,
                    &device,
                ),
                DType::Bf16 => check_varlen_backward::<flashcore::bf16>(
                    (&dq, &dkdv, grouped),
                    &lens_q,
                    &lens_k,
                    heads,
                    7,
                    &device,
                ),
            }
            .unwrap_or_else(|e| panic!("{}: {e}", dkdv.kernel.config));
            println!(
                "varlen D={d} {dtype:?} causal {causal} grouped {grouped}: dQ {:.2e} dK {:.2e} dV {:.2e} Δ {:.2e}",
                got.dq.rel_l2, got.dk.rel_l2, got.dv.rel_l2, got.delta.rel_l2
            );
            assert!(got.passes(dtype), "D={d} causal {causal} grouped {grouped}: {got:?}");
        }
    }
}

/// A packed log-sum-exp table of the wrong length, or given with its batch axis, is a typed
/// error naming it, not a read past the sequences.
#[test]
fn packed_tables_of_the_wrong_shape_are_named() {
    use flashcore::SeqOffsets;
    let dq =
        attention_backward_dq::compile(&Config { varlen: true, ..attention_backward_dq::CONFIG }).unwrap();
    let (cu, d, h) = (SeqOffsets::from_lengths(&[5, 7]).unwrap(), 64, 2);
    let x = vec![flashcore::f16::from_f32(0.5); 12 * h * d];
    let run = |lse: &[f32], lse_view: HostView| {
        let (mut out, mut delta) = (vec![flashcore::f16::NAN; 12 * h * d], vec![f32::NAN; h * 12]);
        let v = HostView::contiguous(&[12, h, d]);
        simulate(
            &dq,
            &mut [
                HostArg::Tensor(&x, v.clone()),
                HostArg::Tensor(&x, HostView::contiguous(&[12, 1, d])),
                HostArg::Tensor(&x, HostView::contiguous(&[12, 1, d])),
                HostArg::Tensor(&x, v.clone()),
                HostArg::Tensor(&x, v.clone()),
                HostArg::F32Table(lse, lse_view),
                HostArg::TensorMut(&mut out, v),
                HostArg::F32Mut(&mut delta, HostView::contiguous(&[h, 12])),
                HostArg::F32(0.125),
                HostArg::Offsets(&cu),
                HostArg::Offsets(&cu),
            ],
            &SimDevice::default(),
        )
        .map(|_| ())
    };
    let lse = vec![1.0f32; h * 13];
    run(&lse[..h * 12], HostView::contiguous(&[h, 12])).unwrap();
    let short = run(&lse[..h * 11], HostView::contiguous(&[h, 11])).unwrap_err().to_string();
    assert!(short.contains("lse") && short.contains("packs 11 rows"), "{short}");
    let batched = run(&lse[..h * 12], HostView::contiguous(&[1, h, 12])).unwrap_err().to_string();
    assert!(batched.contains("lse") && batched.contains("axes"), "{batched}");
}

/// Writes `a · bᵀ` scores element by element into an output table with the variable-length
/// axis: a table read packed is supported, one written packed is not (the element stores do
/// not add the sequence's start), so the varlen launch must refuse it by name.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn packed_scores<T>(
    a: Tensor<T, B, H, M, D>,
    bt: Tensor<T, B, H, N, D>,
    c: TensorMut<f32, B, H, M, N>,
    cu_m: Option<SeqOffsets<B, M>>,
) {
    for (b, h, mt) in tiles(B, H, M / TILE_M) {
        let af = load(a.tile(b, h, mt));
        for nt in pipeline(0..N / TILE_N) {
            let bs = stage(bt.tile(b, h, nt));
            let x = mma(af, bs.t());
            store(c.at(b, h, x.index(M), x.index(N)), x);
        }
    }
}

#[test]
fn an_output_table_written_packed_is_refused() {
    use flashcore::SeqOffsets;
    let kernel = packed_scores::compile(&Config { varlen: true, ..packed_scores::CONFIG }).unwrap();
    let (cu, h, d, n) = (SeqOffsets::from_lengths(&[5, 7]).unwrap(), 1, 64, 64);
    let a = vec![flashcore::f16::from_f32(0.5); 12 * h * d];
    let bt = vec![flashcore::f16::from_f32(0.5); 2 * h * n * d];
    let mut c = vec![f32::NAN; h * 12 * n];
    let err = simulate(
        &kernel,
        &mut [
            HostArg::Tensor(&a, HostView::contiguous(&[12, h, d])),
            HostArg::Tensor(&bt, HostView::contiguous(&[2, h, n, d])),
            HostArg::F32Mut(&mut c, HostView::contiguous(&[h, 12, n])),
            HostArg::Offsets(&cu),
        ],
        &SimDevice::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`c`") && err.contains("writing one so"), "{err}");
}

/// The dQ and dK/dV kernels under the schedules `launch_backward_async` gives them on sm_90a
/// (`backward_configs_for`: dQ on sm_90a up to D = 128; at D = 128 dQ and the plain and causal
/// dK/dV kernels take 128-row tiles on two compute warpgroups beside a TMA producer, 64-wide
/// score tiles two stages deep) match float64 in the simulator with tails, S ≠ SK
/// both ways, causal and not, f16 and bf16; on sm_89 the schedules stay `backward_configs`'s,
/// and the grouped dK/dV kernels keep theirs on sm_90a (untimed there).
#[test]
fn the_sm90a_backward_schedules_match_float64() {
    use flashcore::Target;
    let on_hopper = backward_configs_for(128, Target::Sm90a);
    for wide in [on_hopper.dkdv, on_hopper.dkdv_causal] {
        assert_eq!((wide.tile_n, wide.stages, wide.target), (64, 2, Target::Sm90a));
    }
    assert_eq!(on_hopper.dkdv_grouped, backward_configs(128).dkdv_grouped);
    assert_eq!(on_hopper.dkdv_grouped_causal, backward_configs(128).dkdv_grouped_causal);
    assert_eq!(backward_configs_for(128, Target::Sm89), backward_configs(128));
    let at_64 = backward_configs_for(64, Target::Sm90a);
    assert_eq!(
        at_64,
        BackwardConfigs {
            dq: Config { target: Target::Sm90a, ..backward_configs(64).dq },
            ..backward_configs(64)
        }
    );
    let cases = [
        (DType::F16, (1, 2, 150, 77), false),
        (DType::Bf16, (2, 2, 130, 200), false),
        (DType::F16, (1, 2, 150, 77), true),
        (DType::Bf16, (1, 2, 70, 201), true),
    ];
    for (i, (dtype, (b, h, s, sk), causal)) in cases.into_iter().enumerate() {
        let shape = AttentionShape { b, h, hk: h, s, sk };
        let dkdv = if causal { on_hopper.dkdv_causal } else { on_hopper.dkdv };
        let configs = (Config { dtype, causal, ..on_hopper.dq }, Config { dtype, ..dkdv });
        let got = check_plain_split(configs, shape, causal, 60 + i as u64);
        let bound = flashcore::tolerance(dtype);
        println!(
            "sm_90a dQ {} / dK/dV {dkdv} {dtype:?} {shape:?} causal {causal}: dq {:.2e} dk {:.2e} dv {:.2e}",
            configs.0, got.dq.rel_l2, got.dk.rel_l2, got.dv.rel_l2
        );
        assert!(
            got.dq.rel_l2 < bound && got.dk.rel_l2 < bound && got.dv.rel_l2 < bound,
            "{dkdv} {shape:?}: {got:?}"
        );
    }
}

/// The dQ kernel on sm_90a, which `passes::split_a_loads` makes possible (its dO, read by
/// `Δ = rowsum(dO ∘ O)` and as the A operand of `dP = dO·Vᵀ`, is loaded a second time for the
/// wgmma), matches float64 in the simulator at D = 64 and 128, causal and not, with tails and
/// grouped heads. `backward_configs_for` gives it sm_90a on Hopper up to D = 128, where it was
/// timed; `backward_configs` (no target) keeps sm_89.
#[test]
fn dq_on_sm90a_matches_float64() {
    use flashcore::Target;
    assert_eq!(backward_configs(128).dq.target, Target::Sm89);
    // At D = 128, 128-row tiles on two compute warpgroups beside a TMA producer.
    assert_eq!(
        backward_configs_for(128, Target::Sm90a).dq,
        Config {
            tile_m: 128,
            warps: 8,
            load_warps: 4,
            tma: true,
            stages: 2,
            target: Target::Sm90a,
            ..backward_configs(128).dq
        }
    );
    assert_eq!(backward_configs_for(64, Target::Sm90a).dq.target, Target::Sm90a);
    assert_eq!(backward_configs_for(256, Target::Sm90a).dq.target, Target::Sm89);
    let bound = flashcore::tolerance(DType::F16);
    for (i, &(b, h, hk, s, sk, d)) in [(1, 2, 1, 77, 150, 64), (2, 2, 2, 130, 100, 128)].iter().enumerate() {
        let dq = Config { target: Target::Sm90a, ..backward_configs(d as u32).dq };
        let dkdv = backward_configs(d as u32).dkdv;
        let kernel = attention_backward_dq::compile(&dq).unwrap_or_else(|e| panic!("{dq}: {e}"));
        assert!(kernel.kernel.values.iter().any(|v| v.name == "dof_a"), "{dq}: dO is loaded once");
        for causal in [false, true] {
            let shape = AttentionShape { b, h, hk, s, sk };
            let dq = Config { causal, ..dq };
            let got = check_plain_split((dq, dkdv), shape, causal, 70 + i as u64);
            println!(
                "sm_90a dQ D={d} causal {causal}: dq {:.2e} delta {:.2e}",
                got.dq.rel_l2, got.delta.rel_l2
            );
            assert!(
                got.dq.rel_l2 < bound && got.delta.rel_l2 < bound,
                "{dq} {shape:?} causal {causal}: {got:?}"
            );
        }
    }
}

/// The plain backward's dQ kernel with the dK/dV kernel for `causal`.
fn plain_pair(causal: bool) -> BackwardPair {
    BackwardPair {
        dq: attention_backward_dq::compile,
        dkdv: if causal { attention_backward_dkdv_causal::compile } else { attention_backward_dkdv::compile },
        scalars: vec![],
    }
}

/// The plain dQ and dK/dV kernels (`plain_pair`) under `configs` against float64 in the
/// simulator, in `configs.0`'s element type.
fn check_plain_split(
    configs: (Config, Config),
    shape: AttentionShape,
    causal: bool,
    seed: u64,
) -> flashcore::simulate::BackwardCheck {
    use flashcore::simulate::check_backward_split;
    let split = match configs.0.dtype {
        DType::F16 => check_backward_split::<flashcore::f16>,
        DType::Bf16 => check_backward_split::<flashcore::bf16>,
    };
    split(&plain_pair(causal), configs, shape, causal, seed, &|_, _, x| (x, 1.0))
        .unwrap_or_else(|e| panic!("{} / {} {shape:?}: {e}", configs.0, configs.1))
}
