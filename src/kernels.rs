//! The standard kernels, written in the DSL: what the example runs and the snapshots pin.

use crate::flash_kernel;

/// Fused attention forward, `O = softmax(Q·Kᵀ·scale)·V`, FlashAttention-2 style: each CTA owns a
/// `TILE_M`-row tile of Q kept in registers, walks K/V in `TILE_N`-row tiles staged through
/// shared memory, and keeps the softmax statistics online (in the exp2 domain, the scale
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
