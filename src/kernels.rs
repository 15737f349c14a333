//! The standard kernels, written in the DSL: what the example runs and the snapshots pin.
//!
//! ```
//! use flashcore::kernels::{attention, reference_config};
//!
//! // The kernel compiles for any valid config; the reference configs have names.
//! let config = reference_config("d64_s2_load1").expect("a reference config");
//! let compiled = attention::compile(&config)?;
//! assert_eq!(compiled.ptx.threads_per_cta, (4 + 1) * 32);
//! # Ok::<(), flashcore::Error>(())
//! ```

use crate::{flash_kernel, Config, DType, Target};

pub mod backward;
pub mod decode;
pub mod variants;

/// Fused attention forward, `O = softmax(Q·Kᵀ·scale)·V`, FlashAttention-2 style.
///
/// Each CTA owns a `TILE_M`-row tile of Q kept in registers, walks K/V in `TILE_N`-row tiles
/// staged through shared memory, and keeps the softmax statistics online (in the exp2 domain, the scale
/// folded into log2(e)). Q has `S` rows and K/V `SK` (cross-attention when they differ); with
/// `Config::causal` the mask is aligned to the bottom right. K/V have `HKV` heads, each shared
/// by `H / HKV` query heads (grouped-query attention; multi-query with `HKV = 1`, plain
/// multi-head with `HKV = H`), read in place. `T` is `Config::dtype`: `f16` or `bf16`, the
/// output in the same type, accumulation in f32. `lse`, when given, receives each row's
/// log-sum-exp `ln Σ exp(q·k·scale)` (+inf for a row that sees no key), as FlashAttention
/// returns it for the backward pass. `cu_q`/`cu_k`, when given, make the batch variable-length
/// (FlashAttention's varlen API): sequence `b` is rows `cu_q[b] .. cu_q[b + 1]` of a packed
/// `[TOTAL_Q, H, D]` Q/O (`[H, TOTAL_Q]` log-sum-exp) and likewise for K/V, `S`/`SK` are the
/// longest lengths, and each work item reads its sequence's bounds once.
#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 2, warps = 4)]
pub fn attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, HKV, SK, D>,
    v: Tensor<T, B, HKV, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    lse: Option<TensorMut<f32, B, H, S>>,
    scale: f32,
    cu_q: Option<SeqOffsets<B, S>>,
    cu_k: Option<SeqOffsets<B, SK>>,
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
                let ks = stage(k.tile(b, h / (H / HKV), kt));
                let vs = stage(v.tile(b, h / (H / HKV), kt));
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
        // The row statistics first: `m` is dead before the O store needs registers.
        store(lse.tile(b, h, qt), log_sum_exp(m, l));
        store(o.tile(b, h, qt), acc / l);
    }
}

