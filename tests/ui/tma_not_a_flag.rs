use flashcore::flash_kernel;

#[flash_kernel(tile_m = 128, tile_n = 128, head_dim = 64, stages = 2, warps = 8, overlap, tma = 2)]
fn attention(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, S, D>,
    v: Tensor<f16, B, H, S, D>,
    o: TensorMut<f16, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..S / TILE_N) {
            let ks = stage(k.tile(b, h, kt));
            let vs = stage(v.tile(b, h, kt));
            let s = mma(qf, ks.t()) * scale;
            acc = mma(s.to_f16(), vs, acc);
        }
        store(o.tile(b, h, qt), acc);
    }
}

fn main() {}
