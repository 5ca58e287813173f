"""Linear projections at small M (decode, 1-16 rows): ``y[M, N] = x' @ weight.T``, streaming
the ``[N, K]`` weight once at (we hope) copy bandwidth, optionally with the gated activation
of :mod:`~infer_core.kernels.act_and_mul` or the (residual add and) RMSNorm of
:mod:`~infer_core.kernels.rms_norm` folded into the prologue, or the gated activation folded
into the epilogue (after a gate/up product).

The models' linear layers (:class:`infer_core.layers.linear.Linear`, ``MergedLinear``) take it
for one-row inputs with ``model.small_m_gemm`` (on by default on CUDA); the prologues only
with ``model.small_m_prologues`` (by default the RMSNorm one: faster end to end on an H200;
the activation one was slower, docs/kernels.md); the epilogue with
``model.small_m_gated_epilogue`` (gate_up_proj).

Why: at batch 1 on an H200, Llama-3.2-1B's projections under cuBLAS reach 1.4-2.1 TB/s for
the small ones (q/k/v fused, 12.6 MB in 5.9 µs) and down_proj pays a split-K reduction,
against a copy bandwidth of about 4.2 TB/s; the SiLU-and-mul before down_proj is its own
launch.

Design. ``weight`` is row-major ``[N, K]`` (the ``nn.Linear`` layout), so a program owns
``BLOCK_N`` whole rows of it and walks K in ``BLOCK_K`` tiles: every weight byte is read by
exactly one program, once (``evict_first``), while the few ``x`` rows (``evict_last``) are
re-read by every program out of L2. Grid ``(cdiv(N, BLOCK_N), SPLIT_K, cdiv(M, BLOCK_M))``.
Two inner products, a constexpr choice (``LaunchConfig.use_dot``):

- broadcast: ``acc[BLOCK_M, BLOCK_N] += sum_k x[:, None, k] * w[None, :, k]`` in float32, on
  the CUDA cores (``BLOCK_M = next_pow2(M)``): no padding at M = 1, and exact float32 FMAs;
- ``tl.dot``: a ``[16, BLOCK_K] x [BLOCK_K, BLOCK_N]`` MMA (M padded to 16 with masked rows,
  ``BLOCK_N >= 16``), accumulating in float32; float32 operands use ``input_precision="ieee"``
  (never TF32). Not for bf16 under the Triton interpreter, where ``tl.dot`` on bf16 is wrong.

``SPLIT_K > 1`` splits K into contiguous ranges of whole tiles; each split writes float32
partials ``[SPLIT_K, M, N]`` and a second launch (``_split_k_reduce_kernel``) adds them in
split order. No atomics anywhere: the result is bitwise the same run to run (the engine's
equivalence tests compare greedy tokens exactly). ``choose_config`` takes the configs the sweep
measured fastest on an H200 and splits only when fewer programs than SMs would run.

Fused activation (``act_and_mul="silu"`` or ``"gelu_tanh"``): ``x`` is ``[M, 2K]`` =
``[gate | up]``; each K tile of ``x' = act(gate) * up`` is computed in the prologue exactly as
``kernels.act_and_mul`` computes it (float32 activation rounded to the input dtype, times
``up`` in float32, rounded to the input dtype), so the fused result equals the unfused
``small_m_gemm(silu_and_mul(x), weight)`` up to the float32 summation order. Every N-block
program recomputes the activation of its K range (``M x K`` elements): cheap at M = 1, a cost
to measure at M = 16.

Fused RMSNorm (``norm=NormPrologue(weight, eps, gemma, residual)``): the decoder layer's
``fused_add_rms_norm`` before qkv_proj / gate_up_proj, in the same launch (at batch 1 the
step is launch-bound: two launches per layer fewer). ``x' = rms_norm(h)`` with
``h = x + residual`` rounded to the dtype (or ``h = x``); the result is ``(y, h)``, ``h`` the
new residual written by the ``pid_n == 0`` programs (each element once), ``None`` without a
residual. The sum of squares needs the whole row before the first product, so every program
(every split too) first walks the whole row for the float32 sum of squares, then walks its
K range again, recomputing ``h`` per tile (out of L2) and normalizing it with
:mod:`~infer_core.kernels.rms_norm`'s own helpers (``add_residual``, ``inv_rms``, ``normed``:
the arithmetic of ``_rms_norm_kernel``). Only the order of the float32 sum of squares differs
(K tiles, not one block), so a normalized element may round to its neighbour now and then:
the fused result equals ``small_m_gemm(fused_add_rms_norm(x, residual, w, eps)[0], weight)``
up to that and the float32 summation order, and ``h`` is bitwise ``fused_add_rms_norm``'s.
Every N-block program re-reads the ``x`` (and residual) rows twice when they span several K
tiles (once for one tile, below). Not combinable with ``act_and_mul``.

With the norm prologue and one K tile (K up to ``BLOCK_K``), ``h`` (and the residual) is read
once: the sum of squares and the normalized tile come from the same registers. The first K
tile is peeled off the loop (computed before it), so a one-tile program has no loop at all.

Fused gated epilogue (``gated="silu"`` or ``"gelu_tanh"``): the MLP's ``act_and_mul`` after
gate_up_proj, in the gate/up GEMM's launch instead of its own (the activation prologue of the
down GEMM does the same fold from the other side, but every down program recomputes the
activation of its K range). ``weight`` is ``[2I, K]`` = ``[gate rows; up rows]`` (how
``MergedLinear`` stacks gate/up, and each tensor-parallel rank's shard too), the output
``[M, I]``: a program owning gate rows ``rn`` also streams up rows ``rn + I`` (two weight tiles
per K step against one input tile), keeps two float32 accumulators, rounds both sums to the
dtype (as the unfused path stores ``gate_up``) and writes ``act_and_mul``'s ``gated`` of them.
So the result equals ``silu_and_mul(small_m_gemm(x, weight))`` up to the float32 summation
order (bitwise when the two launches sum in the same order). K is never split: the activation
needs whole sums, and at one row gate_up's K fits one tile anyway. Combinable with the norm
prologue (``(y, h)`` as with it: the models' gate_up_proj), not with ``act_and_mul``.

Numerics: products and sums in float32, one rounding to ``x``'s dtype at the end (bf16, fp16,
fp32). Against ``small_m_gemm_ref`` the only differences are the summation order and the
final rounding. No host synchronization and only ``torch.empty`` allocations: capturable in a
CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch
import triton
import triton.language as tl

from infer_core.kernels.act_and_mul import (
    GELU_TANH,
    SILU,
    gated,
    gelu_tanh_and_mul_ref,
    silu_and_mul_ref,
)
from infer_core.kernels.device import num_sms
from infer_core.kernels.pdl import use_pdl, wait_for_prior
from infer_core.kernels.rms_norm import add_residual, fused_add_rms_norm, inv_rms, normed

NO_ACT = -1
ACTS = {None: NO_ACT, "silu": SILU, "gelu_tanh": GELU_TANH}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_BLOCK_M = 16
REDUCE_BLOCK = 1024


@triton.jit
def _norm_input(x_rows, r_rows, ks, mask, HAS_RESIDUAL: tl.constexpr):
    """One ``[BLOCK_M, BLOCK_K]`` tile of the norm's input ``h``: ``x`` or ``x + residual``
    (rounded to the dtype, as ``fused_add_rms_norm`` forms it)."""
    h = tl.load(x_rows + ks[None, :], mask=mask, other=0.0, eviction_policy="evict_last")
    if HAS_RESIDUAL:
        r = tl.load(r_rows + ks[None, :], mask=mask, other=0.0, eviction_policy="evict_last")
        h = add_residual(h, r)
    return h


@triton.jit
def _load_w(w_rows, ks, n_mask, K, EVEN_K: tl.constexpr):
    """One ``[BLOCK_N, BLOCK_K]`` weight tile, streamed once (``evict_first``)."""
    if EVEN_K:
        return tl.load(w_rows + ks[None, :], mask=n_mask[:, None], other=0.0, eviction_policy="evict_first")
    return tl.load(w_rows + ks[None, :], mask=n_mask[:, None] & (ks < K)[None, :], other=0.0,
                   eviction_policy="evict_first")


@triton.jit
def _product(acc, x, w, USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``acc += x @ w.T`` for one K tile, float32 (the MMA or the broadcast product)."""
    if USE_DOT:
        acc += tl.dot(x, tl.trans(w), input_precision=DOT_PRECISION)
    else:
        acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    return acc


