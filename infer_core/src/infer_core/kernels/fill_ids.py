"""A decode step's token ids that are still on the device, filled in place: async scheduling's
placeholders, inside the decode CUDA graph.

With async scheduling a request's next input token is the one the step in flight samples:
its id is not on the host when the next step's inputs are staged. The host stages a source
row per input row instead (``src``: the row of the last step's sampled ids, or -1 for an id
it staged itself), and this kernel copies ``sampled[src[i]]`` over ``ids[i]`` where ``src[i]
>= 0``. One launch, captured in the decode graph (before it, the same fill took three torch
launches outside the graph: ``index_select``, a cast and ``index_put_``).

Exactly ``ids[src >= 0] = sampled[src[src >= 0]]`` (:func:`fill_ids_ref`), the value cast to
``ids``' dtype. No host synchronization: capturable in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infer_core.kernels.pdl import use_pdl, wait_for_prior

BLOCK = 256


@triton.jit
def _fill_ids_kernel(ids_ptr, src_ptr, sampled_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        wait_for_prior()
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < n
    src = tl.load(src_ptr + rows, mask=valid, other=-1)
    take = valid & (src >= 0)
    value = tl.load(sampled_ptr + src, mask=take, other=0)
    tl.store(ids_ptr + rows, value.to(ids_ptr.dtype.element_ty), mask=take)


def fill_ids(ids: torch.Tensor, src: torch.Tensor, sampled: torch.Tensor) -> None:
    """``ids[i] = sampled[src[i]]`` where ``src[i] >= 0``, in place (1-D tensors on one device;
    ``src`` int32 / int64 rows of ``sampled``, which must hold them)."""
    if ids.dim() != 1 or src.shape != ids.shape or sampled.dim() != 1:
        raise ValueError(f"fill_ids takes 1-D ids and src of one length and 1-D sampled ids, got "
                         f"{tuple(ids.shape)}, {tuple(src.shape)}, {tuple(sampled.shape)}")
    n = ids.numel()
    if n == 0:
        return
    pdl = use_pdl(ids)
    _fill_ids_kernel[(triton.cdiv(n, BLOCK),)](ids, src, sampled, n, BLOCK=BLOCK, PDL=pdl, num_warps=1,
                                               launch_pdl=pdl)


def fill_ids_ref(ids: torch.Tensor, src: torch.Tensor, sampled: torch.Tensor) -> None:
    take = src >= 0
    ids[take] = sampled[src[take].long()].to(ids.dtype)
