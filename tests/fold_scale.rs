//! The score-scale fold (`passes::fold_scale`, sm_90a): where it applies the exponentials take
//! the scale in one FMA and the scale parameter is marked `nonnegative`; a negative scale is then a
//! typed launch error naming it (the same scale runs on sm_89 and matches float64); a zero
//! scale stays exact (the uniform average); a score modification between the scale and the
//! softmax leaves the kernel unfolded. In the PTX simulator against float64.

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
