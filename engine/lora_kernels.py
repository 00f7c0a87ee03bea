"""BGMV in Triton: each decode row applies its own adapter's LoRA from the stacked buffers, in two kernels.

Punica's "batched gather matrix-vector" (S-LoRA's and vLLM's decode kernels follow it): a decode step has one
token per row, so each row's LoRA is two matrix-vector products against its own adapter's weights, which the
kernel reads straight from the stacked buffers at the row's entry (no per-row copy as the torch gather makes,
no work for entries a row does not use as the dense torch kernel spends):

* **shrink**, one program per row: ``v[t] = A[e_t] @ x[t]`` (``A`` is ``[entries, rank, in]``), over ``in`` in
  blocks, accumulated in fp32;
* **expand**, one program per row and block of outputs: ``y[t, n] += sum_r v[t, r] * B[e_t, r, n]`` (``B`` is
  ``[entries, rank, out]``, scaling folded in), added in place into the base layer's output.

A row on entry 0 (the bare base) does nothing in either kernel. The index, the inputs and the buffers are all
read on the device, so the kernels run inside a captured decode step (``engine/graphs.py``). Prefill keeps the
torch gather: its many tokens per row amortise the copy (an SGMV kernel, tiles shared by a row's tokens, would
be the next step).

Triton compiles for CUDA; with ``TRITON_INTERPRET=1`` set before Triton is first imported (``triton.language``'s
own functions are decorated then), Triton's interpreter runs the very same kernels on CPU tensors, which is how
the CPU tests check them against the torch path (in a process of their own).
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["bgmv_unavailable", "lora_bgmv"]

_KERNELS: dict[bool, tuple[Any, Any]] = {}


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def bgmv_unavailable(device: torch.device) -> str | None:
    """Why the BGMV kernels cannot run on ``device`` (None: they can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    if device.type != "cuda" and not _interpret():
        return f"it needs a CUDA device, not {device.type} (or TRITON_INTERPRET=1 to run Triton's interpreter)"
    return None


def _kernels() -> tuple[Any, Any]:
    """The two kernels, built on first use (the interpreter flag is read when Triton decorates them)."""
    key = _interpret()
    if key in _KERNELS:
        return _KERNELS[key]
    import triton
    import triton.language as tl

    @triton.jit
    def shrink(x_ptr, a_ptr, index_ptr, v_ptr, in_features, rank,
               stride_xt, stride_ae, stride_ar, stride_vt,
               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        t = tl.program_id(0)
        entry = tl.load(index_ptr + t)
        if entry != 0:
            r = tl.arange(0, BLOCK_R)
            acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
            for k0 in range(0, in_features, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(x_ptr + t * stride_xt + k, mask=k < in_features, other=0.0).to(tl.float32)
                a = tl.load(a_ptr + entry * stride_ae + r[:, None] * stride_ar + k[None, :],
                            mask=(r[:, None] < rank) & (k[None, :] < in_features), other=0.0).to(tl.float32)
                acc += tl.sum(a * x[None, :], axis=1)
            tl.store(v_ptr + t * stride_vt + r, acc, mask=r < rank)

    @triton.jit
    def expand(v_ptr, b_ptr, index_ptr, y_ptr, out_features, rank,
               stride_vt, stride_be, stride_br, stride_yt,
               BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
        t = tl.program_id(0)
        entry = tl.load(index_ptr + t)
        if entry != 0:
            r = tl.arange(0, BLOCK_R)
            n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
            v = tl.load(v_ptr + t * stride_vt + r, mask=r < rank, other=0.0)
            b = tl.load(b_ptr + entry * stride_be + r[:, None] * stride_br + n[None, :],
                        mask=(r[:, None] < rank) & (n[None, :] < out_features), other=0.0).to(tl.float32)
            y_at = y_ptr + t * stride_yt + n
            y = tl.load(y_at, mask=n < out_features, other=0.0).to(tl.float32)
            tl.store(y_at, (y + tl.sum(v[:, None] * b, axis=0)).to(y_ptr.dtype.element_ty), mask=n < out_features)

    _KERNELS[key] = (shrink, expand)
    return _KERNELS[key]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def lora_bgmv(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    """Add each row's LoRA delta into ``out`` in place: ``out[t] += (x[t] @ a[index[t]]^T) @ b[index[t]]``.

    Args:
        x: ``[rows, in]`` (rows may be strided; each row contiguous).
        a: ``[entries, rank, in]``, contiguous; entry 0 is the bare base (skipped).
        b: ``[entries, rank, out]``, contiguous, scaling folded in.
        index: ``[rows]`` integer entries, on the device.
        out: ``[rows, out]`` (each row contiguous): the base layer's output.
    """
    rows, in_features = x.shape
    _, rank, out_features = b.shape
    if not (a.is_contiguous() and b.is_contiguous() and x.stride(1) == 1 and out.stride(1) == 1):
        raise ValueError("lora_bgmv needs contiguous buffers and rows")
    shrink, expand = _kernels()
    v = torch.empty((rows, rank), dtype=torch.float32, device=x.device)
    block_r = max(16, _pow2(rank))
    shrink[(rows,)](x, a, index, v, in_features, rank, x.stride(0), a.stride(0), a.stride(1), v.stride(0),
                    BLOCK_R=block_r, BLOCK_K=min(256, max(16, _pow2(in_features))))
    block_n = min(128, max(16, _pow2(out_features)))
    expand[(rows, (out_features + block_n - 1) // block_n)](
        v, b, index, out, out_features, rank, v.stride(0), b.stride(0), b.stride(1), out.stride(0),
        BLOCK_R=block_r, BLOCK_N=block_n)
