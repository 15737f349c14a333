use flashcore::flash_kernel;

// A paged tile is gathered, never stored: a store through the block table would write pages the
// kernel cannot bound (the append kernel is not expressible yet), so it is a compile error.
#[flash_kernel(tile_m = 16, tile_n = 64, head_dim = 64, stages = 2, warps = 1)]
fn append(
    k_new: Tensor<f16, B, H, S, D>,
    k_cache: TensorMut<f16, PAGES, H, PAGE, D>,
    block_table: Tensor<i32, B, MAX_PAGES>,
) {
    for (b, h, t) in tiles(B, H, S / TILE_M) {
        let kf = load(k_new.tile(b, h, t));
        store(k_cache.tile(block_table[b], h, t), kf.to::<f32>());
    }
}

fn main() {}
