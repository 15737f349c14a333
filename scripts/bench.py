"""FlashCore against what users would pick instead, timed side by side in one process on the GPU.

    python3 scripts/bench.py --flashcore .device/bin/attention --out DIR [--quick] [--only 2x16x8192x128]
        [--impls flashcore,flashcore-plan,flashcore-sm89,flashcore-sm90a,sdpa-flash,sdpa-cudnn,sdpa-efficient,triton]
        [--iters 60] [--no-ceilings]

Implementations: FlashCore as a PyTorch user calls it, `flashcore.attention(q, k, v, causal=...)`
from the Python package (python/; installed from its wheel), with the config and target its
tuning table picks, and forced to one target (`flashcore-sm89`, `flashcore-sm90a`: `target=`,
the separate columns of the two targets); `flashcore-plan`, the same kernel without the package:
the Rust example writes the launch plan (`attention --plan`) and this script launches that PTX
through the CUDA driver with ctypes, on torch's stream and tensors (without the package
installed, every FlashCore column takes this path); PyTorch SDPA forced to each of its flash,
cuDNN and memory-efficient backends, and the Triton flash-attention forward in
scripts/triton_fa.py.

Method, the same for every implementation:
- every output is first checked against a float64 reference (on the GPU, over a sample of rows,
  every key) on fresh random inputs, its output poisoned with NaN before the launch;
- timing: CUDA events around each launch, each launch after a 256 MB memset that evicts L2 and keeps
  the GPU busy while the host enqueues (so the events bracket the kernel, not Python's launch
  overhead); input sets rotate; warm-up first; median of --iters launches, taken in rounds whose
  order of implementations rotates;
- launch-bound shapes are also timed as CUDA-graph replay: 20 launches (rotating inputs) captured
  in one graph, replayed back to back, the time per launch the median over replays;
- ceilings measured in the same process: a loop of mma.sync m16n8k16 (f16 in, f32 accumulate, no
  memory traffic) on every SM, and device-to-device copy bandwidth.

Writes DIR/bench.txt (the table), DIR/bench.json and DIR/bench.png (TFLOP/s against S at D = 64
and 128, one line per implementation), and for each FlashCore config its ptxas report and SASS
instruction counts (HMMA, LDGSTS, LDSM), from /usr/local/cuda/bin's ptxas and cuobjdump.
"""

import argparse
import ctypes
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import triton_fa
except ImportError:  # --render needs neither
    torch = None
try:
    import flashcore
except ImportError:  # the plan path still works
    flashcore = None

CUDA_BIN = "/usr/local/cuda/bin"

# ----------------------------------------------------------------------------------------------
# The CUDA driver, through ctypes: enough to load PTX and launch it on torch's stream.