/// The reference configurations of `attention`, by name: one per schedule the compiler can
/// emit (pipeline depths, load/softmax warps, persistent CTAs, split-KV, Q in shared memory,
/// head dims, dtypes, causal, variable length), for both targets (`sm90a_*`: wgmma). Their IR and PTX are pinned by snapshots,
/// assembled by ptxas, run in the simulator, and run under compute-sanitizer and the
/// determinism check on the GPU (`examples/validate.rs`).
pub fn reference_configs() -> Vec<(&'static str, Config)> {
    let base = attention::CONFIG;
    let mut configs = vec![
        ("d64", base),
        ("d128", Config { head_dim: 128, ..base }),
        ("d64_m128_w8", Config { tile_m: 128, warps: 8, ..base }),
        ("d64_m128_w4_n32", Config { tile_m: 128, tile_n: 32, warps: 4, ..base }),
        ("d64_s2", Config { stages: 2, ..base }),
        ("d64_s3_persistent", Config { stages: 3, persistent: true, ..base }),
        ("d128_s2", Config { head_dim: 128, stages: 2, ..base }),
        ("d64_s2_load1", Config { stages: 2, load_warps: 1, ..base }),
        ("d32", Config { head_dim: 32, ..base }),
        ("d96_s3_load1", Config { head_dim: 96, stages: 3, load_warps: 1, ..base }),
        ("d64_causal", Config { causal: true, ..base }),
        ("d64_s2_load1_causal", Config { stages: 2, load_warps: 1, causal: true, ..base }),
        ("d64_s2_load1_softmax4", Config { stages: 2, load_warps: 1, softmax_warps: 4, ..base }),
        ("d64_s2_load1_softmax1", Config { stages: 2, load_warps: 1, softmax_warps: 1, ..base }),
        (
            "d128_s2_load4_persistent",
            Config { head_dim: 128, stages: 2, load_warps: 4, persistent: true, ..base },
        ),
        ("d64_bf16", Config { dtype: DType::Bf16, ..base }),
        // D = 256 keeps Q in shared memory: with Q in registers a warp's 16 rows take 255
        // registers, a knife-edge where moving the tail mask after the score code (sm_90: 40 B)
        // or one stage less (sm_89: 44 B) spills.
        ("d256_a_in_smem", Config { a_in_smem: true, ..base.with_head_dim(256) }),
        (
            "d128_s2_load1_bf16",
            Config { head_dim: 128, stages: 2, load_warps: 1, dtype: DType::Bf16, ..base },
        ),
        ("d64_varlen_causal", Config { causal: true, varlen: true, ..base }),
        ("d64_m128_w4_a_in_smem", Config { tile_m: 128, warps: 4, a_in_smem: true, ..base }),
        (
            "d64_m64_w2_s3_load1_persistent_a_in_smem",
            Config {
                tile_m: 64,
                warps: 2,
                stages: 3,
                load_warps: 1,
                persistent: true,
                a_in_smem: true,
                ..base
            },
        ),
        // Split-KV: the headline shape's schedule (2 row blocks × 2 key halves, load warps),
        // D = 128 with Q in shared memory and causal masking, and 4 splits of 16 keys, persistent.
        (
            "d64_m32_n128_w4_s2_load2_split2",
            Config { tile_m: 32, tile_n: 128, warps: 4, stages: 2, load_warps: 2, kv_splits: 2, ..base },
        ),
        (
            "d128_m64_w8_s1_split2_a_in_smem_causal",
            Config {
                head_dim: 128,
                tile_m: 64,
                warps: 8,
                stages: 1,
                kv_splits: 2,
                a_in_smem: true,
                causal: true,
                ..base
            },
        ),
        (
            "d64_m16_w4_split4_persistent",
            Config { tile_m: 16, warps: 4, kv_splits: 4, persistent: true, ..base },
        ),
        (
            "d128_s2_load1_persistent_varlen",
            Config { head_dim: 128, stages: 2, load_warps: 1, persistent: true, varlen: true, ..base },
        ),
        // sm_90a (wgmma; H100/H200 only): the declared schedule, the large-shape one (two
        // warpgroups, 128-key tiles: 160 KiB of shared memory, over the L4's 99), D = 256,
        // and causal bf16 persistent, variable-length.
        ("sm90a_d64", Config { target: Target::Sm90a, ..base }),
        (
            "sm90a_d128_m128_w8_n128",
            Config { head_dim: 128, tile_m: 128, warps: 8, tile_n: 128, target: Target::Sm90a, ..base },
        ),
        ("sm90a_d256", Config { target: Target::Sm90a, ..base.with_head_dim(256) }),
        (
            "sm90a_d128_causal_bf16_persistent",
            Config {
                head_dim: 128,
                causal: true,
                dtype: DType::Bf16,
                persistent: true,
                target: Target::Sm90a,
                ..base
            },
        ),
        (
            "sm90a_d64_m128_w8_varlen",
            Config { tile_m: 128, warps: 8, varlen: true, target: Target::Sm90a, ..base },
        ),
        // The producer warpgroup: four load warps copy K/V through the mbarrier ring and give
        // their registers to the two wgmma warpgroups (setmaxnreg); causal with GQA-ready
        // addressing, and variable-length.
        (
            "sm90a_d128_m128_w8_n128_load4",
            Config {
                head_dim: 128,
                tile_m: 128,
                warps: 8,
                tile_n: 128,
                load_warps: 4,
                target: Target::Sm90a,
                ..base
            },
        ),
        (
            "sm90a_d64_m128_w8_s3_load4_causal_varlen",
            Config {
                tile_m: 128,
                warps: 8,
                stages: 3,
                load_warps: 4,
                causal: true,
                varlen: true,
                target: Target::Sm90a,
                ..base
            },
        ),
    ];
    // The producer warpgroup with bulk tensor copies (TMA): one thread copies each K/V tile
    // through a tensor map; D = 128 without and with the overlap, and D = 64 causal bf16
    // persistent with three stages (GQA-ready addressing: the map's bounds zero-fill).
    let producer_d128 =
        configs.iter().find(|(n, _)| *n == "sm90a_d128_m128_w8_n128_load4").expect("the producer config").1;
    configs.push(("sm90a_d128_m128_w8_n128_load4_tma", Config { tma: true, ..producer_d128 }));
    configs.push((
        "sm90a_d128_m128_w8_n128_load4_overlap_tma",
        Config { tma: true, overlap: true, ..producer_d128 },
    ));
    // The two compute warpgroups taking turns issuing their matmuls (pingpong), persistent.
    configs.push((
        "sm90a_d128_m128_w8_n128_load4_overlap_tma_pingpong_persistent",
        Config { tma: true, overlap: true, pingpong: true, persistent: true, ..producer_d128 },
    ));
    configs.push((
        "sm90a_d64_m128_w8_s3_load4_causal_bf16_persistent_tma",
        Config {
            tile_m: 128,
            warps: 8,
            stages: 3,
            load_warps: 4,
            causal: true,
            dtype: DType::Bf16,
            persistent: true,
            tma: true,
            target: Target::Sm90a,
            ..base
        },
    ));
    // The two producer configs again with the overlap pass: the softmax of each K/V tile under
    // the P·V of the one before (asynchronous wgmma).
    for (name, base_name) in [
        ("sm90a_d128_m128_w8_n128_load4_overlap", "sm90a_d128_m128_w8_n128_load4"),
        ("sm90a_d64_m128_w8_s3_load4_causal_varlen_overlap", "sm90a_d64_m128_w8_s3_load4_causal_varlen"),
    ] {
        let producer = configs.iter().find(|(n, _)| *n == base_name).expect("the producer config").1;
        configs.push((name, Config { overlap: true, ..producer }));
    }
    configs
}

/// The reference configuration called `name` (see [`reference_configs`]).
pub fn reference_config(name: &str) -> Option<Config> {
    reference_configs().into_iter().find(|(n, _)| *n == name).map(|(_, c)| c)
}
