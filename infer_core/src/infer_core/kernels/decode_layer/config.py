"""The persistent decode layer's launch configurations: :class:`DecodeLayerConfig`, the tile
shapes (:func:`choose_config`), the configuration a launch picks for itself
(:func:`launch_config`) and the defaults the environment may override (A/B measurements)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import triton


@dataclass(frozen=True)
class DecodeLayerConfig:
    """One launch's shape: ``num_programs`` (every one must be resident at once for the
    barriers: the launch checks), ``splits`` key splits per KV head of ``tile`` keys each step, and per
    GEMM stage (qkv, o, gate/up, down) the weight rows per chunk and the K tile width;
    ``prefetch`` requests each GEMM stage's first weight tiles before the barrier before it;
    ``pipeline`` the software-pipeline depth of the GEMM loops; ``poll_sleep`` nanoseconds slept
    before each barrier poll (0: none; CUDA only). ``arrive_first``: at the barriers in front of
    o_proj, gate/up and down, arrive before requesting the stage's first tiles (the arrival's
    GPU-scope fence waits for the loads in flight; in the sm_90 SASS it is a ``MEMBAR.ALL.GPU``
    ahead of the atomic), so the tiles' DRAM round trip overlaps the wait instead of delaying
    the arrival (measured 0.7 µs per layer faster at 4 programs per SM, 1.3 at 2: on by
    default). ``kv_early``: each attention program's first key tile (earlier steps' keys) is
    requested before barrier 0's wait (after the arrival with ``arrive_first``; 1), or at the
    launch's start with the qkv tiles, before the PDL wait (2: the step's metadata and those
    keys were written before the previous launch began), not at the start of the attention
    stage (0). ``balanced`` (per GEMM stage, see :func:`choose_config`): each
    program's rows are one contiguous share of the stage (:func:`~infer_core.kernels.decode_layer.gemm._share`, shares differ by at
    most a row), all of it requested before the barrier, one product; ``rows`` is then the
    tile's height (at least the largest share) and ``bk`` covers K. ``pairs`` (per GEMM stage,
    bf16 only): the stage loads its weights as uint32 words of two bf16 values and multiplies
    them by the input's even and odd elements (:func:`~infer_core.kernels.decode_layer.gemm._pair_dot`, :func:`pair_sub`); on in
    every stage by default (chains on an H200, µs per layer: Qwen3-0.6B 21.2 against 22.2,
    Llama-3.2-1B 45.2 against 50.1; benchmarks/reports/decode-layer-pairs-2026-12-03-h200).
    ``norm_once``: the norm stages (qkv,
    gate/up) whose input is one bf16 pair tile load it once (:func:`~infer_core.kernels.decode_layer.gemm._norm_pairs`): the row kept
    for the sum of squares and the product, the norm weight requested with the stage's first
    tiles (else: the row and the weight again after the reduction's barrier, a second L2 round
    trip on the critical path). ``group_sync`` (with a balanced qkv stage and at most one
    program per qkv row; off in a config built by hand, 2 in the one a launch
    picks for itself, :func:`default_group_sync`): no barrier 0; each program adds one to a KV
    group's counter per interval of that group's qkv rows (its query heads', key's, value's)
    its share holds rows of (:func:`~infer_core.kernels.decode_layer.sync._group_arrive`), and an attention item waits for its own
    group's producers only (:func:`~infer_core.kernels.decode_layer.sync._group_target`): attention starts without waiting for the
    slowest qkv program of every group, and the programs without an attention item go straight
    to barrier 1. ``group_sync = 2``: no barrier 1 either; each attention item adds one to its KV
    group's second counter once its partials are stored, and each merge waits for its head's
    group's splits only; the programs without a merge go straight to barrier 2. ``rope_early``:
    the attention stage's k-norm weight (1) or its
    rotary row and both QK-norm weights (2) are requested between barrier 0's arrival and its
    wait (stage by stage: before the attention launch's PDL wait), not in the stage (0: the
    k-norm weight's load comes after the query's norm, whose CTA reduction ptxas does not
    hoist it over: a dependent L2 round trip in the split that holds the step's key).
    ``kv_ahead`` (off): each attention item asks L2 for its split's key tiles after
    the first at the item's start (:func:`~infer_core.kernels.decode_layer.attention._kv_ahead`), so the tile loop's loads are L2 hits
    instead of two dependent DRAM round trips per tile (the block-table entry, then the rows);
    only splits of more than one tile (contexts over ``splits x tile`` keys) do anything. CUDA
    only (the interpreter runs without it: a hint changes no value); 30.3 against 31.0 µs per
    layer at 4,000 keys on an H200. ``min_splits`` (0, off; a power of two below ``splits``):
    each step uses the fewest key
    splits per KV head, from ``min_splits`` up by powers of two, that give each split at most one
    key tile, at most ``splits`` (:func:`~infer_core.kernels.decode_layer.attention._active_splits`); the splits past those do nothing (with
    ``group_sync`` 2 they only arrive) and the merge reads only the used ones. Short contexts
    then take fewer splits and long ones as many as the launch has items for (``splits`` 32 at 2
    programs per SM). With 32 splits and ``kv_ahead``: 26.0 against 31.0 µs per layer at 4,000
    keys, W1 at 2,048 + 2,048 tokens 0.818 against 0.883 ms per token, but W1 (256 + 256) 0.671
    against 0.649: off (benchmarks/reports/long-context-levers-2026-12-05-h200)."""

    num_programs: int
    splits: int
    tile: int
    rows: tuple[int, int, int, int]
    bk: tuple[int, int, int, int]
    num_warps: int = 4
    prefetch: bool = True
    pipeline: int = 1  # software-pipeline stages of the GEMM loops (1: registers, double-buffered)
    last_stage: int = 6  # benchmarks only: a launch that stops after this stage (timing each stage)
    poll_sleep: int = 100
    arrive_first: bool = True
    kv_early: int = 2
    balanced: tuple[bool, bool, bool, bool] = (False, False, False, False)
    pairs: tuple[bool, bool, bool, bool] = (True, True, True, True)
    norm_once: bool = True
    rope_early: int = 1
    group_sync: int = 0
    kv_ahead: bool = False
    min_splits: int = 0


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def gemm_shape(n: int, k: int, programs: int, gated: bool, max_elements: int = 16384,
               max_bk: int = 2048, fewest_steps: bool = False) -> tuple[int, int]:
    """``(rows, bk)`` of a GEMM stage with ``n`` output rows over ``k``: a K tile of up to
    ``max_bk`` that divides ``k`` when it can, then power-of-two rows within ``max_elements``
    weight elements per step (both tiles' when ``gated``): those that give the busiest program
    the fewest rows, the widest of those; or (``fewest_steps``) the fewest loop steps, each
    program's rows in one chunk when they fit (every step pays a DRAM round trip)."""
    bk = min(triton.next_power_of_2(k), max_bk)
    while bk > 128 and k % bk and k > bk and not fewest_steps:
        bk //= 2
    cap = max(_pow2_floor(max_elements // (bk * (2 if gated else 1))), 1)
    if fewest_steps:
        return min(cap, triton.next_power_of_2(triton.cdiv(n, programs))), bk
    best = None
    rows = 1
    while rows <= cap:
        busiest = triton.cdiv(triton.cdiv(n, rows), programs) * rows
        if best is None or busiest <= best[0]:
            best = (busiest, rows)
        rows *= 2
    return best[1], bk


def choose_config(hidden: int, intermediate: int, num_heads: int, num_kv_heads: int, head_dim: int,
                  num_sms: int, dtype: torch.dtype = torch.bfloat16, *, max_elements: int = 8192,
                  max_bk: int = 2048, fewest_steps: bool = True, programs_per_sm: int = 1,
                  num_warps: int = 4, pipeline: int = 1, balanced_elements: int = 0) -> DecodeLayerConfig:
    """``programs_per_sm`` programs per SM (all must be resident at once: the launch checks);
    key splits so that (KV heads x splits) about fills the SMs (at most 16, paged_attention's
    rule for a batch-1 decode graph); 64-key tiles (32 in float32); the GEMM stages' shapes
    from :func:`gemm_shape`, or (``balanced_elements`` > 0) balanced (:class:`DecodeLayerConfig`)
    where a program's whole share fits that many weight elements (both tiles' when gated). The defaults are the fastest of the sweep on an H200 with 4
    programs per SM (Qwen3-0.6B and Llama-3.2-1B chains, benchmarks/reports/
    persistent-decode-layer-2026-12-02-h200)."""
    programs = num_sms * programs_per_sm
    splits = splits_for(num_kv_heads, num_sms)
    q = num_heads * head_dim
    max_bk = max(max_bk, 4096) if fewest_steps else max_bk
    args = (max_elements, max_bk, fewest_steps)
    stages = [((num_heads + 2 * num_kv_heads) * head_dim, hidden, False), (hidden, q, False),
              (intermediate, hidden, True), (hidden, intermediate, False)]
    shapes, balanced = [], []
    for n, k, is_gated in stages:
        rows, bk = triton.next_power_of_2(triton.cdiv(n, programs)), triton.next_power_of_2(k)
        fits = rows * bk * (2 if is_gated else 1) <= balanced_elements
        shapes.append((rows, bk) if fits else gemm_shape(n, k, programs, is_gated, *args))
        balanced.append(fits)
    return DecodeLayerConfig(num_programs=programs, splits=splits, tile=32 if dtype == torch.float32 else 64,
                             rows=tuple(s[0] for s in shapes), bk=tuple(s[1] for s in shapes),
                             num_warps=num_warps, pipeline=pipeline, balanced=tuple(balanced))


def pair_sub(rows: int, bk: int, k: int, num_warps: int) -> int:
    """The sub-tile width (weights per row and middle index) of a GEMM stage's word tiles
    (:func:`~infer_core.kernels.decode_layer.gemm._w_rows` with ``SUB``): as wide as lets the program's threads, 16-byte words per
    thread, cover the tile's ``rows`` once (each row's sum within as few threads as possible),
    within ``bk``; 0 (the bf16 tile) when ``k`` is odd or ``bk`` is below 8."""
    if k % 2 or bk < 8:
        return 0
    return min(bk, max(8, _pow2_floor(8 * 32 * num_warps // rows)))


def _env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name``, or ``default`` when unset or empty."""
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


def default_balanced_elements() -> int:
    """``balanced_elements`` of the configuration a launch picks for itself: 16,384 (W1 on an
    H200, Qwen3-0.6B at 2 programs per SM: 0.76 ms per token against 0.79 without, 3 runs
    each), or ``INFER_DECODE_BALANCED_ELEMENTS`` from the environment (0 turns it off; A/B
    measurements)."""
    return _env_int("INFER_DECODE_BALANCED_ELEMENTS", 16384)


def default_pairs() -> tuple[bool, bool, bool, bool]:
    """``pairs`` of the configuration a launch picks for itself: the config's default, or
    ``INFER_DECODE_PAIRS`` from the environment, four digits 0 / 1 for the qkv, o, gate/up and
    down stages (A/B measurements)."""
    value = os.environ.get("INFER_DECODE_PAIRS") or ""
    if not value:
        return DecodeLayerConfig.pairs
    if len(value) != 4 or set(value) - {"0", "1"}:
        raise ValueError(f"INFER_DECODE_PAIRS={value!r}: give four digits 0 or 1 (qkv, o, gate/up, down), "
                         "e.g. 0010")
    return tuple(c == "1" for c in value)


# settings of levers measured slower and removed (2026-12-05; docs/kernels.md): no longer read
REMOVED_SETTINGS = {"INFER_DECODE_LL": "self-flagged words", "INFER_DECODE_EPOCH": "the exit counter",
                    "INFER_DECODE_L2_AHEAD": "l2_ahead", "INFER_DECODE_POLL_LOAD": "acquire-load polls",
                    "INFER_DECODE_LAYERS": "several layers per launch", "INFER_DECODE_ROW_AHEAD": "row_ahead"}


def ignored_settings() -> list[str]:
    """One sentence for each environment variable set that names a removed lever (it is
    ignored: a launch runs as without it)."""
    return [f"{name} is ignored: {what} measured slower on an H200 and was removed (docs/kernels.md, "
            "\"Measured slower and removed\")" for name, what in REMOVED_SETTINGS.items() if os.environ.get(name)]


# layers of at least this many weight bytes run stage by stage by default, at these programs per SM
# (qkv, attention, merge, o, gate/up, down): see stage_programs_per_sm
STAGED_LAYER_BYTES = 64 << 20
STAGED_PROGRAMS_PER_SM = (4, 1, 1, 4, 4, 4)


def stage_programs_per_sm(layer_bytes: int = 0) -> tuple[int, ...]:
    """The programs per SM of each stage's launch when a model's batch-1 decode steps run stage
    by stage on CUDA (each stage its own launch, PDL between them, no grid barrier), or ``()``
    for one launch per layer. By default, stage by stage at :data:`STAGED_PROGRAMS_PER_SM` for
    layers of at least :data:`STAGED_LAYER_BYTES` weight bytes (``layer_bytes``), else one launch.
    Measured on an H200, W1 (medians of 3): Llama-3.2-1B (122 MB per layer) 0.81 ms per token
    against 0.84 with one launch (0.82 at 4 per SM in every stage); Qwen3-0.6B (31 MB) 0.69 at 2
    per SM or 2,1,1,4,4,4 and 0.71 at 4 against 0.68. The stages' GEMMs take 4 programs per SM,
    which the one launch (attention's registers) cannot
    (benchmarks/reports/decode-layer-stages-w1-mergeo-2026-12-03-h200). ``INFER_DECODE_STAGES``
    overrides it: one count for all six stages (``2``), six (``2,1,1,4,4,4`` for qkv, attention,
    merge, o, gate/up, down), or 0 (one launch per layer)."""
    value = (os.environ.get("INFER_DECODE_STAGES") or "").strip()
    if value == "":
        return STAGED_PROGRAMS_PER_SM if layer_bytes >= STAGED_LAYER_BYTES else ()
    if value == "0":
        return ()
    try:
        counts = tuple(int(part) for part in value.split(","))
    except ValueError:
        counts = ()
    if len(counts) == 1:
        counts *= 6
    if len(counts) != 6 or min(counts) < 1:
        raise ValueError(f"INFER_DECODE_STAGES={value!r}: give programs per SM for all stages (e.g. 2) or for each "
                         "of the six (e.g. 2,1,1,4,4,4), or 0 for one launch per layer")
    return counts


def launch_config(hidden: int, inter: int, hq: int, hkv: int, d: int, sms: int, dtype: torch.dtype,
                  programs_per_sm: int, stage_by_stage: bool = False) -> DecodeLayerConfig:
    """The configuration a launch without ``config`` takes at that many programs per SM:
    :func:`choose_config` with the balanced stages, then the defaults the environment may
    override (``kv_early``, ``pairs``, ``norm_once``, ``rope_early``, ``group_sync`` only with at
    most one program per qkv row, ``kv_ahead``, ``min_splits``)."""
    cfg = choose_config(hidden, inter, hq, hkv, d, sms, dtype, programs_per_sm=programs_per_sm,
                        balanced_elements=default_balanced_elements())
    group_sync = default_group_sync() if cfg.num_programs <= (hq + 2 * hkv) * d else 0
    return replace(cfg, kv_early=default_kv_early(), pairs=default_pairs(),
                   norm_once=default_norm_once(stage_by_stage), rope_early=default_rope_early(),
                   group_sync=group_sync,
                   kv_ahead=bool(_env_int("INFER_DECODE_KV_AHEAD", int(DecodeLayerConfig.kv_ahead))),
                   min_splits=_env_int("INFER_DECODE_MIN_SPLITS", DecodeLayerConfig.min_splits))


def default_kv_early() -> int:
    """``kv_early`` of the configuration a launch picks for itself: the config's default, 2
    (Qwen3-0.6B chain on an H200: 22.1 µs per layer against 22.7 with 1; W1 0.74 ms per token
    against 0.75), or ``INFER_DECODE_KV_EARLY`` from the environment (A/B measurements)."""
    return _env_int("INFER_DECODE_KV_EARLY", DecodeLayerConfig.kv_early)


def default_norm_once(stage_by_stage: bool = False) -> bool:
    """``norm_once`` of the configuration a launch picks for itself: on for the one-launch layer
    (the config's default; W1 Qwen3-0.6B on an H200 0.668 against 0.676 ms per token), off for
    stage-by-stage launches (Llama-3.2-1B's default: chain 42.0 µs per layer either way, W1
    0.814 against 0.808 and 0.82 against 0.81 in two calls;
    benchmarks/reports/norm-once-2026-12-04-h200); ``INFER_DECODE_NORM_ONCE`` (0 / 1) overrides
    both (A/B measurements)."""
    return bool(_env_int("INFER_DECODE_NORM_ONCE", int(DecodeLayerConfig.norm_once and not stage_by_stage)))


def default_group_sync() -> int:
    """``group_sync`` of the configuration a launch picks for itself: 2 (W1 Qwen3-0.6B on an
    H200, medians of 3: 0.6545 and 0.653 ms per token against 0.666 and 0.665 with barriers 0
    and 1; 1: 0.658; chain 19.6 against 20.1 µs per layer;
    benchmarks/reports/group-sync-2026-12-04-h200), or ``INFER_DECODE_GROUP_SYNC`` (0 / 1 / 2)
    from the environment (A/B measurements)."""
    return _env_int("INFER_DECODE_GROUP_SYNC", 2)


def default_rope_early() -> int:
    """``rope_early`` of the configuration a launch picks for itself: the config's default, or
    ``INFER_DECODE_ROPE_EARLY`` (0 / 1 / 2) from the environment (A/B measurements)."""
    return _env_int("INFER_DECODE_ROPE_EARLY", DecodeLayerConfig.rope_early)


def splits_for(num_kv_heads: int, num_sms: int) -> int:
    """Key splits per KV head: (KV heads x splits) about fills the SMs, at most 16; or
    ``INFER_DECODE_SPLITS`` from the environment (A/B measurements)."""
    splits = _env_int("INFER_DECODE_SPLITS", max(min(_pow2_floor(num_sms // num_kv_heads), 16), 1))
    if splits < 1 or splits & (splits - 1):
        raise ValueError(f"INFER_DECODE_SPLITS={splits}: give a power of two (1, 2, 4, 8 or 16)")
    return splits
