"""FlashCore's attention backward (dQ, dK, dV) against SDPA's backward, timed side by side in one process.

    python3 scripts/bench_backward.py --flashcore .device/bin/attention_backward --out DIR [--iters 30]
        [--shapes 2x16x8192x128,2x16x8192x64,4x16x2048x128] [--causal both|yes|no]

FlashCore's backward is the two kernels of `flashcore::kernels::backward` (dQ and Δ, then dK
and dV; `backward_config(D)`), launched from the launch plans `attention_backward --plan` writes
(the path scripts/bench.py uses), after FlashCore's forward has given O and the log-sum-exp.
SDPA's is `torch.autograd.grad` of `scaled_dot_product_attention` under its flash (FA2) and
cuDNN backends: everything their backward launches (Δ, the main kernel, dQ's conversion) is
timed, as FlashCore's two kernels are.

Method (scripts/bench.py's): first, each implementation's dQ, dK, dV on one head are compared
with float64 autograd of the same inputs; then CUDA events around each backward after an
L2-evicting memset, rotating input sets, warm-up, median of --iters in rounds of rotating order.
Writes DIR/backward.txt and DIR/backward.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import bench  # noqa: E402

BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}


def parse_shape(text):
    b, h, s, d = (int(x) for x in text.split("x"))
    return b, h, s, d


def head_reference(q, k, v, g, causal):
    """dQ, dK, dV of head (0, 0) in float64 autograd."""
    q, k, v = (x[0, 0].double().detach().requires_grad_() for x in (q, k, v))
    s = (q @ k.T) / q.shape[-1] ** 0.5
    if causal:
        n, m = s.shape
        keep = torch.ones(n, m, dtype=torch.bool, device=s.device).tril(m - n)
        s = s.masked_fill(~keep, float("-inf"))
    o = torch.softmax(s, -1) @ v
    return torch.autograd.grad(o, (q, k, v), g[0, 0].double())


def rel(got, want):
    got = got.double()
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))


def bench_shape(args, driver, sm_count, timer, shape, causal, workdir):
    b, h, s, d = shape
    dtype = torch.float16
    plan_dir = os.path.join(workdir, f"{b}x{h}x{s}x{d}-{int(causal)}")
    cmd = [args.flashcore, "--b", str(b), "--h", str(h), "--s", str(s), "--d", str(d), "--plan", plan_dir,
           "--iters", "1", "--warmup", "0"] + (["--causal"] if causal else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"plan failed: {res.stderr.strip() or res.stdout.strip()}")
    plans = {n: json.load(open(os.path.join(plan_dir, f"{n}.json"))) for n in ("forward", "dq", "dkdv")}
    fc = {n: bench.FlashCore(driver, p, sm_count) for n, p in plans.items()}
    set_bytes = 2 * 5 * b * h * s * d
    sets = max(2, min(8, (64 << 20) // set_bytes + 1))
    torch.manual_seed(1234 + s + d + causal)
    inputs = []
    for _ in range(sets):
        q, k, v, g = (torch.randn(b, h, s, d, device="cuda", dtype=dtype) for _ in range(4))
        o = torch.full_like(q, float("nan"))
        lse = torch.full((b, h, s), float("nan"), device="cuda", dtype=torch.float32)
        fc["forward"]({"q": q, "k": k, "v": v, "o": o, "lse": lse})
        grads = {"dq": torch.full_like(q, float("nan")), "dk": torch.full_like(q, float("nan")),
                 "dv": torch.full_like(q, float("nan")),
                 "delta": torch.full((b, h, s), float("nan"), device="cuda", dtype=torch.float32)}
        sdpa = {}
        for name, backend in BACKENDS.items():
            qa, ka, va = (x.detach().clone().requires_grad_() for x in (q, k, v))
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(qa, ka, va, is_causal=causal)
            sdpa[name] = (out, qa, ka, va)
        inputs.append({"q": q, "k": k, "v": v, "g": g, "o": o, "lse": lse, **grads, "sdpa": sdpa})

    def flashcore(i):
        t = inputs[i % sets]
        fc["dq"]({"q": t["q"], "k": t["k"], "v": t["v"], "o": t["o"], "d_out": t["g"], "lse": t["lse"],
                  "dq": t["dq"], "delta": t["delta"]})
        fc["dkdv"]({"q": t["q"], "k": t["k"], "v": t["v"], "d_out": t["g"], "lse": t["lse"], "delta": t["delta"],
                    "dk": t["dk"], "dv": t["dv"]})

    def sdpa_backward(name):
        def run(i):
            t = inputs[i % sets]
            out, qa, ka, va = t["sdpa"][name]
            with sdpa_kernel([BACKENDS[name]]):
                return torch.autograd.grad(out, (qa, ka, va), t["g"], retain_graph=True)
        return run

    impls = {"flashcore": flashcore, **{n: sdpa_backward(n) for n in BACKENDS}}
    # Correctness on head (0, 0) of the first set, against float64 autograd.
    t = inputs[0]
    want = head_reference(t["q"], t["k"], t["v"], t["g"], causal)
    checks = {}
    flashcore(0)
    torch.cuda.synchronize()
    checks["flashcore"] = [rel(t[n][0, 0], w) for n, w in zip(("dq", "dk", "dv"), want)]
    for name in BACKENDS:
        got = impls[name](0)
        checks[name] = [rel(x[0, 0], w) for x, w in zip(got, want)]
    times = bench.time_in_rounds(timer, impls, lambda fn, i: fn(i), args.iters, 3, 3)
    us = {n: statistics.median(ts) * 1e6 for n, ts in times.items()}
    return {"shape": f"{b}x{h}x{s}x{d}", "causal": causal, "us": us, "rel_err": checks,
            "configs": {n: p["config"] for n, p in plans.items()}}


def table(results):
    lines = ["backward (dQ, dK, dV), fp16, median µs; rel err of dQ/dK/dV on head (0, 0) vs float64 autograd", ""]
    lines.append(f"{'shape':<26}{'flashcore':>11}{'sdpa-flash':>12}{'sdpa-cudnn':>12}{'vs flash':>10}{'vs cudnn':>10}"
                 "   max rel err (fc / flash / cudnn)")
    for r in results:
        us = r["us"]
        name = r["shape"] + (" causal" if r["causal"] else "")
        errs = " / ".join(f"{max(r['rel_err'][n]):.1e}" for n in ("flashcore", "sdpa-flash", "sdpa-cudnn"))
        lines.append(f"{name:<26}{us['flashcore']:>11.0f}{us['sdpa-flash']:>12.0f}{us['sdpa-cudnn']:>12.0f}"
                     f"{us['sdpa-flash'] / us['flashcore']:>9.2f}x{us['sdpa-cudnn'] / us['flashcore']:>9.2f}x   {errs}")
    lines.append("")
    lines.append("(vs X: X's time / FlashCore's, above 1 is FlashCore faster.) FlashCore configs:")
    for r in results:
        lines.append(f"  {r['shape']}{' causal' if r['causal'] else ''}: dq {r['configs']['dq']}; dkdv {r['configs']['dkdv']}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flashcore", default=".device/bin/attention_backward")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--shapes", default="2x16x8192x128,2x16x8192x64,4x16x2048x128")
    ap.add_argument("--causal", default="both", choices=["both", "yes", "no"])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    driver = bench.Driver()
    props = torch.cuda.get_device_properties(0)
    timer = bench.Timer()
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    results = []
    print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for text in args.shapes.split(","):
            for causal in causals:
                r = bench_shape(args, driver, props.multi_processor_count, timer, parse_shape(text), causal, workdir)
                results.append(r)
                print(r["shape"], "causal" if causal else "", {n: round(u, 1) for n, u in r["us"].items()},
                      {n: [f"{e:.1e}" for e in es] for n, es in r["rel_err"].items()}, flush=True)
    out = table(results)
    open(os.path.join(args.out, "backward.txt"), "w").write(out + "\n")
    json.dump({"device": props.name, "torch": torch.__version__, "results": results, "command": sys.argv},
              open(os.path.join(args.out, "backward.json"), "w"), indent=1)
    print(out)


if __name__ == "__main__":
    main()
