"""FlashCore's attention variants against FlexAttention and SDPA, timed side by side in one process.

    python3 scripts/bench_variants.py --flashcore .device/bin/attention --out DIR [--iters 30]
        [--shapes 2x16x8192x128,4x16x4096x64] [--only softcap] [--schedule table|h100-sm89]

Each variant is a `#[flash_kernel]` of `flashcore::kernels::variants` (or the plain kernel), run
through the launch plan the Rust example writes (`attention --kernel NAME --plan`, the same path
scripts/bench.py uses), next to PyTorch's FlexAttention (`torch.compile`d `flex_attention` with
the same score_mod and a block mask from the same mask_mod) and, for full and causal attention,
SDPA's flash (FA2) and cuDNN backends.

Method (scripts/bench.py's): every implementation's output is first checked against a float64
reference of the variant's formula (written here, independently of both kernels) over a sample
of rows and every key, on fresh random inputs with the output poisoned; then CUDA events around
each launch after an L2-evicting memset, rotating input sets, warm-up, median of --iters launches
taken in rounds of rotating order. FlashCore runs what a user gets (`--schedule table`, the
default): the tuning table's pick for this GPU and shape, target included (a variant without
entries of its own takes the plain kernel's, so a variant's cost over the plain kernel is the cost
of its score and mask code). `--schedule h100-sm89` runs the fixed sm_89 schedules the runs before
2026-12-03 used (the H100 table's large-shape picks of 2026-11-24). Writes DIR/variants.txt and
DIR/variants.json.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: E402

import bench  # noqa: E402

# `--schedule h100-sm89`: the H100 tuning table's large-shape schedules of 2026-11-24, per head dim.
H100_SM89_FLAGS = {
    64: ["--tile-m", "128", "--tile-n", "128", "--warps", "4", "--stages", "1", "--a-in-smem"],
    128: ["--tile-m", "128", "--tile-n", "64", "--warps", "4", "--stages", "1", "--a-in-smem"],
}

WINDOW, CAP, PREFIX, DOC = 1024, 30.0, 2048, 1000


_BIAS = {}


def bias_table(b, h, s):
    """The additive bias [B, H, S, S] (f32, random), made once per shape: 8.6 GB at 2x16x8192."""
    if (b, h, s) not in _BIAS:
        _BIAS.clear()
        torch.manual_seed(1234)
        _BIAS[(b, h, s)] = torch.randn(b, h, s, s, device="cuda", dtype=torch.float32)
    return _BIAS[(b, h, s)]


def alibi_slopes(h):
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], device="cuda", dtype=torch.float64)


# name -> (flashcore kernel, its flags, score(x, b, h, q, kv, H) in float64 or None,
#          keep(b, h, q, kv) or None, FlexAttention score_mod or None, mask_mod or None, sdpa causal or None)
def variants(b, h, s, with_bias=True):
    slopes = alibi_slopes(h)
    slopes32 = slopes.float()
    causal = lambda b, hh, q, kv: kv <= q  # noqa: E731
    window = lambda b, hh, q, kv: (kv <= q) & (q - kv <= WINDOW)  # noqa: E731
    prefix = lambda b, hh, q, kv: (kv <= q) | (kv < PREFIX)  # noqa: E731
    softcap = lambda x, b, hh, q, kv: CAP * torch.tanh(x / CAP)  # noqa: E731
    alibi_ref = lambda x, b, hh, q, kv: x + slopes[hh] * (kv - q)  # noqa: E731
    alibi_flex = lambda x, b, hh, q, kv: x + slopes32[hh] * (kv - q)  # noqa: E731
    # Documents of DOC tokens, packed (the ids FlashCore's example makes for `--doc-len`).
    doc = torch.arange(s, device="cuda") // DOC
    document = lambda b, hh, q, kv: (kv <= q) & (doc[q] == doc[kv])  # noqa: E731
    # An additive bias tensor, read by each implementation from the same [B, H, S, S] f32 table.
    bias = bias_table(b, h, s) if with_bias else None
    bias_ref = lambda x, bb, hh, q, kv: x + bias[bb, hh, q, kv].double()  # noqa: E731
    bias_flex = lambda x, bb, hh, q, kv: x + bias[bb, hh, q, kv]  # noqa: E731
    return {
        "full": ("attention", [], None, None, None, None, False),
        "causal": ("attention", ["--causal"], None, causal, None, causal, True),
        f"sliding window {WINDOW} + causal": (
            "sliding_window_attention", ["--causal", "--window", f"{WINDOW},0"], None, window, None, window, None),
        f"softcap {CAP:g}": ("softcap_attention", ["--softcap", f"{CAP}"], softcap, None, softcap, None, None),
        f"softcap {CAP:g} + causal": (
            "softcap_attention", ["--causal", "--softcap", f"{CAP}"], softcap, causal, softcap, causal, None),
        "alibi + causal": ("alibi_attention", ["--causal"], alibi_ref, causal, alibi_flex, causal, None),
        f"prefix-LM {PREFIX}": ("prefix_lm_attention", ["--prefix", f"{PREFIX}"], None, prefix, None, prefix, None),
        f"document mask ({DOC}-token documents) + causal": (
            "document_attention", ["--causal", "--doc-len", str(DOC)], None, document, None, document, None),
        f"document bounds ({DOC}-token documents) + causal": (
            "document_bounds_attention", ["--causal", "--doc-len", str(DOC)], None, document, None, document, None),
        "additive bias [B, H, S, S] f32": ("bias_attention", [], bias_ref, None, bias_flex, None, None),
        f"sliding window {WINDOW} + softcap {CAP:g} + causal": (
            "sliding_window_softcap_attention", ["--causal", "--window", f"{WINDOW},0", "--softcap", f"{CAP}"],
            softcap, window, softcap, window, None),
    }


def reference_rows(q, k, v, rows, score, keep):
    """float64 attention of the (b, h, s) rows listed, every key, with the variant's formula."""
    D, S = q.shape[-1], q.shape[2]
    out = []
    kv_idx = torch.arange(k.shape[2], device="cuda")
    for (b, h, s) in rows:
        x = (k[b, h].double() @ q[b, h, s].double()) / math.sqrt(D)
        qi = torch.tensor(s, device="cuda")
        if score is not None:
            x = score(x, b, h, qi, kv_idx)
        if keep is not None:
            x = torch.where(keep(b, h, qi, kv_idx), x, torch.tensor(float("-inf"), device="cuda", dtype=torch.float64))
        out.append(torch.softmax(x, 0) @ v[b, h].double())
    return torch.stack(out)


