//! Numerics at the edges (issue 7, item 3), in the PTX simulator: scores near the fp16 range,
//! values near it, all-equal scores, and NaN or ±Inf in Q, K or V. Every output element must be
//! what IEEE arithmetic on the exact softmax gives (PyTorch SDPA's behaviour: NaN exactly where
//! it propagates, no NaN elsewhere), and the finite ones close to float64.

use flashcore::kernels::{attention, reference_config};
use flashcore::numerics::{self, Expected};
use flashcore::simulate::{run_attention, AttentionShape, SimDevice};
use flashcore::{tolerance, Layout};

/// Schedules whose row statistics are computed differently: fused softmax, softmax warps,
/// split-KV groups merged at the end, causal masking with a tail tile.
const CONFIGS: &[&str] =
    &["d64", "d64_bf16", "d64_s2_load1_softmax4", "d64_m32_n128_w4_s2_load2_split2", "d64_causal"];

#[test]
fn edge_inputs_give_sdpa_s_nan_and_inf_pattern_and_finite_values_close_to_float64() {
    // S = 80: one full tile of 64 and a tail of 16 rows (and keys).
    let (b, h, s) = (1, 2, 80);
    for name in CONFIGS {
        let config = reference_config(name).expect("a reference config");
        let kernel = attention::compile(&config).expect("reference configs compile");
        let d = config.head_dim as usize;
        let scale = config.default_scale() as f64;
        for case in numerics::cases([b, h, s, d], s, config.dtype, 0x7E57 ^ d as u64) {
            let shape = AttentionShape { b, h, hk: h, s, sk: s };
            let run = run_attention(
                &kernel,
                shape,
                Layout::Bhsd,
                [&case.q, &case.k, &case.v],
                &SimDevice::default(),
            )
            .unwrap_or_else(|e| panic!("{name}, {}: {e}", case.name));
            let want = numerics::expected(&case, scale, config.causal);
            let c = numerics::compare(&run.out, &want);
            assert_eq!(c.wrong_kind, 0, "{name}, {}: first wrong element {:?}", case.name, c.first_wrong);
            assert!(
                c.finite_rel_err < tolerance(config.dtype),
                "{name}, {}: finite outputs off by {:.2e} of the largest",
                case.name,
                c.finite_rel_err
            );
            // The cases are built so that their NaN and Inf reach some outputs and not all.
            let specials = want.iter().filter(|w| matches!(w, Expected::Nan | Expected::Inf(_))).count();
            match case.name {
                "large_scores" | "large_values" | "equal_scores" | "equal_keys" => assert_eq!(specials, 0),
                _ => assert!(
                    specials > 0 && specials < want.len(),
                    "{}: {specials} special outputs",
                    case.name
                ),
            }
        }
    }
}
