use flashcore::flash_kernel;

// `.to::<f32>()` widens 16-bit register tiles (loaded ones); a scalar is refused.

#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn attention(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, S, D>,
    v: Tensor<f16, B, H, S, D>,
    o: TensorMut<f16, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h, kt));
                let vs = stage(v.tile(b, h, kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale.to::<f32>() * LOG2_E);
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
            acc = mma(p.to::<f16>(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

fn main() {}
