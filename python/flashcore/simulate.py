"""FlashCore's attention in its simulator, on CPU tensors: the same generated PTX that runs on the
GPU, interpreted lane by lane on the CPU (small shapes only: a 2x4x128x64 problem takes about a
second). How the binding is tested on machines without a GPU.

    o = flashcore.simulate.attention(q, k, v, causal=True)        # q, k, v: CPU, float16/bfloat16
"""

from typing import Optional, Tuple

import torch

from . import _native
from . import _DTYPES, _PACKED, _bhsd, _check_inputs, _check_layout, _variant, _variant_options

__all__ = ["attention", "attention_varlen", "attention_backward"]


def _storage_bytes(t: torch.Tensor, word) -> bytes:
    storage = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())
    return storage.view(word).numpy().tobytes()


def _host(name: str, t: torch.Tensor) -> tuple:
    """The tensor's whole storage as bytes, its offset, shape and strides: the view as it is."""
    if t.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: element type is {t.dtype}; attention takes torch.float16 or torch.bfloat16")
    return (_storage_bytes(t, torch.int16), t.storage_offset(), list(t.shape), list(t.stride()))


def _from_bytes(raw: bytes, dtype, shape) -> torch.Tensor:
    """A tensor of `shape` from its row-major 16-bit elements (none for an empty shape)."""
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.int16).view(dtype).reshape(shape)


def _host32(t: torch.Tensor) -> tuple:
    """A table (or the log-sum-exp) as `_host` gives a tensor, with its element type (f32 or i32)."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.int32):
        raise ValueError(f"a {list(t.shape)} table is {t.dtype} on {t.device}: the simulator takes CPU tables, "
                         "bias torch.float32, document ids torch.int32")
    return (_storage_bytes(t, torch.int32), t.storage_offset(), list(t.shape), list(t.stride()), _DTYPES[t.dtype])


def _in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A row-major [B, H, S, D] result in `layout`, contiguous."""
    return t.transpose(1, 2).contiguous() if layout == "bshd" else t


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
    """`flashcore.attention` run in FlashCore's simulator on CPU tensors (same arguments, variants
    and results; target defaults to sm_89)."""
    _check_layout(layout)
    _check_inputs(q, k, v)
    if q.device.type != "cpu":
        raise ValueError(f"the simulator takes CPU tensors and q is on {q.device}: use flashcore.attention on the GPU")
    qh = _bhsd(q, layout)
    kernel, scalars, tables = _variant(q, k, softcap, window, alibi, prefix, bias, document, layout)
    raw, lse = _native.simulate_attention(
        kernel, _DTYPES.get(q.dtype, str(q.dtype)), _host("q", qh), _host("k", _bhsd(k, layout)),
        _host("v", _bhsd(v, layout)), [float(x) for x in scalars], [_host32(t) for t in tables], None, causal, scale,
        target)
    b, h, s, d = qh.shape
    o = _in_layout(_from_bytes(raw, q.dtype, (b, h, s, d)), layout)
    lse = torch.tensor(lse, dtype=torch.float32).reshape(b, h, s)
    return (o, lse) if return_lse else o


def attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    d_out: torch.Tensor,
    causal: bool = False,
    scale: Optional[float] = None,
    layout: str = "bhsd",
    target: Optional[str] = None,
):
    """The backward of `attention` in FlashCore's simulator, the kernels the package's autograd
    runs on the GPU: from the forward's inputs, its output `o` and log-sum-exp `lse` (from
    `attention(..., return_lse=True)`) and the output's gradient `d_out`, returns (dQ, dK, dV)
    shaped as q, k and v."""
    _check_layout(layout)
    _check_inputs(q, k, v)
    if q.device.type != "cpu":
        raise ValueError(f"the simulator takes CPU tensors and q is on {q.device}")
    qh, kh = _bhsd(q, layout), _bhsd(k, layout)
    raw = _native.simulate_attention_backward(
        _DTYPES.get(q.dtype, str(q.dtype)), _host("q", qh), _host("k", kh), _host("v", _bhsd(v, layout)),
        _host("o", _bhsd(o, layout)), _host("d_out", _bhsd(d_out, layout)), _host32(lse.float()), causal, scale,
        target)
    return tuple(_in_layout(_from_bytes(data, q.dtype, shape), layout)
                 for data, shape in zip(raw, (qh.shape, kh.shape, kh.shape)))


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
    """`flashcore.attention_varlen` in FlashCore's simulator on CPU tensors (cu_seqlens: CPU int32
    tensors)."""
    _check_inputs(q, k, v, packed=True)
    if q.device.type != "cpu":
        raise ValueError(f"the simulator takes CPU tensors and q is on {q.device}: use flashcore.attention_varlen")
    kernel, scalars, tables = _variant(q, k, layout=_PACKED, **_variant_options(variant))
    offsets = [[int(x) for x in torch.as_tensor(cu).tolist()] for cu in (cu_seqlens_q, cu_seqlens_k)]
    raw, lse = _native.simulate_attention(
        kernel, _DTYPES.get(q.dtype, str(q.dtype)), _host("q", q), _host("k", k), _host("v", v),
        [float(x) for x in scalars], [_host32(t) for t in tables], offsets, causal, scale, target)
    total, h, d = q.shape
    o = _from_bytes(raw, q.dtype, (total, h, d))
    lse = torch.tensor(lse, dtype=torch.float32).reshape(h, total)
    return (o, lse) if return_lse else o
