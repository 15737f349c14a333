//! Stores of register tiles of any shape, element by element (`store(t.at(..), value)` into
//! f32 output tables), and reductions along the column axis: a tiled product `A·Bᵀ`, its
//! per-tile column sums and maxima, and an attention kernel that also writes its masked scores
//! and their column maxima, run in the PTX simulator against float64 at tails (rows and columns that are
//! not multiples of the tiles), f16 and bf16, under schedules with load warps, softmax warps,
//! split-KV and persistent CTAs. Outputs are poisoned with NaN first, so an element the kernel
//! forgets to write fails, and guard cells around the output catch writes past its end.

use flashcore::flash_kernel;
use flashcore::reference::{self, Problem, Rng, Variant};
use flashcore::simulate::{simulate, HostArg, HostView, SimDevice};
use flashcore::{CompiledKernel, Config, DType, HalfFloat};

/// `c = a · bᵀ` for every batch and head: a tiled GEMM whose contraction is the head dim, its
/// `[TILE_M, TILE_N]` product tiles written element by element at their positions.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn matmul_bt<T>(a: Tensor<T, B, H, M, D>, bt: Tensor<T, B, H, N, D>, c: TensorMut<f32, B, H, M, N>) {
    for (b, h, mt) in tiles(B, H, M / TILE_M) {
        let af = load(a.tile(b, h, mt));
        for nt in pipeline(0..N / TILE_N) {
            let bs = stage(bt.tile(b, h, nt));
            let x = mma(af, bs.t());
            store(c.at(b, h, x.index(M), x.index(N)), x);
        }
    }
}

/// Per `TILE_M` rows of `c = a · bᵀ`, each column's sum and maximum (`[B, H, MT, N]`, with
/// `MT` the number of row tiles): column reductions of a register tile, stored element by
/// element.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn matmul_bt_columns<T>(
    a: Tensor<T, B, H, M, D>,
    bt: Tensor<T, B, H, N, D>,
    col_sums: TensorMut<f32, B, H, MT, N>,
    col_maxes: TensorMut<f32, B, H, MT, N>,
) {
    for (b, h, mt) in tiles(B, H, M / TILE_M) {
        let af = load(a.tile(b, h, mt));
        for nt in pipeline(0..N / TILE_N) {
            let bs = stage(bt.tile(b, h, nt));
            let x = mma(af, bs.t());
            store(col_sums.at(b, h, mt, x.index(N)), col_sum(x));
            store(col_maxes.at(b, h, mt, x.index(N)), col_max(x));
        }
    }
}

/// Attention of query head `h + 1` over key head `h` into output head `h`: a computed head
/// index. The last head's query tile lies past its axis, so it reads as zeros (uniform
/// attention: the mean of V); a store at a head past the axis (`h + H`) writes nothing.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn next_head_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, H, SK, D>,
    v: Tensor<T, B, H, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let next = h + 1;
        let qf = load(q.tile(b, next, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k.tile(b, h, kt));
            let vs = stage(v.tile(b, h, kt));
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            let m_new = max(m, row_max(s));
            let p = exp2(s - m_new);
            let alpha = exp2(m - m_new);
            l = l * alpha + row_sum(p);
            acc = acc * alpha;
            m = m_new;
            acc = mma(p.to::<T>(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
        let past = h + H;
        store(o.tile(b, past, qt), acc * 0.0);
    }
}

/// `matmul_bt` into a padded output `[B, H, MP, NP]` (`MP ≥ M`, `NP ≥ N`): the elements of
/// rows past `M` and columns past `N` do not exist, so they are not stored, although the
/// table has room for them.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn matmul_bt_padded<T>(a: Tensor<T, B, H, M, D>, bt: Tensor<T, B, H, N, D>, c: TensorMut<f32, B, H, MP, NP>) {
    for (b, h, mt) in tiles(B, H, M / TILE_M) {
        let af = load(a.tile(b, h, mt));
        for nt in pipeline(0..N / TILE_N) {
            let bs = stage(bt.tile(b, h, nt));
            let x = mma(af, bs.t());
            store(c.at(b, h, x.index(M), x.index(N)), x);
        }
    }
}

