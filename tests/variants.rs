//! The attention variants of `flashcore::kernels::variants` against float64 references of their
//! formulas (FlexAttention's `score_mod`/`mask_mod`, written out in `reference::Variant`), in the
//! PTX simulator: at tails (S, SK not multiples of the tiles), S ≠ SK, causal and not where it
//! applies, f16 and bf16, grouped K/V heads, and schedules with load warps and split-KV.

use flashcore::kernels::variants::*;
use flashcore::reference::Variant;
use flashcore::simulate::{check_variant, AttentionShape, ExtraArg, SimDevice};
use flashcore::{CompiledKernel, Config, DType, Layout, Target};

/// Configs each variant runs under: the declared one, bf16, causal, load warps with 3 stages,
/// split-KV over two groups of warps, softmax on its own warps, and sm_90a (wgmma) at D = 128
/// and causal.
fn configs(declared: Config) -> Vec<Config> {
    vec![
        declared,
        Config { dtype: DType::Bf16, ..declared },
        Config { causal: true, ..declared },
        Config { stages: 3, load_warps: 1, causal: true, ..declared },
        Config { tile_m: 32, tile_n: 128, warps: 4, kv_splits: 2, ..declared },
        Config { load_warps: 1, softmax_warps: 4, causal: true, ..declared },
        Config { target: Target::Sm90a, ..declared.with_head_dim(128) },
        Config { target: Target::Sm90a, causal: true, ..declared },
    ]
}

/// Shapes with tails: S ≠ SK, neither a multiple of 64, and grouped K/V heads.
const SHAPES: [AttentionShape; 2] = [
    AttentionShape { b: 1, h: 2, hk: 1, s: 77, sk: 150 },
    AttentionShape { b: 2, h: 2, hk: 2, s: 130, sk: 100 },
];

/// Runs `compile(config)` in the simulator, with the parameters `extras(shape)` after `scale`,
/// against `variant(shape, extras)` for every config and shape.
fn check(
    name: &str,
    declared: Config,
    compile: fn(&Config) -> Result<std::sync::Arc<CompiledKernel>, flashcore::Error>,
    shapes: &[AttentionShape],
    extras: &dyn Fn(AttentionShape) -> Vec<ExtraArg>,
    variant: &dyn Fn(AttentionShape, &[ExtraArg]) -> Variant,
) {
    for config in configs(declared) {
        let kernel = compile(&config).unwrap_or_else(|e| panic!("{name} {config}: {e}"));
        for (i, &shape) in shapes.iter().enumerate() {
            let extras = &extras(shape);
            let variant = &variant(shape, extras);
            let got = check_variant(
                &kernel,
                shape,
                Layout::Bhsd,
                17 + i as u64,
                &SimDevice::default(),
                extras,
                variant,
            )
            .unwrap_or_else(|e| panic!("{name} {config} {shape:?}: {e}"));
            let bound = flashcore::tolerance(config.dtype);
            assert!(got.err.rel_l2 < bound, "{name} {config} {shape:?}: {:?}", got.err);
            println!(
                "{name:<24} {:<70} s={:<4} sk={:<4} rel_l2 {:.2e}",
                config.to_string(),
                shape.s,
                shape.sk,
                got.err.rel_l2
            );
            assert!(
                got.lse_max_abs < 1e-2 && got.lse_mismatched == 0,
                "{name} {config} {shape:?}: lse {got:?}"
            );
        }
    }
}

/// Query row `i`'s key position under bottom-right alignment: `i + SK − S`.
fn diag(shape: AttentionShape, i: usize) -> i64 {
    i as i64 + shape.sk as i64 - shape.s as i64
}

const CAP: f64 = 2.0;
const WINDOW: (i64, i64) = (20, 5);

fn softcap(x: f64) -> f64 {
    CAP * (x / CAP).tanh()
}

fn in_window(shape: AttentionShape, i: usize, j: usize) -> bool {
    let d = diag(shape, i);
    (d - WINDOW.0..=d + WINDOW.1).contains(&(j as i64))
}

#[test]
fn softcap_matches_its_formula() {
    let variant = |_, _: &[ExtraArg]| Variant::new(|_, _, _, _, x| softcap(x), |_, _, _, _| true);
    let extras = |_| vec![ExtraArg::F32(CAP as f32)];
    check("softcap", softcap_attention::CONFIG, softcap_attention::compile, &SHAPES, &extras, &variant);
}