class Driver:
    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # makes torch's (primary) context current on this thread
        ctx = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:
            raise RuntimeError("no current CUDA context after torch initialized the device")

    def check(self, result, what):
        if result != 0:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(msg))
            raise RuntimeError(f"{what} failed: {result} {msg.value.decode() if msg.value else ''}")

    def load(self, ptx, entry, shared_bytes):
        module, func = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(ptx.encode() + b"\0")),
                   f"cuModuleLoadData({entry})")
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(func), module, entry.encode()), "cuModuleGetFunction")
        # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
        self.check(self.lib.cuFuncSetAttribute(func, 8, ctypes.c_int(shared_bytes)), "cuFuncSetAttribute")
        return func

    def occupancy(self, func, threads, shared_bytes):
        n = ctypes.c_int()
        self.check(self.lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(n), func, ctypes.c_int(threads), ctypes.c_size_t(shared_bytes)), "cuOccupancy")
        return n.value

    def tensor_map(self, ptr, p):
        """A plan's `tensormap` parameter over the tensor at device address `ptr`: the
        128-byte CUtensorMap (64-byte aligned) cuTensorMapEncodeTiled fills."""
        raw = ctypes.create_string_buffer(128 + 64)
        base = (ctypes.addressof(raw) + 63) // 64 * 64
        dims, strides, box = p["dims"], p["strides"], p["box_dims"]
        u64s, u32s = ctypes.c_uint64 * len(dims), ctypes.c_uint32 * len(dims)
        # CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6, BFLOAT16 = 9; interleave none, swizzle 128B = 3,
        # L2 promotion 128B = 2, zero fill = 0.
        dtype = {"f16": 6, "bf16": 9}[p["dtype"]]
        self.check(self.lib.cuTensorMapEncodeTiled(
            ctypes.c_void_p(base), ctypes.c_int(dtype), ctypes.c_uint32(len(dims)), ctypes.c_void_p(ptr),
            u64s(*dims), (ctypes.c_uint64 * len(strides))(*strides), u32s(*box), u32s(*([1] * len(dims))),
            ctypes.c_int(0), ctypes.c_int(3), ctypes.c_int(2), ctypes.c_int(0)), f"cuTensorMapEncodeTiled({p['name']})")
        arg = (ctypes.c_uint8 * 128).from_address(base)
        arg._keep = raw  # the aligned bytes live inside `raw`
        return arg

    def launch(self, func, grid, threads, shared_bytes, args):
        """args: ctypes values, in the entry's parameter order."""
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self.check(self.lib.cuLaunchKernel(func, grid, 1, 1, threads, 1, 1, shared_bytes, stream, pointers, None),
                   "cuLaunchKernel")


class FlashCore:
    """A FlashCore kernel from the launch plan `attention --plan` wrote."""

    def __init__(self, driver, plan, sm_count):
        self.driver, self.plan = driver, plan
        self.func = driver.load(plan["ptx"], plan["entry"], plan["shared_bytes"])
        self.threads, self.smem = plan["threads_per_cta"], plan["shared_bytes"]
        self.ctas_per_sm = driver.occupancy(self.func, self.threads, self.smem)
        if self.ctas_per_sm == 0:
            raise RuntimeError(f"{plan['config']}: no CTA fits on an SM")
        items = plan["work_items"]
        self.grid = min(items, self.ctas_per_sm * sm_count) if plan["persistent"] else items
        self.args_cache = {}
        # Launches before the kernel's (the table summaries its masks read), each with its
        # buffer, allocated once: they are part of every call, so the timing includes them.
        self.summaries = [(s, driver.load(s["ptx"], s["entry"], 0),
                           torch.empty(s["bytes"], dtype=torch.uint8, device="cuda"))
                          for s in plan.get("summaries", [])]

    def __call__(self, tensors):
        # The argument lists per set of tensors, checked once: cached lists keep the host's
        # launch overhead down (the timing does not see it, graph capture does not care).
        key = tuple((n, t.data_ptr()) for n, t in sorted(tensors.items()))
        cached = self.args_cache.get(key)
        if cached is None:
            cached = self.args_cache[key] = (self.summary_arguments(tensors), self.arguments(tensors))
        for (s, func, _), args in zip(self.summaries, cached[0]):
            self.driver.launch(func, s["ctas"], s["threads_per_cta"], 0, args)
        self.driver.launch(self.func, self.grid, self.threads, self.smem, cached[1])

    def summary_arguments(self, tensors):
        return [[ctypes.c_uint64(tensors[s["table"]].data_ptr()), ctypes.c_uint64(buf.data_ptr())]
                + [ctypes.c_uint32(v) for v in s["values"]] for s, _, buf in self.summaries]

    def arguments(self, tensors):
        args = []
        for p in self.plan["params"]:
            if p["kind"] == "pointer":
                t = tensors[p["name"]]
                want = (p["dtype"], list(p["shape"]), list(p["strides"]))
                names = {"torch.float16": "f16", "torch.bfloat16": "bf16", "torch.float32": "f32", "torch.int32": "i32"}
                got = (names.get(str(t.dtype), str(t.dtype)),
                       list(t.shape), list(t.stride()))
                if got != want:
                    raise ValueError(f"{p['name']}: the plan wants {want}, got {got}")
                args.append(ctypes.c_uint64(t.data_ptr()))
            elif p["kind"] == "null":
                args.append(ctypes.c_uint64(0))
            elif p["kind"] == "f32":
                args.append(ctypes.c_float(p["value"]))
            elif p["kind"] == "tensormap":
                args.append(self.driver.tensor_map(tensors[p["tensor"]].data_ptr(), p))
            elif p["kind"] == "summary":
                args.append(ctypes.c_uint64(self.summaries[p["index"]][2].data_ptr()))
            elif p["kind"] == "workspace":
                # Zero before the first launch; the kernel leaves it zero.
                if not hasattr(self, "workspace"):
                    self.workspace = torch.zeros(p["bytes"], dtype=torch.uint8, device="cuda")
                args.append(ctypes.c_uint64(self.workspace.data_ptr()))
            else:
                args.append(ctypes.c_uint32(p["value"]))
        return args


