//! Decode attention over a paged KV cache (`kernels::decode`) in the PTX simulator against
//! float64: pages of 16 and 64 rows shuffled across the pool, sequences of different lengths
//! (tails, an empty one, one filling its last page), 1 to 16 new tokens, causal and not, grouped
//! K/V heads, f16 and bf16, both targets. Every row of the pool that no sequence uses is NaN, so
//! a kernel that read past a sequence's length would show it.

use flashcore::kernels::decode::attention_decode_paged;
use flashcore::paged::{check_decode, PagedCache};
use flashcore::reference::Rng;
use flashcore::simulate::SimDevice;
use flashcore::{Config, DType, Target};

fn run(config: Config, lens: &[usize], page: usize, h: usize, hkv: usize, s: usize, seed: u64) {
    let kernel = attention_decode_paged::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
    let cache =
        PagedCache::random_in(config.dtype, lens, hkv, config.head_dim as usize, page, &mut Rng::new(seed));
    cache.check().unwrap();
    let got = check_decode(&kernel, &cache, h, s, seed, &SimDevice::default())
        .unwrap_or_else(|e| panic!("{config} lens {lens:?} page {page}: {e}"));
    println!("{config:<60} lens {lens:?} page {page} h {h}/{hkv} s {s}: rel_l2 {:.2e}", got.err.rel_l2);
    assert!(
        got.err.rel_l2 < flashcore::tolerance(config.dtype),
        "{config} lens {lens:?} page {page} h {h}/{hkv} s {s}: {:?}",
        got.err
    );
}

#[test]
fn paged_decode_matches_float64_at_tails_for_pages_of_16_and_64() {
    let declared = attention_decode_paged::CONFIG.with_head_dim(64);
    for (page, seed) in [(16, 1), (64, 2)] {
        // One token a sequence: a partial last page, a whole one, a long one, an empty cache.
        run(declared, &[37, 64, 150, 0], page, 4, 2, 1, seed);
    }
}

#[test]
fn paged_decode_with_several_new_tokens_is_causal_from_the_bottom_right() {
    let causal = Config { causal: true, ..attention_decode_paged::CONFIG.with_head_dim(64) };
    run(causal, &[90, 16], 16, 2, 1, 4, 3);
    run(causal, &[130], 32, 2, 2, 16, 4);
    run(Config { dtype: DType::Bf16, ..causal }, &[77, 200], 48, 4, 1, 3, 5);
}

#[test]
fn paged_decode_runs_the_schedules_and_targets() {
    let declared = attention_decode_paged::CONFIG;
    let configs = [
        declared,
        Config { stages: 3, load_warps: 1, ..declared.with_head_dim(64) },
        Config { target: Target::Sm90a, tile_m: 64, warps: 4, ..declared.with_head_dim(64) },
    ];
    for config in configs {
        run(config, &[70, 129], 16, 2, 1, 1, 6);
    }
}

#[test]
fn a_paged_tile_must_name_a_page_table_and_cannot_be_stored_or_bulk_copied() {
    let tma = Config {
        target: Target::Sm90a,
        tile_m: 128,
        warps: 8,
        load_warps: 4,
        tma: true,
        ..attention_decode_paged::CONFIG
    };
    let err = attention_decode_paged::compile(&tma).unwrap_err().to_string();
    assert!(err.contains("compile without `tma`"), "{err}");
}

