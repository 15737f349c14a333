use flashcore::flash_kernel;

/// Reads the output table it writes: outputs are only stored into.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn accumulate_scores(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    scores: TensorMut<f32, B, H, S, SK>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k.tile(b, h, kt));
            let s = mma(qf, ks.t());
            let before = scores.at(b, h, s.index(S), s.index(SK));
            store(scores.at(b, h, s.index(S), s.index(SK)), s + before);
        }
    }
}

fn main() {}