def kept_pairs(keep, s):
    """(query, key) pairs a head attends to (the work a variant leaves), counted on the GPU."""
    if keep is None:
        return s * s
    q = torch.arange(s, device="cuda")[:, None]
    total = 0
    for start in range(0, s, 1024):
        total += keep(0, 0, q[start:start + 1024], torch.arange(s, device="cuda")[None, :]).sum().item()
    return total


def schedule_flags(args, d):
    """The example's schedule flags: none (the tuning table picks) or the fixed sm_89 ones."""
    return H100_SM89_FLAGS[d] if args.schedule == "h100-sm89" else []


def flashcore_impl(args, driver, sm_count, shape, kernel, flags, workdir, facts):
    b, h, s, d = shape
    plan_path = os.path.join(workdir, f"plan-{kernel}-{b}x{h}x{s}x{d}-{'_'.join(flags).replace(',', '_')}.json")
    cmd = [args.flashcore, "--kernel", kernel, "--b", str(b), "--h", str(h), "--s", str(s), "--d", str(d),
           "--plan", plan_path] + schedule_flags(args, d) + flags
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return None, f"plan failed: {res.stderr.strip() or res.stdout.strip()}"
    plan = json.load(open(plan_path))
    fc = bench.FlashCore(driver, plan, sm_count)
    facts.setdefault(f"{kernel} {plan['config']}", bench.sass_facts(plan, workdir))

    # The tables the kernel takes: document ids [B, S] (token i in document i // DOC).
    tables = {}
    if kernel == "document_attention":
        tables["doc"] = (torch.arange(s, device="cuda", dtype=torch.int32) // DOC).expand(b, s).contiguous()
    # The same documents as each token's bounds: [first token, one past the last).
    if kernel == "document_bounds_attention":
        start = torch.arange(s, device="cuda", dtype=torch.int32) // DOC * DOC
        tables["doc_start"] = start.expand(b, s).contiguous()
        tables["doc_end"] = (start + DOC).clamp(max=s).expand(b, s).contiguous()
    if kernel == "bias_attention":
        tables["bias"] = bias_table(b, h, s)

    def run(q, k, v, o):
        fc({"q": q, "k": k, "v": v, "o": o} | tables)
    return run, f"{plan['config']}, grid {fc.grid}"


def bench_variant(args, driver, sm_count, timer, shape, name, spec, workdir, facts):
    kernel, flags, score, keep, score_mod, mask_mod, sdpa_causal = spec
    b, h, s, d = shape
    torch.manual_seed(hash((shape, name)) & 0xFFFF)
    n_sets = 3
    sets = [tuple(torch.randn(b, h, s, d, device="cuda", dtype=torch.float16) for _ in range(3)) for _ in range(n_sets)]
    outs = [torch.empty(b, h, s, d, device="cuda", dtype=torch.float16) for _ in range(n_sets)]
    rows = [(torch.randint(b, ()).item(), torch.randint(h, ()).item(), torch.randint(s, ()).item()) for _ in range(40)]
    rows += [(0, 0, 0), (b - 1, h - 1, s - 1), (0, 0, s // 2)]
    q0, k0, v0 = sets[0]
    want = reference_rows(q0, k0, v0, rows, score, keep)
    impls = {}
    impls["flashcore"] = flashcore_impl(args, driver, sm_count, shape, kernel, flags, workdir, facts)
    # A fresh compile per variant and shape, static shapes: a recompile with dynamic shapes
    # (what torch.compile does on a second shape) ran FlexAttention 30x slower.
    torch._dynamo.reset()
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, None, None, s, s, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)

    def run_flex(q, k, v, o):
        o.copy_(flex(q, k, v, score_mod=score_mod, block_mask=block_mask))
    impls["flex"] = (run_flex, "torch.compile(flex_attention)" + (" + block mask" if block_mask is not None else ""))
    if sdpa_causal is not None:
        for label, backend in [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)]:
            def run_sdpa(q, k, v, o, backend=backend):
                with sdpa_kernel(backend):
                    o.copy_(F.scaled_dot_product_attention(q, k, v, is_causal=sdpa_causal))
            impls[label] = (run_sdpa, label)
    result = {"variant": name, "shape": f"{b}x{h}x{s}x{d}", "kernel": kernel,
              "pairs_per_head": kept_pairs(keep, s), "impls": {}}
    runnable = {}
    for impl, (fn, note) in impls.items():
        entry = {"note": note}
        result["impls"][impl] = entry
        if fn is None:
            entry["error"] = note
            continue
        try:
            outs[0].fill_(float("nan"))
            fn(q0, k0, v0, outs[0])
            torch.cuda.synchronize()
            entry["rel_err"] = bench.rel_err(outs[0], want, rows)
            if not entry["rel_err"] <= 2e-3:
                entry["error"] = f"wrong result: rel err {entry['rel_err']:.3e} vs float64"
                continue
            runnable[impl] = fn
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    names = list(runnable)
    times = bench.time_in_rounds(timer, runnable, lambda fn, i: fn(*sets[i % n_sets], outs[i % n_sets]),
                                 args.iters, rounds=3, warmup=3)
    for impl in names:
        entry = result["impls"][impl]
        entry["us"] = statistics.median(times[impl]) * 1e6
        entry["tflops"] = 4 * b * h * result["pairs_per_head"] * d / (entry["us"] * 1e-6) / 1e12
        entry["runs"] = len(times[impl])
    del sets, outs
    torch.cuda.empty_cache()
    return result


def table(results):
    impls = ["flashcore", "flex", "sdpa-flash", "sdpa-cudnn"]
    lines = [f"{'variant':<46}{'shape':>16}" + "".join(f"{i:>13}" for i in impls) + "  FC/flex  FC TF/s  FC rel_err"]
    for r in results:
        cells = []
        for i in impls:
            e = r["impls"].get(i)
            cells.append("" if e is None else ("error" if "error" in e else f"{e['us']:.1f}"))
        fc, fx = r["impls"].get("flashcore", {}), r["impls"].get("flex", {})
        ratio = f"{fx['us'] / fc['us']:.2f}x" if "us" in fc and "us" in fx else "-"
        tf = f"{fc['tflops']:.0f}" if "tflops" in fc else "-"
        err = f"{fc['rel_err']:.1e}" if "rel_err" in fc else "-"
        lines.append(f"{r['variant']:<46}{r['shape']:>16}" + "".join(f"{c:>13}" for c in cells) + f"  {ratio:>7}  {tf:>7}  {err:>10}")
    lines.append("")
    lines.append("µs, median of CUDA-event times; FC/flex = FlexAttention's time / FlashCore's (above 1: FlashCore faster);")
    lines.append("TF/s counts 4·D flops per (query, key) pair the variant keeps.")
    for r in results:
        for i, e in r["impls"].items():
            if "error" in e:
                lines.append(f"{r['variant']} {r['shape']} {i}: {e['error']}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flashcore", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--shapes", default="2x16x8192x128,4x16x4096x64")
    p.add_argument("--only", default="")
    p.add_argument("--schedule", choices=["table", "h100-sm89"], default="table",
                   help="FlashCore's schedule: the tuning table's pick (what a user gets) or the fixed sm_89 one")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    driver = bench.Driver()
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    timer = bench.Timer()
    facts, results = {}, []
    workdir = tempfile.mkdtemp()  # plans and SASS scratch: not in --out
    for text in args.shapes.split(","):
        shape = tuple(int(x) for x in text.split("x"))
        for name, spec in variants(shape[0], shape[1], shape[2], with_bias=args.only in "additive bias [B, H, S, S] f32").items():
            if args.only and args.only not in name:
                continue
            r = bench_variant(args, driver, sm_count, timer, shape, name, spec, workdir, facts)
            results.append(r)
            print(json.dumps({k: r[k] for k in ("variant", "shape")} |
                             {i: {k: v for k, v in e.items() if k in ("us", "rel_err", "error")} for i, e in r["impls"].items()}),
                  flush=True)
    text = f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n\n" + table(results)
    text += "\n\nFlashCore configs (ptxas for this GPU, SASS counts):\n" + "\n".join(f"  {k}: {v}" for k, v in facts.items())
    open(os.path.join(args.out, "variants.txt"), "w").write(text + "\n")
    json.dump({"results": results, "facts": facts}, open(os.path.join(args.out, "variants.json"), "w"), indent=1)
    print(text)


if __name__ == "__main__":
    main()