/// Runs the plain decode kernel at D = 64 in the simulator on two sequences of one head, one
/// new token each (q all 0.5), the pools `k`, `v` laid out as `cache`'s, with `table` and `lens`
/// as the block table and lengths arguments; the output (NaN where unwritten) or the error.
fn simulate_two_sequences(
    cache: &PagedCache,
    (k, v): (&[half::f16], &[half::f16]),
    table: flashcore::simulate::HostArg<half::f16>,
    lens: flashcore::simulate::HostArg<half::f16>,
) -> Result<Vec<half::f16>, flashcore::Error> {
    use flashcore::simulate::{simulate, HostArg, HostView};
    use half::f16;
    let kernel = attention_decode_paged::compile(&attention_decode_paged::CONFIG.with_head_dim(64)).unwrap();
    let q = vec![f16::from_f32(0.5); 2 * 64];
    let mut o = vec![f16::NAN; 2 * 64];
    let qo = HostView::contiguous(&[2, 1, 1, 64]);
    simulate::<f16>(
        &kernel,
        &mut [
            HostArg::Tensor(&q, qo.clone()),
            HostArg::Tensor(k, cache.view()),
            HostArg::Tensor(v, cache.view()),
            table,
            HostArg::Absent,
            lens,
            HostArg::TensorMut(&mut o, qo),
            HostArg::F32(0.125),
        ],
        &SimDevice::default(),
    )?;
    Ok(o)
}

/// A hostile cache: a length past the block table's capacity, an entry past the pool, a
/// negative entry. The host check names each, and so does the opt-in device check (run in the
/// simulator); the kernel, launched anyway, reads nothing
/// outside the pool and the table (the simulator faults on any access outside an allocation)
/// and writes finite outputs.
#[test]
fn hostile_page_tables_are_named_on_the_host_and_never_read_outside_the_cache() {
    use flashcore::simulate::HostArg;
    use half::f16;
    let clean = PagedCache::random(&[40, 100], 1, 64, 16, &mut Rng::new(7));
    let capacity = (clean.max_pages * clean.page_size) as i32;
    type Corrupt = Box<dyn Fn(&mut PagedCache)>;
    let hostile: [(&str, Corrupt); 3] = [
        ("cache_len", Box::new(move |c| c.lens[0] = capacity + 100)),
        ("block_table", Box::new(|c| c.block_table[1] = 1000)),
        ("block_table", Box::new(|c| c.block_table[c.max_pages] = -7)),
    ];
    // The device check (in the simulator) passes the clean cache and names the same argument;
    // of several violations, the first in table order, as the host check does.
    flashcore::paged::simulate_table_check(&clean).unwrap();
    let mut two = clean.clone();
    (two.block_table[1], two.lens[1]) = (1000, -5);
    let (host, device) = (
        two.check().unwrap_err().to_string(),
        flashcore::paged::simulate_table_check(&two).unwrap_err().to_string(),
    );
    assert!(host.contains("entry [0, 1]") && device.contains("entry [0, 1]"), "{host} / {device}");
    for (arg, corrupt) in &hostile {
        let mut cache = clean.clone();
        corrupt(&mut cache);
        let err = cache.check().unwrap_err().to_string();
        assert!(err.contains(arg), "{err}");
        let on_device = flashcore::paged::simulate_table_check(&cache).unwrap_err().to_string();
        assert!(on_device.contains(arg) && on_device.contains("device check"), "{on_device}");
        // The pool's unused rows as zeros: a length past the last page's fill may use them.
        let to_f16 = |x: &[f64]| {
            x.iter().map(|v| f16::from_f64(if v.is_nan() { 0.0 } else { *v })).collect::<Vec<_>>()
        };
        let (k, v) = (to_f16(&cache.k), to_f16(&cache.v));
        let table = HostArg::I32Table(&cache.block_table, cache.table_view());
        let lens = HostArg::I32Table(&cache.lens, cache.lens_view());
        let o =
            simulate_two_sequences(&cache, (&k, &v), table, lens).unwrap_or_else(|e| panic!("{err}: {e}"));
        assert!(o.iter().all(|x| x.is_finite()), "{err}: {o:?}");
    }
}