#[test]
fn sliding_window_matches_its_formula() {
    let variant =
        |shape, _: &[ExtraArg]| Variant::new(|_, _, _, _, x| x, move |_, _, i, j| in_window(shape, i, j));
    let window = |_| vec![ExtraArg::F32(WINDOW.0 as f32), ExtraArg::F32(WINDOW.1 as f32)];
    check(
        "sliding_window",
        sliding_window_attention::CONFIG,
        sliding_window_attention::compile,
        &SHAPES,
        &window,
        &variant,
    );
}

#[test]
fn alibi_matches_its_formula() {
    let variant = |shape: AttentionShape, _: &[ExtraArg]| {
        let heads = shape.h as f64;
        Variant::new(
            move |_, h, i, j, x| {
                x + (-8.0 * (h as f64 + 1.0) / heads).exp2() * (j as i64 - diag(shape, i)) as f64
            },
            |_, _, _, _| true,
        )
    };
    check("alibi", alibi_attention::CONFIG, alibi_attention::compile, &SHAPES, &|_| vec![], &variant);
}

#[test]
fn prefix_lm_matches_its_formula() {
    let prefix = 40;
    let variant = move |shape, _: &[ExtraArg]| {
        Variant::new(|_, _, _, _, x| x, move |_, _, i, j| j as i64 <= diag(shape, i) || j < prefix)
    };
    let extras = |_| vec![ExtraArg::F32(prefix as f32)];
    check("prefix_lm", prefix_lm_attention::CONFIG, prefix_lm_attention::compile, &SHAPES, &extras, &variant);
}

#[test]
fn sliding_window_with_softcap_matches_its_formula() {
    let variant = |shape, _: &[ExtraArg]| {
        Variant::new(|_, _, _, _, x| softcap(x), move |_, _, i, j| in_window(shape, i, j))
    };
    let scalars =
        |_| vec![ExtraArg::F32(CAP as f32), ExtraArg::F32(WINDOW.0 as f32), ExtraArg::F32(WINDOW.1 as f32)];
    check(
        "sliding_window_softcap",
        sliding_window_softcap_attention::CONFIG,
        sliding_window_softcap_attention::compile,
        &SHAPES,
        &scalars,
        &variant,
    );
}

/// Document ids for a packed batch: sequence `b`'s tokens in documents of `len` tokens, the
/// first one shorter by `b` (so documents start at different places in each sequence).
fn document_ids(shape: AttentionShape, len: usize) -> Vec<i32> {
    (0..shape.b).flat_map(|b| (0..shape.s).map(move |i| ((i + b * 7) / len) as i32)).collect()
}

#[test]
fn document_mask_matches_its_formula() {
    // Self-attention: K/V are the same tokens.
    let shapes = |shape: AttentionShape| AttentionShape { sk: shape.s, ..shape };
    let extras = move |shape| {
        let shape = shapes(shape);
        vec![ExtraArg::I32Table { data: document_ids(shape, 30), shape: vec![shape.b, shape.s] }]
    };
    let variant = |_, extras: &[ExtraArg]| {
        let [ExtraArg::I32Table { data, shape }] = extras else { unreachable!("one i32 table") };
        let (data, s) = (data.clone(), shape[1]);
        Variant::new(|_, _, _, _, x| x, move |b, _, i, j| data[b * s + i] == data[b * s + j])
    };
    let shapes = SHAPES.map(shapes);
    check("document", document_attention::CONFIG, document_attention::compile, &shapes, &extras, &variant);
}

/// Ids that are not runs: token `i` of sequence `b` has id `(i / 23 + b) % 3` (three documents
/// interleaved), so a K/V tile's ids are any of the three and the same id comes back after
/// other ones. The compiler's tile decisions take a table summary's (min, max) a block and
/// assume no order: the kernel must still match the formula at every config.
#[test]
fn document_mask_matches_its_formula_on_ids_in_no_order() {
    let shapes = |shape: AttentionShape| AttentionShape { sk: shape.s, ..shape };
    let ids = |shape: AttentionShape| -> Vec<i32> {
        (0..shape.b).flat_map(|b| (0..shape.s).map(move |i| ((i / 23 + b) % 3) as i32)).collect()
    };
    let extras = move |shape| {
        let shape = shapes(shape);
        vec![ExtraArg::I32Table { data: ids(shape), shape: vec![shape.b, shape.s] }]
    };
    let variant = |_, extras: &[ExtraArg]| {
        let [ExtraArg::I32Table { data, shape }] = extras else { unreachable!("one i32 table") };
        let (data, s) = (data.clone(), shape[1]);
        Variant::new(|_, _, _, _, x| x, move |b, _, i, j| data[b * s + i] == data[b * s + j])
    };
    let shapes = SHAPES.map(shapes);
    check(
        "document, interleaved",
        document_attention::CONFIG,
        document_attention::compile,
        &shapes,
        &extras,
        &variant,
    );
}

