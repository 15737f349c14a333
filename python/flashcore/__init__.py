"""FlashCore's fused attention on PyTorch tensors.

    import flashcore
    o = flashcore.attention(q, k, v, causal=True)                 # q, k, v: CUDA, [B, H, S, D]
    o, lse = flashcore.attention(q, k, v, layout="bshd", return_lse=True)
    o = flashcore.attention(q, k, v, causal=True, softcap=30.0, window=(4096, 0))   # a variant

The kernels are FlashCore's `attention` and its variants (written in its Rust DSL, compiled to
sm_89 or sm_90a PTX) with the config its tuning table gives for this GPU and shape. They are
launched on torch's current stream, on the tensors in place (no copies), through the custom op
`torch.ops.flashcore.attention`, so `torch.compile` and `torch.export` trace them (its fake
implementation gives the shapes). CPU tensors are refused; `flashcore.simulate.attention` runs
the same generated PTX in FlashCore's simulator on small CPU tensors.

Errors carry FlashCore's own message: a bad argument is a `ValueError`, anything else a
`flashcore.FlashCoreError` (a `RuntimeError`).
"""

from typing import List, Optional, Tuple

import torch

from . import _native
from ._native import FlashCoreError

__all__ = ["attention", "attention_varlen", "last_config", "kernels", "FlashCoreError", "simulate", "__version__"]
__version__ = _native.__version__

_DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.int32: "i32"}
_LAYOUTS = ("bhsd", "bshd")
# A variable-length batch: packed [TOTAL, H, D] tensors and cu_seqlens (internal layout name).
_PACKED = "thd"
_last_config = None


def last_config() -> Optional[Tuple[str, str]]:
    """The config of this process's latest GPU launch and where it came from (the tuning
    table's entry for this GPU, another GPU's, the declared config, ...), or None before one."""
    return _last_config


def kernels() -> List[str]:
    """The library kernels the package launches: `attention` and its variants."""
    return list(_native.KERNELS)


def _check_layout(layout: str) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout is {layout!r}: 'bhsd' ([B, H, S, D], SDPA's) or 'bshd' ([B, S, H, D], FlashAttention's)")


def _bhsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    """`t` seen as [B, H, S, D] (a view, no copy); packed [TOTAL, H, D] stays as it is."""
    return t.transpose(1, 2) if layout == "bshd" else t


def _spec(name: str, t: torch.Tensor) -> tuple:
    if t.dtype not in _DTYPES:
        raise ValueError(f"{name}: element type is {t.dtype}; attention takes torch.float16 or torch.bfloat16")
    return (t.data_ptr(), _DTYPES[t.dtype], list(t.shape), list(t.stride()))


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: bool = False) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} is a {type(t).__name__}, not a torch.Tensor")
        if packed and t.dim() != 3:
            raise ValueError(f"{name} has {t.dim()} dimensions; attention_varlen takes packed [TOTAL, H, D] tensors")
        if not packed and t.dim() != 4:
            raise ValueError(f"{name} has {t.dim()} dimensions; attention takes [B, H, S, D] or [B, S, H, D] tensors")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} and q on {q.device}: every tensor must be on one device")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} is {t.dtype} and q {q.dtype}: every tensor must have one element type")


