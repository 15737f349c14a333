//! probe
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn attention_dq<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, H, SK, D>,
    v: Tensor<T, B, H, SK, D>,
    o: Tensor<T, B, H, S, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    dq: TensorMut<T, B, H, S, D>,
    delta: TensorMut<f32, B, H, S>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let dof = load(d_out.tile(b, h, qt));
        let of = load(o.tile(b, h, qt));
        let dd = row_sum(dof.to::<f32>() * of.to::<f32>());
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h, kt));
                let vs = stage(v.tile(b, h, kt));
            }
            #[role(compute)]
            {
                let s = mma(qf, ks.t());
                let p = exp2(s * (scale * LOG2_E) - lse.at(b, h, s.index(S)) * LOG2_E);
                let dp = mma(dof, vs.t());
                let ds = p * (dp - dd);
                acc = mma(ds.to::<T>(), ks, acc);
            }
        }
        store(delta.tile(b, h, qt), dd);
        store(dq.tile(b, h, qt), acc * scale);
    }
}


#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn attention_dkdv<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, H, SK, D>,
    v: Tensor<T, B, H, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dk: TensorMut<T, B, H, SK, D>,
    dv: TensorMut<T, B, H, SK, D>,
    scale: f32,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h, kt));
        let vf = load(v.tile(b, h, kt));
        let mut dk_acc = zeros([TILE_M, D]);
        let mut dv_acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let dos = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            {
                let st = mma(kf, qs.t());
                let pt = exp2(st * (scale * LOG2_E) - lse.at(b, h, st.index(S)) * LOG2_E);
                dv_acc = mma(pt.to::<T>(), dos, dv_acc);
                let dpt = mma(vf, dos.t());
                let ds_t = pt * (dpt - delta.at(b, h, st.index(S)));
                dk_acc = mma(ds_t.to::<T>(), qs, dk_acc);
            }
        }
        store(dk.tile(b, h, kt), dk_acc * scale);
        store(dv.tile(b, h, kt), dv_acc);
    }
}

use flashcore::simulate::{simulate, HostArg, HostView, SimDevice};
use flashcore::{DType, HalfFloat};