# ----------------------------------------------------------------------------------------------
# Ceilings.

MMA_PEAK_PTX = r"""
.version 7.8
.target sm_89
.address_size 64
// A loop of mma.sync m16n8k16 (f16 x f16 -> f32) over 8 independent accumulators: no memory
// traffic but one store per thread at the end (so the loop is not dead code).
.visible .entry mma_peak(.param .u64 out, .param .u32 iters)
{
    .reg .b32 %a<4>;
    .reg .b32 %b<2>;
    .reg .f32 %c<32>;
    .reg .u32 %i, %n, %t, %cta;
    .reg .u64 %o, %off;
    .reg .pred %p;
    ld.param.u64 %o, [out];
    ld.param.u32 %n, [iters];
    mov.b32 %a0, 0x3c003c00; mov.b32 %a1, 0x3c003c00; mov.b32 %a2, 0x3c003c00; mov.b32 %a3, 0x3c003c00;
    mov.b32 %b0, 0x3c003c00; mov.b32 %b1, 0x3c003c00;
    mov.f32 %c0, 0f00000000; mov.f32 %c1, 0f00000000; mov.f32 %c2, 0f00000000; mov.f32 %c3, 0f00000000;
    mov.f32 %c4, 0f00000000; mov.f32 %c5, 0f00000000; mov.f32 %c6, 0f00000000; mov.f32 %c7, 0f00000000;
    mov.f32 %c8, 0f00000000; mov.f32 %c9, 0f00000000; mov.f32 %c10, 0f00000000; mov.f32 %c11, 0f00000000;
    mov.f32 %c12, 0f00000000; mov.f32 %c13, 0f00000000; mov.f32 %c14, 0f00000000; mov.f32 %c15, 0f00000000;
    mov.f32 %c16, 0f00000000; mov.f32 %c17, 0f00000000; mov.f32 %c18, 0f00000000; mov.f32 %c19, 0f00000000;
    mov.f32 %c20, 0f00000000; mov.f32 %c21, 0f00000000; mov.f32 %c22, 0f00000000; mov.f32 %c23, 0f00000000;
    mov.f32 %c24, 0f00000000; mov.f32 %c25, 0f00000000; mov.f32 %c26, 0f00000000; mov.f32 %c27, 0f00000000;
    mov.f32 %c28, 0f00000000; mov.f32 %c29, 0f00000000; mov.f32 %c30, 0f00000000; mov.f32 %c31, 0f00000000;
    mov.u32 %i, 0;
LOOP:
""" + "".join(
    f"    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{%c{4*j},%c{4*j+1},%c{4*j+2},%c{4*j+3}}}, "
    f"{{%a0,%a1,%a2,%a3}}, {{%b0,%b1}}, {{%c{4*j},%c{4*j+1},%c{4*j+2},%c{4*j+3}}};\n" for j in range(8)
) + r"""
    add.u32 %i, %i, 1;
    setp.lt.u32 %p, %i, %n;
    @%p bra LOOP;
""" + "".join(f"    add.f32 %c0, %c0, %c{j};\n" for j in range(1, 32)) + r"""
    mov.u32 %t, %tid.x;
    mov.u32 %cta, %ctaid.x;
    mad.lo.u32 %t, %cta, 256, %t;
    mul.wide.u32 %off, %t, 4;
    add.u64 %o, %o, %off;
    st.global.f32 [%o], %c0;
    ret;
}
"""


