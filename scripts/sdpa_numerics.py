"""Compares FlashCore's outputs on the edge-numerics cases with PyTorch SDPA's (issue 7, item 3).

usage: python3 scripts/sdpa_numerics.py DIR   (DIR written by `validate numerics DIR`)

For each config and case it loads q, k, v (f16, [B, H, S, D]), FlashCore's output o and the
expected kind of each element (0 finite, 1 NaN, 2 +Inf, 3 -Inf, 4 either: a NaN/Inf that only
a causally hidden key holds), runs SDPA with the flash backend (f16) and the math backend (the same
values in f32), and checks that wherever the kind is not "either", FlashCore's output is NaN exactly
where each backend's is, infinite (same sign) exactly where it is, and the finite values agree
(relative to the largest finite magnitude). Exit 1 on any disagreement.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def sdpa(q, k, v, causal, backend):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal).float().cpu().numpy()


def main():
    root = Path(sys.argv[1])
    configs = [line.split() for line in (root / "manifest.txt").read_text().splitlines() if line.strip()]
    print("| config | case | backend | NaN (ours / SDPA) | Inf (ours / SDPA) | NaN positions differ | Inf positions differ | finite max diff | |")
    print("|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for name, causal in configs:
        causal = causal == "true"
        for kind_file in sorted(root.glob(f"{name}.*.kind.npy")):
            case = kind_file.name[len(name) + 1 : -len(".kind.npy")]
            load = lambda t: np.load(root / f"{name}.{case}.{t}.npy")
            q, k, v = (torch.from_numpy(load(t)).cuda() for t in "qkv")
            ours = load("o").astype(np.float32)
            kind = load("kind")
            checked = kind != 4
            # The flash backend on the f16 inputs (SDPA's default for them), and the math backend
            # on the same values in f32 (the exact softmax in IEEE arithmetic; in f16 its
            # unfused Q·Kᵀ would overflow on the large-score case, which is not the point here).
            for label, backend, dtype in [("flash f16", SDPBackend.FLASH_ATTENTION, torch.float16),
                                          ("math f32", SDPBackend.MATH, torch.float32)]:
                theirs = sdpa(q.to(dtype), k.to(dtype), v.to(dtype), causal, backend)
                nan_diff = int(((np.isnan(ours) != np.isnan(theirs)) & checked).sum())
                inf_diff = int(((np.isinf(ours) != np.isinf(theirs)) | (np.isinf(ours) & np.isinf(theirs) & (np.sign(ours) != np.sign(theirs)))).__and__(checked).sum())
                both = np.isfinite(ours) & np.isfinite(theirs)
                scale = max(float(np.abs(theirs[both]).max()) if both.any() else 1.0, 1e-30)
                diff = float(np.abs(ours[both] - theirs[both]).max() / scale) if both.any() else 0.0
                ok = nan_diff == 0 and inf_diff == 0 and diff < 2e-3
                bad += not ok
                print(f"| {name} | {case} | {label} | {int(np.isnan(ours).sum())} / {int(np.isnan(theirs).sum())} | "
                      f"{int(np.isinf(ours).sum())} / {int(np.isinf(theirs).sum())} | {nan_diff} | {inf_diff} | {diff:.1e} | {'ok' if ok else 'FAIL'} |")
    print(f"sdpa numerics: {bad} rows disagree")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
