"""Argmax over the last dimension of ``[B, V]`` logits, in two stages: the greedy sampler's
token pick.

Exactly ``torch.argmax(logits, dim=-1)``: values are widened to float32 (exact for bf16 and
fp16, so the same index wins), the first (smallest) index of the maximum wins a tie, and
NaN ranks above every number, +inf included, as it does in torch (the first NaN of a row is
its argmax). -0.0 and +0.0 compare equal, as in torch.

Stage 1, grid ``(B, cdiv(V, BLOCK))``: a program reads one ``BLOCK``-wide chunk of a row and
writes the chunk's maximum and the first index of it into ``[B, chunks]`` buffers. Stage 2,
grid ``(B,)``: a program reduces a row's partials the same way; chunks are in index order,
so the smallest index among the chunks holding the maximum is the row's answer. ``BLOCK``
(``block_for``) is 4096 at every batch size (narrower only for a shorter row): on an H200 it
was the fastest or within 2 % of it at batch 1, 64 and 256 for 128k and 152k vocabularies
(``benchmarks/kernels_argmax.py --sweep``), and one width means one compiled variant, so no
JIT compile happens in the middle of serving. No host synchronization: the launch is
capturable in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infer_core.kernels.pdl import use_pdl, wait_for_prior

BLOCK = 4096
MIN_BLOCK, MAX_BLOCK = 1024, 8192  # the range benchmarks/kernels_argmax.py --sweep times


@triton.jit
def first_max(v, idx, valid, NO_INDEX: tl.constexpr):
    """(max, first index of it) of ``v`` where ``valid``, NaN above everything."""
    is_nan = (v != v) & valid
    has_nan = tl.max(is_nan.to(tl.int32), axis=0) > 0
    m = tl.max(tl.where(valid & ~is_nan, v, float("-inf")), axis=0)
    hit = tl.where(has_nan, is_nan, valid & (v == m))
    first = tl.min(tl.where(hit, idx, NO_INDEX), axis=0)
    return tl.where(has_nan, float("nan"), m), first


@triton.jit
def _argmax_chunk_kernel(x_ptr, part_val_ptr, part_idx_ptr, stride_x, n_cols, n_chunks, BLOCK: tl.constexpr,
                         PDL: tl.constexpr):
    if PDL:
        wait_for_prior()
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    valid = cols < n_cols
    v = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=float("-inf")).to(tl.float32)
    m, first = first_max(v, cols, valid, 2147483647)
    tl.store(part_val_ptr + row * n_chunks + chunk, m)
    tl.store(part_idx_ptr + row * n_chunks + chunk, first)


@triton.jit
def _argmax_reduce_kernel(part_val_ptr, part_idx_ptr, out_ptr, n_chunks, BLOCK_C: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        wait_for_prior()
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    valid = c < n_chunks
    v = tl.load(part_val_ptr + row * n_chunks + c, mask=valid, other=float("-inf"))
    idx = tl.load(part_idx_ptr + row * n_chunks + c, mask=valid, other=2147483647)
    _, first = first_max(v, idx, valid, 2147483647)
    tl.store(out_ptr + row, first.to(tl.int64))


def block_for(rows: int, n_cols: int) -> int:
    """The chunk width: ``BLOCK``, no wider than the row needs (``rows`` does not matter:
    measured, see the module docstring)."""
    return min(BLOCK, max(triton.next_power_of_2(n_cols), 16))


def argmax(logits: torch.Tensor, block: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.argmax(logits, dim=-1)`` of a 2-D float tensor (bf16, fp16 or fp32; any row
    stride): int64 ``[B]``, written into ``out`` when given (a contiguous int64 ``[B]``, e.g.
    a view of a buffer a CUDA graph reads later). ``block`` overrides the chunk width (a power
    of two)."""
    assert logits.dim() == 2, logits.shape
    assert logits.dtype in (torch.bfloat16, torch.float16, torch.float32), logits.dtype
    rows, n_cols = logits.shape
    assert n_cols > 0, "argmax of an empty row"
    assert n_cols < 2**31, n_cols
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if out is None:
        out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    elif out.shape != (rows,) or out.dtype != torch.int64 or not out.is_contiguous() or out.device != logits.device:
        raise ValueError(f"argmax(out=...) takes a contiguous int64 tensor of shape ({rows},) on {logits.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    if rows == 0:
        return out
    block = block or block_for(rows, n_cols)
    assert block & (block - 1) == 0, block
    chunks = triton.cdiv(n_cols, block)
    part_val = torch.empty(rows, chunks, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(rows, chunks, dtype=torch.int32, device=logits.device)
    pdl = use_pdl(logits)
    _argmax_chunk_kernel[(rows, chunks)](
        logits, part_val, part_idx, logits.stride(0), n_cols, chunks,
        BLOCK=block, PDL=pdl, num_warps=min(max(block // 512, 4), 8), launch_pdl=pdl,
    )
    _argmax_reduce_kernel[(rows,)](
        part_val, part_idx, out, chunks,
        BLOCK_C=max(triton.next_power_of_2(chunks), 16), PDL=pdl, num_warps=1 if chunks <= 256 else 4,
        launch_pdl=pdl,
    )
    return out


def argmax_ref(logits: torch.Tensor) -> torch.Tensor:
    return torch.argmax(logits, dim=-1)
