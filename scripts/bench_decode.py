"""Decode baselines on the GPU machine, for scripts/gpu-decode.sh: PyTorch SDPA (cuDNN and
FlashAttention-2 backends) on the same shapes with a contiguous cache, and the read-rate
ceiling of the same run (a 4 GiB fp16 reduction). CUDA events, warm-up, median of many runs,
the L2 flushed before each timed launch. Prints one line per shape: B, cache length, new
tokens, microseconds per backend, K/V TB/s.

usage: python3 scripts/bench_decode.py B:L:S [B:L:S ...]   (H=32, HKV=8, D=128, fp16)
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HKV, D = 32, 8, 128
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")


def median_us(fn, iters=50, warmup=5):
    times = []
    for i in range(warmup + iters):
        flush.zero_()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        if i >= warmup:
            times.append((start, stop))
    torch.cuda.synchronize()
    us = sorted(a.elapsed_time(b) * 1e3 for a, b in times)
    return us[len(us) // 2]


def ceiling():
    x = torch.randn(2 << 30, dtype=torch.float16, device="cuda")  # 4 GiB
    us = median_us(lambda: x.sum(), iters=20)
    return x.numel() * 2 / us / 1e6, us


def main():
    tbs, us = ceiling()
    print(f"read ceiling: 4 GiB fp16 sum {us:.0f} us = {tbs:.2f} TB/s")
    for spec in sys.argv[1:]:
        b, length, s = (int(x) for x in spec.split(":"))
        q = torch.randn(b, H, s, D, dtype=torch.float16, device="cuda")
        k = torch.randn(b, HKV, length, D, dtype=torch.float16, device="cuda")
        v = torch.randn(b, HKV, length, D, dtype=torch.float16, device="cuda")
        kv_bytes = 2 * k.numel() * 2
        row = [f"B={b} L={length} S={s}"]
        for name, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]:
            try:
                with sdpa_kernel([backend]):
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                    fn()
                    t = median_us(fn)
                row.append(f"{name} {t:.1f} us ({kv_bytes / t / 1e6:.2f} TB/s)")
            except Exception as e:  # a backend that refuses the shape
                row.append(f"{name} n/a ({type(e).__name__})")
        print("  ".join(row), flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
