//! Every snapshot configuration of the attention kernel, executed in the PTX simulator at small
//! shapes (one to a few CTAs, S from 64 to 256 with a tail) under several schedules, and checked
//! against the float64 reference.

use flashcore::kernels::attention;
use flashcore::simulate::{check_attention, AttentionCheck, AttentionShape, Options, SimDevice};
use flashcore::Layout;

/// Runs `config`'s kernel at `[b, h, s, d]` queries and `[b, hk, sk, d]` keys in the simulator
/// and checks it against float64; returns the lane instructions simulated and the seconds it took.
fn run_case(
    name: &str,
    config: &flashcore::Config,
    (b, h, s, sk): (usize, usize, usize, usize),
    hk: usize,
    layout: Layout,
    seed: u64,
    max_slice: u32,
) -> (u64, f64) {
    let compiled = attention::compile(config).unwrap();
    let device = SimDevice { sm_count: 2, options: Options { seed, max_slice, ..Options::default() } };
    let what = format!("{name} {b}x{h}x{s}x{} (SK {sk}, HKV {hk}, {layout}) seed {seed}", config.head_dim);
    let check = check_attention(&compiled, AttentionShape { b, h, hk, s, sk }, layout, seed, &device)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_within_bounds(&what, config, &check);
    (check.stats.lane_instructions, check.seconds)
}

/// The output within the dtype's bound of float64 (and finite), the log-sum-exp within 1e-3
/// (and infinite exactly where float64 is).
fn assert_within_bounds(what: &str, config: &flashcore::Config, check: &AttentionCheck) {
    let err = check.err;
    assert!(
        check.lse_max_abs < 1e-3 && check.lse_mismatched == 0,
        "{what}: log-sum-exp off by {:e} ({} infinite mismatches)",
        check.lse_max_abs,
        check.lse_mismatched
    );
    assert!(
        err.rel_l2 < flashcore::tolerance(config.dtype) && err.non_finite == 0,
        "{what}: relative error {:e} ({} non-finite)",
        err.rel_l2,
        err.non_finite
    );
    eprintln!(
        "{what}: rel err {:.3e}, log-sum-exp {:.1e}, {} CTAs, {} warp instructions",
        err.rel_l2, check.lse_max_abs, check.stats.ctas, check.stats.warp_instructions
    );
}

/// Shapes and schedules each configuration runs at: a tail shape over two heads (S = 100 is not
/// a multiple of any tile), four KV tiles with a warp switch after every instruction, and two
/// batches of one KV tile.
const CASES: [((usize, usize, usize, usize), u64, u32); 3] =
    [((1, 2, 100, 100), 1, 64), ((1, 1, 256, 256), 2, 1), ((2, 1, 64, 64), 3, 16)];

#[test]
fn every_snapshot_config_runs_correctly_in_the_simulator() {
    let (mut lane_instructions, mut secs) = (0, 0.0);
    for (name, config) in flashcore::kernels::reference_configs() {
        for (shape, seed, slice) in CASES {
            let (n, t) = run_case(name, &config, shape, shape.1, Layout::Bhsd, seed, slice);
            lane_instructions += n;
            secs += t;
        }
    }
    eprintln!(
        "simulated {lane_instructions} lane instructions in {secs:.1} s of simulation ({:.1} M/s)",
        lane_instructions as f64 / secs / 1e6
    );
}

/// Schedules beyond the snapshots: the seed kernel's 4 load + 11 compute + 1 softmax warps (the
/// layout whose hand-written version deadlocked), four stages, and persistent warp-specialized CTAs
/// that each walk several work items.
#[test]
fn the_seed_layout_and_deeper_pipelines_run_correctly_in_the_simulator() {
    let base = attention::CONFIG;
    let seed_layout =
        flashcore::Config { tile_m: 176, warps: 11, load_warps: 4, softmax_warps: 1, stages: 2, ..base };
    let configs = [
        ("seed_d64", seed_layout),
        (
            "seed_d128_s3_persistent",
            flashcore::Config { head_dim: 128, stages: 3, persistent: true, ..seed_layout },
        ),
        ("d64_s4", flashcore::Config { stages: 4, ..base }),
        ("d64_s4_load2_persistent", flashcore::Config { stages: 4, load_warps: 2, persistent: true, ..base }),
        (
            "d128_s3_load1_softmax4_persistent",
            flashcore::Config {
                head_dim: 128,
                stages: 3,
                load_warps: 1,
                softmax_warps: 4,
                persistent: true,
                ..base
            },
        ),
    ];
    for (name, config) in configs {
        run_case(name, &config, (1, 3, 200, 200), 3, Layout::Bhsd, 4, 32);
    }
}