/// Per-token document bounds for [`document_ids`]: the first token of each token's document
/// and one past its last (`variants::document_bounds`, checked here against the first and
/// last occurrence of each id, which they are for packed documents).
fn document_bounds(shape: AttentionShape, len: usize) -> [Vec<i32>; 2] {
    let ids = document_ids(shape, len);
    let (mut start, mut end) = (vec![], vec![]);
    for row in ids.chunks(shape.s) {
        let (s, e) = flashcore::kernels::variants::document_bounds(row);
        for i in 0..shape.s {
            assert_eq!(s[i] as usize, row.iter().position(|&d| d == row[i]).unwrap());
            assert_eq!(e[i] as usize, row.iter().rposition(|&d| d == row[i]).unwrap() + 1);
        }
        start.extend(s);
        end.extend(e);
    }
    [start, end]
}

#[test]
fn document_bounds_match_their_formula() {
    let shapes = |shape: AttentionShape| AttentionShape { sk: shape.s, ..shape };
    let extras = move |shape| {
        let shape = shapes(shape);
        let [start, end] = document_bounds(shape, 30);
        let table = |data| ExtraArg::I32Table { data, shape: vec![shape.b, shape.s] };
        vec![table(start), table(end)]
    };
    let variant = |_, extras: &[ExtraArg]| {
        let [ExtraArg::I32Table { data: start, shape }, ExtraArg::I32Table { data: end, .. }] = extras else {
            unreachable!("two i32 tables")
        };
        let (start, end, s) = (start.clone(), end.clone(), shape[1]);
        Variant::new(
            |_, _, _, _, x| x,
            move |b, _, i, j| start[b * s + i] as usize <= j && j < end[b * s + i] as usize,
        )
    };
    let shapes = SHAPES.map(shapes);
    check(
        "document bounds",
        document_bounds_attention::CONFIG,
        document_bounds_attention::compile,
        &shapes,
        &extras,
        &variant,
    );
}

#[test]
fn additive_bias_matches_its_formula() {
    let extras = |shape: AttentionShape| {
        let n = shape.b * shape.h * shape.s * shape.sk;
        let mut rng = flashcore::reference::Rng::new(n as u64);
        let data = (0..n).map(|_| rng.normal() as f32).collect();
        vec![ExtraArg::F32Table { data, shape: vec![shape.b, shape.h, shape.s, shape.sk] }]
    };
    let variant = |_, extras: &[ExtraArg]| {
        let [ExtraArg::F32Table { data, shape }] = extras else { unreachable!("one f32 table") };
        let (data, [h, s, sk]) = (data.clone(), [shape[1], shape[2], shape[3]]);
        Variant::new(
            move |b, hh, i, j, x| x + data[((b * h + hh) * s + i) * sk + j] as f64,
            |_, _, _, _| true,
        )
    };
    check("bias", bias_attention::CONFIG, bias_attention::compile, &SHAPES, &extras, &variant);
}

/// Runs `kernel` at `shape` in the simulator with parameters `extras`, checks it against
/// `variant` in float64 (`what` names the case), and returns the warp instructions it issued
/// and the lane instructions it executed.
fn simulated_instructions(
    kernel: &CompiledKernel,
    shape: AttentionShape,
    extras: &[ExtraArg],
    variant: &Variant,
    what: &str,
) -> (f64, f64) {
    let got = check_variant(kernel, shape, Layout::Bhsd, 5, &SimDevice::default(), extras, variant)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(got.err.rel_l2 < 2e-3, "{what}: {:?}", got.err);
    (got.stats.warp_instructions as f64, got.stats.lane_instructions as f64)
}

