#!/usr/bin/env bash
# Runs on the GPU machine: the Python package (python/) as a PyTorch user gets it. The wheel is
# built here (`maturin build --release --locked --compatibility linux -o .device/wheels` in
# python/) and carried in .device/wheels with the attention example in .device/bin (for the
# launch-plan path the benchmark compares the package with). In one call:
#   1. installs the wheel (no index, no dependencies: torch is the machine's);
#   2. python/tests/test_flashcore.py: the simulator tests and the GPU ones (float64 checks at
#      tails, causal, GQA, BSHD, bf16, both targets, every variant; the backward against torch
#      autograd in float64; torch.compile, a compiled training loop; a side stream; misalignment);
#   3. the host's cost of a call (back-to-back launches of a small shape, no timing events);
#   4. compute-sanitizer memcheck over package launches, forward and backward (tails, causal,
#      GQA, BSHD);
#   5. scripts/bench.py: the package's column next to the launch-plan path, SDPA flash and cuDNN.
#   scripts/gpu-python.sh [SHAPES]   SHAPES: bench.py --only names (default: six of the issue's;
#                                    `all`: every shape of bench.py --quick)
set -uo pipefail
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
shapes=${1:-1x8x512x64,1x8x512x64 causal,4x16x2048x64,4x16x2048x128,2x16x8192x128,2x16x8192x128 causal}

python3 -m pip install --no-deps --no-index --force-reinstall .device/wheels/flashcore-*.whl 2>&1 | tail -1 | tee "$out/install.txt"
(cd /tmp && python3 -c "import flashcore, torch; print('flashcore', flashcore.__version__, 'from', flashcore.__file__, '; torch', torch.__version__)") \
  2>&1 | tee -a "$out/install.txt"

echo "== tests" | tee "$out/python-tests.txt"
timeout 400 python3 python/tests/test_flashcore.py 2>&1 | tee -a "$out/python-tests.txt"

echo "== host cost of a call" | tee "$out/overhead.txt"
(cd /tmp && timeout 120 python3 - <<'PY') 2>&1 | tee -a "$out/overhead.txt"
import time, torch, torch.nn.functional as F, flashcore
q, k, v = (torch.randn(1, 8, 512, 64, device="cuda", dtype=torch.float16) for _ in range(3))
def per_call(fn, n=3000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6
o = torch.empty_like(q)
stream = torch.cuda.current_stream().cuda_stream
spec = lambda t: (t.data_ptr(), "f16", list(t.shape), list(t.stride()))
native = lambda: flashcore._native.attention("attention", 0, stream, spec(q), spec(k), spec(v), spec(o), None, [], [], None, False, None, None)
for name, fn in [("flashcore.attention", lambda: flashcore.attention(q, k, v)),
                 ("  its _launch (no argument checks)", lambda: flashcore._launch(q, k, v, False, None, "bhsd", False, None, "attention", [], [])),
                 ("  its native call (Rust: pick, bind, launch)", native),
                 ("torch.ops.flashcore.attention", lambda: torch.ops.flashcore.attention(q, k, v, False, None, "bhsd", False, None, "attention", [], [], None, None)),
                 ("SDPA (default backend)", lambda: F.scaled_dot_product_attention(q, k, v))]:
    print(f"{name:<32} {per_call(fn):7.2f} us a call, back to back (1x8x512x64: host-bound)")
print("config:", flashcore.last_config())
PY

echo "== compute-sanitizer memcheck" | tee "$out/sanitizer.txt"
(cd /tmp && timeout 300 /usr/local/cuda/bin/compute-sanitizer --tool memcheck --error-exitcode 9 python3 - <<'PY') 2>&1 | tail -8 | tee -a "$out/sanitizer.txt"
import torch, flashcore
for (b, h, hk, s, sk, d, causal, layout) in [(1, 4, 2, 77, 131, 64, True, "bhsd"), (2, 4, 4, 200, 200, 128, False, "bshd"),
                                             (1, 2, 1, 33, 500, 128, True, "bshd")]:
    shape = (lambda n, r: (b, r, n, d)) if layout == "bshd" else (lambda n, r: (b, n, r, d))
    q, k, v = (torch.randn(shape(n, r), device="cuda", dtype=torch.float16) for n, r in ((h, s), (hk, sk), (hk, sk)))
    o, lse = flashcore.attention(q, k, v, causal=causal, layout=layout, return_lse=True)
    torch.cuda.synchronize()
    print(b, h, hk, s, sk, d, causal, layout, flashcore.last_config()[0], "finite:", bool(torch.isfinite(o).all()))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    grads = torch.autograd.grad(flashcore.attention(q, k, v, causal=causal, layout=layout), (q, k, v), torch.randn_like(q))
    torch.cuda.synchronize()
    print("  backward finite:", all(bool(torch.isfinite(g).all()) for g in grads))
PY
echo "sanitizer exit: ${PIPESTATUS[0]}" | tee -a "$out/sanitizer.txt"

echo "== bench" | tee "$out/bench-log.txt"
only=(--only "$shapes")
[ "$shapes" = all ] && only=()
timeout 400 python3 scripts/bench.py --flashcore .device/bin/attention --out "$out/bench" --quick "${only[@]}" --no-ceilings \
  --impls flashcore,flashcore-plan,sdpa-flash,sdpa-cudnn 2>&1 | tee -a "$out/bench-log.txt"
