use flashcore::flash_kernel;

// `block_table[h]`: the table's row is a sequence, so its index must walk `B`, not the heads.
#[flash_kernel(tile_m = 16, tile_n = 64, head_dim = 64, stages = 2, warps = 1)]
fn decode(
    q: Tensor<f16, B, H, S, D>,
    k_cache: Tensor<f16, PAGES, H, PAGE, D>,
    v_cache: Tensor<f16, PAGES, H, PAGE, D>,
    block_table: Tensor<i32, B, MAX_PAGES>,
    cache_len: SeqLens<B, SK>,
    o: TensorMut<f16, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k_cache.tile(block_table[h], h, kt));
            let vs = stage(v_cache.tile(block_table[b], h, kt));
            let s = mma(qf, ks.t()) * scale;
            acc = mma(s.to_f16(), vs, acc);
        }
        store(o.tile(b, h, qt), acc);
    }
}

fn main() {}