def median_seconds(launch, runs=10, warmup=3):
    """Median event time of `launch()` over `runs` runs after `warmup`, each waited for."""
    times = []
    for i in range(warmup + runs):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        stop.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(stop) * 1e-3)
    return statistics.median(times)


def mma_peak_tflops(driver, sm_count):
    func = driver.load(MMA_PEAK_PTX, "mma_peak", 0)
    grid, threads, iters = sm_count * 8, 256, 2048
    out = torch.empty(grid * threads, dtype=torch.float32, device="cuda")
    args = lambda: [ctypes.c_uint64(out.data_ptr()), ctypes.c_uint32(iters)]
    seconds = median_seconds(lambda: driver.launch(func, grid, threads, 0, args()))
    flops = grid * threads / 32 * iters * 8 * (2 * 16 * 8 * 16)
    return flops / seconds / 1e12


def copy_bandwidth_tbs():
    n = 1 << 30
    src, dst = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    return 2 * n / median_seconds(lambda: dst.copy_(src)) / 1e12


# ----------------------------------------------------------------------------------------------
# Problems.

ISSUE_SHAPES = [  # (B, H, S, D, causal, dtype)
    (1, 8, 512, 64, False, "f16"),
    (1, 8, 512, 64, True, "f16"),
    (1, 8, 1024, 64, False, "f16"),
    (4, 16, 2048, 64, False, "f16"),
    (4, 16, 2048, 128, False, "f16"),
    (2, 16, 8192, 64, False, "f16"),
    (2, 16, 8192, 128, False, "f16"),
    (2, 16, 8192, 128, True, "f16"),
    (16, 32, 1024, 64, False, "f16"),
    (1, 32, 16384, 128, False, "f16"),
    (1, 8, 512, 64, False, "bf16"),
    (2, 16, 8192, 128, False, "bf16"),
]
# The plot's series: FlashAttention-2's benchmark shape, 16k tokens (B = 16384 / S) of hidden
# size 2048 (H = 2048 / D), S from 512 to 16k.
SWEEP_SHAPES = [(16384 // s, 2048 // d, s, d, False, "f16") for d in (64, 128) for s in (512, 1024, 2048, 4096, 8192, 16384)]
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16} if torch else {}


def name_of(shape):
    b, h, s, d, causal, dtype = shape
    return f"{b}x{h}x{s}x{d}" + (" causal" if causal else "") + ("" if dtype == "f16" else f" {dtype}")


def flops_of(shape):
    b, h, s, d, causal, _ = shape
    pairs = s * (s + 1) / 2 if causal else s * s
    return 4 * b * h * pairs * d


def launch_bound(shape):
    b, h, s, _, _, _ = shape
    return b * h * s * s < 1 << 26  # FlashCore's "tiny" and "small" size classes


def reference_rows(q, k, v, rows, causal):
    """float64 attention for the (b, h, s) rows listed, every key (bottom-right causal)."""
    _, H, S, D = q.shape
    HKV, SK = k.shape[1], k.shape[2]
    out = []
    for (b, h, s) in rows:
        qr = q[b, h, s].double()
        kk, vv = k[b, h // (H // HKV)].double(), v[b, h // (H // HKV)].double()
        scores = (kk @ qr) / math.sqrt(D)
        if causal:
            scores[s + SK - S + 1:] = float("-inf")
        out.append(torch.softmax(scores, 0) @ vv)
    return torch.stack(out)


def rel_err(o, want, rows):
    got = torch.stack([o[b, h, s].double() for (b, h, s) in rows])
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm()).item()


# ----------------------------------------------------------------------------------------------
# Timing.


class Timer:
    def __init__(self):
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def launches(self, fn, n):
        """Event times (s) of n launches of fn(i), each after an L2-evicting memset and a ~0.5 ms
        spin kernel, which keep the GPU busy while the host enqueues the events and the launch."""
        pairs = []
        for i in range(n):
            self.flush.zero_()
            torch.cuda._sleep(1_000_000)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            stop.record()
            pairs.append((start, stop))
        torch.cuda.synchronize()
        return [a.elapsed_time(b) * 1e-3 for a, b in pairs]

    def graph(self, fn, per_graph=20, replays=30):
        """Time per launch of fn(0..per_graph) captured in one CUDA graph, replayed back to back."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for i in range(3):  # warm-up outside the capture (autotuners, lazy module loads)
                fn(i)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(per_graph):
                fn(i)
        for _ in range(3):
            g.replay()
        times = []
        for _ in range(replays):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            g.replay()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) * 1e-3 / per_graph)
        return times


def time_in_rounds(timer, runnable, call, iters, rounds, warmup):
    """Event times (s) per implementation: `warmup` launches each, then `rounds` rounds whose
    order of implementations rotates, about `iters` launches each in all. `call(fn, i)` launches
    implementation `fn` on input set `i`."""
    names = list(runnable)
    for name in names:
        timer.launches(lambda i, fn=runnable[name]: call(fn, i), warmup)
    times = {name: [] for name in names}
    for r in range(rounds):
        shift = r % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            fn = runnable[name]
            times[name] += timer.launches(lambda i: call(fn, i), max(1, iters // rounds))
    return times


def make_impls(args, driver, sm_count, shape, workdir, facts):
    """name -> (fn(q, k, v, o, causal) that launches, note)."""
    b, h, s, d, causal, dtype = shape
    impls = {}
    wanted = args.impls  # split into names by main()
    # FlashCore as a user gets it (the tuning table's config and target), and forced to each
    # target (with the table's schedule for that key where it has one, else the declared one).
    targets = {"flashcore": None, "flashcore-sm89": "sm_89", "flashcore-sm90a": "sm_90a"}
    probe = torch.randn(b, h, s, d, device="cuda", dtype=DTYPES[dtype]) if flashcore is not None else None
    for name, target in targets.items():
        if name not in wanted or flashcore is None:
            continue
        def run(q, k, v, o, c, target=target):
            return flashcore.attention(q, k, v, causal=c, target=target)
        try:
            run(probe, probe, probe, None, causal)  # a first call says which config the table gives
            config, source = flashcore.last_config()
            impls[name] = (run, f"{config} ({source}; through the Python package {flashcore.__version__})")
        except Exception as e:
            impls[name] = (None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    del probe
    for name, flags in [("flashcore-plan", []), ("flashcore", []), ("flashcore-sm89", ["--target", "sm_89"]),
                        ("flashcore-sm90a", ["--target", "sm_90a"])]:
        if name not in wanted or name in impls:
            continue
        plan_path = os.path.join(workdir, f"plan-{name}-{b}x{h}x{s}x{d}-{int(causal)}-{dtype}.json")
        cmd = [args.flashcore, "--b", str(b), "--h", str(h), "--s", str(s), "--d", str(d), "--dtype", dtype,
               "--plan", plan_path] + (["--causal"] if causal else []) + flags
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            impls[name] = (None, f"plan failed: {res.stderr.strip() or res.stdout.strip()}")
            continue
        plan = json.load(open(plan_path))
        kernel = FlashCore(driver, plan, sm_count)
        source = res.stdout.strip().split("; ", 1)[-1].rstrip(")")
        facts.setdefault(plan["config"], sass_facts(plan, workdir))
        impls[name] = (lambda q, k, v, o, c, kernel=kernel: kernel({"q": q, "k": k, "v": v, "o": o}),
                       f"{plan['config']} ({source}), grid {kernel.grid}, {kernel.ctas_per_sm} CTA/SM")
    for name, backend in [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        if name in wanted:
            def run(q, k, v, o, c, backend=backend):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=c)
            impls[name] = (run, "")
    if "triton" in wanted:
        impls["triton"] = (lambda q, k, v, o, c: triton_fa.attention(q, k, v, causal=c, out=o), "")
    return impls


def sass_facts(plan, workdir):
    """ptxas -v resources and SASS instruction counts of a plan's PTX, compiled for this GPU
    (HGMMA counts the sm_90a kernels' wgmma)."""
    major, minor = torch.cuda.get_device_capability()
    # sm_90a PTX (wgmma) assembles only for sm_90a; sm_89 PTX for the device's own arch.
    arch = "sm_90a" if ".target sm_90a" in plan["ptx"] else f"sm_{major}{minor}"
    ptx = os.path.join(workdir, "kernel.ptx")
    cubin = os.path.join(workdir, "kernel.cubin")
    open(ptx, "w").write(plan["ptx"])
    res = subprocess.run([f"{CUDA_BIN}/ptxas", "-v", f"-arch={arch}", ptx, "-o", cubin], capture_output=True, text=True)
    report = res.stderr
    facts = {"arch": arch, "shared_bytes": plan["shared_bytes"], "threads": plan["threads_per_cta"]}
    for key, pattern in [("registers", r"Used (\d+) registers"), ("spill_stores", r"(\d+) bytes spill stores"),
                         ("spill_loads", r"(\d+) bytes spill loads"), ("stack", r"(\d+) bytes stack frame")]:
        m = re.search(pattern, report)
        facts[key] = int(m.group(1)) if m else None
    sass = subprocess.run([f"{CUDA_BIN}/cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
    for op in ["HMMA", "HGMMA", "LDGSTS", "LDSM", "LDS", "STS", "LDG", "STG", "BAR", "SYNCS", "MUFU.EX2", "SHFL"]:
        facts[op] = len(re.findall(r"\b" + re.escape(op) + r"[\.\s]", sass))
    facts["sass_lines"] = sass.count("\n")
    return facts


def bench_shape(args, driver, sm_count, timer, shape, workdir, facts):
    b, h, s, d, causal, dtype = shape
    torch.manual_seed(hash(shape) & 0xFFFF)
    t = DTYPES[dtype]
    set_bytes = 4 * b * h * s * d * 2
    n_sets = max(2, min(8, math.ceil((192 << 20) / set_bytes)))
    sets = [tuple(torch.randn(b, h, s, d, device="cuda", dtype=t) for _ in range(3)) for _ in range(n_sets)]
    outs = [torch.empty(b, h, s, d, device="cuda", dtype=t) for _ in range(n_sets)]
    rows = [(torch.randint(b, ()).item(), torch.randint(h, ()).item(), torch.randint(s, ()).item()) for _ in range(48)]
    rows += [(0, 0, 0), (b - 1, h - 1, s - 1)]
    q0, k0, v0 = sets[0]
    want = reference_rows(q0, k0, v0, rows, causal)
    impls = make_impls(args, driver, sm_count, shape, workdir, facts)
    result = {"shape": name_of(shape), "B": b, "H": h, "S": s, "D": d, "causal": causal, "dtype": dtype,
              "flops": flops_of(shape), "impls": {}}
    runnable = {}
    for name, (fn, note) in impls.items():
        entry = {"note": note}
        result["impls"][name] = entry
        if fn is None:
            entry["error"] = note
            continue
        try:
            outs[0].fill_(float("nan"))
            got = fn(q0, k0, v0, outs[0], causal)
            torch.cuda.synchronize()
            o = got if got is not None else outs[0]
            entry["rel_err"] = rel_err(o, want, rows)
            limit = 2e-3 if dtype == "f16" else 1.6e-2
            if not entry["rel_err"] <= limit:
                entry["error"] = f"wrong result: rel err {entry['rel_err']:.3e} vs float64"
                continue
            runnable[name] = fn
        except Exception as e:  # a backend that does not support the shape
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    names = list(runnable)
    times = time_in_rounds(timer, runnable, lambda fn, i: fn(*sets[i % n_sets], outs[i % n_sets], causal),
                           args.iters, rounds=5, warmup=5)
    for name in names:
        entry = result["impls"][name]
        entry["us"] = statistics.median(times[name]) * 1e6
        entry["tflops"] = result["flops"] / (entry["us"] * 1e-6) / 1e12
        entry["runs"] = len(times[name])
    if launch_bound(shape) and not args.no_graph:
        for name in names:
            try:
                fn = runnable[name]
                g = timer.graph(lambda i: fn(*sets[i % n_sets], outs[i % n_sets], causal))
                result["impls"][name]["graph_us"] = statistics.median(g) * 1e6
            except Exception as e:
                result["impls"][name]["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    del sets, outs
    torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------------------------
# Output.


def table(results, ceilings, impls):
    lines = []
    comp = [i for i in impls if i != "flashcore"]
    head = f"{'shape':<24}" + "".join(f"{i:>16}" for i in impls) + "   FC TF/s  %peak " + "".join(
        f" {('vs ' + c.replace('sdpa-', '')):>11}" for c in comp)
    lines.append("times in us (CUDA events, L2 flushed, median); graph replay per launch in [brackets]")
    lines.append(head)
    for r in results:
        row = f"{r['shape']:<24}"
        for i in impls:
            e = r["impls"].get(i, {})
            if "us" in e:
                cell = f"{e['us']:.2f}" + (f" [{e['graph_us']:.2f}]" if "graph_us" in e else "")
            else:
                cell = "n/a"
            row += f"{cell:>16}"
        fc = r["impls"].get("flashcore", {})
        if "us" in fc:
            row += f"  {fc['tflops']:>8.1f} {100 * fc['tflops'] / ceilings['mma_sync_tflops']:>5.1f}%"
            for c in comp:
                e = r["impls"].get(c, {})
                row += f" {e['us'] / fc['us']:>10.2f}x" if "us" in e else f" {'n/a':>11}"
        lines.append(row)
    lines.append("ratios: the competitor's time over FlashCore's (above 1: FlashCore is faster)")
    lines.append("TFLOP/s of every implementation:")
    lines.append(f"{'shape':<24}" + "".join(f"{i:>16}" for i in impls))
    for r in results:
        lines.append(f"{r['shape']:<24}" + "".join(
            f"{r['impls'][i]['tflops']:>16.1f}" if "tflops" in r["impls"].get(i, {}) else f"{'n/a':>16}" for i in impls))
    errors = [(r["shape"], i, e["error"]) for r in results for i, e in r["impls"].items() if "error" in e]
    for shape, i, err in errors:
        lines.append(f"not timed: {shape} {i}: {err}")
    return "\n".join(lines)


def plot(results, impls, path, peak, device):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, d in zip(axes, (64, 128)):
        for i in impls:
            pts = sorted((r["S"], r["impls"][i]["tflops"]) for r in results
                         if r.get("series") and r["D"] == d and "tflops" in r["impls"].get(i, {}))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=i,
                        linewidth=2.5 if i == "flashcore" else 1.2)
        if math.isfinite(peak):
            ax.axhline(peak, color="gray", linestyle="--", linewidth=1, label=f"mma.sync peak ({peak:.0f}, measured)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length S (batch = 16384 / S, heads = 2048 / D)")
        ax.set_ylabel("TFLOP/s (forward, fp16)")
        ax.set_title(f"D = {d}, not causal")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Attention forward on {device} (FlashCore: sm_89 PTX, JIT-compiled)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flashcore", default=".device/bin/attention")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--impls", default="flashcore,flashcore-plan,sdpa-flash,sdpa-cudnn,sdpa-efficient,triton")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--only", default=None, help="shape names, comma-separated (e.g. 2x16x8192x128)")
    ap.add_argument("--quick", action="store_true", help="the issue's shapes only, no plot series")
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--no-ceilings", action="store_true")
    ap.add_argument("--render", default=None, help="write bench.txt and bench.png from this bench.json and exit")
    args = ap.parse_args()
    if args.render:
        os.makedirs(args.out, exist_ok=True)
        print(write_outputs(json.load(open(args.render)), args.out))
        return
    if torch is None:
        sys.exit("bench.py needs torch and triton (the GPU machine has them)")
    args.impls = args.impls.split(",")
    os.makedirs(args.out, exist_ok=True)
    driver = Driver()
    props = torch.cuda.get_device_properties(0)
    sm_count = props.multi_processor_count
    started = time.time()
    ceilings = {}
    if not args.no_ceilings:
        ceilings = {"mma_sync_tflops": mma_peak_tflops(driver, sm_count), "copy_tbs": copy_bandwidth_tbs()}
    else:
        ceilings = {"mma_sync_tflops": float("nan"), "copy_tbs": float("nan")}
    print(f"device: {props.name}, {sm_count} SMs; torch {torch.__version__}, triton {triton_fa.triton.__version__}")
    print(f"ceilings: mma.sync m16n8k16 f16->f32 {ceilings['mma_sync_tflops']:.1f} TFLOP/s; "
          f"device copy {ceilings['copy_tbs']:.2f} TB/s (read + written)", flush=True)
    shapes = [(sh, False) for sh in ISSUE_SHAPES]
    if not args.quick:
        shapes += [(sh, True) for sh in SWEEP_SHAPES]
    if args.only:
        wanted = args.only.split(",")
        shapes = [(sh, series) for sh, series in shapes if name_of(sh) in wanted]
    timer = Timer()
    results, facts, seen = [], {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for shape, series in shapes:
            if shape in seen:  # a sweep shape that is also one of the issue's
                seen[shape]["series"] = True
                continue
            r = bench_shape(args, driver, sm_count, timer, shape, workdir, facts)
            r["series"] = series
            seen[shape] = r
            results.append(r)
            fc = r["impls"].get("flashcore", {})
            print(f"{r['shape']:<24} " + "  ".join(
                f"{i} {e['us']:.2f}us" if "us" in e else f"{i} n/a" for i, e in r["impls"].items())
                + f"   [{fc.get('note', '')}]", flush=True)
    for shape, series in shapes:
        if series:
            seen[shape]["series"] = True
    data = {"device": props.name, "sm_count": sm_count, "torch": torch.__version__,
            "triton": triton_fa.triton.__version__, "ceilings": ceilings, "impls": args.impls, "results": results,
            "flashcore_configs": facts, "command": sys.argv, "seconds": time.time() - started}
    json.dump(data, open(os.path.join(args.out, "bench.json"), "w"), indent=1)
    print(write_outputs(data, args.out))


def write_outputs(data, out):
    """bench.txt and bench.png from the run's JSON (also --render: no GPU or torch needed)."""
    results, ceilings = data["results"], data["ceilings"]
    impls = data.get("impls") or list(dict.fromkeys(i for r in results for i in r["impls"]))
    text = table(results, ceilings, impls)
    text += "\n\nFlashCore configs (the tuning table's picks): ptxas -v and SASS counts, compiled for this GPU\n"
    for cfg, f in data["flashcore_configs"].items():
        text += f"{cfg}\n    " + ", ".join(f"{k} {v}" for k, v in f.items()) + "\n"
    header = (f"# {data['device']}, {data['sm_count']} SMs, torch {data['torch']}, triton {data['triton']}; "
              f"mma.sync peak {ceilings['mma_sync_tflops']:.1f} TFLOP/s, copy {ceilings['copy_tbs']:.2f} TB/s"
              f"{'; %.0f s' % data['seconds'] if 'seconds' in data else ''}\n"
              f"# command: python3 scripts/bench.py {' '.join(data['command'][1:])}\n")
    open(os.path.join(out, "bench.txt"), "w").write(header + text)
    wrote = f"wrote {out}/bench.txt, bench.json"
    if any(r.get("series") for r in results):
        try:
            plot(results, impls, os.path.join(out, "bench.png"), ceilings["mma_sync_tflops"], data["device"])
            wrote += ", bench.png"
        except ImportError:
            wrote += " (no plot: matplotlib is not installed)"
    return text + "\n" + wrote


if __name__ == "__main__":
    main()