/// Cross-attention (S ≠ SK, tails on both), grouped-query and multi-query heads, and causal
/// attention (bottom-right aligned, with tiles past the diagonal skipped), on the uniform,
/// warp-specialized and softmax-warp schedules.
#[test]
fn cross_grouped_and_causal_attention_run_correctly_in_the_simulator() {
    let base = attention::CONFIG;
    let configs = [
        ("d64", base),
        ("d64_s3_load1_persistent", flashcore::Config { stages: 3, load_warps: 1, persistent: true, ..base }),
        ("d128_m128_w8", flashcore::Config { head_dim: 128, tile_m: 128, warps: 8, ..base }),
        ("d64_n32_load1_softmax4", flashcore::Config { tile_n: 32, load_warps: 1, softmax_warps: 4, ..base }),
        ("d64_load1_softmax1", flashcore::Config { load_warps: 1, softmax_warps: 1, ..base }),
        (
            "d64_m32_n128_w4_load2_split2",
            flashcore::Config { tile_m: 32, tile_n: 128, warps: 4, load_warps: 2, kv_splits: 2, ..base },
        ),
        ("d64_m16_w4_split4", flashcore::Config { tile_m: 16, warps: 4, kv_splits: 4, ..base }),
    ];
    for (name, config) in configs {
        for causal in [false, true] {
            let config = flashcore::Config { causal, ..config };
            let name = format!("{name}{}", if causal { "_causal" } else { "" });
            // Cross-attention over grouped heads (4 query heads per K/V head), multi-query over
            // two batches, and a short self-attention.
            for (shape, hk, seed) in
                [((1, 4, 77, 200), 1, 5), ((2, 4, 192, 192), 2, 6), ((1, 1, 17, 17), 1, 7)]
            {
                run_case(&name, &config, shape, hk, Layout::Bhsd, seed, 32);
            }
            // More queries than keys: causal rows 0..110 see no key and give 0.
            run_case(&name, &config, (1, 1, 150, 40), 1, Layout::Bhsd, 8, 32);
        }
    }
}

/// Head dims 32 and 96 (rows of 4 and 12 sixteen-byte chunks: the swizzle works in groups of 4,
/// and with 12 chunks a warp's 32 threads copy 2 whole rows per pass, 8 of them sitting out).
#[test]
fn head_dims_32_and_96_run_correctly_in_the_simulator() {
    let base = attention::CONFIG;
    for head_dim in [32, 96] {
        let configs = [
            ("uniform", flashcore::Config { head_dim, ..base }),
            ("m128_w8_s3", flashcore::Config { head_dim, tile_m: 128, warps: 8, stages: 3, ..base }),
            ("load4_persistent", flashcore::Config { head_dim, load_warps: 4, persistent: true, ..base }),
            (
                "load1_softmax4_causal",
                flashcore::Config { head_dim, load_warps: 1, softmax_warps: 4, causal: true, ..base },
            ),
        ];
        for (name, config) in configs {
            run_case(&format!("d{head_dim}_{name}"), &config, (1, 2, 150, 150), 2, Layout::Bhsd, 9, 16);
        }
    }
}

/// BSHD tensors (heads interleaved within each sequence position, as PyTorch's `(B, S, H, D)`
/// tensors are): the same kernels read and write through the strides they are launched with.
#[test]
fn bshd_layout_runs_correctly_in_the_simulator() {
    let base = attention::CONFIG;
    let configs = [
        ("d64", base),
        (
            "d128_s3_load1_persistent",
            flashcore::Config { head_dim: 128, stages: 3, load_warps: 1, persistent: true, ..base },
        ),
        (
            "d96_n32_load1_softmax4_causal",
            flashcore::Config {
                head_dim: 96,
                tile_n: 32,
                load_warps: 1,
                softmax_warps: 4,
                causal: true,
                ..base
            },
        ),
    ];
    for (name, config) in configs {
        // Grouped heads with a tail, and cross-attention over two batches.
        run_case(name, &config, (1, 4, 100, 100), 2, Layout::Bshd, 10, 32);
        run_case(name, &config, (2, 2, 64, 150), 2, Layout::Bshd, 11, 32);
    }
}

