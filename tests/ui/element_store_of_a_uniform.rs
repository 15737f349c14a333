use flashcore::flash_kernel;

/// Stores one value per work item with `.at(..)`: element stores write register tiles.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4)]
fn one_value(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    first: TensorMut<f32, B, H>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k.tile(b, h, kt));
            let s = mma(qf, ks.t());
            store(first.at(b, h), scale);
        }
    }
}

fn main() {}