@triton.jit
def _normed_tile(h, h_rows, nw_ptr, ks, x_mask, rstd, pid_n, K,
                 HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr, EVEN_K: tl.constexpr):
    """``rms_norm`` of one tile of ``h`` given its ``rstd``; the ``pid_n == 0`` programs also
    store the tile as the new residual (each element written by one program)."""
    if HAS_RESIDUAL:  # noqa: SIM102 (a constexpr branch)
        if pid_n == 0:
            tl.store(h_rows + ks[None, :], h, mask=x_mask)
    if EVEN_K:
        nw = tl.load(nw_ptr + ks, eviction_policy="evict_last")
    else:
        nw = tl.load(nw_ptr + ks, mask=ks < K, other=0.0, eviction_policy="evict_last")
    return normed(h, rstd, nw[None, :], GEMMA)


@triton.jit
def _input_tile(x_rows, r_rows, h_rows, nw_ptr, ks, x_mask, rstd, pid_n, K,
                ACT: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr,
                EVEN_K: tl.constexpr):
    """One ``[BLOCK_M, BLOCK_K]`` tile of the product's input ``x'``: ``x``, ``act(gate) * up``,
    or ``rms_norm(h)`` (then the new residual ``h`` is stored by the ``pid_n == 0`` programs)."""
    if NORM:
        h = _norm_input(x_rows, r_rows, ks, x_mask, HAS_RESIDUAL)  # again, out of L2
        x = _normed_tile(h, h_rows, nw_ptr, ks, x_mask, rstd, pid_n, K, HAS_RESIDUAL, GEMMA, EVEN_K)
    elif ACT < 0:
        x = tl.load(x_rows + ks[None, :], mask=x_mask, other=0.0, eviction_policy="evict_last")
    else:
        gate = tl.load(x_rows + ks[None, :], mask=x_mask, other=0.0, eviction_policy="evict_last")
        up = tl.load(x_rows + K + ks[None, :], mask=x_mask, other=0.0, eviction_policy="evict_last")
        x = gated(gate, up, ACT)
    return x


