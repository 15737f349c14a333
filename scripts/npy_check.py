"""Checks the example's .npy path from the numpy side: writes q/k/v with numpy, runs the
example on them, reads its output back with numpy and compares with a float64 numpy reference.

usage: python3 scripts/npy_check.py path/to/attention-binary [B H S D [bhsd|bshd [f16|bf16]]]

With bshd the files hold (B, S, H, D) arrays (PyTorch's layout) and so does the output. With
bf16 the inputs are float32 arrays that the example rounds to bf16 (numpy has no bf16); the
reference uses the same rounded values, and the output comes back as float32. The per-row
log-sum-exp (B, H, S) comes back as float32 and is checked against numpy's too.
"""
import subprocess
import sys
import tempfile

import numpy as np


def round_to_bf16(x):
    """float32 -> the nearest bf16 (round to nearest even), kept as float32."""
    bits = x.astype(np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def main():
    binary = sys.argv[1]
    b, h, s, d = (int(x) for x in sys.argv[2:6]) if len(sys.argv) >= 6 else (2, 4, 256, 64)
    layout = sys.argv[6] if len(sys.argv) >= 7 else "bhsd"
    dtype = sys.argv[7] if len(sys.argv) >= 8 else "f16"
    stored_shape = (b, h, s, d) if layout == "bhsd" else (b, s, h, d)
    rng = np.random.default_rng()
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {}
        for name in "qkv":
            x = rng.standard_normal(stored_shape)
            arrays[name] = x.astype(np.float16) if dtype == "f16" else round_to_bf16(x)
            np.save(f"{tmp}/{name}.npy", arrays[name])
        cmd = [binary, "--q", f"{tmp}/q.npy", "--k", f"{tmp}/k.npy", "--v", f"{tmp}/v.npy",
               "--out", f"{tmp}/o.npy", "--lse", f"{tmp}/lse.npy", "--layout", layout, "--dtype", dtype,
               "--iters", "3", "--warmup", "1"]
        subprocess.run(cmd, check=True)
        out = np.load(f"{tmp}/o.npy")
        lse = np.load(f"{tmp}/lse.npy")
    # To logical (B, H, S, D) for the reference.
    logical = (lambda a: a) if layout == "bhsd" else (lambda a: np.swapaxes(a, 1, 2))
    q, k, v = (logical(arrays[n].astype(np.float64)) for n in "qkv")
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    row_max = scores.max(axis=-1, keepdims=True)
    want_lse = (row_max + np.log(np.exp(scores - row_max).sum(axis=-1, keepdims=True)))[..., 0]
    scores -= row_max
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    want = p @ v
    got = logical(out.astype(np.float64))
    want_dtype = np.float16 if dtype == "f16" else np.float32
    assert out.shape == stored_shape and out.dtype == want_dtype, (out.shape, out.dtype)
    if dtype == "bf16":
        assert np.array_equal(round_to_bf16(out), out), "bf16 output values are not bf16"
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    bound = 2e-3 if dtype == "f16" else 1.6e-2
    assert lse.shape == (b, h, s) and lse.dtype == np.float32, (lse.shape, lse.dtype)
    lse_err = np.abs(lse.astype(np.float64) - want_lse).max()
    print(f"npy check: {layout} {dtype} shape {out.shape} dtype {out.dtype}, numpy float64 reference rel_err {rel:.3e}, log-sum-exp max abs err {lse_err:.1e}")
    sys.exit(0 if rel < bound and lse_err < 1e-3 else 1)


if __name__ == "__main__":
    main()
