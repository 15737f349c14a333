//! A kernel a user writes with the sm_90a schedule settings of the TMA and pingpong work
//! (`tma`, `pingpong`, with `overlap` and a producer warpgroup declared in `#[flash_kernel]`):
//! compiled for sm_90a it copies K/V with bulk tensor copies and takes pingpong turns, and it
//! computes what its source says (float64, in the simulator, at tails and with grouped heads).
//! The settings' misuse is rejected at compile time (`tests/ui/tma_not_a_flag.rs`).

use flashcore::simulate::{check_attention, AttentionShape, Options, SimDevice};
use flashcore::{Config, Layout, Target};

mod user {
    use flashcore::flash_kernel;

    /// Causal-capable attention with the scores scaled in two steps (the user's own way of
    /// writing the softmax), on two compute warpgroups fed by a producer warpgroup.
    #[flash_kernel(
        tile_m = 128,
        tile_n = 128,
        head_dim = 128,
        stages = 2,
        warps(compute = 8, load = 4),
        overlap,
        tma,
        pingpong
    )]
    pub fn my_hopper_attention<T>(
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
                let s = mma(qf, ks.t()) * scale;
                #[role(softmax)]
                {
                    let s = s * LOG2_E;
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
}

#[test]
fn a_user_kernel_with_tma_and_pingpong_compiles_to_them_and_matches_float64() {
    let declared = user::my_hopper_attention::CONFIG;
    assert!(declared.tma && declared.pingpong && declared.overlap && declared.load_warps == 4);
    for causal in [false, true] {
        let config = Config { target: Target::Sm90a, causal, ..declared };
        let kernel = user::my_hopper_attention::compile(&config).unwrap();
        let ptx = &kernel.ptx.text;
        // The schedule the settings ask for, not a silent fallback.
        assert!(ptx.contains("cp.async.bulk.tensor.4d"), "{config}: no bulk tensor copy");
        assert!(ptx.contains("mbarrier.arrive.expect_tx"), "{config}: no expect_tx");
        assert!(ptx.contains("bar.arrive %turn_other, 256"), "{config}: no pingpong turn");
        assert!(
            !ptx.contains("cp.async.mbarrier.arrive"),
            "{config}: the producer still copies with cp.async"
        );
        for (shape, seed) in [
            (AttentionShape { b: 1, h: 4, hk: 2, s: 77, sk: 300 }, 11),
            (AttentionShape { b: 2, h: 2, hk: 1, s: 150, sk: 40 }, 12),
        ] {
            let device =
                SimDevice { sm_count: 2, options: Options { seed, max_slice: 16, ..Options::default() } };
            let check = check_attention(&kernel, shape, Layout::Bhsd, seed, &device)
                .unwrap_or_else(|e| panic!("{config} {shape:?}: {e}"));
            assert!(
                check.err.rel_l2 < flashcore::tolerance(config.dtype) && check.err.non_finite == 0,
                "{config} {shape:?}: {:?}",
                check.err
            );
            assert!(check.lse_max_abs < 1e-3 && check.lse_mismatched == 0, "{config} {shape:?}: {check:?}");
        }
    }
}