@triton.jit
def _gated_epilogue(acc_gate, acc_up, dtype: tl.constexpr, ACT: tl.constexpr):
    """``act(gate) * up`` of the two float32 sums, each rounded to the output dtype first (the
    unfused path stores ``gate_up`` in it), then :mod:`~infer_core.kernels.act_and_mul`'s own
    arithmetic (``gated``)."""
    return gated(acc_gate.to(dtype), acc_up.to(dtype), ACT)


@triton.jit
def _small_m_gemm_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, k_per_split,
    r_ptr, stride_rm, nw_ptr, h_ptr, eps,
    ACT: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr, GATED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, SINGLE_TILE: tl.constexpr, USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_prior()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < M
    n_mask = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1]
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    w_up_rows = w_ptr + (rn + N).to(tl.int64)[:, None] * K  # the matching up rows (GATED)
    r_rows = r_ptr + rm.to(tl.int64)[:, None] * stride_rm
    h_rows = h_ptr + rm.to(tl.int64)[:, None] * K
    k_start = pid_k * k_per_split  # a multiple of BLOCK_K, below K (no empty splits)
    k_end = tl.minimum(k_start + k_per_split, K)
    ks = k_start + rk
    x_mask = m_mask[:, None] if EVEN_K else m_mask[:, None] & (ks < K)[None, :]
    w = _load_w(w_rows, ks, n_mask, K, EVEN_K)
    if GATED >= 0:
        w_up = _load_w(w_up_rows, ks, n_mask, K, EVEN_K)
    rstd = 0.0
    if NORM:
        if SINGLE_TILE:  # the whole row is this tile: one read of x (and the residual)
            h = _norm_input(x_rows, r_rows, ks, x_mask, HAS_RESIDUAL)
            hf = h.to(tl.float32)
            rstd = inv_rms(tl.sum(hf * hf, axis=1), K, eps)[:, None]  # [BLOCK_M, 1]
        else:  # first pass over the whole row (every split too): float32 sum of squares of h
            squares = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + rk
                mask = m_mask[:, None] if EVEN_K else m_mask[:, None] & (kk < K)[None, :]
                hk = _norm_input(x_rows, r_rows, kk, mask, HAS_RESIDUAL).to(tl.float32)
                squares += hk * hk
            rstd = inv_rms(tl.sum(squares, axis=1), K, eps)[:, None]
    if NORM and SINGLE_TILE:  # the row read above
        x = _normed_tile(h, h_rows, nw_ptr, ks, x_mask, rstd, pid_n, K, HAS_RESIDUAL, GEMMA, EVEN_K)
    else:  # the tile's input, as every later tile's
        x = _input_tile(x_rows, r_rows, h_rows, nw_ptr, ks, x_mask, rstd, pid_n, K,
                        ACT, NORM, HAS_RESIDUAL, GEMMA, EVEN_K)
    acc = _product(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), x, w, USE_DOT, DOT_PRECISION)
    if GATED >= 0:  # the same input tile against the up rows
        acc_up = _product(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), x, w_up, USE_DOT, DOT_PRECISION)
    for k0 in range(k_start + BLOCK_K, k_end, BLOCK_K):
        ks = k0 + rk
        x_mask = m_mask[:, None] if EVEN_K else m_mask[:, None] & (ks < K)[None, :]
        w = _load_w(w_rows, ks, n_mask, K, EVEN_K)
        if GATED >= 0:
            w_up = _load_w(w_up_rows, ks, n_mask, K, EVEN_K)
        x = _input_tile(x_rows, r_rows, h_rows, nw_ptr, ks, x_mask, rstd, pid_n, K,
                        ACT, NORM, HAS_RESIDUAL, GEMMA, EVEN_K)
        acc = _product(acc, x, w, USE_DOT, DOT_PRECISION)
        if GATED >= 0:
            acc_up = _product(acc_up, x, w_up, USE_DOT, DOT_PRECISION)
    if GATED >= 0:
        y = _gated_epilogue(acc, acc_up, out_ptr.dtype.element_ty, GATED)
    else:
        y = acc.to(out_ptr.dtype.element_ty)
    out = out_ptr + pid_k.to(tl.int64) * M * N + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(out, y, mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _split_k_reduce_kernel(part_ptr, out_ptr, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        wait_for_prior()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):  # fixed order: deterministic
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class LaunchConfig:
    """One launch: ``block_n`` weight rows per program, ``block_k`` columns per step; ``split_k``
    > 1 splits K (float32 partials, then a reduction launch); ``use_dot`` takes the MMA inner
    product (rows padded to 16) instead of the float32 broadcast-multiply-and-sum."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    use_dot: bool = False

    def block_m(self, m: int) -> int:
        return MAX_BLOCK_M if self.use_dot else min(triton.next_power_of_2(max(m, 1)), MAX_BLOCK_M)

    def check(self) -> None:
        for v in (self.block_n, self.block_k, self.split_k):
            assert v >= 1 and v & (v - 1) == 0, self
        assert self.num_warps in (1, 2, 4, 8, 16) and self.num_stages >= 1, self
        if self.use_dot:
            assert self.block_n >= 16 and self.block_k >= 16, self


@dataclass(frozen=True, eq=False)
class NormPrologue:
    """RMSNorm folded into the GEMM's prologue: the product's input is ``rms_norm(h)`` over K
    with ``weight [K]``, ``eps`` and Gemma's ``1 + w`` (``gemma``), where ``h = x + residual``
    (``[M, K]``, ``x``'s dtype; rounded to it, as :func:`~infer_core.kernels.rms_norm.fused_add_rms_norm`
    forms it) or ``h = x`` without a residual."""

    weight: torch.Tensor
    eps: float
    gemma: bool = False
    residual: torch.Tensor | None = None


def choose_config(m: int, n: int, k: int, dtype: torch.dtype, num_sms: int = 132,
                  act: bool = False, norm: bool = False, gated: bool = False) -> LaunchConfig:
    """Launch shapes from the sweep on an H200 (``benchmarks/kernels_small_m_gemm.py --sweep``,
    Llama-3.2-1B projections, bf16; ``benchmarks/reports/small-m-gemm-2026-12-01-h200``).

    One row (batch-1 decode): the broadcast product over two weight rows per program and K
    tiles of up to 2048 (four with the activation prologue), 4 warps, 4 stages: the fastest
    config for every projection (qkv, o, gate/up, down), 1.1-1.3x cuBLAS. From two rows
    (not float32): ``tl.dot`` over 32-row weight tiles (64 from N = 8192) and 256-wide K
    tiles (128), split along K only for long K (32 tiles and more) when fewer programs than
    SMs would run: on a par with cuBLAS. float32 (tests) keeps the broadcast product, ``block_n`` the widest of 32..4 that
    gives about two programs per SM, ~4k products per step.

    With the RMSNorm prologue (``norm``) the same, four weight rows per program at one row as
    with the activation: every program reads the whole ``x`` (and residual) row out of L2,
    so wider programs amortize it. Not swept on its own; end to end it is the models' default
    at one row (W1 on an H200, docs/kernels.md).

    With the gated epilogue (``gated``; ``n`` is then the output width ``I``, the weight has
    ``2 n`` rows) a program streams ``block_n`` gate rows and as many up rows, so ``block_n``
    is halved to keep the weight rows per program as without (at one row with the norm
    prologue: 2 + 2 instead of 4; 16 + 16 for the MMA, not below its minimum of 16), and K
    is never split (the activation needs the whole sums). Not swept on its own."""
    bm = min(triton.next_power_of_2(max(m, 1)), MAX_BLOCK_M)
    halve = 2 if gated else 1
    if m <= 1 and dtype != torch.float32:
        block_n, block_k, num_warps, stages = max((4 if act or norm else 2) // halve, 1), 2048, 4, 4
        use_dot = False
    elif dtype != torch.float32:
        wide = n >= 8192
        block_n, block_k, num_warps, stages = (64, 128, 4, 3) if wide else (32, 256, 4, 4)
        block_n = max(block_n // halve, 16)
        use_dot, bm = True, MAX_BLOCK_M
    else:
        block_n = 32
        while block_n > 4 and triton.cdiv(n, block_n) < 2 * num_sms:
            block_n //= 2
        block_k = max(128, min(4096 // (bm * block_n * halve), 1024))
        num_warps, stages, use_dot = (8 if bm * block_n * halve * block_k >= 8192 else 4), 3, False
    block_k = max(16, min(block_k, triton.next_power_of_2(k)))
    programs = triton.cdiv(n, block_n) * triton.cdiv(m, bm)
    k_tiles = triton.cdiv(k, block_k)
    # the sweep's MMA configs split only long K (down_proj: 32-64 tiles), never 8-16 tiles
    split_k = split_k_for(programs, k_tiles, num_sms) if not use_dot or k_tiles >= 32 else 1
    if gated:
        split_k = 1
    return LaunchConfig(block_n, block_k, split_k, num_warps=num_warps, num_stages=stages, use_dot=use_dot)


def split_k_for(programs: int, k_tiles: int, num_sms: int = 132) -> int:
    """1 when ``programs`` fill the SMs; else the power of two (at most 8) that brings them to
    about two per SM, halved until every split has at least two K tiles."""
    if programs >= num_sms:
        return 1
    s = min(triton.next_power_of_2(triton.cdiv(2 * num_sms, programs)), 8)
    while s > 1 and k_tiles < 2 * s:
        s //= 2
    return s


@overload
def small_m_gemm(x: torch.Tensor, weight: torch.Tensor, *, act_and_mul: str | None = None,
                 norm: None = None, gated: str | None = None, config: LaunchConfig | None = None,
                 ) -> torch.Tensor: ...


@overload
def small_m_gemm(x: torch.Tensor, weight: torch.Tensor, *, act_and_mul: None = None,
                 norm: NormPrologue, gated: str | None = None, config: LaunchConfig | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def _check_options(act_and_mul: str | None, norm: NormPrologue | None, gated: str | None) -> None:
    """The prologue / epilogue options a caller may combine: ``norm`` with ``gated``, neither
    with ``act_and_mul``."""
    for name, value in (("act_and_mul", act_and_mul), ("gated", gated)):
        if value not in ACTS:
            raise ValueError(f"{name} must be one of {sorted(a for a in ACTS if a)} or None, got {value!r}")
    if norm is not None and act_and_mul is not None:
        raise ValueError(f"small_m_gemm takes either a norm prologue or act_and_mul, not both "
                         f"(got norm and act_and_mul={act_and_mul!r})")
    if gated is not None and act_and_mul is not None:
        raise ValueError(f"small_m_gemm takes either the act_and_mul prologue or the gated epilogue, not both "
                         f"(got act_and_mul={act_and_mul!r} and gated={gated!r})")


def small_m_gemm(x, weight, *, act_and_mul=None, norm=None, gated=None, config=None):
    """``x' @ weight.T`` for ``weight [N, K]`` (contiguous) and ``x [M, K]``, or ``x [M, 2K]``
    = ``[gate | up]`` with ``act_and_mul`` ("silu" or "gelu_tanh"), ``x' = act(gate) * up``.
    bf16, fp16 or fp32 (one dtype for both); float32 accumulation; ``[M, N]`` in ``x``'s
    dtype. ``config`` overrides ``choose_config``.

    With ``norm`` (a :class:`NormPrologue`), ``x' = rms_norm(h)`` with ``h = x + norm.residual``
    (or ``x``), and the result is a pair ``(y, h)``: ``h [M, K]`` the new residual, or
    ``None`` without ``norm.residual``; the same as ``fused_add_rms_norm`` (or ``rms_norm``)
    followed by ``small_m_gemm`` in one launch. Not with ``act_and_mul``.

    With ``gated`` ("silu" or "gelu_tanh"; the epilogue) ``weight`` is ``[2I, K]`` =
    ``[gate rows; up rows]`` and ``y [M, I] = act(x' @ gate.T) * (x' @ up.T)``, the same as
    ``silu_and_mul`` (or ``gelu_tanh_and_mul``) after the plain product, in one launch;
    combinable with ``norm``, not with ``act_and_mul``. K is never split then (``config``'s
    ``split_k`` is ignored): the activation needs the whole sums."""
    _check_options(act_and_mul, norm, gated)
    act, epilogue = ACTS[act_and_mul], ACTS[gated]
    assert x.dim() == 2 and weight.dim() == 2, (x.shape, weight.shape)
    assert x.dtype in DTYPES and weight.dtype == x.dtype, (x.dtype, weight.dtype)
    assert x.device == weight.device, (x.device, weight.device)
    assert weight.is_contiguous(), "weight must be row-major [N, K]"
    n, k = weight.shape
    if epilogue != NO_ACT:
        assert n % 2 == 0, f"the gated epilogue needs weight [2I, K] = [gate; up], got {tuple(weight.shape)}"
        n //= 2  # the output width I; the up rows start at row I
    m = x.shape[0]
    assert x.shape[1] == (k if act == NO_ACT else 2 * k), (x.shape, weight.shape, act_and_mul)
    if x.stride(-1) != 1:
        x = x.contiguous()
    residual = norm.residual if norm is not None else None
    if norm is not None:
        assert norm.weight.shape == (k,) and norm.weight.is_contiguous(), (norm.weight.shape, k)
        assert norm.weight.device == x.device and norm.weight.dtype in DTYPES, (norm.weight.device, norm.weight.dtype)
        if residual is not None:
            assert residual.shape == x.shape and residual.dtype == x.dtype, (residual.shape, residual.dtype)
            assert residual.device == x.device, (residual.device, x.device)
            if residual.stride(-1) != 1:
                residual = residual.contiguous()
    h = torch.empty(m, k, dtype=x.dtype, device=x.device) if residual is not None else None
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0 or k == 0:
        if k == 0:
            out.zero_()
        if h is not None and m and k:  # no program runs: the residual add alone (n == 0)
            h = fused_add_rms_norm(x, residual, norm.weight, norm.eps, norm.gemma)[1]
        return out if norm is None else (out, h)
    cfg = config or choose_config(m, n, k, x.dtype, num_sms(x.device), act=act != NO_ACT, norm=norm is not None,
                                  gated=epilogue != NO_ACT)
    cfg.check()
    bm = cfg.block_m(m)
    tiles = triton.cdiv(k, cfg.block_k)
    split_k = 1 if epilogue != NO_ACT else min(cfg.split_k, tiles)  # the activation needs whole sums
    k_per_split = triton.cdiv(tiles, split_k) * cfg.block_k
    split_k = triton.cdiv(k, k_per_split)  # no empty splits
    target = out if split_k == 1 else torch.empty(split_k, m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, cfg.block_n), split_k, triton.cdiv(m, bm))
    pdl = use_pdl(x)
    r = residual if residual is not None else x
    _small_m_gemm_kernel[grid](
        x, weight, target, m, n, k, x.stride(0), k_per_split,
        r, r.stride(0), norm.weight if norm is not None else x, h if h is not None else x,
        norm.eps if norm is not None else 0.0,
        ACT=act, NORM=norm is not None, HAS_RESIDUAL=residual is not None,
        GEMMA=norm is not None and norm.gemma, GATED=epilogue,
        BLOCK_M=bm, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        EVEN_K=k % cfg.block_k == 0, SINGLE_TILE=k <= cfg.block_k, USE_DOT=cfg.use_dot,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", PDL=pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )
    if split_k > 1:
        _split_k_reduce_kernel[(triton.cdiv(m * n, REDUCE_BLOCK),)](
            target, out, m * n, SPLIT_K=split_k, BLOCK=REDUCE_BLOCK, PDL=pdl, num_warps=4, launch_pdl=pdl,
        )
    return out if norm is None else (out, h)


def _act_and_mul_ref(x: torch.Tensor, act: str | None) -> torch.Tensor:
    if act is None:
        return x
    if act not in ACTS:
        raise ValueError(f"unknown activation {act!r}")
    return silu_and_mul_ref(x) if act == "silu" else gelu_tanh_and_mul_ref(x)


def small_m_gemm_ref(x: torch.Tensor, weight: torch.Tensor, act_and_mul: str | None = None, *,
                     gated: str | None = None) -> torch.Tensor:
    """The torch reference: the activation prologue (``act_and_mul``) in torch, the product in
    float32 rounded once to ``x``'s dtype, then the gated epilogue (``gated``: torch's
    activation over the rounded ``[gate | up]`` halves of the product)."""
    x = _act_and_mul_ref(x, act_and_mul)
    return _act_and_mul_ref((x.float() @ weight.float().T).to(x.dtype), gated)
