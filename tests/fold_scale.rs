//! The score-scale fold (`passes::fold_scale`, sm_90a): where it applies the exponentials take
//! the scale in one FMA and the scale parameter is marked `nonnegative`; a negative scale is then a
//! typed launch error naming it (the same scale runs on sm_89 and matches float64); a zero
//! scale stays exact (the uniform average); a score modification between the scale and the
//! softmax, or a user's mask on the scores' values, leaves the kernel unfolded. In the PTX
//! simulator against float64.

use flashcore::kernels::attention;
use flashcore::kernels::variants::{
    alibi_attention, bias_attention, document_attention, document_bounds_attention, prefix_lm_attention,
    sliding_window_attention, softcap_attention,
};
use flashcore::reference::{self, Problem, Rng};
use flashcore::simulate::{run_attention_scaled, AttentionShape, SimDevice};
use flashcore::{Config, Error, Layout, Target};

/// `attention` compiled for `config`, run in the simulator at `[1, 2, s, D]` (`sk` keys) with
/// softmax scale `scale`: its output against float64 (relative L2 error), or the launch's error.
fn run(config: Config, s: usize, sk: usize, scale: f32, seed: u64) -> Result<f64, Error> {
    let kernel = attention::compile(&config)?;
    let (b, h, d) = (1, 2, config.head_dim as usize);
    let mut rng = Rng::new(seed);
    let mut gen =
        |n: usize| (0..n).map(|_| flashcore::round_to(config.dtype, rng.normal())).collect::<Vec<f64>>();
    let (q, k, v) = (gen(b * h * s * d), gen(b * h * sk * d), gen(b * h * sk * d));
    let shape = AttentionShape { b, h, hk: h, s, sk };
    let got = run_attention_scaled(&kernel, shape, Layout::Bhsd, [&q, &k, &v], scale, &SimDevice::default())?;
    let problem =
        Problem { q: &q, k: &k, v: &v, b, h, hk: h, s, sk, d, scale: scale as f64, causal: config.causal };
    Ok(reference::compare(&got.out, &reference::attention(&problem)).rel_l2)
}

fn sm90a(config: Config) -> Config {
    Config { target: Target::Sm90a, ..config }
}

#[test]
fn the_scale_folds_into_the_exponentials_on_sm90a_only() {
    let declared = attention::CONFIG;
    for config in [sm90a(declared), sm90a(Config { causal: true, ..declared })] {
        let kernel = attention::compile(&config).unwrap();
        let ir = kernel.kernel.to_string();
        assert!(
            ir.contains("exp2_scaled") && ir.contains("scale: nonnegative f32"),
            "{config}: not folded:\n{ir}"
        );
        assert!(kernel.ptx.text.contains("fma.rn.f32"), "{config}: no FMA in the PTX");
    }
    let kernel = attention::compile(&declared).unwrap();
    let ir = kernel.kernel.to_string();
    assert!(!ir.contains("exp2_scaled") && !ir.contains("nonnegative"), "sm_89 folded:\n{ir}");
    // Softcap reads the scaled scores (tanh(s / cap) · cap), a bias or ALiBi adds to them: no
    // fold. Masks drop scores to -inf, which a positive scale keeps: the fold reaches through
    // them (their kernels run against their formulas on sm_90a in tests/variants.rs).
    type Compile = fn(&Config) -> Result<std::sync::Arc<flashcore::CompiledKernel>, Error>;
    let kept: [(&str, Compile, Config); 3] = [
        ("softcap", softcap_attention::compile, softcap_attention::CONFIG),
        ("bias", bias_attention::compile, bias_attention::CONFIG),
        ("alibi", alibi_attention::compile, alibi_attention::CONFIG),
    ];
    for (name, compile, declared) in kept {
        let ir = compile(&sm90a(declared)).unwrap().kernel.to_string();
        assert!(!ir.contains("exp2_scaled"), "{name} folded:\n{ir}");
    }
    let folded: [(&str, Compile, Config); 4] = [
        ("sliding window", sliding_window_attention::compile, sliding_window_attention::CONFIG),
        ("document", document_attention::compile, document_attention::CONFIG),
        ("document bounds", document_bounds_attention::compile, document_bounds_attention::CONFIG),
        ("prefix LM", prefix_lm_attention::compile, prefix_lm_attention::CONFIG),
    ];
    for (name, compile, declared) in folded {
        let ir = compile(&sm90a(declared)).unwrap().kernel.to_string();
        assert!(ir.contains("exp2_scaled") && ir.contains("mask "), "{name} not folded:\n{ir}");
    }
}

