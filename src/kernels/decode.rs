//! Decode attention against a paged KV cache (vLLM's and FlashInfer's layout), written in the
//! DSL: the K/V tiles are gathered through a block table, each sequence uses its own cache
//! length, and the queries are the step's new tokens (1 to 16 a sequence).
//!
//! The cache is a pool of pages `k_cache[PAGES, HKV, PAGE, D]` (any strides with the head dim
//! contiguous: vLLM's `[num_blocks, block_size, num_kv_heads, head_size]` is the strided view
//! `[PAGES, HKV, PAGE, D]`); `block_table[B, MAX_PAGES]` (i32) lists each sequence's pages in
//! order, and `cache_len[B]` (i32) how many of the sequence's rows are filled. Logical row `j` of
//! sequence `b` is row `j % PAGE` of page `block_table[b, j / PAGE]`. The kernel reads nothing
//! else: rows past a sequence's length, table entries past its row and page numbers outside
//! the pool are never read (they count as zeros, then are masked). A dense cache
//! `[B, HKV, SK, D]` is the same kernel with one page a sequence (`PAGE = SK`, table `[[0],
//! [1], ..]`).
//!
//! ```
//! use flashcore::kernels::decode::attention_decode_paged;
//!
//! let kernel = attention_decode_paged::compile(&attention_decode_paged::CONFIG)?;
//! assert!(kernel.ptx.text.contains("paged tile"));
//! # Ok::<(), flashcore::Error>(())
//! ```

use crate::{flash_kernel, Config};