def _variant(q, k, softcap=None, window=None, alibi=False, prefix=None, bias=None, document=None, layout="bhsd"):
    """The library kernel for the options asked for, its f32 parameters and its tensor ones."""
    asked = [name for name, on in (("softcap", softcap is not None), ("window", window is not None), ("alibi", alibi),
                                   ("prefix", prefix is not None), ("bias", bias is not None),
                                   ("document", document is not None)) if on]
    if not asked:
        return "attention", [], []
    keys = k.shape[0] if layout == _PACKED else _bhsd(k, layout).shape[2]
    if "window" in asked:
        if not (isinstance(window, (tuple, list)) and len(window) == 2 and all(isinstance(w, int) for w in window)):
            raise ValueError(f"window is {window!r}: (left, right) keys a query sees before and after it, -1 for no bound")
        # -1: no bound (FlashAttention's convention); more keys than there are is the same.
        rows = q.shape[0] if layout == _PACKED else _bhsd(q, layout).shape[2]
        left, right = (float(keys + rows if w < 0 else w) for w in window)
    if sorted(asked) == ["softcap", "window"]:
        return "sliding_window_softcap_attention", [float(softcap), left, right], []
    if len(asked) > 1:
        raise ValueError(
            f"{' and '.join(asked)} together: the library has softcap with window, and each option alone; "
            "write the combination as a kernel in FlashCore's DSL")
    if softcap is not None:
        return "softcap_attention", [float(softcap)], []
    if window is not None:
        return "sliding_window_attention", [left, right], []
    if alibi:
        return "alibi_attention", [], []
    if prefix is not None:
        return "prefix_lm_attention", [float(prefix)], []
    if bias is not None:
        return "bias_attention", [], [bias]
    return "document_attention", [], [document]


def _lse_shape(q, layout):
    """The log-sum-exp's shape: [B, H, S], or [H, TOTAL_Q] for a packed batch."""
    if layout == _PACKED:
        return (q.shape[1], q.shape[0])
    return tuple(_bhsd(q, layout).shape[:3])


def _offsets(name: str, cu: torch.Tensor, device) -> tuple:
    """cu_seqlens as FlashCore checks them (host values, read back: one synchronization) and as the
    kernel reads them (the tensor itself)."""
    if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.device != device:
        raise ValueError(f"{name} must be a 1-D torch.int32 tensor on {device} (B + 1 cumulative lengths from 0)")
    cu = cu.contiguous()
    return ([int(x) for x in cu.tolist()], _spec(name, cu))


def _device_and_stream(t: torch.Tensor) -> tuple:
    """The CUDA device ordinal of `t` and the handle of torch's current stream there."""
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(t.device).cuda_stream


def _launch(q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables, cu_q=None, cu_k=None):
    """The op's CUDA implementation: O allocated like q, the kernel enqueued on the current stream."""
    o = torch.empty_like(q)
    lse = torch.empty(_lse_shape(q, layout) if return_lse else (0,), device=q.device, dtype=torch.float32)
    offsets = None
    if layout == _PACKED:
        offsets = [_offsets("cu_seqlens_q", cu_q, q.device), _offsets("cu_seqlens_k", cu_k, q.device)]
    global _last_config
    _last_config = _native.attention(
        kernel, *_device_and_stream(q),
        _spec("q", _bhsd(q, layout)), _spec("k", _bhsd(k, layout)), _spec("v", _bhsd(v, layout)),
        _spec("o", _bhsd(o, layout)), _spec("lse", lse) if return_lse else None,
        [float(x) for x in scalars], [_table_spec(t, q.device) for t in tables], offsets, causal, scale, target)
    return o, lse


def _forward(q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables, cu_q=None, cu_k=None):
    """(O, LSE): eager CUDA calls run the op's implementation directly, without the ~80 us of
    torch.library's Python dispatch; traced code and other devices go through the registered op."""
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        return _launch(q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables, cu_q, cu_k)
    return torch.ops.flashcore.attention(q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables,
                                         cu_q, cu_k)


def _table_spec(t: torch.Tensor, device) -> tuple:
    if t.device != device:
        raise ValueError(f"a {list(t.shape)} table is on {t.device} and q on {device}: every tensor must be on one device")
    if t.dtype not in (torch.float32, torch.int32):
        raise ValueError(f"a {list(t.shape)} table is {t.dtype}: bias is torch.float32, document ids torch.int32")
    return _spec("table", t)


def _not_cuda(q):
    return ValueError(
        f"flashcore.attention runs on CUDA tensors and q is on {q.device}: move the tensors to the GPU "
        "(q.cuda()), or run FlashCore's simulator on small CPU tensors with flashcore.simulate.attention(...)")


