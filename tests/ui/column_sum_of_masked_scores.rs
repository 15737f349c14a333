use flashcore::flash_kernel;

/// Sums the columns of masked scores (-inf where masked): the sum would be -inf or meaningless.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn key_totals(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    totals: TensorMut<f32, B, H, QT, SK>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k.tile(b, h, kt));
            let x = mma(qf, ks.t());
            let s = mask(x, x.index(SK) <= x.index(S));
            store(totals.at(b, h, qt, s.index(SK)), col_sum(s));
        }
    }
}

fn main() {}
