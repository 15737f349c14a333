use flashcore::flash_kernel;

// A page table is an i32 `[B, MAX_PAGES]` table: an f32 one is a compile error at the tile.
#[flash_kernel(tile_m = 16, tile_n = 64, head_dim = 64, stages = 2, warps = 1)]
fn decode(
    q: Tensor<f16, B, H, S, D>,
    k_cache: Tensor<f16, PAGES, H, PAGE, D>,
    v_cache: Tensor<f16, PAGES, H, PAGE, D>,
    block_table: Tensor<f32, B, MAX_PAGES>,
    cache_len: SeqLens<B, SK>,
    o: TensorMut<f16, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k_cache.tile(block_table[b], h, kt));
            let vs = stage(v_cache.tile(block_table[b], h, kt));
            let s = mma(qf, ks.t()) * scale;
            acc = mma(s.to_f16(), vs, acc);
        }
        store(o.tile(b, h, qt), acc);
    }
}

fn main() {}
