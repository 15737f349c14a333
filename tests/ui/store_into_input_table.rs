use flashcore::flash_kernel;

/// Writes its scores into `bias`, which is an input: only `TensorMut` tables take stores.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn scores_into_input(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    bias: Tensor<f32, B, H, S, SK>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k.tile(b, h, kt));
            let s = mma(qf, ks.t());
            store(bias.at(b, h, s.index(S), s.index(SK)), s);
        }
    }
}

fn main() {}
