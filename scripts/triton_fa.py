"""A Triton flash-attention forward: the benchmark's Triton competitor (scripts/bench.py).

FlashAttention-2's algorithm in Triton: each program owns a BLOCK_M-row tile of Q for one
(batch, head), walks K/V in BLOCK_N-row tiles with the softmax statistics kept online in the exp2
domain, and writes O = softmax(Q K^T scale) V. Causal attention (aligned to the bottom right, as
FlashCore's) splits the key loop into the tiles below the diagonal, which need no mask, and the
ones on it. Triton picks the instruction set (wgmma on Hopper); the tile sizes are autotuned
over a few configs per (S, SK, D, causal) key, the first time each key is seen.

Tensors are [B, H, S, D] (any strides with a contiguous head dim), f16 or bf16.
"""

import torch
import triton
import triton.language as tl

CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for (bm, bn, w, s) in [
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (128, 128, 8, 3),
        (128, 128, 8, 2),
        (64, 64, 4, 3),
        (64, 128, 4, 2),
        (128, 32, 4, 4),
        (64, 32, 4, 4),
    ]
]


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, lo, hi, SK, shift,
                  D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                  scale_log2):
    """Folds key tiles [lo, hi) into the running (acc, l, m); MASKED applies the causal and
    bounds masks (the diagonal and the tail tiles)."""
    offs_d = tl.arange(0, D)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        if MASKED:
            k = tl.load(k_base + offs_n[None, :] * stride_ks + offs_d[:, None], mask=offs_n[None, :] < SK, other=0.0)
        else:
            k = tl.load(k_base + offs_n[None, :] * stride_ks + offs_d[:, None])
        s = tl.dot(q, k) * scale_log2
        if MASKED:
            keep = offs_n[None, :] < SK
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + shift)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED:
            v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=offs_n[:, None] < SK, other=0.0)
        else:
            v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :])
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=CONFIGS, key=["S", "SK", "D", "CAUSAL"])
@triton.jit
def _flash_fwd(Q, K, V, O, scale_log2, S, SK, H, HKV,
               sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
               D: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // (H // HKV)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=offs_m[:, None] < S, other=0.0)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    shift = SK - S  # bottom-right causal: row i sees keys j <= i + SK - S
    if CAUSAL:
        # Tiles entirely below the diagonal of this Q tile's first row need no mask.
        first_row_keys = pid_m * BLOCK_M + shift + 1
        full_end = tl.maximum(tl.minimum(first_row_keys, SK), 0) // BLOCK_N * BLOCK_N
        end = tl.minimum((pid_m + 1) * BLOCK_M + shift, SK)
    else:
        full_end = SK // BLOCK_N * BLOCK_N
        end = SK
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, sks, svs, offs_m, 0, full_end, SK, shift,
                                  D, BLOCK_N, False, CAUSAL, scale_log2)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, sks, svs, offs_m, full_end, end, SK, shift,
                                  D, BLOCK_N, True, CAUSAL, scale_log2)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=offs_m[:, None] < S)


def attention(q, k, v, causal=False, out=None):
    """O = softmax(q k^T / sqrt(D)) v for [B, H, S, D] q and [B, HKV, SK, D] k, v."""
    B, H, S, D = q.shape
    HKV, SK = k.shape[1], k.shape[2]
    assert q.stride(3) == 1 and k.stride(3) == 1 and v.stride(3) == 1 and D in (16, 32, 64, 128, 256)
    o = torch.empty_like(q) if out is None else out
    scale_log2 = (1.0 / D ** 0.5) * 1.4426950408889634
    grid = lambda meta: (triton.cdiv(S, meta["BLOCK_M"]), B * H)
    _flash_fwd[grid](q, k, v, o, scale_log2, S, SK, H, HKV,
                     q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                     v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
                     D=D, CAUSAL=causal)
    return o