/// The launcher's argument checks: lengths that are not an i32 `[B]` tensor, a page table of the
/// wrong rank, a pool whose head dim is not the kernel's.
#[test]
fn malformed_decode_arguments_are_typed_errors() {
    use flashcore::simulate::{HostArg, HostView};
    use half::f16;
    let cache = PagedCache::random(&[40, 100], 1, 64, 16, &mut Rng::new(8));
    let (k, v): (Vec<f16>, Vec<f16>) = (
        cache.k.iter().map(|x| f16::from_f64(*x)).collect(),
        cache.v.iter().map(|x| f16::from_f64(*x)).collect(),
    );
    let lens_f32 = [40.0f32, 100.0];
    let run = |table: HostArg<f16>, lens: HostArg<f16>| {
        simulate_two_sequences(&cache, (&k, &v), table, lens).unwrap_err().to_string()
    };
    let table = || HostArg::I32Table(&cache.block_table, cache.table_view());
    let err = run(table(), HostArg::F32Table(&lens_f32, cache.lens_view()));
    assert!(err.contains("cache_len") && err.contains("i32"), "{err}");
    let err = run(table(), HostArg::I32Table(&cache.lens, HostView::contiguous(&[1, 2])));
    assert!(err.contains("cache_len") && err.contains("one axis"), "{err}");
    let err = run(
        HostArg::I32Table(&cache.block_table, HostView::contiguous(&[cache.block_table.len()])),
        HostArg::I32Table(&cache.lens, cache.lens_view()),
    );
    assert!(err.contains("block_table"), "{err}");
    let err = run(table(), HostArg::I32Table(&cache.lens[..1], HostView::contiguous(&[1])));
    assert!(err.contains("cache_len") && err.contains("`B`"), "{err}");
}

/// Split-KV across CTAs (`kv_ctas`): each sequence's K/V tiles are shared out among several
/// CTAs, whose states the last to arrive merges. Lengths that leave some CTAs an empty share,
/// shares of unequal length, an empty sequence, causal several-token steps, with the in-CTA
/// split too (whose groups share the last CTA's fold: fewer CTAs than groups, more, two warps
/// a group), bf16, and sm_90a.
#[test]
fn split_across_ctas_matches_float64() {
    let d64 = attention_decode_paged::CONFIG.with_head_dim(64);
    let configs = [
        Config { kv_ctas: 4, ..d64 },
        Config { kv_ctas: 3, warps: 4, kv_splits: 4, ..d64 },
        Config { kv_ctas: 9, warps: 4, kv_splits: 4, ..d64 },
        Config { kv_ctas: 5, tile_m: 32, warps: 4, kv_splits: 2, ..d64 },
        Config { kv_ctas: 5, causal: true, dtype: DType::Bf16, ..d64 },
        Config { kv_ctas: 7, tile_n: 32, stages: 3, ..d64 },
        Config { kv_ctas: 2, target: Target::Sm90a, tile_m: 64, warps: 4, ..d64 },
    ];
    for (i, config) in configs.into_iter().enumerate() {
        let s = if config.causal { 4 } else { 1 };
        run(config, &[300, 0, 129, 700], 16, 4, 2, s, 20 + i as u64);
    }
}

/// The combine is not decode's own: the standard forward kernel split across CTAs, at tails,
/// causal, and with GQA, in the simulator against float64.
#[test]
fn the_forward_kernel_split_across_ctas_matches_float64() {
    use flashcore::kernels::attention;
    use flashcore::simulate::{check_attention, AttentionShape};
    for config in [
        Config { kv_ctas: 3, ..attention::CONFIG },
        Config { kv_ctas: 4, causal: true, tile_m: 16, warps: 1, ..attention::CONFIG },
    ] {
        let kernel = attention::compile(&config).unwrap();
        let shape = AttentionShape { b: 2, h: 2, hk: 1, s: 70, sk: 333 };
        let got = check_attention(&kernel, shape, flashcore::Layout::Bhsd, 5, &SimDevice::default())
            .unwrap_or_else(|e| panic!("{config}: {e}"));
        println!("{config}: rel_l2 {:.2e}", got.err.rel_l2);
        assert!(got.err.rel_l2 < flashcore::tolerance(config.dtype), "{config}: {:?}", got.err);
        assert!(got.lse_max_abs < 1e-2 && got.lse_mismatched == 0, "{config}: lse {got:?}");
    }
}