/// Sliding-window attention that also writes the scores its softmax sees (in its exp2 domain):
/// `scale · log2(e) · q·k`, or
/// -inf where the window (keys within `window` of the query's diagonal, both sides) or, with
/// `Config::causal`, the diagonal masks a key; and per Q tile, each key's largest score
/// (`[B, H, QT, SK]`, `QT` the number of Q tiles).
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn attention_with_scores<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    scores: Option<TensorMut<f32, B, H, S, SK>>,
    key_maxes: Option<TensorMut<f32, B, H, QT, SK>>,
    scale: f32,
    window: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let diagonal = s.index(S) + (SK - S);
            #[role(compute)]
            let s = mask(s, s.index(SK) >= diagonal - window && s.index(SK) <= diagonal + window);
            store(scores.at(b, h, s.index(S), s.index(SK)), s);
            store(key_maxes.at(b, h, qt, s.index(SK)), col_max(s));
            #[role(softmax)]
            {
                let m_new = max(m, row_max(s));
                let p = exp2(s - m_new);
                let alpha = exp2(m - m_new);
                l = l * alpha + row_sum(p);
                acc = acc * alpha;
                m = m_new;
            }
            #[role(compute)]
            acc = mma(p.to::<T>(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

const NAN_GUARD: usize = 7;

/// Random inputs rounded to `dtype`, row-major.
fn inputs(rng: &mut Rng, dtype: DType, n: usize) -> Vec<f64> {
    (0..n).map(|_| flashcore::round_to(dtype, rng.normal())).collect()
}

fn typed<T: HalfFloat>(x: &[f64]) -> Vec<T> {
    x.iter().map(|v| T::from_f64(*v)).collect()
}

/// An output table of `n` elements poisoned with NaN, with `NAN_GUARD` guard cells after it.
fn poisoned(n: usize) -> Vec<f32> {
    vec![f32::NAN; n + NAN_GUARD]
}

/// Runs `matmul_bt` (under `config`) on random `[b, h, m, D]` and `[b, h, n, D]` inputs and
/// returns the product and its float64 reference.
fn run_matmul<T: HalfFloat>(
    kernel: &CompiledKernel,
    (b, h, m, n): (usize, usize, usize, usize),
    seed: u64,
) -> (Vec<f32>, Vec<f64>) {
    let d = kernel.kernel.config.head_dim as usize;
    let mut rng = Rng::new(seed);
    let (a, bt) = (inputs(&mut rng, T::DTYPE, b * h * m * d), inputs(&mut rng, T::DTYPE, b * h * n * d));
    let (ah, bh) = (typed::<T>(&a), typed::<T>(&bt));
    let mut c = poisoned(b * h * m * n);
    let view = |s: &[usize]| HostView::contiguous(s);
    let mut args = vec![
        HostArg::Tensor(&ah, view(&[b, h, m, d])),
        HostArg::Tensor(&bh, view(&[b, h, n, d])),
        HostArg::F32Mut(&mut c, view(&[b, h, m, n])),
    ];
    simulate(kernel, &mut args, &SimDevice::default())
        .unwrap_or_else(|e| panic!("{}: {e}", kernel.kernel.config));
    let mut want = vec![0.0; b * h * m * n];
    for bh_ in 0..b * h {
        for i in 0..m {
            for j in 0..n {
                want[(bh_ * m + i) * n + j] =
                    (0..d).map(|x| a[(bh_ * m + i) * d + x] * bt[(bh_ * n + j) * d + x]).sum();
            }
        }
    }
    (c, want)
}

/// Every element written, within `bound` of float64 (relative L2), guard cells untouched.
fn assert_matches(what: &str, got: &[f32], want: &[f64], bound: f64) {
    let (body, guard) = got.split_at(want.len());
    assert!(guard.iter().all(|x| x.is_nan()), "{what}: wrote past the end of the output: {guard:?}");
    let unwritten = body.iter().filter(|x| x.is_nan()).count();
    assert_eq!(unwritten, 0, "{what}: {unwritten} of {} elements never written", body.len());
    let mismatched_inf = body.iter().zip(want).filter(|(g, w)| g.is_infinite() != w.is_infinite()).count();
    assert_eq!(mismatched_inf, 0, "{what}: {mismatched_inf} elements masked on one side only");
    let (finite_got, finite_want): (Vec<f64>, Vec<f64>) =
        body.iter().zip(want).filter(|(_, w)| w.is_finite()).map(|(g, w)| (*g as f64, *w)).unzip();
    let err = reference::compare(&finite_got, &finite_want);
    assert!(err.rel_l2 < bound, "{what}: {err:?}");
    println!("{what:<80} rel_l2 {:.2e}", err.rel_l2);
}

/// Configs the store kernels run under: declared, bf16, 128-row tiles with a_in_smem and
/// 3 stages, load warps, persistent CTAs.
fn configs(declared: Config) -> Vec<Config> {
    vec![
        declared,
        Config { dtype: DType::Bf16, ..declared },
        Config { tile_m: 128, warps: 8, stages: 3, a_in_smem: true, ..declared },
        Config { load_warps: 1, stages: 3, ..declared },
        Config { persistent: true, tile_n: 32, ..declared },
    ]
}

/// The configs of an online softmax: those above, causal, softmax warps, split-KV.
fn softmax_configs(declared: Config) -> Vec<Config> {
    let mut all = configs(declared);
    all.extend([
        Config { causal: true, ..declared },
        Config { load_warps: 1, softmax_warps: 4, causal: true, ..declared },
        Config { tile_m: 32, tile_n: 128, kv_splits: 2, ..declared },
    ]);
    all
}

#[test]
fn a_product_tile_of_any_shape_is_stored_element_by_element() {
    for config in configs(matmul_bt::CONFIG) {
        let kernel = matmul_bt::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        for (i, shape) in [(1, 2, 77, 150), (2, 1, 130, 100), (1, 1, 64, 64)].into_iter().enumerate() {
            let (got, want) = match config.dtype {
                DType::F16 => run_matmul::<flashcore::f16>(&kernel, shape, 3 + i as u64),
                DType::Bf16 => run_matmul::<flashcore::bf16>(&kernel, shape, 3 + i as u64),
            };
            // f32 accumulation of exact products: only the summation order differs.
            assert_matches(&format!("matmul_bt {config} {shape:?}"), &got, &want, 1e-5);
        }
    }
}

/// What one run of `attention_with_scores` gave, with its float64 references.
struct ScoresRun {
    out: Vec<f64>,
    want_out: Vec<f64>,
    scores: Option<Vec<f32>>,
    want_scores: Vec<f64>,
    key_maxes: Option<Vec<f32>>,
    want_key_maxes: Vec<f64>,
}

fn run_scores<T: HalfFloat>(
    kernel: &CompiledKernel,
    (b, h, hk, s, sk): (usize, usize, usize, usize, usize),
    window: usize,
    with_scores: bool,
    seed: u64,
) -> ScoresRun {
    let config = kernel.kernel.config;
    let d = config.head_dim as usize;
    let mut rng = Rng::new(seed);
    let q = inputs(&mut rng, T::DTYPE, b * h * s * d);
    let k = inputs(&mut rng, T::DTYPE, b * hk * sk * d);
    let v = inputs(&mut rng, T::DTYPE, b * hk * sk * d);
    let (qh, kh, vh) = (typed::<T>(&q), typed::<T>(&k), typed::<T>(&v));
    let mut o = vec![T::NAN; b * h * s * d];
    let mut scores = poisoned(b * h * s * sk);
    let (tm, qt) = (config.tile_m as usize, s.div_ceil(config.tile_m as usize));
    let mut key_maxes = poisoned(b * h * qt * sk);
    let scale = config.default_scale();
    let view = |x: &[usize]| HostView::contiguous(x);
    let mut args = vec![
        HostArg::Tensor(&qh, view(&[b, h, s, d])),
        HostArg::Tensor(&kh, view(&[b, hk, sk, d])),
        HostArg::Tensor(&vh, view(&[b, hk, sk, d])),
        HostArg::TensorMut(&mut o, view(&[b, h, s, d])),
        if with_scores { HostArg::F32Mut(&mut scores, view(&[b, h, s, sk])) } else { HostArg::Absent },
        if with_scores { HostArg::F32Mut(&mut key_maxes, view(&[b, h, qt, sk])) } else { HostArg::Absent },
        HostArg::F32(scale),
        HostArg::F32(window as f32),
    ];
    simulate(kernel, &mut args, &SimDevice::default()).unwrap_or_else(|e| panic!("{config}: {e}"));
    let shift = sk as i64 - s as i64;
    let in_window = move |i: usize, j: usize| (j as i64 - i as i64 - shift).abs() <= window as i64;
    let causal = config.causal;
    let seen = move |i: usize, j: usize| in_window(i, j) && (!causal || j as i64 <= i as i64 + shift);
    let variant = Variant::new(|_, _, _, _, x| x, move |_, _, i, j| in_window(i, j));
    let scale = scale as f64;
    let problem = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale, causal };
    let (want_out, _) = reference::attention_variant(&problem, &variant);
    let mut want_scores = vec![f64::NEG_INFINITY; b * h * s * sk];
    for bi in 0..b {
        for hi in 0..h {
            let kv = bi * hk + hi / (h / hk);
            for i in 0..s {
                for j in (0..sk).filter(|j| seen(i, *j)) {
                    let dot: f64 =
                        (0..d).map(|x| q[((bi * h + hi) * s + i) * d + x] * k[(kv * sk + j) * d + x]).sum();
                    want_scores[((bi * h + hi) * s + i) * sk + j] = scale * std::f64::consts::LOG2_E * dot;
                }
            }
        }
    }
    let mut want_key_maxes = vec![f64::NEG_INFINITY; b * h * qt * sk];
    for bh_ in 0..b * h {
        for i in 0..s {
            for j in 0..sk {
                let at = (bh_ * qt + i / tm) * sk + j;
                want_key_maxes[at] = want_key_maxes[at].max(want_scores[(bh_ * s + i) * sk + j]);
            }
        }
    }
    ScoresRun {
        out: o.iter().map(|x| x.to_f64()).collect(),
        want_out,
        scores: with_scores.then_some(scores),
        want_scores,
        key_maxes: with_scores.then_some(key_maxes),
        want_key_maxes,
    }
}

#[test]
fn masked_scores_are_stored_from_inside_the_kv_loop() {
    for config in softmax_configs(attention_with_scores::CONFIG) {
        let kernel = attention_with_scores::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        for (i, (shape, window)) in
            [((1, 2, 1, 77, 150), 40), ((2, 2, 2, 130, 100), 200), ((1, 1, 1, 200, 200), 20)]
                .into_iter()
                .enumerate()
        {
            for with_scores in [true, false] {
                let seed = 11 + i as u64;
                let run = match config.dtype {
                    DType::F16 => run_scores::<flashcore::f16>(&kernel, shape, window, with_scores, seed),
                    DType::Bf16 => run_scores::<flashcore::bf16>(&kernel, shape, window, with_scores, seed),
                };
                let what = format!("{config} {shape:?} window {window} scores {with_scores}");
                let err = reference::compare(&run.out, &run.want_out);
                assert!(err.rel_l2 < flashcore::tolerance(config.dtype), "{what}: output {err:?}");
                if let Some(scores) = &run.scores {
                    assert_matches(&format!("scores {what}"), scores, &run.want_scores, 1e-5);
                }
                if let Some(maxes) = &run.key_maxes {
                    assert_matches(&format!("key maxima {what}"), maxes, &run.want_key_maxes, 1e-5);
                }
            }
        }
    }
}

#[test]
fn elements_past_the_end_of_their_sequences_are_not_stored() {
    let (b, h, m, n, d) = (1, 1, 77, 90, 64);
    let (mp, np) = (128, 128);
    for config in configs(matmul_bt_padded::CONFIG).into_iter().filter(|c| c.dtype == DType::F16) {
        let kernel = matmul_bt_padded::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let mut rng = Rng::new(5);
        let (a, bt) =
            (inputs(&mut rng, DType::F16, b * h * m * d), inputs(&mut rng, DType::F16, b * h * n * d));
        let (ah, bh) = (typed::<flashcore::f16>(&a), typed::<flashcore::f16>(&bt));
        let mut c = vec![f32::NAN; mp * np];
        let view = |x: &[usize]| HostView::contiguous(x);
        let mut args = vec![
            HostArg::Tensor(&ah, view(&[b, h, m, d])),
            HostArg::Tensor(&bh, view(&[b, h, n, d])),
            HostArg::F32Mut(&mut c, view(&[b, h, mp, np])),
        ];
        simulate(&kernel, &mut args, &SimDevice::default()).unwrap_or_else(|e| panic!("{config}: {e}"));
        for i in 0..mp {
            for j in 0..np {
                let got = c[i * np + j];
                if i < m && j < n {
                    let want: f64 = (0..d).map(|x| a[i * d + x] * bt[j * d + x]).sum();
                    assert!(
                        (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{config}: c[{i}][{j}] = {got}, want {want}"
                    );
                } else {
                    assert!(
                        got.is_nan(),
                        "{config}: c[{i}][{j}] lies past the end of its sequence but holds {got}"
                    );
                }
            }
        }
    }
}

/// The store kernels, as the registry lists them in this test binary.
fn store_kernels() -> Vec<&'static flashcore::registry::KernelEntry> {
    let kernels: Vec<_> = flashcore::registry::kernels()
        .into_iter()
        .filter(|e| {
            ["matmul_bt", "matmul_bt_padded", "matmul_bt_columns", "attention_with_scores"].contains(&e.name)
        })
        .collect();
    assert_eq!(kernels.len(), 4);
    kernels
}

/// The text IR of a kernel that stores element by element reads back, before and after every
/// pass, and the passes give the same result on the parsed kernel.
#[test]
fn element_stores_round_trip_through_the_text_ir() {
    use flashcore::ir::{parse_kernel, passes};
    for entry in store_kernels() {
        let mut configs = configs(entry.config);
        if entry.name == "attention_with_scores" {
            configs = softmax_configs(entry.config);
        }
        for config in configs {
            let mut kernel = flashcore::ir::lower(&(entry.program)(), &config).unwrap();
            assert!(kernel.to_string().contains(".at("), "{}: {kernel}", entry.name);
            for (name, pass) in passes::PASSES.iter() {
                kernel = pass(kernel).unwrap();
                let text = kernel.to_string();
                let parsed = parse_kernel(&text)
                    .unwrap_or_else(|e| panic!("{} {config} after {name}: {e}\n{text}", entry.name));
                assert_eq!(parsed.to_string(), text, "{} {config} after {name}", entry.name);
            }
        }
    }
}

/// The store kernels assemble for sm_89 and sm_90 with no spills and no stack, under every
/// config they run under above.
#[test]
fn element_stores_assemble_without_spills() {
    let ptxas = match flashcore::ptxas::find() {
        Some(p) => p,
        None if std::env::var_os("CI").is_some() => panic!("ptxas is required in CI: run scripts/test.sh"),
        None => return eprintln!("skipping: ptxas not found (scripts/test.sh installs it)"),
    };
    for entry in store_kernels() {
        let configs = if entry.name == "attention_with_scores" {
            softmax_configs(entry.config)
        } else {
            configs(entry.config)
        };
        for config in configs {
            let compiled = flashcore::compile(&(entry.program)(), &config).unwrap();
            for arch in ["sm_89", "sm_90"] {
                let report = flashcore::ptxas::assemble(&ptxas, &compiled.ptx.text, arch).unwrap();
                assert_eq!(
                    (report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes),
                    (0, 0, 0),
                    "{} {config} {arch}:\n{}",
                    entry.name,
                    report.text
                );
            }
        }
    }
}

/// The PTX of the product kernel, pinned: the element stores are predicated `st.global.f32`s
/// whose addresses and bounds tests are shared by the elements of a row.
#[test]
fn matmul_ptx_snapshot() {
    let compiled = matmul_bt::compile(&matmul_bt::CONFIG).unwrap();
    insta::assert_snapshot!("stores_matmul_bt_ptx", compiled.ptx.text);
}

/// On a GPU (skipped with a message without one): the product and the scores kernels through
/// their typed launchers at shapes with tails, outputs poisoned with NaN first, every element
/// checked against float64. `scripts/gpu-stores.sh` runs this binary on the GPU machine.
#[test]
fn element_stores_run_on_the_gpu() {
    let device = match flashcore::runtime::Device::new(0) {
        Ok(d) => d,
        Err(e) => return eprintln!("skipping the GPU check: {e}"),
    };
    let f16 = |x: &[f64]| typed::<flashcore::f16>(x);
    // The product at 2x4x1000x1500, D = 64.
    let (b, h, m, n, d) = (2, 4, 1000, 1500, 64);
    let mut rng = Rng::new(21);
    let (a, bt) = (inputs(&mut rng, DType::F16, b * h * m * d), inputs(&mut rng, DType::F16, b * h * n * d));
    for config in [matmul_bt::CONFIG, Config { tile_m: 128, warps: 8, stages: 3, ..matmul_bt::CONFIG }] {
        let ad = device.upload(&f16(&a), &[b, h, m, d]).unwrap();
        let bd = device.upload(&f16(&bt), &[b, h, n, d]).unwrap();
        let mut cd = device.filled(&[b, h, m, n], f32::NAN).unwrap();
        matmul_bt::launch(&device, &config, &ad, &bd, &mut cd).unwrap();
        let c = device.download(&cd).unwrap();
        let mut want = vec![0.0; b * h * m * n];
        for bh_ in 0..b * h {
            for i in 0..m {
                for j in 0..n {
                    want[(bh_ * m + i) * n + j] =
                        (0..d).map(|x| a[(bh_ * m + i) * d + x] * bt[(bh_ * n + j) * d + x]).sum();
                }
            }
        }
        let mut guarded = c.clone();
        guarded.extend([f32::NAN; NAN_GUARD]);
        assert_matches(&format!("GPU matmul_bt {config} {:?}", (b, h, m, n)), &guarded, &want, 1e-5);
    }
    // The scores at 1x4(2)x1000x1100, window 300, causal and not.
    let (b, h, hk, s, sk, window) = (1, 4, 2, 1000, 1100, 300.0f32);
    let q = inputs(&mut rng, DType::F16, b * h * s * d);
    let k = inputs(&mut rng, DType::F16, b * hk * sk * d);
    let v = inputs(&mut rng, DType::F16, b * hk * sk * d);
    for causal in [false, true] {
        let config = Config { causal, ..attention_with_scores::CONFIG };
        let scale = config.default_scale();
        let qd = device.upload(&f16(&q), &[b, h, s, d]).unwrap();
        let kd = device.upload(&f16(&k), &[b, hk, sk, d]).unwrap();
        let vd = device.upload(&f16(&v), &[b, hk, sk, d]).unwrap();
        let mut od = device.filled(&[b, h, s, d], flashcore::f16::NAN).unwrap();
        let mut sd = device.filled(&[b, h, s, sk], f32::NAN).unwrap();
        let (tm, qt) = (config.tile_m as usize, s.div_ceil(config.tile_m as usize));
        let mut md = device.filled(&[b, h, qt, sk], f32::NAN).unwrap();
        let (scores_out, maxes_out) = (Some(&mut sd), Some(&mut md));
        attention_with_scores::launch(
            &device, &config, &qd, &kd, &vd, &mut od, scores_out, maxes_out, scale, window,
        )
        .unwrap();
        let (o, scores) = (device.download(&od).unwrap(), device.download(&sd).unwrap());
        let key_maxes = device.download(&md).unwrap();
        let shift = sk as i64 - s as i64;
        let in_window = move |i: usize, j: usize| (j as i64 - i as i64 - shift).abs() <= window as i64;
        let variant = Variant::new(|_, _, _, _, x| x, move |_, _, i, j| in_window(i, j));
        let problem = Problem { q: &q, k: &k, v: &v, b, h, hk, s, sk, d, scale: scale as f64, causal };
        let (want_out, _) = reference::attention_variant(&problem, &variant);
        let got: Vec<f64> = o.iter().map(|x| x.to_f64()).collect();
        let err = reference::compare(&got, &want_out);
        assert!(err.rel_l2 < flashcore::tolerance(DType::F16), "GPU scores {config}: output {err:?}");
        let mut want_scores = vec![f64::NEG_INFINITY; b * h * s * sk];
        for hi in 0..h {
            let kv = hi / (h / hk);
            for i in 0..s {
                for j in (0..sk).filter(|j| in_window(i, *j) && (!causal || *j as i64 <= i as i64 + shift)) {
                    let dot: f64 = (0..d).map(|x| q[(hi * s + i) * d + x] * k[(kv * sk + j) * d + x]).sum();
                    want_scores[(hi * s + i) * sk + j] = scale as f64 * std::f64::consts::LOG2_E * dot;
                }
            }
        }
        let mut guarded = scores.clone();
        guarded.extend([f32::NAN; NAN_GUARD]);
        println!("GPU attention_with_scores {config}: output rel_l2 {:.2e}", err.rel_l2);
        assert_matches(&format!("GPU scores {config}"), &guarded, &want_scores, 1e-5);
        let mut want_maxes = vec![f64::NEG_INFINITY; b * h * qt * sk];
        for hi in 0..h {
            for i in 0..s {
                for j in 0..sk {
                    let at = (hi * qt + i / tm) * sk + j;
                    want_maxes[at] = want_maxes[at].max(want_scores[(hi * s + i) * sk + j]);
                }
            }
        }
        let mut guarded = key_maxes.clone();
        guarded.extend([f32::NAN; NAN_GUARD]);
        assert_matches(&format!("GPU key maxima {config}"), &guarded, &want_maxes, 1e-5);
    }
}

#[test]
fn column_reductions_cover_every_row_of_the_tile_and_no_row_past_its_end() {
    for config in configs(matmul_bt_columns::CONFIG) {
        let kernel = matmul_bt_columns::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let tm = config.tile_m as usize;
        for (i, (b, h, m, n)) in
            [(1usize, 2usize, 77usize, 150usize), (2, 1, 130, 100), (1, 1, 64, 64)].into_iter().enumerate()
        {
            let d = config.head_dim as usize;
            let mt = m.div_ceil(tm);
            let mut rng = Rng::new(40 + i as u64);
            let (a, bt) = (
                inputs(&mut rng, config.dtype, b * h * m * d),
                inputs(&mut rng, config.dtype, b * h * n * d),
            );
            let (mut sums, mut maxes) = (poisoned(b * h * mt * n), poisoned(b * h * mt * n));
            let view = |x: &[usize]| HostView::contiguous(x);
            match config.dtype {
                DType::F16 => {
                    let (ah, bh) = (typed::<flashcore::f16>(&a), typed::<flashcore::f16>(&bt));
                    let mut args = vec![
                        HostArg::Tensor(&ah, view(&[b, h, m, d])),
                        HostArg::Tensor(&bh, view(&[b, h, n, d])),
                        HostArg::F32Mut(&mut sums, view(&[b, h, mt, n])),
                        HostArg::F32Mut(&mut maxes, view(&[b, h, mt, n])),
                    ];
                    simulate(&kernel, &mut args, &SimDevice::default()).unwrap();
                }
                DType::Bf16 => {
                    let (ah, bh) = (typed::<flashcore::bf16>(&a), typed::<flashcore::bf16>(&bt));
                    let mut args = vec![
                        HostArg::Tensor(&ah, view(&[b, h, m, d])),
                        HostArg::Tensor(&bh, view(&[b, h, n, d])),
                        HostArg::F32Mut(&mut sums, view(&[b, h, mt, n])),
                        HostArg::F32Mut(&mut maxes, view(&[b, h, mt, n])),
                    ];
                    simulate(&kernel, &mut args, &SimDevice::default()).unwrap();
                }
            }
            let (mut want_sums, mut want_maxes) =
                (vec![0.0; b * h * mt * n], vec![f64::NEG_INFINITY; b * h * mt * n]);
            for bh_ in 0..b * h {
                for row in 0..m {
                    for j in 0..n {
                        let c: f64 =
                            (0..d).map(|x| a[(bh_ * m + row) * d + x] * bt[(bh_ * n + j) * d + x]).sum();
                        let at = (bh_ * mt + row / tm) * n + j;
                        want_sums[at] += c;
                        want_maxes[at] = want_maxes[at].max(c);
                    }
                }
            }
            let what = format!("{config} {:?}", (b, h, m, n));
            assert_matches(&format!("column sums {what}"), &sums, &want_sums, 1e-5);
            assert_matches(&format!("column maxima {what}"), &maxes, &want_maxes, 1e-6);
        }
    }
}

#[test]
fn computed_head_indices_past_their_axis_read_zeros_and_store_nothing() {
    let (b, h, s, sk, d) = (2, 3, 77, 100, 64);
    for config in
        [next_head_attention::CONFIG, Config { load_warps: 1, stages: 3, ..next_head_attention::CONFIG }]
    {
        let kernel = next_head_attention::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let mut rng = Rng::new(77);
        let (q, k, v) = (
            inputs(&mut rng, DType::F16, b * h * s * d),
            inputs(&mut rng, DType::F16, b * h * sk * d),
            inputs(&mut rng, DType::F16, b * h * sk * d),
        );
        let (qh, kh, vh) =
            (typed::<flashcore::f16>(&q), typed::<flashcore::f16>(&k), typed::<flashcore::f16>(&v));
        let mut o = vec![flashcore::f16::NAN; b * h * s * d];
        let view = |x: &[usize]| HostView::contiguous(x);
        let scale = config.default_scale();
        let mut args = vec![
            HostArg::Tensor(&qh, view(&[b, h, s, d])),
            HostArg::Tensor(&kh, view(&[b, h, sk, d])),
            HostArg::Tensor(&vh, view(&[b, h, sk, d])),
            HostArg::TensorMut(&mut o, view(&[b, h, s, d])),
            HostArg::F32(scale),
        ];
        simulate(&kernel, &mut args, &SimDevice::default()).unwrap_or_else(|e| panic!("{config}: {e}"));
        drop(args);
        // Query head h + 1 (zeros past the last head) attends over key head h.
        let mut shifted = vec![0.0; b * h * s * d];
        for bi in 0..b {
            for hi in 0..h - 1 {
                let (to, from) = ((bi * h + hi) * s * d, (bi * h + hi + 1) * s * d);
                shifted[to..to + s * d].copy_from_slice(&q[from..from + s * d]);
            }
        }
        let problem =
            Problem { q: &shifted, k: &k, v: &v, b, h, hk: h, s, sk, d, scale: scale as f64, causal: false };
        let want = reference::attention(&problem);
        let got: Vec<f64> = o.iter().map(|x| x.to_f64()).collect();
        let err = reference::compare(&got, &want);
        assert!(err.non_finite == 0 && err.rel_l2 < flashcore::tolerance(DType::F16), "{config}: {err:?}");
        println!("next_head_attention {config}: rel_l2 {:.2e}", err.rel_l2);
    }
}