/// Block-sparse skipping: with a 128-key causal window at S = 1024 each Q tile visits at most 3
/// K/V tiles (45 visits in all) where a window wider than the sequence visits every tile up to
/// the diagonal (136): the simulator executes under half the instructions, and both match
/// float64.
#[test]
fn sliding_window_skips_the_tiles_outside_the_window() {
    let shape = AttentionShape { b: 1, h: 1, hk: 1, s: 1024, sk: 1024 };
    let config = Config { causal: true, ..sliding_window_attention::CONFIG };
    let kernel = sliding_window_attention::compile(&config).unwrap();
    let mut instructions = vec![];
    for window in [128usize, 100_000] {
        let variant = Variant::new(|_, _, _, _, x| x, move |_, _, i, j| j <= i && i - j <= window);
        let scalars = [ExtraArg::F32(window as f32), ExtraArg::F32(0.0)];
        instructions
            .push(simulated_instructions(&kernel, shape, &scalars, &variant, &format!("window {window}")).0);
    }
    let ratio = instructions[0] / instructions[1];
    println!("window 128 / window past the sequence, warp instructions: {ratio:.3}");
    assert!(ratio < 0.5, "the window visits too many tiles: {ratio:.3} of the full window's instructions");
}

/// Data-dependent skipping: the document mask reads document ids, and each Q tile's K/V loop
/// visits only the tiles whose ids can meet its own (the range of a table over a tile is read
/// from the table). At S = 1024 with 40-token documents a Q tile of 64 rows sees at most 3 K/V
/// tiles where one document over the whole sequence sees all 16: under half the simulated
/// instructions, and both match float64. Ids that are not sorted (documents interleaved) skip
/// less and still match.
#[test]
fn document_mask_skips_the_tiles_of_other_documents() {
    let lowered = document_attention::ir_after(&document_attention::CONFIG, "lower").unwrap().to_string();
    assert!(lowered.contains("skipping tiles that mask #0 empties"), "{lowered}");
    assert!(lowered.contains("doc.at(work_index0, col_pos)"), "{lowered}");
    let shape = AttentionShape { b: 1, h: 1, hk: 1, s: 1024, sk: 1024 };
    for config in [document_attention::CONFIG, Config { causal: true, ..document_attention::CONFIG }] {
        let kernel = document_attention::compile(&config).unwrap();
        let mut instructions = vec![];
        let layouts: [(&str, fn(usize) -> i32); 3] = [
            ("40-token", |i| (i / 40) as i32),
            ("one document", |_| 7),
            ("interleaved", |i| (i / 40 % 3) as i32),
        ];
        for (name, id) in layouts {
            let ids: Vec<i32> = (0..shape.s).map(id).collect();
            let doc = ids.clone();
            let variant = Variant::new(|_, _, _, _, x| x, move |_, _, i, j| doc[i] == doc[j]);
            let extras = [ExtraArg::I32Table { data: ids, shape: vec![1, shape.s] }];
            let what = format!("{config} {name}");
            instructions.push(simulated_instructions(&kernel, shape, &extras, &variant, &what).0);
        }
        let ratio = instructions[0] / instructions[1];
        println!("{config}: 40-token documents / one document, warp instructions: {ratio:.3}");
        assert!(ratio < 0.5, "{config}: the documents visit too many tiles: {ratio:.3}");
    }
}

/// Document bounds skip like document ids: 40-token documents at S = 1024 run in under half the
/// simulated instructions of one document, and match float64.
#[test]
fn document_bounds_skip_the_tiles_of_other_documents() {
    let shape = AttentionShape { b: 1, h: 1, hk: 1, s: 1024, sk: 1024 };
    for config in
        [document_bounds_attention::CONFIG, Config { causal: true, ..document_bounds_attention::CONFIG }]
    {
        let kernel = document_bounds_attention::compile(&config).unwrap();
        let mut instructions = vec![];
        for len in [40, 1024] {
            let [start, end] = document_bounds(shape, len);
            let (s0, e0) = (start.clone(), end.clone());
            let variant =
                Variant::new(|_, _, _, _, x| x, move |_, _, i, j| s0[i] as usize <= j && j < e0[i] as usize);
            let table = |data| ExtraArg::I32Table { data, shape: vec![1, shape.s] };
            let extras = [table(start), table(end)];
            let what = format!("{config} {len}-token documents");
            instructions.push(simulated_instructions(&kernel, shape, &extras, &variant, &what).0);
        }
        let ratio = instructions[0] / instructions[1];
        println!("{config}: 40-token documents as bounds / one document, warp instructions: {ratio:.3}");
        assert!(ratio < 0.5, "{config}: the documents visit too many tiles: {ratio:.3}");
    }
}