/// Packed GQA (`attention_decode_paged_packed`): the query heads of a K/V head share one tile,
/// the causal mask comes from `rows_after`. Groups of 4 and 8 heads, 1, 3 and 16 new tokens
/// (tiles of several heads' tokens, a tile boundary inside a head's tokens), causal and not,
/// pages of 16 and 48, split across CTAs and not, bf16, sm_90a.
#[test]
fn packed_gqa_decode_matches_float64() {
    use flashcore::kernels::decode::attention_decode_paged_packed as packed;
    use flashcore::paged::check_decode_packed;
    let d64 = packed::CONFIG.with_head_dim(64);
    let cases = [
        (d64, 8, 2, 1, false, 16),
        (Config { kv_ctas: 3, ..d64 }, 8, 2, 3, true, 48),
        (Config { kv_ctas: 2, dtype: DType::Bf16, ..packed::CONFIG }, 8, 1, 16, true, 16),
        (Config { tile_m: 32, warps: 8, kv_ctas: 4, ..d64 }, 4, 1, 5, true, 16),
        (Config { kv_ctas: 3, ..flashcore::kernels::decode::packed_schedule(d64, 64) }, 8, 2, 8, true, 16),
        (Config { warps: 2, kv_splits: 2, kv_ctas: 5, ..packed::CONFIG }, 4, 2, 1, false, 16),
        (
            Config { target: Target::Sm90a, tile_m: 64, warps: 4, kv_splits: 1, kv_ctas: 2, ..d64 },
            8,
            2,
            4,
            true,
            16,
        ),
    ];
    for (i, (config, h, hkv, s, causal, page)) in cases.into_iter().enumerate() {
        let kernel = packed::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let lens = [300, 0, 129, 700];
        let seed = 40 + i as u64;
        let cache = PagedCache::random_in(
            config.dtype,
            &lens,
            hkv,
            config.head_dim as usize,
            page,
            &mut Rng::new(seed),
        );
        let got = check_decode_packed(&kernel, &cache, h, s, causal, seed, &SimDevice::default())
            .unwrap_or_else(|e| panic!("{config}: {e}"));
        println!("packed {config:<70} h {h}/{hkv} s {s} causal {causal}: rel_l2 {:.2e}", got.err.rel_l2);
        assert!(
            got.err.rel_l2 < flashcore::tolerance(config.dtype),
            "{config} h {h}/{hkv} s {s}: {:?}",
            got.err
        );
    }
}

/// The packed kernel's rows are several query heads' tokens, not positions: the `causal` flag,
/// which would compare a packed row's index with the keys and so mask the wrong scores, is a
/// compile error naming the rows (`packed_rows`); its causal steps pass `rows_after` instead.
/// The same flag on the plain kernel, whose rows are positions, compiles.
#[test]
fn the_causal_flag_is_refused_where_rows_are_packed() {
    use flashcore::kernels::decode::attention_decode_paged_packed as packed;
    let err =
        packed::compile(&Config { causal: true, ..packed::CONFIG }).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("packed") && err.contains("ROWS") && err.contains("causal"), "{err}");
    assert!(packed::program().packed_rows);
    attention_decode_paged::compile(&Config { causal: true, ..attention_decode_paged::CONFIG }).unwrap();
    assert!(!attention_decode_paged::program().packed_rows);
}

/// Pages must hold a multiple of 16 rows (the kernel steps through a page 16 rows at a time):
/// pages of 8 or 24 rows are a typed error naming the cache, before anything runs.
#[test]
fn pages_of_other_than_a_multiple_of_16_rows_are_refused() {
    for page in [8, 24] {
        let kernel =
            attention_decode_paged::compile(&attention_decode_paged::CONFIG.with_head_dim(64)).unwrap();
        let cache = PagedCache::random(&[40, 100], 2, 64, page, &mut Rng::new(9));
        assert!(cache.check().unwrap_err().to_string().contains("multiple of 16"));
        let err = check_decode(&kernel, &cache, 2, 1, 9, &SimDevice::default()).unwrap_err().to_string();
        assert!(err.contains("k_cache") && err.contains("multiple of 16 rows"), "{err}");
    }
}

