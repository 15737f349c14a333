//! Updates written in place (`x <- f(x, ..)` where `f`'s result takes `x`'s registers, see the
//! code generator's `coalesce_updates`): the attention kernel's rescale and P·V accumulate in
//! place, and a kernel that reads the old `acc` between computing its update and assigning it
//! keeps a copy, so it still computes what its source says (float64 in the simulator, sm_89
//! and sm_90a).

use flashcore::simulate::{check_attention, AttentionShape, SimDevice};
use flashcore::Config;

mod user {
    use flashcore::flash_kernel;

    /// Attention whose rescale is computed twice, the second time after the first result is
    /// ready and before it is assigned: `again - acc` (after the assignment) is 0 only if
    /// `again` read the old `acc` (were `rescaled` written into `acc`'s registers at once,
    /// `again` would be `acc · alpha²` and the output wrong).
    #[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
    pub fn rescale_read_twice<T>(
        q: Tensor<T, B, H, S, D>,
        k: Tensor<T, B, H, SK, D>,
        v: Tensor<T, B, H, SK, D>,
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
                    let ks = stage(k.tile(b, h, kt));
                    let vs = stage(v.tile(b, h, kt));
                }
                #[role(compute)]
                {
                    let s = mma(qf, ks.t()) * (scale * LOG2_E);
                    let m_new = max(m, row_max(s));
                    let p = exp2(s - m_new);
                    let alpha = exp2(m - m_new);
                    l = l * alpha + row_sum(p);
                    let rescaled = acc * alpha;
                    let again = acc * alpha;
                    acc = rescaled;
                    m = m_new;
                    acc = mma(p.to::<T>(), vs, acc) + (again - acc);
                }
            }
            store(lse.tile(b, h, qt), log_sum_exp(m, l));
            store(o.tile(b, h, qt), acc / l);
        }
    }
}

#[test]
fn the_attention_kernels_updates_are_written_in_place() {
    for target in [flashcore::Target::Sm89, flashcore::Target::Sm90a] {
        let config = Config { target, ..flashcore::kernels::attention::CONFIG };
        let ptx = flashcore::kernels::attention::compile(&config).unwrap().ptx.text.clone();
        // `acc = acc * alpha` and `acc = mma(p, v, acc)`.
        assert_eq!(ptx.matches("// (written in place)").count(), 2, "{config}");
    }
}

#[test]
fn an_update_whose_old_value_is_read_before_the_assignment_keeps_a_copy() {
    let shape = AttentionShape { b: 1, h: 2, hk: 2, s: 77, sk: 200 };
    for target in [flashcore::Target::Sm89, flashcore::Target::Sm90a] {
        let config = Config { target, ..user::rescale_read_twice::CONFIG };
        let kernel = user::rescale_read_twice::compile(&config).unwrap();
        // Neither update goes in place: the rescale is read before its assignment, and P·V
        // is added to before it is assigned.
        assert_eq!(kernel.ptx.text.matches("// (written in place)").count(), 0, "{config}");
        let check =
            check_attention(&kernel, shape, flashcore::Layout::Bhsd, 5, &SimDevice::default()).unwrap();
        let err = check.err;
        assert!(
            err.rel_l2 < flashcore::tolerance(config.dtype) && err.non_finite == 0,
            "{config}: {check:?}"
        );
    }
}
