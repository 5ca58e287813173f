"""The LM head of a one-row decode step and its greedy pick in one launch: ``logits = x @ W.T``
written where the caller wants them, and ``argmax(logits)`` beside them.

At batch 1 the head is a GEMV over the whole vocabulary (Qwen3-0.6B: 151,936 x 1,024 bf16,
311 MB, the largest single read of the step). The usual path is cuBLAS, a copy of its output
into the engine's logits buffer and the two-stage argmax: four graph nodes after the final norm.
Here, by default (``choose_config``):

- a **persistent** grid (up to 4 programs per SM); program ``p`` streams a contiguous range of
  blocks of ``BLOCK_N`` weight rows through Triton's software pipeline (``num_stages`` tiles in
  flight in shared memory, ``evict_first``);
- each row's product is a float32 sum over ``K``, rounded once to the logits' dtype and stored;
- each row lane keeps its running maximum and the first row holding it, elementwise (no
  reduction inside the loop); after the loop one reduction gives the program's partial;
- the last program to finish (an acq_rel ticket) reduces the partials in program order and writes
  the int64 token id, then resets the ticket for the next launch (a CUDA graph replays it as is).

Two variants measured slower on the H200 were removed (code in commit ecae8fb): one program per
block with its weights requested before the PDL wait (117 µs: 9,496 tickets on one address), and
TMA weight tiles from a host tensor descriptor (no faster).

Exactly ``torch.argmax`` of the stored logits: the first index of the maximum, NaN above
everything (``kernels.argmax``'s rule). The logits equal ``(x.float() @ W.float().T)`` rounded
once, up to float32 summation order (:func:`lm_head_argmax_ref`). Measured on an H200
(``benchmarks/reports/lm-head-2026-12-03-h200/``): Qwen3-0.6B's head 83.4 against 87.5 µs for
cuBLAS + copy + argmax, Llama-3.2-1B's 128.6 against 136.3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from infer_core.kernels.argmax import first_max
from infer_core.kernels.device import num_sms
from infer_core.kernels.pdl import use_pdl, wait_for_prior
from infer_core.kernels.rms_norm import add_residual, inv_rms, normed

NO_INDEX = tl.constexpr(2147483647)
SHARED_BYTES = 192 * 1024  # the pipelined weight stages of one SM's programs (of 227 KB on Hopper)


@dataclass(frozen=True)
class LMHeadConfig:
    block_n: int  # weight rows per step of a program
    num_warps: int
    programs_per_sm: int  # the persistent grid: programs per SM (at least 1)
    num_stages: int = 3  # weight tiles in flight in each program (Triton's pipeliner)
    block_c: int = 1024  # partials the last program reduces per step
    # each program's first block requested before the PDL wait (the weights do not depend on the
    # launch before), outside the pipelined loop (W1 Qwen3-0.6B on an H200: 0.663 against 0.666 ms
    # per token; INFER_LM_HEAD_EARLY=0 turns it off)
    early: bool = True


def choose_config(vocab: int, hidden: int, element_size: int = 2) -> LMHeadConfig:
    """The persistent loop (the H200 sweep's fastest, ``benchmarks/kernels_lm_head.py``): blocks of
    8 rows, 3 stages in flight, as many programs per SM (up to 4) as 192 KB of shared memory
    holds stages for (Qwen3-0.6B's head: 4, Llama-3.2-1B's: 2), 8 warps from 4,096 columns.
    ``INFER_LM_HEAD_CONFIG="block_n,num_warps,programs_per_sm[,num_stages]"`` overrides it (sweeps);
    ``INFER_LM_HEAD_EARLY=0`` waits for the launch before until the first block is requested."""
    override = os.environ.get("INFER_LM_HEAD_CONFIG", "")
    if override:
        try:
            values = [int(v) for v in override.split(",")]
            if len(values) not in (3, 4) or min(values) < 1:
                raise ValueError(override)
            return LMHeadConfig(*values, early=_early())
        except ValueError as e:
            raise ValueError(f"INFER_LM_HEAD_CONFIG takes block_n,num_warps,programs_per_sm[,num_stages] "
                             f"(positive integers), got {override!r}") from e
    stage_bytes = triton.next_power_of_2(hidden) * element_size
    stages, block_n = 3, 8
    while block_n > 1 and stages * block_n * stage_bytes > SHARED_BYTES:
        block_n //= 2
    while stages > 1 and stages * block_n * stage_bytes > SHARED_BYTES:
        stages -= 1
    per_sm = max(1, min(4, SHARED_BYTES // (stages * block_n * stage_bytes)))
    warps = 8 if triton.next_power_of_2(hidden) >= 4096 else 4
    return LMHeadConfig(block_n, warps, programs_per_sm=per_sm, num_stages=stages, early=_early())


def _early() -> bool:
    """``LMHeadConfig.early`` of the launch's own configuration: on unless ``INFER_LM_HEAD_EARLY=0`` (A/B runs)."""
    return os.environ.get("INFER_LM_HEAD_EARLY", "1") != "0"


@triton.jit
def _take(m, f, best_v, best_i):
    """The running (max, first index) after a later block's (max, first index), elementwise: NaN
    first, a tie keeps the earlier index; nothing yet (``best_i`` NO_INDEX) takes the block's."""
    take = ((m != m) & (best_v == best_v)) | (m > best_v) | (best_i == NO_INDEX)
    return tl.where(take, m, best_v), tl.where(take, f, best_i)


@triton.jit
def _block_weights(w_ptr, b, V, stride_w, ks, k_ok, lanes, BLOCK_N: tl.constexpr):
    """Block ``b``'s weight rows ``[BLOCK_N, BLOCK_K]`` (zeros past the vocabulary), streamed."""
    rows = b * BLOCK_N + lanes
    return tl.load(w_ptr + rows[:, None].to(tl.int64) * stride_w + ks[None, :],
                   mask=(rows < V)[:, None] & k_ok[None, :], other=0.0, eviction_policy="evict_first")


@triton.jit
def _block_step(w, x, b, V, logits_ptr, lanes, lane_v, lane_i, BLOCK_N: tl.constexpr):
    """One block's logits (float32 products rounded once, stored) folded into the row lanes'
    running (max, first row)."""
    rows = b * BLOCK_N + lanes
    row_ok = rows < V
    y = tl.sum(w.to(tl.float32) * x[None, :], axis=1).to(logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + rows, y, mask=row_ok)
    return _take(tl.where(row_ok, y.to(tl.float32), float("-inf")), tl.where(row_ok, rows, NO_INDEX),
                 lane_v, lane_i)


@triton.jit
def _lm_head_argmax_kernel(x_ptr, w_ptr, logits_ptr, part_val_ptr, part_idx_ptr, ticket_ptr, ids_ptr,
                           res_ptr, norm_w_ptr, eps,
                           V, stride_w, blocks_per_program, K: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
                           PDL: tl.constexpr, EARLY: tl.constexpr, NORM: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    lanes = tl.arange(0, BLOCK_N)
    first_block = pid * blocks_per_program  # blocks [pid * per, (pid + 1) * per), through the pipeliner
    if EARLY:  # the first block before the PDL wait (weights: nothing the launch before writes)
        w0 = _block_weights(w_ptr, first_block, V, stride_w, ks, k_ok, lanes, BLOCK_N)
    if PDL:
        wait_for_prior()
    x = tl.load(x_ptr + ks, mask=k_ok, other=0.0)
    if NORM:  # the final norm of the stack, each program for itself: norm(x + residual), rounded as RMSNorm's
        x = add_residual(x, tl.load(res_ptr + ks, mask=k_ok, other=0.0))
        rstd = inv_rms(tl.sum(x.to(tl.float32) * x.to(tl.float32), axis=0), K, eps)
        x = normed(x, rstd, tl.load(norm_w_ptr + ks, mask=k_ok, other=0.0), False)
    x = x.to(tl.float32)
    # per row lane, the running (max, first row): no reduction inside the loop
    lane_v = tl.full([BLOCK_N], float("-inf"), tl.float32)
    lane_i = tl.full([BLOCK_N], NO_INDEX, tl.int32)
    start = first_block
    if EARLY:
        lane_v, lane_i = _block_step(w0, x, first_block, V, logits_ptr, lanes, lane_v, lane_i, BLOCK_N)
        start = first_block + 1
    for b in tl.range(start, first_block + blocks_per_program, num_stages=NUM_STAGES):
        w = _block_weights(w_ptr, b, V, stride_w, ks, k_ok, lanes, BLOCK_N)
        lane_v, lane_i = _block_step(w, x, b, V, logits_ptr, lanes, lane_v, lane_i, BLOCK_N)
    best_v, best_i = first_max(lane_v, lane_i, lane_i != NO_INDEX, NO_INDEX)
    tl.store(part_val_ptr + pid, best_v)
    tl.store(part_idx_ptr + pid, best_i)
    # the last program out reduces every program's partial (acq_rel: their stores are visible)
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == programs - 1:
        c = tl.arange(0, BLOCK_C)
        ok = c < programs
        v = tl.load(part_val_ptr + c, mask=ok, other=float("-inf"), cache_modifier=".cg")
        i = tl.load(part_idx_ptr + c, mask=ok, other=NO_INDEX, cache_modifier=".cg")
        best_v, best_i = first_max(v, i, ok, NO_INDEX)
        for c0 in range(BLOCK_C, programs, BLOCK_C):  # later chunks hold later rows
            ok = (c0 + c) < programs
            v = tl.load(part_val_ptr + c0 + c, mask=ok, other=float("-inf"), cache_modifier=".cg")
            i = tl.load(part_idx_ptr + c0 + c, mask=ok, other=NO_INDEX, cache_modifier=".cg")
            m, f = first_max(v, i, ok, NO_INDEX)
            best_v, best_i = _take(m, f, best_v, best_i)
        tl.store(ids_ptr, best_i.to(tl.int64))
        tl.store(ticket_ptr, 0)


def lm_head_argmax(x: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                   workspace: LMHeadWorkspace, config: LMHeadConfig | None = None,
                   norm: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> None:
    """``logits[0] = x[0] @ weight.T`` (rounded once to ``logits``' dtype) and
    ``ids[0] = argmax(logits[0])``. ``x`` ``[1, K]``; ``weight`` ``[V, K]`` (rows contiguous);
    ``logits`` ``[1, V]`` contiguous; ``ids`` int64 ``[1]``; all on one device.
    ``workspace`` holds the partials and the ticket (:class:`LMHeadWorkspace`). ``norm =
    (residual, norm_weight, eps)``: the stack's final norm folded in, ``x`` replaced by
    Llama / Qwen's ``RMSNorm(x + residual)`` (:mod:`~infer_core.kernels.rms_norm`'s
    arithmetic, computed by every program; one launch fewer per decode step)."""
    if x.dim() != 2 or x.shape[0] != 1 or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"lm_head_argmax takes one row [1, K] and a weight [V, K], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if norm is not None:
        residual, norm_weight, eps = norm
        if residual.shape != x.shape or residual.dtype != x.dtype or not residual.is_contiguous() \
                or norm_weight.shape != (x.shape[1],) or not norm_weight.is_contiguous():
            raise ValueError(f"lm_head_argmax's norm takes a contiguous residual like x {tuple(x.shape)} {x.dtype} "
                             f"and a contiguous weight of {x.shape[1]}, got {tuple(residual.shape)} {residual.dtype} "
                             f"and {tuple(norm_weight.shape)}")
    else:
        residual, norm_weight, eps = x, x, 0.0
    vocab, hidden = weight.shape
    if logits.shape != (1, vocab) or not logits.is_contiguous():
        raise ValueError(f"lm_head_argmax writes contiguous logits of shape (1, {vocab}), got {tuple(logits.shape)}")
    if ids.shape != (1,) or ids.dtype != torch.int64:
        raise ValueError(f"lm_head_argmax writes one int64 id, got {ids.dtype} {tuple(ids.shape)}")
    if weight.stride(1) != 1 or not x.is_contiguous():
        raise ValueError("lm_head_argmax needs a row-major weight and a contiguous input row")
    cfg = config or choose_config(vocab, hidden, weight.element_size())
    blocks = triton.cdiv(vocab, cfg.block_n)
    per_program = triton.cdiv(blocks, min(blocks, cfg.programs_per_sm * num_sms(x.device)))
    programs = triton.cdiv(blocks, per_program)  # every program has at least one block
    part_val, part_idx, ticket = workspace.buffers(programs, x.device)
    pdl = use_pdl(x)
    _lm_head_argmax_kernel[(programs,)](
        x, weight, logits, part_val, part_idx, ticket, ids, residual, norm_weight, eps,
        vocab, weight.stride(0), per_program,
        K=hidden, BLOCK_N=cfg.block_n, BLOCK_K=triton.next_power_of_2(hidden), BLOCK_C=cfg.block_c,
        NUM_STAGES=cfg.num_stages, PDL=pdl, EARLY=cfg.early, NORM=norm is not None, num_warps=cfg.num_warps,
        launch_pdl=pdl,
    )


class LMHeadWorkspace:
    """The launch's partials and its ticket (zero between launches: the last program resets it),
    allocated on first use and kept: a CUDA graph replays the same addresses."""

    def __init__(self) -> None:
        self._buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def buffers(self, programs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        held = self._buffers
        if held is None or held[0].numel() < programs or held[0].device != device:
            held = (torch.empty(programs, dtype=torch.float32, device=device),
                    torch.empty(programs, dtype=torch.int32, device=device),
                    torch.zeros(1, dtype=torch.int32, device=device))
            self._buffers = held
        return held


def lm_head_argmax_ref(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [1, V] in dtype, ids [1] int64)``: float32 product rounded once, then argmax."""
    logits = (x.float() @ weight.float().T).to(dtype)
    return logits, torch.argmax(logits, dim=-1)