/// The packed kernel on an L4 (99 KiB of shared memory a CTA): the declared in-CTA split fits at
/// D = 128 (its merge region shares the K/V ring's memory: 80 KiB, not 105.5), and so do the
/// halved split, the wide schedule of `packed_schedule` and the declared one at D = 64.
#[test]
fn the_packed_schedules_fit_the_l4() {
    use flashcore::kernels::decode::{attention_decode_paged_packed as packed, packed_schedule};
    const L4_SHARED_PER_BLOCK: u32 = 101_376;
    let shared = |c: Config| packed::compile(&Config { kv_ctas: 8, ..c }).unwrap().ptx.shared_bytes;
    for config in [
        packed::CONFIG,
        Config { warps: 2, kv_splits: 2, ..packed::CONFIG },
        packed_schedule(packed::CONFIG, 64),
        packed::CONFIG.with_head_dim(64),
    ] {
        assert!(shared(config) <= L4_SHARED_PER_BLOCK, "{config}: {} bytes", shared(config));
    }
    // The ring holds the merge region: the declared split needs no more than its ring, Q tiles
    // and the combine's flag.
    assert!(shared(packed::CONFIG) < 82 * 1024, "{} bytes", shared(packed::CONFIG));
}

/// `paged::decode_plan`, what `decode_step` launches, on described devices (no GPU needed):
/// the split across CTAs for one sequence, one tile of 64 rows for 16 new tokens (sm_90a on a
/// 9.0 device, where it can be expressed), the in-CTA split kept on an L4 and halved on a
/// device of 64 KiB a CTA, and typed errors for
/// shapes that do not fit together.
#[test]
fn the_decode_step_plan_follows_the_device_and_refuses_mismatched_shapes() {
    use flashcore::paged::decode_plan;
    use flashcore::runtime::{contiguous_strides, DeviceInfo};
    let gpu = |cc: (i32, i32), sm_count: u32, smem: u32| DeviceInfo {
        name: "described".into(),
        compute_capability: cc,
        sm_count,
        max_shared_per_block: smem,
        max_threads_per_block: 1024,
        shared_per_sm: smem,
        registers_per_sm: 65536,
    };
    let (h200, l4) = (gpu((9, 0), 132, 232_448), gpu((8, 9), 58, 101_376));
    // One sequence of 32k rows in pages of 16: pool [PAGES, HKV, PAGE, D], table [B, 2048].
    let (pool, table, lens) = ([2050usize, 8, 16, 128], [1usize, 2048], [1usize]);
    let plan = |info: &DeviceInfo, q: [usize; 4]| {
        let strides = contiguous_strides(&q);
        decode_plan(info, DType::F16, (&q, &strides), (&q, &strides), [&pool, &table, &lens])
    };
    let one = plan(&h200, [1, 32, 1, 128]).unwrap();
    assert_eq!((one.config.kv_ctas, one.config.tile_m, one.groups), (32, 16, 4), "{:?}", one);
    assert_eq!(one.packed_shape, [1, 8, 4, 128]);
    let sixteen = plan(&h200, [1, 32, 16, 128]).unwrap();
    assert_eq!((sixteen.config.tile_m, sixteen.config.target), (64, Target::Sm90a), "{:?}", sixteen);
    let on_l4 = plan(&l4, [1, 32, 1, 128]).unwrap();
    assert_eq!((on_l4.config.kv_splits, on_l4.config.target), (4, Target::Sm89), "{:?}", on_l4);
    // A device of less shared memory a CTA than the declared split needs: the split halves.
    let small = gpu((8, 6), 30, 64 * 1024);
    let on_small = plan(&small, [1, 32, 1, 128]).unwrap();
    assert!(on_small.config.kv_splits < 4, "{:?}", on_small);
    // Mismatches name the argument.
    let err = |r: Result<flashcore::paged::DecodePlan, flashcore::Error>| r.unwrap_err().to_string();
    assert!(err(plan(&h200, [1, 30, 1, 128])).contains("not a multiple"));
    assert!(err(plan(&h200, [2, 32, 1, 128])).contains("2 sequences"));
    let q = [1usize, 32, 1, 128];
    let strided = [32 * 128 * 2, 128 * 2, 128, 1];
    let e = err(decode_plan(&h200, DType::F16, (&q, &strided), (&q, &strided), [&pool, &table, &lens]));
    assert!(e.contains("contiguous"), "{e}");
    let other = [1usize, 32, 2, 128];
    let e = err(decode_plan(
        &h200,
        DType::F16,
        (&q, &contiguous_strides(&q)),
        (&other, &contiguous_strides(&other)),
        [&pool, &table, &lens],
    ));
    assert!(e.contains("out"), "{e}");
}

