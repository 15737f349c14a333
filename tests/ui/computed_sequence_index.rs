use flashcore::flash_kernel;

/// Indexes the sequence axis with a computed i32: only batch and head indices may be computed;
/// a sequence tile index walks the loop's tiles (its tail is masked by the loop).
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn shifted(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    totals: TensorMut<f32, B, H, S, SK>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        for g in 0..2 {
            let next = qt + g;
            for kt in pipeline(0..SK / TILE_N) {
                let ks = stage(k.tile(b, h, next));
                let s = mma(qf, ks.t());
                store(totals.at(b, h, s.index(S), s.index(SK)), s);
            }
        }
    }
}

fn main() {}