/// bf16 (mma `.bf16`, conversions `cvt.rn.bf16x2.f32`, output in bf16) on the uniform,
/// warp-specialized and softmax-warp schedules, with grouped heads, causal masks and BSHD.
#[test]
fn bf16_runs_correctly_in_the_simulator() {
    let base = flashcore::Config { dtype: flashcore::DType::Bf16, ..attention::CONFIG };
    let configs = [
        ("bf16_d64_causal", flashcore::Config { causal: true, ..base }),
        (
            "bf16_d96_n32_load1_softmax4",
            flashcore::Config { head_dim: 96, tile_n: 32, load_warps: 1, softmax_warps: 4, ..base },
        ),
        (
            "bf16_d128_s3_load2_persistent",
            flashcore::Config { head_dim: 128, stages: 3, load_warps: 2, persistent: true, ..base },
        ),
    ];
    for (name, config) in configs {
        run_case(name, &config, (1, 4, 100, 150), 2, Layout::Bhsd, 12, 32);
        run_case(name, &config, (2, 2, 77, 77), 1, Layout::Bshd, 13, 32);
    }
}

/// Head dim 256 (32-row K/V tiles: the O accumulator alone is 128 registers a thread) with a
/// load warp, causal masking and bf16.
#[test]
fn head_dim_256_runs_correctly_in_the_simulator() {
    let base = attention::CONFIG.with_head_dim(256);
    let configs = [
        ("d256_s3_load1_causal", flashcore::Config { stages: 3, load_warps: 1, causal: true, ..base }),
        (
            "d256_bf16_persistent",
            flashcore::Config { dtype: flashcore::DType::Bf16, persistent: true, ..base },
        ),
    ];
    for (name, config) in configs {
        run_case(name, &config, (1, 2, 100, 100), 1, Layout::Bshd, 14, 32);
    }
}

/// Empty problems are answers, not crashes: no keys (every row attends to nothing and is 0, as
/// a causal row with no visible key is), and no queries, heads or batches (nothing to launch).
#[test]
fn empty_tensors_give_clear_answers_in_the_simulator() {
    let config = flashcore::Config { load_warps: 1, ..attention::CONFIG };
    let compiled = attention::compile(&config).unwrap();
    let device = SimDevice::default();
    for (b, h, s, sk) in [(1, 2, 70, 0), (1, 2, 0, 64), (0, 2, 64, 64)] {
        let shape = AttentionShape { b, h, hk: h, s, sk };
        let check = check_attention(&compiled, shape, Layout::Bhsd, 15, &device)
            .unwrap_or_else(|e| panic!("{b}x{h}x{s} SK {sk}: {e}"));
        assert_eq!(check.err.non_finite, 0, "{b}x{h}x{s} SK {sk}: {:?}", check.err);
        if s * b > 0 {
            // Rows with no keys are exactly 0 (the reference says so too).
            assert_eq!(check.err.max_abs, 0.0, "{b}x{h}x{s} SK {sk}: {:?}", check.err);
            assert!(check.stats.ctas > 0);
        } else {
            assert_eq!(check.stats.ctas, 0, "nothing to launch");
        }
    }
}

/// Variable-length batches (FlashAttention's varlen API): sequences of 1, 17, 77, 130 and 0
/// query rows (so some Q tiles of the work loop lie past their sequence's end and are skipped),
/// with key lengths of their own (a sequence with no keys gives zeros and +inf), packed
/// `[TOTAL, H, D]`, on the uniform, warp-specialized, softmax-warp and persistent schedules,
/// causal (bottom-right within each sequence) and not, with grouped heads and bf16.
#[test]
fn variable_length_batches_run_correctly_in_the_simulator() {
    use flashcore::simulate::check_varlen_attention;
    let base = attention::CONFIG;
    let configs = [
        ("d64", base),
        ("d64_s3_load1_persistent", flashcore::Config { stages: 3, load_warps: 1, persistent: true, ..base }),
        ("d64_n32_load1_softmax4", flashcore::Config { tile_n: 32, load_warps: 1, softmax_warps: 4, ..base }),
        (
            "bf16_d128_m128_w8",
            flashcore::Config { head_dim: 128, tile_m: 128, warps: 8, dtype: flashcore::DType::Bf16, ..base },
        ),
    ];
    let lens_q = [1, 17, 77, 130, 0];
    let lens_k = [40, 17, 200, 64, 5];
    for (name, config) in configs {
        for causal in [false, true] {
            let config = flashcore::Config { causal, varlen: true, ..config };
            let compiled = attention::compile(&config).unwrap();
            let device =
                SimDevice { sm_count: 2, options: Options { seed: 16, max_slice: 32, ..Options::default() } };
            for (lens_k, (h, hk)) in [(&lens_k, (4, 2)), (&lens_q, (2, 2))] {
                let what = format!("{name} causal {causal} varlen q {lens_q:?} k {lens_k:?} H {h} HKV {hk}");
                let check = check_varlen_attention(&compiled, &lens_q, lens_k, (h, hk), 16, &device)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_within_bounds(&what, &config, &check);
            }
        }
    }
}