/// The append kernel (reshape-and-cache) in the simulator: the step's new K/V rows land where
/// the host's append puts them (bit for bit, pages of 16 and 48, 1 and 5 new tokens, a sequence
/// shorter than the step), every other element of the pools (the NaN rows no sequence uses
/// included) is left as it was, and a row whose table entry is missing or outside the pool is
/// not written (the simulator faults on any access outside an allocation).
#[test]
fn append_writes_the_new_rows_and_nothing_else() {
    use flashcore::paged::simulate_append;
    use half::f16;
    let to_f16 = |x: &[f64]| x.iter().map(|v| f16::from_f64(*v)).collect::<Vec<f16>>();
    let bits = |x: &[f16]| x.iter().map(|v| v.to_bits()).collect::<Vec<u16>>();
    for (i, (lens, page, s, hostile)) in
        [(vec![40, 100, 3], 16, 5, false), (vec![97, 1], 48, 1, false), (vec![40, 100, 33], 16, 4, true)]
            .into_iter()
            .enumerate()
    {
        let mut rng = Rng::new(300 + i as u64);
        let mut cache = PagedCache::random(&lens, 2, 64, page, &mut rng);
        if hostile {
            // Sequence 1's last page past the pool, sequence 2's last entry missing.
            let (last1, last2) = ((100 - 1) / page, (33 - 1) / page);
            cache.block_table[cache.max_pages + last1] = cache.pages as i32 + 5;
            cache.block_table[2 * cache.max_pages + last2] = -1;
        }
        let n = lens.len() * 2 * s * 64;
        let (k_new, v_new): (Vec<f64>, Vec<f64>) = (0..n).map(|_| (rng.normal(), rng.normal())).unzip();
        let (k_new, v_new) = (to_f16(&k_new), to_f16(&v_new));
        let (mut k_pool, mut v_pool) = (to_f16(&cache.k), to_f16(&cache.v));
        let original = bits(&k_pool);
        simulate_append(&cache, (&k_new, &v_new), s, (&mut k_pool, &mut v_pool)).unwrap();
        let widen = |x: &[f16]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        // The step wrote rows (also when some of its rows are refused).
        assert_ne!(bits(&k_pool), original, "case {i}");
        cache.append_host(&widen(&k_new), &widen(&v_new), s);
        assert_eq!(bits(&k_pool), bits(&to_f16(&cache.k)), "K pool, case {i}");
        assert_eq!(bits(&v_pool), bits(&to_f16(&cache.v)), "V pool, case {i}");
    }
    // Shapes the kernel cannot take are typed errors naming the argument.
    use flashcore::paged::append_arguments;
    let strides = |s: &[usize]| flashcore::runtime::contiguous_strides(s);
    let (pool, table) = ([10usize, 2, 16, 64], [2usize, 5]);
    let err = |new: &[usize], pool: &[usize]| {
        append_arguments((new, &strides(new)), (pool, &strides(pool)), (&table, &strides(&table)))
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[2, 2, 1, 60], &[10, 2, 16, 60]).contains("multiple of 8"));
    assert!(err(&[2, 2, 1, 64], &[10, 2, 24, 64]).contains("k_pool"));
    assert!(err(&[3, 2, 1, 64], &pool).contains("3 sequences"));
    assert!(err(&[2, 4, 1, 64], &pool).contains("K/V heads"));
}