#[test]
fn a_negative_scale_is_a_typed_error_on_the_folded_kernel_and_runs_on_sm89() {
    let declared = attention::CONFIG;
    match run(sm90a(declared), 100, 77, -0.3, 1) {
        Err(Error::Argument { arg, message, .. }) => {
            assert_eq!(arg, "scale");
            assert!(message.contains("-0.3") && message.contains("sm_89"), "{message}");
        }
        other => panic!("a negative scale on the folded kernel: {other:?}"),
    }
    let err = run(declared, 100, 77, -0.3, 1).unwrap();
    assert!(err < flashcore::tolerance(declared.dtype), "sm_89, scale -0.3: rel err {err:e}");
}

#[test]
fn the_folded_kernel_matches_float64_at_zero_small_and_large_scales() {
    let declared = attention::CONFIG;
    for (i, scale) in [0.0, -0.0, 1e-30, 0.125, 2.0].into_iter().enumerate() {
        for config in [sm90a(declared), sm90a(Config { causal: true, ..declared })] {
            let err = run(config, 100, 130, scale, 10 + i as u64).unwrap_or_else(|e| panic!("{config}: {e}"));
            println!("{config} scale {scale:e}: rel err {err:.2e}");
            assert!(err < flashcore::tolerance(config.dtype), "{config}, scale {scale:e}: rel err {err:e}");
        }
    }
}

/// The skipped unit rescale (sm_90a, D ≥ 128: `acc · α` branched around when no row of the warp
/// changed its maximum) both ways: a zero scale makes every score equal, so every `α` after the
/// first tile is 1 and the branch is taken; 0.125 and 2.0 take it only where the maxima settle.
/// Over three K/V tiles and a tail, causal and not, against float64.
#[test]
fn the_skipped_unit_rescale_matches_float64_taken_or_not() {
    let d128 = Config {
        head_dim: 128,
        tile_m: 128,
        warps: 8,
        tile_n: 128,
        target: Target::Sm90a,
        ..attention::CONFIG
    };
    let kernel = attention::compile(&d128).unwrap();
    let ptx = &kernel.ptx.text;
    assert!(ptx.contains("vote.sync.any.pred"), "no skip at D = 128");
    for (i, scale) in [0.0, 0.125, 2.0].into_iter().enumerate() {
        for config in [d128, Config { causal: true, ..d128 }] {
            let err = run(config, 130, 300, scale, 20 + i as u64).unwrap_or_else(|e| panic!("{config}: {e}"));
            println!("{config} scale {scale:e}: rel err {err:.2e}");
            assert!(err < flashcore::tolerance(config.dtype), "{config}, scale {scale:e}: rel err {err:e}");
        }
    }
}

/// A user's kernel whose mask reads the scores' values (scores below `floor` dropped): the mask
/// sees the scaled scores as written, so folding the scale past it would test the raw ones and
/// drop other keys. The fold must leave it alone, and on both targets it must compute what its
/// source says, against float64.
#[flashcore::flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn floored_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    floor: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k.tile(b, h / (H / HKV), kt));
            let vs = stage(v.tile(b, h / (H / HKV), kt));
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            let s = mask(s, s >= floor * LOG2_E);
            let m_new = max(m, row_max(s));
            let p = exp2(s - m_new);
            let alpha = exp2(m - m_new);
            l = l * alpha + row_sum(p);
            acc = acc * alpha;
            m = m_new;
            acc = mma(p.to::<T>(), vs, acc);
        }
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

#[test]
fn a_mask_on_the_scores_values_keeps_the_multiply_and_matches_float64() {
    use flashcore::reference::Variant;
    use flashcore::simulate::{check_variant, ExtraArg};
    let floor = -0.4f32;
    let declared = floored_attention::CONFIG;
    let folded = floored_attention::compile(&sm90a(declared)).unwrap();
    assert!(!folded.kernel.to_string().contains("exp2_scaled"), "a value mask was folded past");
    // The reference: scores (q·k·scale) below the floor are dropped.
    let variant = Variant::new(
        move |_, _, _, _, x| if x >= floor as f64 { x } else { f64::NEG_INFINITY },
        |_, _, _, _| true,
    );
    let shape = AttentionShape { b: 1, h: 2, hk: 1, s: 77, sk: 150 };
    for config in [declared, sm90a(declared), sm90a(Config { causal: true, ..declared })] {
        let kernel = floored_attention::compile(&config).unwrap();
        let check = check_variant(
            &kernel,
            shape,
            Layout::Bhsd,
            7,
            &SimDevice::default(),
            &[ExtraArg::F32(floor)],
            &variant,
        )
        .unwrap_or_else(|e| panic!("{config}: {e}"));
        println!("{config}: rel err {:.2e}", check.err.rel_l2);
        assert!(
            check.err.rel_l2 < flashcore::tolerance(config.dtype) && check.err.non_finite == 0,
            "{config}: {:?}",
            check.err
        );
    }
}
