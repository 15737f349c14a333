//! A kernel a user would write with the paged-cache DSL: decode over a paged K/V cache where
//! each new token sees only the last `WINDOW` rows up to itself (sliding-window attention, as
//! Mistral serves it), written with the block-table gather, per-sequence lengths and a position
//! mask. Compiled by the macro, run in the PTX simulator at tails, across page boundaries,
//! with split CTAs, and checked against a float64 reference written here from the formula. What
//! the same DSL must reject: a store through a block table (`tests/ui/store_through_block_table.rs`,
//! `block_table_not_i32.rs`, `block_table_row_walks_heads.rs`) and this kernel compiled with bulk
//! tensor copies (below).

use flashcore::flash_kernel;
use flashcore::paged::PagedCache;
use flashcore::reference::{compare, Rng};
use flashcore::simulate::{simulate, HostArg, HostView, SimDevice};
use flashcore::Config;
use half::f16;

/// The window: a new token at cache position `p` sees rows `p − 99 ..= p`.
const WINDOW: usize = 100;

/// Sliding-window decode over a paged cache: new token `i` of sequence `b` (at cache position
/// `cache_len[b] − S + i`) attends to the `WINDOW` cache rows ending at its own.
#[flash_kernel(tile_m = 16, tile_n = 32, head_dim = 64, stages = 2, warps = 1)]
fn windowed_paged_decode(
    q: Tensor<f16, B, H, S, D>,
    k_cache: Tensor<f16, PAGES, HKV, PAGE, D>,
    v_cache: Tensor<f16, PAGES, HKV, PAGE, D>,
    block_table: Tensor<i32, B, MAX_PAGES>,
    cache_len: SeqLens<B, SK>,
    o: TensorMut<f16, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k_cache.tile(block_table[b], h / (H / HKV), kt));
            let vs = stage(v_cache.tile(block_table[b], h / (H / HKV), kt));
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            let s =
                mask(s, s.index(SK) <= s.index(S) + (SK - S) && s.index(SK) + 100 > s.index(S) + (SK - S));
            let m_new = max(m, row_max(s));
            let p = exp2(s - m_new);
            let alpha = exp2(m - m_new);
            l = l * alpha + row_sum(p);
            acc = acc * alpha;
            m = m_new;
            acc = mma(p.to_f16(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

/// The float64 formula: new token `i` of sequence `b` at position `p = len − s + i` attends to
/// cache rows `max(0, p − WINDOW + 1) ..= p` (none when `p < 0`: its output is 0).
fn reference(q: &[f64], cache: &PagedCache, h: usize, s: usize, scale: f64) -> Vec<f64> {
    reference_where(q, cache, h, s, scale, |p, j| j as i64 <= p && j as i64 > p - WINDOW as i64)
}

/// Attention of each new token (at cache position `p`) over the cache rows `j` where
/// `sees(p, j)` (none when `p < 0` or no row is seen: its output is 0), in float64.
fn reference_where(
    q: &[f64],
    cache: &PagedCache,
    h: usize,
    s: usize,
    scale: f64,
    sees: impl Fn(i64, usize) -> bool,
) -> Vec<f64> {
    let (d, hkv) = (cache.d, cache.hkv);
    let mut out = vec![0.0; cache.batch() * h * s * d];
    for b in 0..cache.batch() {
        let len = cache.lens[b] as i64;
        for head in 0..h {
            for i in 0..s {
                let p = len - s as i64 + i as i64;
                if p < 0 {
                    continue;
                }
                let keys: Vec<usize> = (0..len as usize).filter(|&j| sees(p, j)).collect();
                if keys.is_empty() {
                    continue;
                }
                let row = &q[((b * h + head) * s + i) * d..][..d];
                let at = |j: usize| cache.row_offset(b, j, head / (h / hkv));
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| row.iter().zip(&cache.k[at(j)..][..d]).map(|(a, k)| a * k).sum::<f64>() * scale)
                    .collect();
                let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                let o = &mut out[((b * h + head) * s + i) * d..][..d];
                for (&j, w) in keys.iter().zip(&weights) {
                    o.iter_mut().zip(&cache.v[at(j)..][..d]).for_each(|(o, v)| *o += w / total * v);
                }
            }
        }
    }
    out
}

/// Runs a paged decode kernel of this file's signature in the simulator: `q` (`[B, H, S, D]`,
/// `[h, s]` given) against `cache`, in f16; the output (NaN where unwritten) in f64.
fn run_in_simulator(
    kernel: &flashcore::CompiledKernel,
    cache: &PagedCache,
    q: &[f64],
    [h, s]: [usize; 2],
    scale: f32,
) -> Result<Vec<f64>, flashcore::Error> {
    let to_f16 = |x: &[f64]| x.iter().map(|v| f16::from_f64(*v)).collect::<Vec<_>>();
    let (q16, k16, v16) = (to_f16(q), to_f16(&cache.k), to_f16(&cache.v));
    let mut o = vec![f16::NAN; q.len()];
    let qo = HostView::contiguous(&[cache.batch(), h, s, cache.d]);
    simulate::<f16>(
        kernel,
        &mut [
            HostArg::Tensor(&q16, qo.clone()),
            HostArg::Tensor(&k16, cache.view()),
            HostArg::Tensor(&v16, cache.view()),
            HostArg::I32Table(&cache.block_table, cache.table_view()),
            HostArg::I32Table(&cache.lens, cache.lens_view()),
            HostArg::TensorMut(&mut o, qo),
            HostArg::F32(scale),
        ],
        &SimDevice::default(),
    )?;
    Ok(o.iter().map(|x| x.to_f64()).collect())
}

#[test]
fn a_user_written_sliding_window_paged_decode_matches_float64() {
    let declared = windowed_paged_decode::CONFIG;
    // Lengths shorter than the window, spanning several windows, an empty cache and one with
    // fewer rows than new tokens; pages of 16 and 48; split across CTAs and not.
    let cases = [
        (declared, vec![37, 333, 0, 250], 16, 1),
        (Config { kv_ctas: 3, ..declared }, vec![150, 2, 400], 48, 4),
        (Config { kv_ctas: 5, stages: 3, ..declared }, vec![517, 64], 16, 16),
    ];
    for (i, (config, lens, page, s)) in cases.into_iter().enumerate() {
        let kernel = windowed_paged_decode::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let (h, hkv, d) = (4, 2, 64);
        let mut rng = Rng::new(90 + i as u64);
        let cache = PagedCache::random(&lens, hkv, d, page, &mut rng);
        cache.check().unwrap();
        let q: Vec<f64> = (0..lens.len() * h * s * d)
            .map(|_| flashcore::round_to(flashcore::DType::F16, rng.normal()))
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let got =
            run_in_simulator(&kernel, &cache, &q, [h, s], scale).unwrap_or_else(|e| panic!("{config}: {e}"));
        let err = compare(&got, &reference(&q, &cache, h, s, scale as f64));
        println!("{config:<60} lens {lens:?} page {page} s {s}: rel_l2 {:.2e}", err.rel_l2);
        assert!(err.rel_l2 < flashcore::tolerance(flashcore::DType::F16), "{config} lens {lens:?}: {err:?}");
    }
}

/// Dilated decode over a paged cache: every new token sees the cache's rows in blocks of 32
/// except every third block, a mask of integer `/` and `%` on key positions. (The K/V loop
/// visits every tile from the first the mask keeps a score of; this mask empties whole tiles
/// inside that range, which must then contribute nothing.)
#[flash_kernel(tile_m = 16, tile_n = 32, head_dim = 64, stages = 2, warps = 1)]
fn dilated_paged_decode(
    q: Tensor<f16, B, H, S, D>,
    k_cache: Tensor<f16, PAGES, HKV, PAGE, D>,
    v_cache: Tensor<f16, PAGES, HKV, PAGE, D>,
    block_table: Tensor<i32, B, MAX_PAGES>,
    cache_len: SeqLens<B, SK>,
    o: TensorMut<f16, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            let ks = stage(k_cache.tile(block_table[b], h / (H / HKV), kt));
            let vs = stage(v_cache.tile(block_table[b], h / (H / HKV), kt));
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            let s = mask(s, s.index(SK) / 32 % 3 != 1);
            let m_new = max(m, row_max(s));
            let p = exp2(s - m_new);
            let alpha = exp2(m - m_new);
            l = l * alpha + row_sum(p);
            acc = acc * alpha;
            m = m_new;
            acc = mma(p.to_f16(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

#[test]
fn a_user_written_block_sparse_paged_decode_matches_float64() {
    let declared = dilated_paged_decode::CONFIG;
    let cases = [(declared, vec![300, 31, 97], 16), (Config { kv_ctas: 2, ..declared }, vec![250, 481], 48)];
    for (i, (config, lens, page)) in cases.into_iter().enumerate() {
        let kernel = dilated_paged_decode::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let (h, hkv, d, s) = (2, 1, 64, 1);
        let mut rng = Rng::new(190 + i as u64);
        let cache = PagedCache::random(&lens, hkv, d, page, &mut rng);
        let q: Vec<f64> = (0..lens.len() * h * s * d)
            .map(|_| flashcore::round_to(flashcore::DType::F16, rng.normal()))
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let got =
            run_in_simulator(&kernel, &cache, &q, [h, s], scale).unwrap_or_else(|e| panic!("{config}: {e}"));
        let want = reference_where(&q, &cache, h, s, scale as f64, |_, j| j / 32 % 3 != 1);
        let err = compare(&got, &want);
        println!("{config:<60} lens {lens:?} page {page}: rel_l2 {:.2e}", err.rel_l2);
        assert!(err.rel_l2 < flashcore::tolerance(flashcore::DType::F16), "{config} lens {lens:?}: {err:?}");
    }
}

/// Bulk tensor copies (TMA) read one rectangle of a tensor and stop only at its end: compiled
/// with them, this kernel would read the wrong rows of the pool and rows past each sequence's
/// length. It is an error naming what cannot be, not a kernel that computes something else.
#[test]
fn the_user_kernel_with_bulk_tensor_copies_is_refused() {
    let tma = Config {
        target: flashcore::Target::Sm90a,
        tile_m: 128,
        tile_n: 128,
        warps: 8,
        load_warps: 4,
        tma: true,
        ..windowed_paged_decode::CONFIG
    };
    let err = windowed_paged_decode::compile(&tma).unwrap_err().to_string();
    // Its lengths are refused first (their check runs at the parameters), the gather next.
    assert!(err.contains("cache_len") && err.contains("compile without `tma`"), "{err}");
    // Without `tma` the same schedule compiles (the gather is cp.async's).
    windowed_paged_decode::compile(&Config { tma: false, ..tma }).unwrap();
}