/// One decode step's attention: `O = softmax(Q·Kᵀ·scale)·V` for the `S` new tokens of each
/// sequence (`q`, `o`: `[B, H, S, D]`) against its paged cache, whose last `S` rows are those
/// tokens' own keys and values (appended before the step). With `Config::causal` the mask is
/// aligned to the bottom right of each sequence: new token `i` sees cache rows
/// `0 ..= cache_len[b] − S + i` (the whole earlier cache and the new tokens up to itself).
/// `HKV` divides `H` (grouped-query attention). `q_len`, if given, says how many of each
/// sequence's `S` rows are new tokens (speculative decoding with per-sequence draft lengths):
/// its other rows are neither read nor written, and the causal mask is aligned to its own
/// lengths (token `i` sees rows `0 ..= cache_len[b] − q_len[b] + i`).
#[flash_kernel(tile_m = 16, tile_n = 64, head_dim = 128, stages = 2, warps = 1)]
pub fn attention_decode_paged<T>(
    q: Tensor<T, B, H, S, D>,
    k_cache: Tensor<T, PAGES, HKV, PAGE, D>,
    v_cache: Tensor<T, PAGES, HKV, PAGE, D>,
    block_table: Tensor<i32, B, MAX_PAGES>,
    q_len: Option<SeqLens<B, S>>,
    cache_len: SeqLens<B, SK>,
    o: TensorMut<T, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k_cache.tile(block_table[b], h / (H / HKV), kt));
                let vs = stage(v_cache.tile(block_table[b], h / (H / HKV), kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(softmax)]
            {
                let m_new = max(m, row_max(s));
                let p = exp2(s - m_new);
                let alpha = exp2(m - m_new);
                l = l * alpha + row_sum(p);
                acc = acc * alpha;
                m = m_new;
            }
            #[role(compute)]
            acc = mma(p.to::<T>(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

/// [`attention_decode_paged`] with the query heads of each K/V head packed into one tile
/// (FlashAttention's packed GQA): a work item is a K/V head of a sequence, whose `H / HKV`
/// query heads × `S` new tokens are the `ROWS` rows of its Q tile, so each K/V byte is read once
/// per K/V head instead of once per query head, and the tile's rows are mostly real queries
/// instead of padding. `q` and `o` are the `[B, H, S, D]` tensors viewed as `[B, HKV, ROWS, D]`
/// with `ROWS = (H / HKV) · S` (the same memory when `[B, H, S, D]` is contiguous: row
/// `g · S + i` of K/V head `k` is token `i` of query head `k · H / HKV + g`). `rows_after[r]`
/// says how many of the step's tokens come after row `r`'s (`S − 1 − i`; all 0 for a step
/// whose tokens all see each other): row `r` sees cache row `j` iff `j + rows_after[r] <
/// cache_len[b]`, the bottom-right causal mask written with positions. Its rows are packed
/// (`packed_rows`), so `Config::causal`, which would compare a packed row's index with the
/// keys, is refused: causal steps pass `rows_after` ([`crate::paged::rows_after`]).
#[flash_kernel(tile_m = 16, tile_n = 64, head_dim = 128, stages = 2, warps = 4, kv_splits = 4, packed_rows)]
pub fn attention_decode_paged_packed<T>(
    q: Tensor<T, B, HKV, ROWS, D>,
    k_cache: Tensor<T, PAGES, HKV, PAGE, D>,
    v_cache: Tensor<T, PAGES, HKV, PAGE, D>,
    block_table: Tensor<i32, B, MAX_PAGES>,
    cache_len: SeqLens<B, SK>,
    rows_after: Tensor<i32, ROWS>,
    o: TensorMut<T, B, HKV, ROWS, D>,
    scale: f32,
) {
    for (b, hk, rt) in tiles(B, HKV, ROWS / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, hk, rt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k_cache.tile(block_table[b], hk, kt));
                let vs = stage(v_cache.tile(block_table[b], hk, kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            let s = mask(s, s.index(SK) + rows_after.at(s.index(ROWS)) < SK);
            #[role(softmax)]
            {
                let m_new = max(m, row_max(s));
                let p = exp2(s - m_new);
                let alpha = exp2(m - m_new);
                l = l * alpha + row_sum(p);
                acc = acc * alpha;
                m = m_new;
            }
            #[role(compute)]
            acc = mma(p.to::<T>(), vs, acc);
        }
        store(o.tile(b, hk, rt), acc / l);
    }
}

/// CTAs of a decode schedule an SM runs at once: its ~220 registers a thread at 128 threads
/// leave room for 2 on an SM of 64K registers (`flashcore check` of the packed kernel's
/// schedules, sm_89 and sm_90).
pub const DECODE_CTAS_PER_SM: usize = 2;

/// How many CTAs to split each work item of a decode step across (`Config::kv_ctas`), `n` in
/// `1 ..= min(kv_tiles / 2, MAX_KV_CTAS)` (each CTA walks at least 2 of the `kv_tiles` K/V
/// tiles: on the H200 at B = 1, cache 1024 (16 tiles), 8 CTAs an item took 14.3 µs and 4 took
/// 16.0, docs/measurements/2026-12-03-h200-decode-floor.txt): none once the work items give
/// each of the `sms` SMs one; else the fewest whose time,
/// in waves of [`DECODE_CTAS_PER_SM`] CTAs an SM times each CTA's share `1 / n`, is within 5%
/// of the best. A launch that leaves a few CTAs for a second wave costs as much as a full
/// second wave: on the H200 at B = 8, 32k (64 work items, 264 CTAs at once), 4 CTAs an item
/// (256) took 265 µs and 5 (320) 366 µs (docs/measurements/2026-12-03-h200-decode-cache.txt).
pub fn split_ctas(work_items: usize, sms: usize, kv_tiles: usize) -> u32 {
    if work_items == 0 || work_items >= sms {
        return 1;
    }
    let most = (kv_tiles / 2).clamp(1, crate::ir::config::MAX_KV_CTAS as usize);
    let slots = sms * DECODE_CTAS_PER_SM;
    let time = |n: usize| (work_items * n).div_ceil(slots) as f64 / n as f64;
    let best = (1..=most).map(time).fold(f64::INFINITY, f64::min);
    (1..=most).find(|&n| time(n) <= 1.05 * best).unwrap_or(1) as u32
}

/// The packed kernel's schedule for `rows = (H / HKV) · S` rows a K/V head, from `base` (its
/// declared config at the problem's head dim and dtype): up to 16 rows, `base` (one row block,
/// four warps splitting each K/V tile's keys); more, one tile of all of them (16 rows a warp, at
/// most 64 rows), so that each K/V head's tiles are read by one CTA, not one per 16 rows. On the
/// H200 at 16 new tokens (64 rows), B = 1, cache 32k: 150.7 µs with `base`, 66.7 with 64 rows
/// (docs/measurements/2026-12-02-h200-decode-gather.txt).
pub fn packed_schedule(base: Config, rows: usize) -> Config {
    if rows <= 16 {
        return base;
    }
    let tile_m = (rows.div_ceil(16) * 16).min(64) as u32;
    Config { tile_m, warps: tile_m / 16, kv_splits: 1, ..base }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_fills_the_gpu_only_when_the_work_items_do_not() {
        // 8 K/V heads of one sequence on 132 SMs: one full wave of two CTAs an SM, or nearly.
        assert_eq!(split_ctas(8, 132, 512), 32);
        assert_eq!(split_ctas(8, 132, 128), 32);
        // 64 work items: 4 CTAs each (256 of 264 at once), not 5 (a second wave of 56).
        assert_eq!(split_ctas(64, 132, 512), 4);
        // Short caches: at least 2 tiles a CTA.
        assert_eq!(split_ctas(8, 132, 16), 8);
        assert_eq!(split_ctas(8, 132, 2), 1);
        assert_eq!(split_ctas(8, 132, 1), 1);
        // Enough work items, or none: no split; never past the most a work item may have.
        assert_eq!(split_ctas(512, 132, 4096), 1);
        assert_eq!(split_ctas(0, 132, 4096), 1);
        // One work item: within 5% of the most a work item may have (64), never past it.
        assert_eq!(split_ctas(1, 132, 1 << 20), 61);
    }

    #[test]
    fn more_than_16_packed_rows_take_one_tile_of_up_to_64() {
        let base = attention_decode_paged_packed::CONFIG;
        assert_eq!(packed_schedule(base, 4), base);
        let wide = packed_schedule(base, 40);
        assert_eq!((wide.tile_m, wide.warps, wide.kv_splits), (48, 3, 1));
        assert_eq!(packed_schedule(base, 128).tile_m, 64);
        wide.validate().unwrap();
    }
}
