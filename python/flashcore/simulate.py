"""FlashCore's attention in its simulator, on CPU tensors: the same generated PTX that runs on the
GPU, interpreted lane by lane on the CPU (small shapes only: a 2x4x128x64 problem takes about a
second). How the binding is tested on machines without a GPU.

    o = flashcore.simulate.attention(q, k, v, causal=True)        # q, k, v: CPU, float16/bfloat16
"""

from typing import Optional

import torch

from . import _native
from . import _DTYPES, _bhsd, _check_inputs, _check_layout

__all__ = ["attention"]


def _host(name: str, t: torch.Tensor) -> tuple:
    """The tensor's whole storage as bytes, its offset, shape and strides: the view as it is."""
    if t.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: element type is {t.dtype}; attention takes torch.float16 or torch.bfloat16")
    storage = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())
    raw = storage.view(torch.int16).numpy().tobytes()
    return (raw, t.storage_offset(), list(t.shape), list(t.stride()))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: Optional[float] = None,
    return_lse: bool = False,
    layout: str = "bhsd",
    target: Optional[str] = None,
):
    """`flashcore.attention` run in FlashCore's simulator on CPU tensors (same arguments and
    results; target defaults to sm_89)."""
    _check_layout(layout)
    _check_inputs(q, k, v)
    if q.device.type != "cpu":
        raise ValueError(f"the simulator takes CPU tensors and q is on {q.device}: use flashcore.attention on the GPU")
    qh = _bhsd(q, layout)
    raw, lse = _native.simulate_attention(
        _DTYPES[q.dtype] if q.dtype in _DTYPES else str(q.dtype), _host("q", qh), _host("k", _bhsd(k, layout)),
        _host("v", _bhsd(v, layout)), causal, scale, target)
    b, h, s, d = qh.shape
    o = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(q.dtype).reshape(b, h, s, d)
    o = o.transpose(1, 2).contiguous() if layout == "bshd" else o
    lse = torch.tensor(lse, dtype=torch.float32).reshape(b, h, s)
    return (o, lse) if return_lse else o