/// A mask on a table read at a position past the table's end (`doc.at(b, k + 5)`): the read is
/// clamped to the last element, per element and in the per-tile ranges alike, so skipping
/// agrees with the elementwise mask.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn shifted_documents<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    doc: Tensor<i32, B, S>,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
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
            let s = mask(s, doc.at(b, s.index(S) - 3) == doc.at(b, s.index(SK) + 5));
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
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

#[test]
fn a_table_read_past_its_end_masks_as_it_reads() {
    let lowered = shifted_documents::ir_after(&shifted_documents::CONFIG, "lower").unwrap().to_string();
    assert!(lowered.contains("skipping tiles"), "{lowered}");
    let shape = AttentionShape { b: 2, h: 1, hk: 1, s: 300, sk: 300 };
    for config in [shifted_documents::CONFIG, Config { causal: true, ..shifted_documents::CONFIG }] {
        let kernel = shifted_documents::compile(&config).unwrap();
        let ids: Vec<i32> =
            (0..shape.b * shape.s).map(|i| ((i % shape.s + 17 * (i / shape.s)) / 50) as i32).collect();
        let doc = ids.clone();
        let at = move |b: usize, i: i64| doc[b * 300 + i.clamp(0, 299) as usize];
        let variant =
            Variant::new(|_, _, _, _, x| x, move |b, _, i, j| at(b, i as i64 - 3) == at(b, j as i64 + 5));
        let extras = [ExtraArg::I32Table { data: ids, shape: vec![shape.b, shape.s] }];
        let got = check_variant(&kernel, shape, Layout::Bhsd, 6, &SimDevice::default(), &extras, &variant)
            .unwrap_or_else(|e| panic!("{config}: {e}"));
        assert!(got.err.rel_l2 < 2e-3, "{config}: {:?}", got.err);
    }
}

/// A backward's dV-like product on transposed scores: the work loop walks the keys, each score
/// tile is `K·Qᵀ` (rows are keys), and the causal mask is written with positions. Its
/// orientation comes from the tile's axes, not from how the kernel is laid out, so key `j`
/// gathers exactly the queries `i` with `j ≤ i + SK − S`.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn keys_gather_queries<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, H, SK, D>,
    d_out: Tensor<T, B, H, S, D>,
    dv: TensorMut<T, B, H, SK, D>,
    scale: f32,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h, kt));
        let mut acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let ds = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            let s = mma(kf, qs.t()) * scale;
            #[role(compute)]
            let s = mask(s, s.index(SK) <= s.index(S) + (SK - S));
            #[role(compute)]
            acc = mma(exp(s).to::<T>(), ds, acc);
        }
        store(dv.tile(b, h, kt), acc);
    }
}

#[test]
fn transposed_scores_mask_in_their_own_orientation() {
    use flashcore::simulate::{simulate, HostArg, HostView};
    let (b, h, s, sk, d) = (1, 2, 150, 77, 64);
    let mut rng = flashcore::reference::Rng::new(11);
    let mut gen =
        |n: usize| (0..n).map(|_| flashcore::round_to(DType::F16, rng.normal() * 0.5)).collect::<Vec<f64>>();
    let (q, k, g) = (gen(b * h * s * d), gen(b * h * sk * d), gen(b * h * s * d));
    let scale = 0.125f32;
    let half = |x: &[f64]| x.iter().map(|v| flashcore::f16::from_f64(*v)).collect::<Vec<_>>();
    let (qh, kh, gh) = (half(&q), half(&k), half(&g));
    let mut out = vec![flashcore::f16::NAN; b * h * sk * d];
    let (qv, kv) = (HostView::contiguous(&[b, h, s, d]), HostView::contiguous(&[b, h, sk, d]));
    for config in [keys_gather_queries::CONFIG, Config { load_warps: 1, ..keys_gather_queries::CONFIG }] {
        let kernel = keys_gather_queries::compile(&config).unwrap();
        let mut args = [
            HostArg::Tensor(&qh, qv.clone()),
            HostArg::Tensor(&kh, kv.clone()),
            HostArg::Tensor(&gh, qv.clone()),
            HostArg::TensorMut(&mut out, kv.clone()),
            HostArg::F32(scale),
        ];
        simulate(&kernel, &mut args, &SimDevice::default()).unwrap();
        let mut want = vec![0.0; b * h * sk * d];
        for bh in 0..b * h {
            for j in 0..sk {
                for i in 0..s {
                    if j as i64 > i as i64 + sk as i64 - s as i64 {
                        continue;
                    }
                    let dot: f64 = (0..d).map(|x| k[(bh * sk + j) * d + x] * q[(bh * s + i) * d + x]).sum();
                    let p = flashcore::round_to(DType::F16, (dot * scale as f64).exp());
                    for x in 0..d {
                        want[(bh * sk + j) * d + x] += p * g[(bh * s + i) * d + x];
                    }
                }
            }
        }
        let got: Vec<f64> = out.iter().map(|x| x.to_f64()).collect();
        let err = flashcore::reference::compare(&got, &want);
        assert!(err.rel_l2 < 2e-3, "{config}: {err:?}");
    }
}

