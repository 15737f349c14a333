use flashcore::flash_kernel;

// A backward's dK kernel: the work loop walks the keys, the score tile is Kᵀ-major (rows are
// keys). The `causal` flag would mask it in the forward orientation, so it is refused.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4, causal)]
fn dk_kernel(
    q: Tensor<f16, B, H, S, D>,
    k: Tensor<f16, B, H, SK, D>,
    d_out: Tensor<f16, B, H, S, D>,
    dk: TensorMut<f16, B, H, SK, D>,
    scale: f32,
) {
    for (b, h, kt) in tiles(B, H, SK / TILE_M) {
        #[role(compute)]
        let kf = load(k.tile(b, h, kt));
        let mut acc = zeros([TILE_M, D]);
        for qt in pipeline(0..S / TILE_N) {
            #[role(load)]
            {
                let qs = stage(q.tile(b, h, qt));
                let ds = stage(d_out.tile(b, h, qt));
            }
            #[role(compute)]
            let s = mma(kf, qs.t()) * scale;
            #[role(compute)]
            acc = mma(exp2(s).to_f16(), ds, acc);
        }
        store(dk.tile(b, h, kt), acc);
    }
}

fn main() {}
