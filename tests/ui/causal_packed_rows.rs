use flashcore::flash_kernel;

// Packed GQA: each row of the Q tile is one of a K/V head's query heads at one new token, so a
// row's index is not a sequence position. The `causal` flag would compare it with the key
// positions (masking the wrong scores), so `packed_rows` kernels refuse it.
#[flash_kernel(tile_m = 16, tile_n = 64, head_dim = 64, stages = 2, warps = 1, causal, packed_rows)]
fn packed_decode(
    q: Tensor<f16, B, HKV, ROWS, D>,
    k: Tensor<f16, B, HKV, SK, D>,
    v: Tensor<f16, B, HKV, SK, D>,
    o: TensorMut<f16, B, HKV, ROWS, D>,
    scale: f32,
) {
    for (b, hk, rt) in tiles(B, HKV, ROWS / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, hk, rt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, hk, kt));
                let vs = stage(v.tile(b, hk, kt));
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
            acc = mma(p.to_f16(), vs, acc);
        }
        store(o.tile(b, hk, rt), acc / l);
    }
}

fn main() {}