/// A mask on a tile the softmax never reads (here a tile of zeros, masked everywhere) must not
/// let the K/V loop skip the softmax's tiles: the kernel is plain attention, and computes it.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn mask_beside_the_softmax<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
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
            let decoy = mask(zeros([TILE_M, TILE_N]), s.index(SK) < 0);
            #[role(compute)]
            let ignored = row_max(decoy);
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
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

#[test]
fn a_mask_beside_the_softmax_skips_nothing() {
    let config = mask_beside_the_softmax::CONFIG;
    let lowered = mask_beside_the_softmax::ir_after(&config, "lower").unwrap().to_string();
    assert!(lowered.contains("mask #0"), "the decoy is a mask of positions:\\n{lowered}");
    assert!(!lowered.contains("skipping tiles"), "the K/V loop must not skip:\\n{lowered}");
    let kernel = mask_beside_the_softmax::compile(&config).unwrap();
    for shape in SHAPES {
        let got =
            check_variant(&kernel, shape, Layout::Bhsd, 4, &SimDevice::default(), &[], &Variant::plain())
                .unwrap();
        assert!(got.err.rel_l2 < 2e-3, "{shape:?}: {:?}", got.err);
    }
}

/// Causal masking written with i32 products: a product can wrap, which no interval of its
/// operands bounds, so the mask is applied element by element (no tile skipping) and still
/// matches float64.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn causal_with_products<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
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
            let s = mask(s, s.index(SK) * 2 <= (s.index(S) + (SK - S)) * 2);
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
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

#[test]
fn a_mask_with_integer_products_is_applied_per_element() {
    let config = causal_with_products::CONFIG;
    let lowered = causal_with_products::ir_after(&config, "lower").unwrap().to_string();
    assert!(!lowered.contains("mask #0"), "an i32 product is not bounded by intervals:\n{lowered}");
    let kernel = causal_with_products::compile(&config).unwrap();
    for shape in SHAPES {
        let variant = Variant::new(|_, _, _, _, x| x, move |_, _, i, j| j as i64 <= diag(shape, i));
        let got =
            check_variant(&kernel, shape, Layout::Bhsd, 6, &SimDevice::default(), &[], &variant).unwrap();
        assert!(got.err.rel_l2 < 2e-3, "{shape:?}: {:?}", got.err);
    }
}

/// A K/V loop over part of the keys, written as the loop's range: batch `b` walks K/V tiles
/// `first[b] ..= last[b]` only (`pipeline(from..min(to, SK / TILE_N))`), with no mask, so its
/// result is attention over exactly the keys of those tiles. Were the range ignored, every key
/// would count.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn key_tile_range<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    first: Tensor<i32, B>,
    last: Tensor<i32, B>,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(first.at(b)..min(last.at(b) + 1, SK / TILE_N)) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
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
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

