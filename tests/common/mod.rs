//! Helpers shared by the integration tests: the configurations every layer is checked at.

use flashcore::{Config, DType};

/// The configurations whose IR and PTX are pinned by snapshots and assembled by ptxas.
pub fn snapshot_configs() -> Vec<(&'static str, Config)> {
    let base = flashcore::kernels::attention::CONFIG;
    vec![
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
        ("d256", base.with_head_dim(256)),
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
    ]
}
