"""The reduction stage of split-KV attention: combine each row's per-split partial results.

Split ``s`` of a query row leaves an unnormalized output ``acc_s [D]``, its running maximum
``m_s`` (log2 units) and its sum of exponentials ``l_s``. The row's output is
``sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s`` with ``M = max_s m_s``; splits that saw
no visible key carry ``m_s = -inf`` and weigh nothing; a row no split saw any key of (a
padding row of a CUDA-graph step) gets 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infer_core.kernels.pdl import use_pdl, wait_for_prior


@triton.jit
def merge_splits(m, sums, acc):
    """One row's output from its splits' running maxima ``m [S]``, sums ``sums [S]`` and
    unnormalized outputs ``acc [S, D]`` (float32); a row no split saw a key of gets 0. Shared
    with :mod:`~infer_core.kernels.decode_layer`."""
    top = tl.max(m, 0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - top))
    total = tl.sum(sums * w, 0)
    return tl.sum(acc * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)


@triton.jit
def _attention_reduce_kernel(
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
    stride_ot, stride_oh, num_heads, num_splits,
    SPLITS_POW2: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        wait_for_prior()
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_POW2)
    smask = splits < num_splits
    dims = tl.arange(0, BLOCK_D)
    base = (token * num_heads + head) * num_splits
    m = tl.load(part_max_ptr + base + splits, mask=smask, other=float("-inf"))
    sums = tl.load(part_sum_ptr + base + splits, mask=smask, other=0.0)
    acc = tl.load(part_acc_ptr + (base + splits)[:, None] * BLOCK_D + dims[None, :],
                  mask=smask[:, None], other=0.0)
    out = merge_splits(m, sums, acc)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + dims,
             out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


def attention_reduce(
    out: torch.Tensor, part_acc: torch.Tensor, part_max: torch.Tensor, part_sum: torch.Tensor
) -> None:
    """``part_acc [T, H, S, BLOCK_D]``, ``part_max``/``part_sum [T, H, S]`` → ``out [T, H, D]``."""
    tokens, heads, splits, block_d = part_acc.shape
    assert out.shape[:2] == (tokens, heads) and out.stride(-1) == 1
    assert part_max.shape == part_sum.shape == (tokens, heads, splits)
    if tokens == 0:
        return
    pdl = use_pdl(out)
    _attention_reduce_kernel[(tokens, heads)](
        out, part_acc, part_max, part_sum, out.stride(0), out.stride(1), heads, splits,
        SPLITS_POW2=triton.next_power_of_2(splits),
        HEAD_DIM=out.shape[-1], BLOCK_D=block_d, PDL=pdl, num_warps=1 if block_d <= 64 else 2,
        launch_pdl=pdl,
    )


def attention_reduce_ref(
    out: torch.Tensor, part_acc: torch.Tensor, part_max: torch.Tensor, part_sum: torch.Tensor
) -> None:
    top = part_max.max(dim=-1, keepdim=True).values
    w = torch.where(part_max == float("-inf"), 0.0, torch.exp2(part_max - top))
    num = (part_acc * w[..., None]).sum(dim=2)[..., : out.shape[-1]]
    total = (part_sum * w).sum(dim=-1, keepdim=True)
    out.copy_(num / torch.where(total > 0, total, 1.0))  # a row with no key at all (padding): 0
