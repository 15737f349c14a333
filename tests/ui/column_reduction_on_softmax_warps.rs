use flashcore::flash_kernel;

/// Reduces columns on the softmax warps, which have no partners to combine rows with.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps(compute = 4, load = 1, softmax = 4))]
fn attention(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    v: Tensor<f16, B, H, SK, D>,
    o: TensorMut<f16, B, H, S, D>,
    key_maxes: TensorMut<f32, B, H, QT, SK>,
    scale: f32,
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
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(softmax)]
            {
                let m_new = max(m, row_max(s));
                let key_max = col_max(s);
                let p = exp2(s - m_new);
                let alpha = exp2(m - m_new);
                l = l * alpha + row_sum(p);
                acc = acc * alpha;
                m = m_new;
            }
            store(key_maxes.at(b, h, qt, s.index(SK)), key_max);
            #[role(compute)]
            acc = mma(p.to_f16(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

fn main() {}
