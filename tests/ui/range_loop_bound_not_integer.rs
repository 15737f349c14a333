use flashcore::flash_kernel;

/// Runs a range loop up to an f32: loop bounds are i32s.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn scaled(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    totals: TensorMut<f32, B, H, S, SK>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        for g in 0..scale {
            for kt in pipeline(0..SK / TILE_N) {
                let ks = stage(k.tile(b, h, kt));
                let s = mma(qf, ks.t());
                store(totals.at(b, h, s.index(S), s.index(SK)), s);
            }
        }
    }
}

fn main() {}