@torch.library.custom_op("flashcore::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: Optional[float], layout: str,
    return_lse: bool, target: Optional[str], kernel: str, scalars: List[float], tables: List[torch.Tensor],
    cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_inputs(q, k, v, packed=layout == _PACKED)
    if q.device.type != "cuda":
        raise _not_cuda(q)
    return _launch(q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables, cu_seqlens_q,
                   cu_seqlens_k)


@_attention_op.register_fake
def _attention_fake(q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables, cu_seqlens_q,
                    cu_seqlens_k):
    return torch.empty_like(q), q.new_empty(_lse_shape(q, layout) if return_lse else (0,), dtype=torch.float32)


def _backward_launch(d_out, q, k, v, o, lse, causal, scale, layout, target):
    """The backward op's CUDA implementation: dQ, dK, dV allocated like q, k, v."""
    # The kernels read dO with a contiguous last dimension and 16-byte aligned rows; a gradient
    # torch made by broadcasting (stride 0) is copied.
    if d_out.stride(-1) != 1 or d_out.data_ptr() % 16 or any(st % 8 for st in d_out.stride()[:-1]):
        d_out = d_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty(_lse_shape(q, layout), device=q.device, dtype=torch.float32)
    bhsd = {name: _spec(name, _bhsd(t, layout)) for name, t in
            (("q", q), ("k", k), ("v", v), ("o", o), ("d_out", d_out), ("dq", dq), ("dk", dk), ("dv", dv))}
    _native.attention_backward(
        *_device_and_stream(q), bhsd["q"], bhsd["k"], bhsd["v"], bhsd["o"], _spec("lse", lse), bhsd["d_out"],
        bhsd["dq"], bhsd["dk"], bhsd["dv"], _spec("delta", delta), causal, scale, target)
    return dq, dk, dv


@torch.library.custom_op("flashcore::attention_backward", mutates_args=())
def _attention_backward_op(
    d_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    causal: bool, scale: Optional[float], layout: str, target: Optional[str],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.device.type != "cuda":
        raise _not_cuda(q)
    return _backward_launch(d_out, q, k, v, o, lse, causal, scale, layout, target)


@_attention_backward_op.register_fake
def _attention_backward_fake(d_out, q, k, v, o, lse, causal, scale, layout, target):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables, _, _ = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.options = (causal, scale, layout, target, kernel, return_lse)
    ctx.extras = (len(scalars), len(tables))


def _backward(ctx, grad_o, grad_lse):
    causal, scale, layout, target, kernel, return_lse = ctx.options
    if layout == _PACKED:
        raise ValueError("no backward through the package for a variable-length batch (the backward kernels take "
                         "no sequence offsets)")
    if kernel != "attention" or not return_lse:
        # flashcore.attention refuses these before the forward when gradients are wanted; a
        # direct call of the op reaches here.
        raise ValueError(f"no backward through the package for {kernel}" if kernel != "attention" else
                         "the backward needs the forward's log-sum-exp: call the op with return_lse=True")
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.flashcore.attention_backward(grad_o, q, k, v, o, lse, causal, scale, layout, target)
    # One gradient per input, lists for the list inputs (none flows to any of them).
    n_scalars, n_tables = ctx.extras
    return dq, dk, dv, None, None, None, None, None, None, [None] * n_scalars, [None] * n_tables, None, None


torch.library.register_autograd("flashcore::attention", _backward, setup_context=_setup_context)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: Optional[float] = None,
    return_lse: bool = False,
    layout: str = "bhsd",
    target: Optional[str] = None,
    *,
    softcap: Optional[float] = None,
    window: Optional[Tuple[int, int]] = None,
    alibi: bool = False,
    prefix: Optional[int] = None,
    bias: Optional[torch.Tensor] = None,
    document: Optional[torch.Tensor] = None,
):
    """softmax(Q·Kᵀ·scale)·V on CUDA tensors, FlashCore's fused kernel.

    q: [B, H, S, D]; k, v: [B, HKV, SK, D] (H a multiple of HKV: grouped-query attention), or
    [B, S, H, D] / [B, SK, HKV, D] with layout="bshd"; float16 or bfloat16; D in 32, 64, 96, 128,
    256; any strides with the last dimension contiguous and 16-byte aligned rows. causal masks
    aligned to the bottom right when S != SK (as FlashAttention's). scale defaults to 1/sqrt(D).
    Returns O in q's layout and, with return_lse=True, (O, LSE) where LSE is the float32
    [B, H, S] log-sum-exp of each row's scaled scores (+inf for a row that sees no key).
    target forces the PTX target ("sm_89" or "sm_90a"); by default the tuning table's.
    Differentiable (plain attention, causal or not, GQA, both layouts): inputs that need
    gradients get dQ, dK, dV from FlashCore's backward kernels.

    The variants (each a kernel of FlashCore's library, `flashcore.kernels()`):
    softcap=cap: scores become cap·tanh(score/cap) (Gemma 2); window=(left, right): query i sees
    keys i-left ..= i+right (FlashAttention's window_size, -1 for no bound; with softcap, Gemma 2's
    local layers); alibi=True: ALiBi's linear bias by distance, head h's slope 2^(-8(h+1)/H);
    prefix=n: the first n keys seen by every query, the rest causally (prefix LM);
    bias: a float32 [B, H, S, SK] tensor added to the scores; document: int32 [B, S] document
    ids of a packed batch, a query seeing only its document's keys (self-attention, SK = S).
    """
    _check_layout(layout)
    _check_inputs(q, k, v)
    kernel, scalars, tables = _variant(q, k, softcap, window, alibi, prefix, bias, document, layout)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        # Training: through the op, whose autograd formula runs FlashCore's backward kernels
        # on the log-sum-exp the forward saves.
        if kernel != "attention":
            raise ValueError(
                f"{kernel} has no backward through the package yet (plain attention, causal or not, has): "
                "call it under torch.no_grad(), or on detached tensors")
        if return_lse:
            raise ValueError("gradients through the returned log-sum-exp are not computed: with inputs that "
                             "need gradients, call without return_lse=True (or detach the inputs)")
        o, _ = torch.ops.flashcore.attention(q, k, v, causal, scale, layout, True, target, kernel, scalars, tables,
                                             None, None)
        return o
    o, lse = _forward(q, k, v, causal, scale, layout, return_lse, target, kernel, scalars, tables)
    return (o, lse) if return_lse else o


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool = False,
    scale: Optional[float] = None,
    return_lse: bool = False,
    target: Optional[str] = None,
    **variant,
):
    """`attention` over a variable-length batch, FlashAttention's varlen layout: q [TOTAL_Q, H, D]
    and k, v [TOTAL_K, HKV, D] pack the sequences, sequence b being rows
    cu_seqlens_q[b] .. cu_seqlens_q[b + 1] of q (cu_seqlens_k likewise for k and v); the offsets
    are int32 CUDA tensors of B + 1 cumulative lengths from 0. FlashCore reads them back to check
    every sequence lies inside the packed tensors (one synchronization a call). Returns O
    [TOTAL_Q, H, D] and, with return_lse=True, the float32 log-sum-exp [H, TOTAL_Q]. The variants'
    keyword arguments as `attention`'s (tables by token: their S axis is the packed one)."""
    _check_inputs(q, k, v, packed=True)
    kernel, scalars, tables = _variant(q, k, layout=_PACKED, **_variant_options(variant))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("attention_varlen has no backward through the package (the backward kernels take no sequence "
                         "offsets): call it under torch.no_grad(), or on detached tensors")
    o, lse = _forward(q, k, v, causal, scale, _PACKED, return_lse, target, kernel, scalars, tables, cu_seqlens_q,
                      cu_seqlens_k)
    return (o, lse) if return_lse else o


def _variant_options(options: dict) -> dict:
    """`options` if each names a variant option of `_variant` (a TypeError naming them, else)."""
    known = ("softcap", "window", "alibi", "prefix", "bias", "document")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}: the variants are {list(known)}")
    return options


from . import simulate  # noqa: E402  (needs _variant and friends above)
