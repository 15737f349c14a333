use flashcore::flash_kernel;

// A backward's dQ with the user's mask on dP: masked dP is -inf, and P · (dP − Δ) would be
// 0 · -inf = NaN there. Data (an unmasked product) may multiply probabilities; masked scores
// may not.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
fn dq_with_masked_dp(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    v: Tensor<f16, B, H, SK, D>,
    d_out: Tensor<f16, B, H, S, D>,
    lse: Tensor<f32, B, H, S>,
    delta: Tensor<f32, B, H, S>,
    dq: TensorMut<f16, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let dof = load(d_out.tile(b, h, qt));
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
                let dp = mask(dp, dp.index(SK) <= dp.index(S));
                let ds = p * (dp - delta.at(b, h, dp.index(S)));
                acc = mma(ds.to_f16(), ks, acc);
            }
        }
        store(dq.tile(b, h, qt), acc * scale);
    }
}

fn main() {}