#[test]
fn a_pipeline_range_walks_only_its_tiles() {
    let lowered = key_tile_range::ir_after(&key_tile_range::CONFIG, "lower").unwrap().to_string();
    assert!(lowered.contains("from bound #0 to bound #1"), "{lowered}");
    assert!(lowered.contains("bound #1: (last.at(work_index0) + 1)"), "{lowered}");
    let parsed = flashcore::ir::parse_kernel(&lowered).unwrap_or_else(|e| panic!("{e}\n{lowered}"));
    assert_eq!(parsed.to_string(), lowered, "the bounds read back from the text IR");
    let shape = AttentionShape { b: 3, h: 2, hk: 1, s: 130, sk: 300 };
    // Batch 0: tiles 1 ..= 2; batch 1: from before the start to past the end (clamped: all);
    // batch 2: an empty range (no key: the output is 0, the log-sum-exp -inf).
    let (first, last) = (vec![1, -3, 3], vec![2, 99, 1]);
    for config in configs(key_tile_range::CONFIG) {
        let kernel = key_tile_range::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let tile_n = config.tile_n as i64;
        let (f, l) = (first.clone(), last.clone());
        let variant = Variant::new(
            |_, _, _, _, x| x,
            move |b, _, _, j| (j as i64) >= f[b] as i64 * tile_n && (j as i64) < (l[b] as i64 + 1) * tile_n,
        );
        let extras = [
            ExtraArg::I32Table { data: first.clone(), shape: vec![3] },
            ExtraArg::I32Table { data: last.clone(), shape: vec![3] },
        ];
        let got = check_variant(&kernel, shape, Layout::Bhsd, 9, &SimDevice::default(), &extras, &variant)
            .unwrap_or_else(|e| panic!("{config}: {e}"));
        let bound = flashcore::tolerance(config.dtype);
        assert!(got.err.rel_l2 < bound, "{config}: {:?}", got.err);
        assert!(got.lse_mismatched == 0, "{config}: {got:?}");
    }
}

/// A source range and a skippable mask together: the K/V loop walks the tiles both allow (the
/// range clamps the mask's bounds scan, and the mask's first tile is raised to the range's).
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn documents_within_a_range<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    doc_start: Tensor<i32, B, S>,
    doc_end: Tensor<i32, B, S>,
    first: Tensor<i32, B>,
    last: Tensor<i32, B>,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(first.at(b)..min(last.at(b) + 1, SK / TILE_N)) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let q_pos = s.index(S);
            #[role(compute)]
            let s = mask(s, s.index(SK) >= doc_start.at(b, q_pos) && s.index(SK) < doc_end.at(b, q_pos));
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
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

#[test]
fn a_range_and_a_skippable_mask_intersect() {
    let lowered =
        documents_within_a_range::ir_after(&documents_within_a_range::CONFIG, "lower").unwrap().to_string();
    assert!(lowered.contains("skipping tiles that mask #0 empties from bound #0 to bound #1"), "{lowered}");
    let shape = AttentionShape { b: 2, h: 2, hk: 2, s: 300, sk: 300 };
    // 70-token documents, shifted per sequence; batch 0 keeps key tiles 1..=3, batch 1 tiles 0..=2.
    let [start, end] = document_bounds(shape, 70);
    let (first, last) = (vec![1, 0], vec![3, 2]);
    for config in configs(documents_within_a_range::CONFIG) {
        let kernel = documents_within_a_range::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let tile_n = config.tile_n as usize;
        let (s0, e0, f, l) = (start.clone(), end.clone(), first.clone(), last.clone());
        let variant = Variant::new(
            |_, _, _, _, x| x,
            move |b, _, i, j| {
                let row = b * shape.s + i;
                (s0[row] as usize..e0[row] as usize).contains(&j)
                    && (f[b] as usize * tile_n..(l[b] as usize + 1) * tile_n).contains(&j)
            },
        );
        let table = |data: &Vec<i32>, shape: Vec<usize>| ExtraArg::I32Table { data: data.clone(), shape };
        let extras = [
            table(&start, vec![shape.b, shape.s]),
            table(&end, vec![shape.b, shape.s]),
            table(&first, vec![shape.b]),
            table(&last, vec![shape.b]),
        ];
        let got = check_variant(&kernel, shape, Layout::Bhsd, 10, &SimDevice::default(), &extras, &variant)
            .unwrap_or_else(|e| panic!("{config}: {e}"));
        let bound = flashcore::tolerance(config.dtype);
        assert!(got.err.rel_l2 < bound, "{config}: {:?}", got.err);
        assert!(got.lse_mismatched == 0, "{config}: {got:?}");
    }
}

/// A block mask computed on the host, as an input: per Q tile, the K/V tiles its documents can
/// reach (`kv_first[b, qt] .. kv_end[b, qt]`, made from the document ids for the config's tile
/// sizes), given as the loop's range; the document mask stays for the scores inside it. The
/// compiler's own scan then starts at the range, so it reads fewer ids.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn documents_with_host_ranges<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    doc: Tensor<i32, B, S>,
    kv_first: Tensor<i32, B, QT>,
    kv_end: Tensor<i32, B, QT>,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(kv_first.at(b, qt)..min(kv_end.at(b, qt), SK / TILE_N)) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(compute)]
            let s = mask(s, doc.at(b, s.index(S)) == doc.at(b, s.index(SK)));
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
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

