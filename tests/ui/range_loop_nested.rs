use flashcore::flash_kernel;

/// Nests one range loop in another: range loops sit directly in the work loop.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn sums(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    totals: TensorMut<f32, B, H, S, SK>,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        for g in 0..2 {
            for r in 0..g {
                for kt in pipeline(0..SK / TILE_N) {
                    let ks = stage(k.tile(b, h, kt));
                    let s = mma(qf, ks.t());
                    store(totals.at(b, h, s.index(S), s.index(SK)), s);
                }
            }
        }
    }
}

fn main() {}
