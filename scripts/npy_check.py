"""Checks the example's .npy path from the numpy side: writes q/k/v with numpy, runs the
example on them, reads its output back with numpy and compares with a float64 numpy reference.

usage: python3 scripts/npy_check.py path/to/attention-binary [B H S D]
"""
import subprocess
import sys
import tempfile

import numpy as np


def main():
    binary = sys.argv[1]
    b, h, s, d = (int(x) for x in sys.argv[2:6]) if len(sys.argv) >= 6 else (2, 4, 256, 64)
    rng = np.random.default_rng()
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {}
        for name in "qkv":
            arrays[name] = rng.standard_normal((b, h, s, d)).astype(np.float16)
            np.save(f"{tmp}/{name}.npy", arrays[name])
        cmd = [binary, "--q", f"{tmp}/q.npy", "--k", f"{tmp}/k.npy", "--v", f"{tmp}/v.npy",
               "--out", f"{tmp}/o.npy", "--iters", "3", "--warmup", "1"]
        subprocess.run(cmd, check=True)
        out = np.load(f"{tmp}/o.npy")
    q, k, v = (arrays[n].astype(np.float64) for n in "qkv")
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    want = p @ v
    assert out.shape == want.shape and out.dtype == np.float16, (out.shape, out.dtype)
    rel = np.linalg.norm(out.astype(np.float64) - want) / np.linalg.norm(want)
    print(f"npy check: shape {out.shape} dtype {out.dtype}, numpy float64 reference rel_err {rel:.3e}")
    sys.exit(0 if rel < 2e-3 else 1)


if __name__ == "__main__":
    main()