/// Per (sequence, Q tile): the first K/V tile and one past the last that the tile's documents
/// reach (`ids` `[B, S]`, packed documents), for tiles of `tile_m` queries and `tile_n` keys.
fn host_tile_ranges(ids: &[i32], s: usize, tile_m: usize, tile_n: usize) -> (Vec<i32>, Vec<i32>, usize) {
    let q_tiles = s.div_ceil(tile_m);
    let (mut first, mut end) = (vec![], vec![]);
    for row in ids.chunks(s) {
        let (start, stop) = flashcore::kernels::variants::document_bounds(row);
        for qt in 0..q_tiles {
            let rows = qt * tile_m..((qt + 1) * tile_m).min(s);
            first.push(rows.clone().map(|r| start[r]).min().unwrap() / tile_n as i32);
            end.push((rows.map(|r| stop[r]).max().unwrap() as usize).div_ceil(tile_n) as i32);
        }
    }
    (first, end, q_tiles)
}

#[test]
fn a_block_mask_from_the_host_is_an_input() {
    let shape = AttentionShape { b: 2, h: 2, hk: 2, s: 300, sk: 300 };
    let ids = document_ids(shape, 70);
    for config in configs(documents_with_host_ranges::CONFIG) {
        let kernel = documents_with_host_ranges::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let (first, end, q_tiles) =
            host_tile_ranges(&ids, shape.s, config.tile_m as usize, config.tile_n as usize);
        let doc = ids.clone();
        let variant = Variant::new(|_, _, _, _, x| x, move |b, _, i, j| doc[b * 300 + i] == doc[b * 300 + j]);
        let extras = [
            ExtraArg::I32Table { data: ids.clone(), shape: vec![shape.b, shape.s] },
            ExtraArg::I32Table { data: first, shape: vec![shape.b, q_tiles] },
            ExtraArg::I32Table { data: end, shape: vec![shape.b, q_tiles] },
        ];
        let got = check_variant(&kernel, shape, Layout::Bhsd, 11, &SimDevice::default(), &extras, &variant)
            .unwrap_or_else(|e| panic!("{config}: {e}"));
        let bound = flashcore::tolerance(config.dtype);
        assert!(got.err.rel_l2 < bound, "{config}: {:?}", got.err);
        assert!(got.lse_mismatched == 0, "{config}: {got:?}");
    }
    // The same documents without the host's ranges: the compiler's scan decides every K/V tile
    // from the table's summary (`Kernel::table_summaries`: one (min, max) pair a tile, made by
    // the launch), so the host's ranges save nothing any more. Before the summaries the scan
    // read every key's id and executed more than the ranged kernel.
    let shape = AttentionShape { b: 1, h: 1, hk: 1, s: 2048, sk: 2048 };
    let ids: Vec<i32> = (0..shape.s).map(|i| (i / 100) as i32).collect();
    let config = documents_with_host_ranges::CONFIG;
    let (first, end, q_tiles) =
        host_tile_ranges(&ids, shape.s, config.tile_m as usize, config.tile_n as usize);
    let doc = ids.clone();
    let variant = Variant::new(|_, _, _, _, x| x, move |_, _, i, j| doc[i] == doc[j]);
    let ranged = simulated_instructions(
        &documents_with_host_ranges::compile(&config).unwrap(),
        shape,
        &[
            ExtraArg::I32Table { data: ids.clone(), shape: vec![1, shape.s] },
            ExtraArg::I32Table { data: first, shape: vec![1, q_tiles] },
            ExtraArg::I32Table { data: end, shape: vec![1, q_tiles] },
        ],
        &variant,
        "host ranges",
    );
    let scanned = simulated_instructions(
        &document_attention::compile(&document_attention::CONFIG).unwrap(),
        shape,
        &[ExtraArg::I32Table { data: ids, shape: vec![1, shape.s] }],
        &variant,
        "compiler scan only",
    );
    println!(
        "host ranges / compiler scan only: warp instructions {:.3}, lane instructions {:.3} ({ranged:?} vs {scanned:?})",
        ranged.0 / scanned.0,
        ranged.1 / scanned.1
    );
    assert!(
        scanned.0 <= ranged.0 && scanned.1 <= ranged.1,
        "the summarised scan costs no more than the host's ranges: {ranged:?} vs {scanned:?}"
    );
}
