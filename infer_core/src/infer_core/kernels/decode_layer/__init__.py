"""A whole decoder layer of a batch-1 decode step in one persistent launch (Llama / Qwen 3).

At batch 1 the step is a chain of short kernels: per layer (with the RMSNorm prologues) the
QKV GEMM, QK-norm + RoPE + KV write, attention, the split-KV reduction, o_proj, gate/up,
the activation and down_proj. Each GEMM streams 4-12 MB (Qwen3-0.6B) and pays a ramp over
the SMs, a first DRAM round trip and a tail; the chain measured 17.1 µs per layer for the
four GEMMs against 7.1 µs at the copy ceiling (benchmarks/reports/decode-chain-2026-12-02-h200).

Here one program per SM runs every stage of the layer, with a grid-wide barrier between
dependent stages instead of a launch:

1. ``qkv = rms_norm(x + residual) @ w_qkv.T`` (the norm recomputed by every program from
   the input row, as the GEMM prologue does; with ``norm_once`` the row is loaded once and the
   norm weight requested with the stage's first tiles);
2. per (KV head, key split): QK-norm and RoPE of the head's query group (every split) and,
   in the split that holds the step's own position, of its key, which it stores with the
   value into the paged cache for later steps; then attention over the split's keys (online
   softmax, partials): the tiles hold earlier steps' keys (the first one requested at the
   launch's start, ``kv_early``), the step's own key comes from registers, last;
3. per query head: the split-KV merge;
4. ``o = attn @ w_o.T``;
5. ``h = o + (x + residual)`` (the new residual, stored once), ``act(rms_norm(h) @ gate.T) *
   (rms_norm(h) @ up.T)``;
6. ``out = act @ w_down.T``.

The GEMM stages split their weight rows into chunks of ``rows`` rows, program ``p`` taking
chunks ``p, p + P, ...`` and walking each in ``bk``-wide K tiles; or (a balanced stage) each
program takes one contiguous share of the rows in one tile. Each stage's first tile is
requested before the barrier that precedes the stage (weights never depend on the step). The
later tiles: the next one is requested into registers before the current one's product
(``pipeline = 1``, the default; ptxas still schedules those loads after the product, so every
loop step pays a DRAM round trip: the defaults take few, large steps and several programs per
SM) or through Triton's software pipeline (``pipeline > 1``, cp.async into shared memory;
measured no faster on an H200).

The barrier: every thread's stores, ``debug_barrier``, one release-``atomic_add`` per program
on the stage's counter (the arrival; with ``arrive_first`` the next stage's first loads are
requested after it), then acquire-polls (each after a ``poll_sleep`` nanosleep, 100 ns by
default: measured 0.7 µs per layer faster than polling flat out) until all ``P`` programs
arrived. The counters are never reset: launch ``e`` (the count in ``counters[EPOCH_SLOT]``,
read after the PDL wait, when the launch before has finished) waits at every barrier for the
counter to reach ``(e + 1) P`` (int32 differences, so wrapping around is harmless), and
program 0 adds 1 to the epoch when it passed its last barrier (every program had read it
before arriving at barrier 0). An exit counter that reset them instead (its arrival: a
GPU-scope fence and an atomic round trip in the last program out) delayed the launch's end:
20.8 against 21.2 µs per Qwen3-0.6B layer, so it was removed.

Every program must be resident at once: the launch compiles first and refuses more programs than fit (registers, shared memory, threads;
:func:`resident_programs`), and with no config takes the most programs per SM (4, 2, 1) that
fit. The polls are bounded (``MAX_SPINS``) as a last guard: a barrier that never opens raises
an error flag instead of hanging. Data a stage reads that another program wrote in this
launch is loaded with ``.cg`` (L2, never a stale L1 line).

``timeline`` (benchmarks): every program stamps its SM clock at each stage boundary and inside
the attention and merge stages (:func:`_stamp`; ``benchmarks/decode_layer_timeline.py``).

Numerics are those of the unfused path (each intermediate rounded to the dtype where the
separate kernels store it): the same helpers as :mod:`~infer_core.kernels.rms_norm`,
:mod:`~infer_core.kernels.qk_norm_rope`, :mod:`~infer_core.kernels.paged_attention` (its tile
size and split rule, tensor-core products over ``BLOCK_M = 16`` padded query rows),
:mod:`~infer_core.kernels.attention_reduce` and :mod:`~infer_core.kernels.act_and_mul`; only
float32 summation orders differ. ``decode_layer_ref`` is the torch reference.

Under the Triton interpreter (programs run one after another, so a spin barrier would never
open) and for tests, ``stage_by_stage=True`` runs the same kernel once per stage (``STAGE``).

Scope (:func:`supports`): one token, no sliding window, no logit softcap, bf16 / fp16 / fp32
KV cache of the activations' dtype (no FP8), no biases, SiLU, Llama / Qwen RMSNorm numerics,
head dims whose half is a power of two.

The package, one job per file:

- ``sync``: the grid barriers and ``group_sync``'s per-KV-group counters;
- ``gemm``: the GEMM stages (weight tiles, bf16 pairs, the norm prologues, the products);
- ``attention``: QK-norm + RoPE, the K/V store, split attention and the merge;
- ``timeline``: clock stamps (benchmarks);
- ``kernel``: the kernel, the six stages in order;
- ``config``: :class:`DecodeLayerConfig`, tile shapes and the defaults a launch picks;
- ``launch``: the layer's tensors, the workspace, the checked launch (:func:`decode_layer`);
- ``reference``: :func:`decode_layer_ref`.
"""

from infer_core.kernels.decode_layer.config import (
    REMOVED_SETTINGS,
    STAGED_LAYER_BYTES,
    STAGED_PROGRAMS_PER_SM,
    DecodeLayerConfig,
    choose_config,
    default_balanced_elements,
    default_group_sync,
    default_kv_early,
    default_norm_once,
    default_pairs,
    default_rope_early,
    gemm_shape,
    ignored_settings,
    launch_config,
    pair_sub,
    splits_for,
    stage_programs_per_sm,
)
from infer_core.kernels.decode_layer.launch import (
    DecodeLayerWeights,
    DecodeWorkspace,
    decode_layer,
    layer_bytes,
    resident_programs,
    supports,
)
from infer_core.kernels.decode_layer.reference import decode_layer_ref
from infer_core.kernels.decode_layer.timeline import TIMELINE_SLOTS

__all__ = [
    "REMOVED_SETTINGS",
    "STAGED_LAYER_BYTES",
    "STAGED_PROGRAMS_PER_SM",
    "TIMELINE_SLOTS",
    "DecodeLayerConfig",
    "DecodeLayerWeights",
    "DecodeWorkspace",
    "choose_config",
    "decode_layer",
    "decode_layer_ref",
    "default_balanced_elements",
    "default_group_sync",
    "default_kv_early",
    "default_norm_once",
    "default_pairs",
    "default_rope_early",
    "gemm_shape",
    "ignored_settings",
    "launch_config",
    "layer_bytes",
    "pair_sub",
    "resident_programs",
    "splits_for",
    "stage_programs_per_sm",
    "supports",
]