/// Bulk tensor copies (`Config::tma`): grouped and multi-query heads (the tensor map's head
/// coordinate divided down), cross-attention with tails on both sides and more queries than
/// keys (the map's bounds zero-fill past the sequence), causal, BSHD strides, bf16 and D = 256
/// (four 64-column boxes a tile).
#[test]
fn bulk_tensor_copies_run_correctly_in_the_simulator() {
    let tma = flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4_tma").unwrap();
    let d64 = flashcore::Config { head_dim: 64, stages: 3, persistent: true, ..tma };
    let d256 = flashcore::Config { tile_m: 64, warps: 4, tile_n: 32, ..tma.with_head_dim(256) };
    let configs = [
        ("tma_d128", tma),
        ("tma_d128_overlap_causal", flashcore::Config { overlap: true, causal: true, ..tma }),
        (
            "tma_d64_s3_persistent_causal_bf16",
            flashcore::Config { causal: true, dtype: flashcore::DType::Bf16, ..d64 },
        ),
        ("tma_d256", d256),
    ];
    for (name, config) in configs {
        for (shape, hk, seed) in [((1, 4, 77, 200), 1, 5), ((2, 4, 150, 40), 2, 6)] {
            run_case(name, &config, shape, hk, Layout::Bhsd, seed, 32);
        }
        run_case(name, &config, (2, 2, 100, 130), 1, Layout::Bshd, 7, 16);
    }
}

/// The pingpong (`Config::pingpong`): the two compute warpgroups take turns issuing their
/// matmuls through two named barriers; every schedule of warps must finish (no deadlock at
/// work items without K/V tiles, causal rows past the keys, or the last turn) and match float64.
#[test]
fn pingpong_warpgroups_run_correctly_in_the_simulator() {
    let base =
        flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4_overlap_tma_pingpong_persistent")
            .unwrap();
    for (name, config) in [
        ("pingpong", base),
        ("pingpong_causal_cp_async", flashcore::Config { causal: true, tma: false, ..base }),
    ] {
        for (shape, hk, seed, slice) in
            [((1, 4, 77, 200), 2, 5, 32), ((2, 2, 150, 40), 1, 6, 1), ((1, 3, 256, 256), 3, 7, 8)]
        {
            run_case(name, &config, shape, hk, Layout::Bhsd, seed, slice);
        }
    }
}

/// Q from the producer (`passes::feed_loads`: persistent sm_90a kernels with TMA): each work
/// item's Q tile comes through a two-slot ring a work item ahead, and O leaves through Q's slot.
/// Two CTAs walk up to 16 work items each, so both slots are reused with flipped phases; tails
/// on both sides (a Q tile past the sequence's end is the tensor map's zero fill), grouped
/// heads, BSHD strides, causal, bf16, and three compute warpgroups (192-row tiles).
#[test]
fn producer_fed_q_runs_correctly_in_the_simulator() {
    let pingpong =
        flashcore::kernels::reference_config("sm90a_d128_m128_w8_n128_load4_overlap_tma_pingpong_persistent")
            .unwrap();
    let wide = flashcore::Config { tile_m: 192, warps: 12, pingpong: false, ..pingpong.with_head_dim(64) };
    for (name, config) in [
        ("fed_pingpong", pingpong),
        ("fed_192_causal_bf16", flashcore::Config { causal: true, dtype: flashcore::DType::Bf16, ..wide }),
        ("fed_192", wide),
    ] {
        let compiled = attention::compile(&config).unwrap();
        let kernel = &compiled.kernel;
        assert!(
            kernel.mbarriers.iter().any(|r| r.name == "full_q"),
            "{name}: Q is not fed by the producer ({:?})",
            flashcore::ir::passes::feed_loads::why_not(kernel)
        );
        run_case(name, &config, (2, 4, 300, 200), 2, Layout::Bhsd, 11, 32);
        run_case(name, &config, (1, 2, 100, 260), 1, Layout::Bshd, 12, 8);
    }
}