/// Per-sequence numbers of new tokens (`q_len`, speculative decoding with per-sequence draft
/// lengths): `q` and `o` padded to `S = 16`; 1, 5, 16 and 0 real tokens, causal from the bottom
/// right of each sequence's own lengths, split across CTAs and not, pages of 16 and 48. The
/// padding rows are never written (they stay NaN); the real ones match float64. In the
/// simulator, and on the GPU as well where there is one (`scripts/gpu-decode.sh check`).
#[test]
fn per_sequence_query_lengths_match_float64() {
    use flashcore::paged::decode_reference;
    use flashcore::simulate::{simulate, HostArg, HostView};
    use half::f16;
    let declared = Config { causal: true, ..attention_decode_paged::CONFIG.with_head_dim(64) };
    let cases = [
        (declared, vec![300, 77, 129, 40], vec![1, 5, 16, 0], 16),
        (Config { kv_ctas: 3, ..declared }, vec![250, 481], vec![7, 3], 48),
    ];
    for (i, (config, lens, q_lens, page)) in cases.into_iter().enumerate() {
        let kernel = attention_decode_paged::compile(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let (h, hkv, d, s) = (4, 2, 64, 16);
        let mut rng = Rng::new(290 + i as u64);
        let cache = PagedCache::random(&lens, hkv, d, page, &mut rng);
        let q: Vec<f64> =
            (0..lens.len() * h * s * d).map(|_| flashcore::round_to(DType::F16, rng.normal())).collect();
        let to_f16 = |x: &[f64]| x.iter().map(|v| f16::from_f64(*v)).collect::<Vec<_>>();
        let (q16, k16, v16) = (to_f16(&q), to_f16(&cache.k), to_f16(&cache.v));
        let mut o = vec![f16::NAN; q.len()];
        let qo = HostView::contiguous(&[lens.len(), h, s, d]);
        let q_len: Vec<i32> = q_lens.iter().map(|&n| n as i32).collect();
        let scale = config.default_scale();
        simulate::<f16>(
            &kernel,
            &mut [
                HostArg::Tensor(&q16, qo.clone()),
                HostArg::Tensor(&k16, cache.view()),
                HostArg::Tensor(&v16, cache.view()),
                HostArg::I32Table(&cache.block_table, cache.table_view()),
                HostArg::I32Table(&q_len, cache.lens_view()),
                HostArg::I32Table(&cache.lens, cache.lens_view()),
                HostArg::TensorMut(&mut o, qo),
                HostArg::F32(scale),
            ],
            &SimDevice::default(),
        )
        .unwrap_or_else(|e| panic!("{config}: {e}"));
        // On a GPU (none in CI), the same launch through the typed launcher, into the same checks.
        let mut outputs = vec![("simulator", o)];
        if let Ok(device) = flashcore::runtime::Device::new(0) {
            let gpu = || -> Result<Vec<f16>, flashcore::Error> {
                let view = cache.view();
                let k = device.upload_strided(&k16, view.shape(), view.strides())?;
                let v = device.upload_strided(&v16, view.shape(), view.strides())?;
                let table = device.upload(&cache.block_table, &[lens.len(), cache.max_pages])?;
                let (q_len_dev, lens_dev) =
                    (device.upload(&q_len, &[lens.len()])?, device.upload(&cache.lens, &[lens.len()])?);
                let q_dev = device.upload(&q16, &[lens.len(), h, s, d])?;
                let mut out = device.filled(&[lens.len(), h, s, d], f16::NAN)?;
                attention_decode_paged::launch_async(
                    &device,
                    &config,
                    &q_dev,
                    &k,
                    &v,
                    &table,
                    Some(&q_len_dev),
                    &lens_dev,
                    &mut out,
                    scale,
                )?;
                Ok(device.download(&out)?)
            };
            outputs.push(("GPU", gpu().unwrap_or_else(|e| panic!("{config} on the GPU: {e}"))));
        }
        for (place, o) in outputs {
            let (mut got, mut want) = (vec![], vec![]);
            for (b, &n) in q_lens.iter().enumerate() {
                for head in 0..h {
                    for t in 0..s {
                        let row = &o[((b * h + head) * s + t) * d..][..d];
                        assert_eq!(
                            row.iter().all(|x| x.is_nan()),
                            t >= n,
                            "{place}: {config}: sequence {b} head {head} row {t}"
                        );
                    }
                }
                // Sequence b alone with its n tokens: the float64 reference of an n-token step.
                let one = PagedCache {
                    lens: vec![cache.lens[b]],
                    block_table: cache.block_table[b * cache.max_pages..][..cache.max_pages].to_vec(),
                    ..cache.clone()
                };
                let rows = |x: &[f64], head: usize| x[(b * h + head) * s * d..][..n * d].to_vec();
                let q_b: Vec<f64> = (0..h).flat_map(|head| rows(&q, head)).collect();
                want.extend(decode_reference(&q_b, &one, h, n, scale as f64, true));
                let o64: Vec<f64> = o.iter().map(|x| x.to_f64()).collect();
                got.extend((0..h).flat_map(|head| rows(&o64, head)));
            }
            let err = flashcore::reference::compare(&got, &want);
            println!(
                "{place}: {config:<60} lens {lens:?} q_len {q_lens:?} page {page}: rel_l2 {:.2e}",
                err.rel_l2
            );
            assert!(err.rel_l2 < flashcore::tolerance(DType::F16), "{place}: {config}: {err:?}");
        }
    }
}

/// A decode step's inputs round-trip through `.npy` files (`paged::STEP_FILES`, vLLM's pool
/// layout): the cache read back is the one written (NaN rows included), it decodes against
/// float64, and a file of the wrong shape is a typed error naming it.
#[test]
fn step_inputs_round_trip_through_npy_files() {
    use flashcore::paged::check_decode;
    let dir = std::env::temp_dir().join(format!("flashcore-npy-step-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(41);
    let cache = PagedCache::random(&[70, 200], 2, 64, 16, &mut rng);
    let q: Vec<f64> = (0..2 * 4 * 3 * 64).map(|_| flashcore::round_to(DType::F16, rng.normal())).collect();
    cache.write_npy(&dir, &q, [2, 4, 3, 64]).unwrap();
    let (read, q_read, shape) = PagedCache::read_npy(&dir, DType::F16).unwrap();
    let same = |a: &[f64], b: &[f64]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan())
    };
    assert!(same(&read.k, &cache.k) && same(&read.v, &cache.v) && same(&q_read, &q));
    assert_eq!(
        (read.block_table.clone(), read.lens.clone(), shape),
        (cache.block_table.clone(), cache.lens.clone(), [2, 4, 3, 64])
    );
    read.check().unwrap();
    let kernel = attention_decode_paged::compile(&attention_decode_paged::CONFIG.with_head_dim(64)).unwrap();
    let got = check_decode(&kernel, &read, 4, 3, 41, &SimDevice::default()).unwrap();
    assert!(got.err.rel_l2 < flashcore::tolerance(DType::F16), "{:?}", got.err);
    // Lengths of another batch: named.
    std::fs::write(dir.join("cache_len.npy"), flashcore::npy::to_bytes_i32(&[70, 200, 5], &[3])).unwrap();
    let err = PagedCache::read_npy(&dir, DType::F16).unwrap_err().to_string();
    assert!(err.contains("cache_len.npy") && err.contains("[2]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