struct Grads {
    o: Vec<f64>,
    lse: Vec<f64>,
    delta: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// The forward and backward of `softmax(scale·Q·Kᵀ)·V` in float64.
#[allow(clippy::too_many_arguments)]
fn reference(
    (b, h, s, sk, d): (usize, usize, usize, usize, usize),
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: &[f64],
    scale: f64,
    causal: bool,
    round_o: &dyn Fn(f64) -> f64,
) -> Grads {
    let mut r = Grads {
        o: vec![0.0; b * h * s * d],
        lse: vec![0.0; b * h * s],
        delta: vec![0.0; b * h * s],
        dq: vec![0.0; b * h * s * d],
        dk: vec![0.0; b * h * sk * d],
        dv: vec![0.0; b * h * sk * d],
    };
    let sees = |i: usize, j: usize| !causal || j as i64 <= i as i64 + sk as i64 - s as i64;
    for bh in 0..b * h {
        let (qo, ko) = (bh * s * d, bh * sk * d);
        for i in 0..s {
            let scores: Vec<f64> = (0..sk)
                .map(|j| {
                    if !sees(i, j) {
                        return f64::NEG_INFINITY;
                    }
                    scale * (0..d).map(|x| q[qo + i * d + x] * k[ko + j * d + x]).sum::<f64>()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            r.lse[bh * s + i] = m + sum.ln();
            let p: Vec<f64> = scores.iter().map(|x| (x - m).exp() / sum).collect();
            for x in 0..d {
                let o: f64 = (0..sk).map(|j| p[j] * v[ko + j * d + x]).sum();
                r.o[qo + i * d + x] = round_o(o);
            }
            let delta: f64 = (0..d).map(|x| g[qo + i * d + x] * r.o[qo + i * d + x]).sum();
            r.delta[bh * s + i] = delta;
            for j in 0..sk {
                let dp: f64 = (0..d).map(|x| g[qo + i * d + x] * v[ko + j * d + x]).sum();
                let ds = p[j] * (dp - delta);
                for x in 0..d {
                    r.dq[qo + i * d + x] += scale * ds * k[ko + j * d + x];
                    r.dk[ko + j * d + x] += scale * ds * q[qo + i * d + x];
                    r.dv[ko + j * d + x] += p[j] * g[qo + i * d + x];
                }
            }
        }
    }
    r
}

fn check<T: HalfFloat>(shape: (usize, usize, usize, usize, usize), seed: u64) {
    let (b, h, s, sk, d) = shape;
    let dtype = T::DTYPE;
    let mut rng = flashcore::reference::Rng::new(seed);
    let mut gen = |n: usize| (0..n).map(|_| flashcore::round_to(dtype, rng.normal())).collect::<Vec<f64>>();
    let (q, k, v, g) = (gen(b * h * s * d), gen(b * h * sk * d), gen(b * h * sk * d), gen(b * h * s * d));
    let scale = 1.0 / (d as f64).sqrt();
    let want = reference(shape, &q, &k, &v, &g, scale, false, &|x| flashcore::round_to(dtype, x));
    let half = |x: &[f64]| x.iter().map(|v| T::from_f64(*v)).collect::<Vec<T>>();
    let (qh, kh, vh, gh, oh) = (half(&q), half(&k), half(&v), half(&g), half(&want.o));
    let lse: Vec<f32> = want.lse.iter().map(|x| *x as f32).collect();
    let (qv, kv, rows) = (
        HostView::contiguous(&[b, h, s, d]),
        HostView::contiguous(&[b, h, sk, d]),
        HostView::contiguous(&[b, h, s]),
    );
    let config = flashcore::Config { dtype, ..attention_dq::CONFIG };
    let dq_kernel = attention_dq::compile(&config).unwrap();
    let (mut dq, mut delta) = (vec![T::NAN; b * h * s * d], vec![f32::NAN; b * h * s]);
    let mut args = [
        HostArg::Tensor(&qh, qv.clone()),
        HostArg::Tensor(&kh, kv.clone()),
        HostArg::Tensor(&vh, kv.clone()),
        HostArg::Tensor(&oh, qv.clone()),
        HostArg::Tensor(&gh, qv.clone()),
        HostArg::F32Table(&lse, rows.clone()),
        HostArg::TensorMut(&mut dq, qv.clone()),
        HostArg::RowsMut(&mut delta, rows.clone()),
        HostArg::F32(scale as f32),
    ];
    simulate(&dq_kernel, &mut args, &SimDevice::default()).unwrap();
    let f = |x: &[T]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    let err = flashcore::reference::compare(&f(&dq), &want.dq);
    println!("dq {shape:?} {dtype:?}: {err:?}");
    let delta64: Vec<f64> = delta.iter().map(|x| *x as f64).collect();
    let derr = flashcore::reference::compare(&delta64, &want.delta);
    println!("delta: {derr:?}");
    let dkdv = attention_dkdv::compile(&flashcore::Config { dtype, ..attention_dkdv::CONFIG }).unwrap();
    let (mut dk, mut dv) = (vec![T::NAN; b * h * sk * d], vec![T::NAN; b * h * sk * d]);
    let mut args = [
        HostArg::Tensor(&qh, qv.clone()),
        HostArg::Tensor(&kh, kv.clone()),
        HostArg::Tensor(&vh, kv.clone()),
        HostArg::Tensor(&gh, qv.clone()),
        HostArg::F32Table(&lse, rows.clone()),
        HostArg::F32Table(&delta, rows.clone()),
        HostArg::TensorMut(&mut dk, kv.clone()),
        HostArg::TensorMut(&mut dv, kv.clone()),
        HostArg::F32(scale as f32),
    ];
    simulate(&dkdv, &mut args, &SimDevice::default()).unwrap();
    let kerr = flashcore::reference::compare(&f(&dk), &want.dk);
    let verr = flashcore::reference::compare(&f(&dv), &want.dv);
    println!("dk: {kerr:?}\ndv: {verr:?}");
    let bound = flashcore::tolerance(dtype);
    assert!(err.rel_l2 < bound && kerr.rel_l2 < bound && verr.rel_l2 < bound && derr.rel_l2 < 1e-5);
}

#[test]
fn backward_matches_float64() {
    check::<flashcore::f16>((1, 2, 77, 150, 64), 3);
    check::<flashcore::f16>((1, 2, 130, 100, 64), 4);
    check::<flashcore::bf16>((1, 2, 130, 100, 64), 5);
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
    let mut gen = |n: usize| (0..n).map(|_| flashcore::round_to(DType::F16, rng.normal() * 0.3)).collect::<Vec<f64>>();
    let (q, k) = (gen(b * h * s * d), gen(b * h * sk * d));
    let half = |x: &[f64]| x.iter().map(|v| flashcore::f16::from_f64(*v)).collect::<Vec<_>>();
    let (qh, kh) = (half(&q), half(&k));
    let (mut sums, mut maxes) = (vec![f32::NAN; b * h * s], vec![f32::NAN; b * h * s]);
    let rows = HostView::contiguous(&[b, h, s]);
    let kernel = product_row_stats::compile(&product_row_stats::CONFIG).unwrap();
    let mut args = [
        HostArg::Tensor(&qh, HostView::contiguous(&[b, h, s, d])),
        HostArg::Tensor(&kh, HostView::contiguous(&[b, h, sk, d])),
        HostArg::RowsMut(&mut sums, rows.clone()),
        HostArg::RowsMut(&mut maxes, rows),
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
    let (serr, merr) =
        (flashcore::reference::compare(&f(&sums), &want_sums), flashcore::reference::compare(&f(&maxes), &want_maxes));
    println!("sums {serr:?}\nmaxes {merr:?}");
    assert!(serr.rel_l2 < 1e-5 && merr.rel_l2 < 1e-6, "{serr:?} {merr:?}");
}
