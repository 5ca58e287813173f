"""Where a batch-1 decode step's device time goes: chains of the step's kernels, each kind on
its own and the whole decoder layer, captured in one CUDA graph per chain and replayed.

A decode step at batch 1 is a chain of ~10 dependent short kernels per layer (Qwen3-0.6B: 28
layers). Each kernel is timed alone elsewhere (``benchmarks/kernels.py``,
``kernels_small_m_gemm.py``, from a cold L2); here the question is what a kernel costs *in the
chain*: its launch and drain, under programmatic dependent launch (PDL) or not. Chains, at the real
shapes of ``--shape`` (distinct weights per layer, so weights come from DRAM as in a step):

- ``noop``: the layer's kernel count of one-program kernels that only wait (the floor of a
  launch in a chain);
- ``gemm`` / ``gemm-cublas``: the four projections of every layer (small-M GEMM / cuBLAS);
- ``norm``, ``act``, ``attention`` (QK-norm + RoPE + KV write, then paged attention over
  ``--context`` keys, with the split-KV reduction a captured decode graph uses);
- ``layer``: the whole decoder layer as the model runs it; ``layer-prologues``: with the
  RMSNorms and the SiLU-and-mul folded into the GEMMs' prologues;
- ``layer-persistent``: the whole layer as one persistent launch
  (:mod:`infer_core.kernels.decode_layer`); ``--chains persistent-sweep`` names its config
  variants (``layer-persistent-e<weight elements per step>-w<warps>-p<pipeline stages>-f<fewest steps>-s<programs per SM>``), ``--chains
  persistent-stages`` the launch cut after each stage (``persistent-upto-<k>``); ``--chains
  persistent-sync`` the barrier variants over the defaults: polls without and with a nanosleep
  before each, arriving before or after the next stage's first tiles are requested, the first key
  tile requested before barrier 0's wait or after it
  (``layer-persistent-<variant>-s<programs per SM>``, variants in :data:`SYNC_VARIANTS`; note
  that the variants start from :func:`~infer_core.kernels.decode_layer.choose_config` without
  balanced stages unless they name ``balanced_elements``, while ``layer-persistent`` takes the
  configuration a launch picks for itself, as the engine does);
- ``step-persistent`` / ``step-persistent-<variant>-s<programs per SM>`` (asked for by name):
  the persistent layers, then the final norm and the LM head with its greedy pick: a decode
  step's device work as the engine's graph runs it (their µs per layer include the head);
  ``step-persistent-headnorm``: the final norm folded into the head's launch.

Each chain runs with PDL on and off (``INFER_PDL``). Timing: :func:`benchmarks.kernels.timed` (CUDA-graph
replays, median, minus an L2 flush). Writes ``decode_chain.json`` and ``decode_chain.md``.

    python benchmarks/decode_chain.py --shape qwen3-0.6b --out benchmarks/reports/decode-chain-<date>-<device>
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import environment, measure_ceilings, timed

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import build_attention_metadata
from infer_core.bench.checkpoints import SHAPES, shape_config
from infer_core.kernels import decode_layer as dl
from infer_core.kernels.act_and_mul import silu_and_mul
from infer_core.kernels.device import num_sms
from infer_core.kernels.kv_cache_write import KVWrite
from infer_core.kernels.lm_head import LMHeadWorkspace, lm_head_argmax
from infer_core.kernels.paged_attention import paged_attention
from infer_core.kernels.pdl import use_pdl, wait_for_prior
from infer_core.kernels.qk_norm_rope import qk_norm_rope
from infer_core.kernels.rms_norm import fused_add_rms_norm
from infer_core.kernels.small_m_gemm import LaunchConfig, NormPrologue, small_m_gemm
from infer_core.loader.hf_config import head_dim_of

BF16 = torch.bfloat16
KERNELS_PER_LAYER = 10  # norm, qkv, qk-norm-rope, attention, reduce, o, norm, gate/up, act, down
# one-row GEMM configs tried in the chain (``--chains sweep``): weight rows per program, K tile, warps, stages
SWEEP = [LaunchConfig(n, k, 1, num_warps=w, num_stages=st)
         for n, k, w, st in [(1, 1024, 2, 3), (1, 2048, 4, 3), (2, 1024, 4, 3), (2, 2048, 4, 4), (2, 1024, 2, 3),
                             (4, 1024, 4, 3), (4, 512, 4, 3), (4, 2048, 8, 3), (8, 512, 4, 3), (8, 1024, 8, 3),
                             (16, 256, 4, 3), (16, 512, 8, 3)]]


@triton.jit
def _noop_kernel(x_ptr, PDL: tl.constexpr):
    if PDL:
        wait_for_prior()
    tl.store(x_ptr + tl.program_id(0), tl.load(x_ptr + tl.program_id(0)) + 1.0)


def layer_shape(shape: str) -> tuple[int, int, int, int, int, int]:
    """(hidden, intermediate, q heads, kv heads, head dim, layers) of a model shape of
    :mod:`infer_core.bench.checkpoints` (its Hub config values)."""
    cfg = shape_config(shape)
    return (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
            cfg.get("num_key_value_heads") or cfg["num_attention_heads"], head_dim_of(cfg), cfg["num_hidden_layers"])


def noop(x: torch.Tensor) -> None:
    pdl = use_pdl(x)
    _noop_kernel[(1,)](x, PDL=pdl, num_warps=1, launch_pdl=pdl)


class Layer:
    """One decoder layer's weights and activations at batch 1 (random, bf16)."""

    def __init__(self, shape: tuple, context: int, max_seq_len: int, qk_norm: bool = True) -> None:
        hidden, inter, hq, hkv, d, _ = shape
        dev = "cuda"

        def w(n: int, k: int) -> torch.Tensor:
            return torch.randn(n, k, device=dev, dtype=BF16) / k**0.5

        self.qkv, self.o = w((hq + 2 * hkv) * d, hidden), w(hidden, hq * d)
        self.gate_up, self.down = w(2 * inter, hidden), w(hidden, inter)
        self.norm1 = torch.ones(hidden, device=dev, dtype=BF16)
        self.norm2 = torch.ones(hidden, device=dev, dtype=BF16)
        self.q_norm = torch.ones(d, device=dev, dtype=BF16)
        self.k_norm = torch.ones(d, device=dev, dtype=BF16)
        self.sizes = (hq * d, hkv * d, hkv * d)
        self.attn = AttentionLayer(hq, hkv, d, d**-0.5)
        self.context = context
        blocks = -(-(context + 1) // 16)
        self.cache = torch.randn(2, blocks, 16, hkv, d, device=dev, dtype=BF16)
        md = build_attention_metadata([1], [context + 1], [list(range(blocks))], 16, dev)
        self.md = replace(md, max_seq_len=max_seq_len)  # as a captured decode graph sees it
        self.positions = torch.full((1,), context, device=dev, dtype=torch.int64)
        half = d // 2
        self.cos = torch.randn(max_seq_len, half, device=dev, dtype=torch.float32)
        self.sin = torch.randn(max_seq_len, half, device=dev, dtype=torch.float32)
        self.x = torch.randn(1, hidden, device=dev, dtype=BF16)
        self.res = torch.randn(1, hidden, device=dev, dtype=BF16)
        self.a = torch.randn(1, hq * d, device=dev, dtype=BF16)
        self.gu = torch.randn(1, 2 * inter, device=dev, dtype=BF16)
        self.mid = torch.randn(1, inter, device=dev, dtype=BF16)
        self.qkv_out = torch.randn(1, sum(self.sizes), device=dev, dtype=BF16)
        self.weights = dl.DecodeLayerWeights(self.qkv, self.o, self.gate_up, self.down, self.norm1, self.norm2, 1e-6,
                                             self.q_norm if qk_norm else None, self.k_norm if qk_norm else None)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qkv, self.o, self.gate_up, self.down))

    def kv_bytes(self) -> int:
        """The keys and values of the context that one decode step's attention reads."""
        hkv, d = self.attn.num_kv_heads, self.attn.head_dim
        return 2 * self.context * hkv * d * self.cache.element_size()

    def attention(self, qkv: torch.Tensor) -> torch.Tensor:
        hq, hkv, d = self.attn.num_heads, self.attn.num_kv_heads, self.attn.head_dim
        q, k, v = qkv.split(self.sizes, dim=-1)
        q, k, v = q.view(1, hq, d), k.view(1, hkv, d), v.view(1, hkv, d)
        qk_norm_rope(self.positions, q, k, self.q_norm, self.k_norm, self.cos, self.sin, 1e-6,
                     kv=KVWrite(v, self.cache, self.md.slot_mapping))
        return paged_attention(self.attn, q, self.cache, self.md).view(1, -1)

    def forward(self, x: torch.Tensor, res: torch.Tensor, prologues: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if prologues:
            qkv, res = small_m_gemm(x, self.qkv, norm=NormPrologue(self.norm1, 1e-6, False, res))
        else:
            h, res = fused_add_rms_norm(x, res, self.norm1, 1e-6)
            qkv = small_m_gemm(h, self.qkv)
        o = small_m_gemm(self.attention(qkv), self.o)
        if prologues:
            gu, res = small_m_gemm(o, self.gate_up, norm=NormPrologue(self.norm2, 1e-6, False, res))
            return small_m_gemm(gu, self.down, act_and_mul="silu"), res
        h, res = fused_add_rms_norm(o, res, self.norm2, 1e-6)
        return small_m_gemm(silu_and_mul(small_m_gemm(h, self.gate_up)), self.down), res


# barrier variants of the persistent launch (DecodeLayerConfig fields over the defaults): nanoseconds
# slept before each poll; arriving before the next stage's first tiles are requested (default on);
# the first key tile requested at the launch's start (kv_early 2, the default), before barrier 0's
# wait (1) or in the attention stage (0)
SYNC_VARIANTS = {"nosleep": {"poll_sleep": 0}, **{f"sleep{ns}": {"poll_sleep": ns} for ns in (32, 100, 200, 400)},
                 "arrivefirst": {"arrive_first": True}, "nosleep-arrivefirst": {"poll_sleep": 0, "arrive_first": True},
                 "arrivelate": {"arrive_first": False}, "kvlate": {"kv_early": 0}, "kvbarrier": {"kv_early": 1},
                 "plain": {"arrive_first": False, "kv_early": 0}, "default": {},
                 # the norm stages' input row and weight loaded again after the reduction (norm_once off)
                 "normtwice": {"norm_once": False},
                 # requested between barrier 0's arrival and wait: the attention stage's rotary row and both
                 # QK-norm weights (rope_early 2) or the k-norm weight (1, the default); 0: loaded in the stage
                 "ropeearly": {"rope_early": 2}, "ropebarrier": {"rope_early": 1},
                 # no barrier 0: each attention item waits for its KV group's qkv producers (balanced qkv)
                 "groupsync": {"group_sync": 1, "balanced_elements": 16384},
                 # ... and no barrier 1: each merge waits for its KV group's attention items
                 "groupsync2": {"group_sync": 2, "balanced_elements": 16384},
                 # key splits per KV head (the default: 16 for 8 KV heads on 132 SMs)
                 **{f"splits{n}": {"splits": n} for n in (2, 4, 8)},
                 # ... with the engine's group_sync 2 and balanced stages
                 **{f"groupsync2-splits{n}": {"group_sync": 2, "balanced_elements": 16384, "splits": n} for n in (4, 8)},
                 **{f"ropeearly-splits{n}": {"rope_early": 2, "splits": n} for n in (4, 8)},
                 # 32-key attention tiles (the first one, requested at the launch's start, holds half the registers)
                 "tile32": {"tile": 32},
                 # the first key tile at the launch's start (kv_early = 2), with balanced stages
                 "kvstart": {"kv_early": 2, "balanced_elements": 16384},
                 # choose_config's balanced GEMM stages (a share of up to that many weight elements)
                 **{f"balanced{e // 1024}k": {"balanced_elements": e} for e in (16384, 32768)},
                 # bf16 pair tiles in the GEMM stages (qkv, o, gate/up, down) whose digit is 1
                 **{f"pairs{d}": {"pairs": tuple(c == "1" for c in d), "balanced_elements": 16384}
                    for d in ("0000", "1111", "0010", "1010", "1011", "1110")},
                 # gate/up's row chunks of r rows (fewer, larger tiles: fewer dependent round trips per program)
                 **{f"gu{r}": {"rows_gu": r, "balanced_elements": 16384} for r in (2, 8)},
                 # every stage its own launch (stage_by_stage, PDL between them): launch boundaries instead of
                 # grid barriers
                 "stages": {"stages": True, "balanced_elements": 16384},
                 # ... each stage's launch with its own programs per SM (qkv, attention, merge, o, gate/up, down)
                 **{f"stages{''.join(map(str, c))}": {"stages": c, "balanced_elements": 16384}
                    for c in ((2, 1, 1, 4, 4, 4), (2, 1, 1, 2, 4, 4), (4, 1, 1, 4, 4, 4), (2, 1, 1, 2, 2, 2),
                              (3, 1, 1, 3, 3, 3), (2, 2, 2, 4, 4, 4))},
                 # Llama-3.2-1B's engine default (stages 4,1,1,4,4,4) with norm_once off
                 "stages411444-normtwice": {"stages": (4, 1, 1, 4, 4, 4), "balanced_elements": 16384,
                                            "norm_once": False},
                 # each attention item asks L2 for its split's later key tiles at its start (kv_ahead): with
                 # the engine's group_sync 2 (one launch) and Llama-3.2-1B's stages (4,1,1,4,4,4)
                 "groupsync2-kvahead": {"group_sync": 2, "balanced_elements": 16384, "kv_ahead": True},
                 # ... with 8 key splits (W1 0.642 against 0.647 ms per token, but slower at long contexts without it)
                 "groupsync2-splits8-kvahead": {"group_sync": 2, "balanced_elements": 16384, "splits": 8,
                                                "kv_ahead": True},
                 # each step uses the fewest splits from 8 up that give each split at most one key tile (min_splits),
                 # at most 16 or 32 (256 items for 264 programs at 2 per SM), with kv_ahead for the longer contexts
                 "groupsync2-minsplits8": {"group_sync": 2, "balanced_elements": 16384, "min_splits": 8},
                 "groupsync2-splits32-minsplits8": {"group_sync": 2, "balanced_elements": 16384, "splits": 32,
                                                    "min_splits": 8},
                 "groupsync2-splits32-minsplits8-kvahead": {"group_sync": 2, "balanced_elements": 16384, "splits": 32,
                                                            "min_splits": 8, "kv_ahead": True},
                 "stages411444-minsplits8-kvahead": {"stages": (4, 1, 1, 4, 4, 4), "balanced_elements": 16384,
                                                     "min_splits": 8, "kv_ahead": True},
                 "stages411444-kvahead": {"stages": (4, 1, 1, 4, 4, 4), "balanced_elements": 16384,
                                          "kv_ahead": True}}
# (weight elements per step, warps, pipeline stages, fewest steps, programs per SM)
PERSISTENT_SWEEP = [(16384, 4, 1, 0, 1), (16384, 8, 1, 0, 1), (32768, 8, 1, 1, 1),
                    (8192, 4, 1, 0, 2), (16384, 4, 1, 0, 2), (16384, 4, 1, 1, 2), (32768, 8, 1, 1, 2),
                    (4096, 4, 1, 0, 4), (8192, 4, 1, 0, 4), (8192, 4, 1, 1, 4), (16384, 4, 1, 1, 4),
                    (4096, 2, 1, 0, 8), (8192, 2, 1, 1, 8), (8192, 4, 1, 1, 3), (16384, 4, 1, 1, 3)]


class Head:
    """A decode step's tail at batch 1: the final norm and the LM head with its greedy pick
    (``kernels.lm_head``), random weights at the model's vocabulary."""

    def __init__(self, vocab: int, hidden: int) -> None:
        self.weight = torch.randn(vocab, hidden, device="cuda", dtype=BF16) / hidden**0.5
        self.norm = torch.ones(hidden, device="cuda", dtype=BF16)
        self.logits = torch.empty(1, vocab, device="cuda", dtype=BF16)
        self.ids = torch.empty(1, device="cuda", dtype=torch.int64)
        self.workspace = LMHeadWorkspace()
        self.fold = False  # the final norm in the head's launch (lm_head_argmax(norm=...), INFER_LM_HEAD_NORM)

    def bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def folded(self) -> Head:
        """The same head (the same tensors) with the final norm folded into its launch."""
        head = copy.copy(self)
        head.fold = True
        return head

    def __call__(self, x: torch.Tensor, res: torch.Tensor) -> None:
        if self.fold:
            lm_head_argmax(x, self.weight, self.logits, self.ids, self.workspace, norm=(res, self.norm, 1e-6))
            return
        h, _ = fused_add_rms_norm(x, res, self.norm, 1e-6)
        lm_head_argmax(h, self.weight, self.logits, self.ids, self.workspace)


def variant_configs(hidden: int, inter: int, num_heads: int, num_kv_heads: int, head_dim: int, sms: int,
                    sync: dict | None, *, max_elements: int = 8192, num_warps: int = 4, pipeline: int = 1,
                    fewest_steps: bool = True, programs_per_sm: int = 4, last_stage: int = 6
                    ) -> tuple[dl.DecodeLayerConfig, list[dl.DecodeLayerConfig] | None, bool | tuple]:
    """The launch configuration of a persistent chain with ``sync`` (a :data:`SYNC_VARIANTS`
    entry: config fields, and ``balanced_elements``, ``rows_gu``, ``stages``), the six stage
    launches' own (``stages`` as per-stage programs per SM) or ``None``, and ``stages``."""
    sync = dict(sync or {})
    rows_gu = sync.pop("rows_gu", None)
    staged = sync.pop("stages", False)
    balanced = sync.pop("balanced_elements", 0)
    cfg = replace(dl.choose_config(hidden, inter, num_heads, num_kv_heads, head_dim, sms, max_elements=max_elements,
                                   fewest_steps=fewest_steps, programs_per_sm=programs_per_sm,
                                   balanced_elements=balanced),
                  num_warps=num_warps, pipeline=pipeline, last_stage=last_stage)
    if sync:
        cfg = replace(cfg, **sync)
    if rows_gu:
        cfg = replace(cfg, rows=(*cfg.rows[:2], rows_gu, cfg.rows[3]),
                      balanced=(*cfg.balanced[:2], False, cfg.balanced[3]))
    stage_configs = None
    if isinstance(staged, tuple):  # each stage's launch at its own programs per SM (else all at programs_per_sm)
        stage_configs = [replace(cfg, num_programs=c.num_programs, rows=c.rows, bk=c.bk, balanced=c.balanced)
                         for c in (dl.choose_config(hidden, inter, num_heads, num_kv_heads, head_dim, sms,
                                                    max_elements=max_elements, fewest_steps=fewest_steps,
                                                    programs_per_sm=n, balanced_elements=balanced) for n in staged)]
    return cfg, stage_configs, staged


def persistent(layers: list[Layer], max_elements: int = 8192, num_warps: int = 4, pipeline: int = 1,
               fewest_steps: bool = True, programs_per_sm: int = 4, last_stage: int = 6, default: bool = False,
               sync: dict | None = None, timelines: list[torch.Tensor] | None = None, head: Head | None = None):
    """The chain of persistent layer launches (one per layer, ping-pong activations); with
    ``default``, each launch picks its own configuration (what a model would run); ``sync``
    overrides config fields (:data:`SYNC_VARIANTS`); with ``timelines`` (one int64 ``[programs, TIMELINE_SLOTS]`` tensor per layer), each launch stamps its stage
    boundaries there; with ``head``, the step's final norm and LM head follow the layers (a
    whole decode step's device work, as the engine's graph runs it)."""
    first = layers[0]
    hidden, inter = first.o.shape[0], first.down.shape[1]
    attn = first.attn
    cfg, stage_configs, staged = variant_configs(hidden, inter, attn.num_heads, attn.num_kv_heads, attn.head_dim,
                                                 num_sms(torch.device("cuda")), sync, max_elements=max_elements,
                                                 num_warps=num_warps, pipeline=pipeline, fewest_steps=fewest_steps,
                                                 programs_per_sm=programs_per_sm, last_stage=last_stage)
    ws = dl.DecodeWorkspace(hidden, inter, attn.num_heads, attn.num_kv_heads, attn.head_dim, cfg.splits, BF16, "cuda")

    reported = []

    def run() -> None:
        x, res = first.x, first.res
        for i, layer in enumerate(layers):
            x, res = dl.decode_layer(x, res, layer.weights, layer.attn, layer.cache, layer.md, layer.positions,
                                     layer.cos, layer.sin, ws, config=None if default else cfg,
                                     timeline=timelines[i] if timelines else None, stage_by_stage=bool(staged),
                                     stage_configs=stage_configs)
        if head is not None:
            head(x, res)
        if not reported and ws.resident:  # once: what the compiled launch needs (programs that fit, regs, smem)
            reported.append(True)
            print(f"  persistent {sync or ''}: (programs that fit, registers, shared bytes) "
                  f"{sorted(set(ws.resident.values()))}", flush=True)
    return run


def chains(layers: list[Layer], head: Head | None = None) -> dict:
    """name: (function running the chain, kernels in it, weight bytes it streams); with
    ``head``, also the ``step-persistent*`` chains (the layers, then the final norm and the LM
    head: a decode step's device work; their per-layer figures include the head)."""
    n = len(layers)
    wbytes = sum(layer.bytes() for layer in layers)
    steps = {}
    if head is not None:
        sbytes = wbytes + head.bytes()
        steps = {"step-persistent": (persistent(layers, default=True, head=head), n, sbytes),
                 "step-persistent-headnorm": (persistent(layers, default=True, head=head.folded()), n, sbytes),
                 **{f"step-persistent-{name}-s{sm}": (persistent(layers, programs_per_sm=sm, sync=sync, head=head), n,
                                                      sbytes)
                    for name, sync in SYNC_VARIANTS.items() for sm in (4, 2)}}
    counter = torch.zeros(132, device="cuda")

    def gemm(config: LaunchConfig | None = None):
        def run() -> None:
            for layer in layers:
                small_m_gemm(layer.x, layer.qkv, config=config)
                small_m_gemm(layer.a, layer.o, config=config)
                small_m_gemm(layer.x, layer.gate_up, config=config)
                small_m_gemm(layer.mid, layer.down, config=config)
        return run

    def gemm_cublas() -> None:
        for layer in layers:
            F.linear(layer.x, layer.qkv)
            F.linear(layer.a, layer.o)
            F.linear(layer.x, layer.gate_up)
            F.linear(layer.mid, layer.down)

    def norm() -> None:
        for layer in layers:
            fused_add_rms_norm(layer.x, layer.res, layer.norm1, 1e-6)
            fused_add_rms_norm(layer.x, layer.res, layer.norm2, 1e-6)

    def act() -> None:
        for layer in layers:
            silu_and_mul(layer.gu)

    def attention() -> None:
        for layer in layers:
            layer.attention(layer.qkv_out)

    def run_layers(prologues: bool):
        def run() -> None:
            x, res = layers[0].x, layers[0].res
            for layer in layers:
                x, res = layer.forward(x, res, prologues)
        return run

    return {
        "noop": (lambda: [noop(counter) for _ in range(KERNELS_PER_LAYER * n)], KERNELS_PER_LAYER * n, 0),
        "gemm": (gemm(), 4 * n, wbytes),
        **{f"gemm-n{c.block_n}-k{c.block_k}-w{c.num_warps}-s{c.num_stages}": (gemm(c), 4 * n, wbytes)
           for c in SWEEP},
        "gemm-cublas": (gemm_cublas, 4 * n, wbytes),
        "norm": (norm, 2 * n, 0),
        "act": (act, n, 0),
        "attention": (attention, 3 * n, 0),
        "layer": (run_layers(False), KERNELS_PER_LAYER * n, wbytes),
        "layer-prologues": (run_layers(True), (KERNELS_PER_LAYER - 3) * n, wbytes),
        "layer-persistent": (persistent(layers, default=True), n, wbytes),
        **{f"layer-persistent-e{e}-w{w}-p{p}-f{f}-s{sm}": (persistent(layers, e, w, p, bool(f), sm), n, wbytes)
           for e, w, p, f, sm in PERSISTENT_SWEEP},
        # the launch cut after stage k (1 qkv, 2 attention, 3 merge, 4 o, 5 gate/up, 6 down): each
        # stage's cost, its barrier included, is the difference to the one before
        **{f"persistent-upto-{k}": (persistent(layers, last_stage=k), n, 0) for k in range(1, 7)},
        # the barrier variants: --chains persistent-sync
        **{f"layer-persistent-{name}-s{sm}": (persistent(layers, programs_per_sm=sm, sync=sync), n, wbytes)
           for name, sync in SYNC_VARIANTS.items() for sm in (4, 3, 2)},
        **steps,
    }


def add_layer_args(parser: argparse.ArgumentParser) -> None:
    """The model shape and attention context of the layers a chain runs."""
    parser.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))  # checkpoints' shapes
    parser.add_argument("--context", type=int, default=256, help="keys each attention reads")
    parser.add_argument("--max-seq-len", type=int, default=4096, help="what the captured graph's attention config sees")
    parser.add_argument("--shared-weights", action="store_true",
                        help="every layer reads the first layer's weights (they stay in L2: a diagnostic of how "
                             "much of a stage's time is DRAM)")


def model_layers(args: argparse.Namespace) -> list[Layer]:
    """Every layer of ``args.shape`` with distinct random weights (seed 0), or (``--shared-weights``)
    all with the first layer's."""
    torch.manual_seed(0)
    shape = layer_shape(args.shape)
    layers = [Layer(shape, args.context, args.max_seq_len, qk_norm=args.shape.startswith("qwen"))
              for _ in range(shape[5])]
    if getattr(args, "shared_weights", False):
        for layer in layers[1:]:
            layer.qkv, layer.o, layer.gate_up, layer.down = layers[0].qkv, layers[0].o, layers[0].gate_up, layers[0].down
            layer.weights = replace(layer.weights, qkv=layer.qkv, o=layer.o, gate_up=layer.gate_up, down=layer.down)
    return layers


def unknown_variants(names: list[str]) -> list[str]:
    """The persistent variants named by chains ``(layer|step)-persistent-<variant>-s<N>`` in
    ``names`` that :data:`SYNC_VARIANTS` lacks (the sweep's ``e..-w..-p..-f..`` names aside)."""
    variants = (re.fullmatch(r"(?:layer|step)-persistent-(.+)-s\d", name) for name in names)
    return sorted({m[1] for m in variants if m and m[1] not in SYNC_VARIANTS
                   and not re.fullmatch(r"e\d+-w\d+-p\d+-f\d", m[1])})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_args(parser)
    parser.add_argument("--chains", default="", help="comma-separated subset (default: all but the GEMM config "
                                                     "sweep; 'sweep' names the sweep's chains)")
    parser.add_argument("--pdl", default="1,0", help="PDL settings to time each chain with")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    unknown = unknown_variants(args.chains.split(","))
    if unknown:  # (before any device work)
        parser.error(f"unknown persistent variants {unknown}; of {sorted(SYNC_VARIANTS)}")
    shape = layer_shape(args.shape)
    layers = model_layers(args)
    ceilings = measure_ceilings()
    env = environment()
    # the step chains' head (a vocabulary-sized weight) only when one is asked for
    head = Head(shape_config(args.shape)["vocab_size"], shape[0]) if "step-" in args.chains else None
    all_chains = chains(layers, head)
    sweep = [c for c in all_chains if c.startswith("gemm-n")]
    sync = [f"layer-persistent-{name}-s{sm}" for name in SYNC_VARIANTS for sm in (4, 3, 2)]
    persistent_sweep = [c for c in all_chains if c.startswith("layer-persistent-") and c not in sync]
    upto = [c for c in all_chains if c.startswith("persistent-upto-")]
    steps = [c for c in all_chains if c.startswith("step-")]
    default = [c for c in all_chains if c not in sweep + persistent_sweep + upto + sync + steps]
    named = {"sweep": sweep, "persistent-sweep": persistent_sweep, "persistent-stages": upto, "persistent-sync": sync}
    wanted = [c for part in args.chains.split(",") if part for c in named.get(part, [part])] or default
    unknown = sorted(set(wanted) - set(all_chains))
    if unknown:
        parser.error(f"unknown chains {unknown}; persistent variants: {sorted(SYNC_VARIANTS)}")
    rows = []
    for name in wanted:
        fn, kernels, wbytes = all_chains[name]
        for pdl in args.pdl.split(","):
            os.environ["INFER_PDL"] = pdl
            try:
                us = timed(fn) * 1e3
            except ValueError as e:  # a persistent launch whose programs would not all fit at once
                print(f"{name:16s} skipped: {e}", flush=True)
                break
            # the roofline: the layer's weights (the step chains': and the head's share) and the KV it reads, at
            # the copy ceiling
            moved = wbytes / len(layers) + layers[0].kv_bytes() if wbytes else 0
            row = {"chain": name, "pdl": pdl == "1", "kernels": kernels,
                   "us": us, "us_per_kernel": us / kernels, "us_per_layer": us / len(layers),
                   "weight_bytes": wbytes, "gbps": wbytes / us / 1e3 if wbytes else None,
                   "kv_bytes_per_layer": layers[0].kv_bytes(),
                   "roofline_us_per_layer": moved / ceilings["copy_gbps"] / 1e3 if moved else None}
            rows.append(row)
            gbps = f"{row['gbps']:.0f} GB/s" if wbytes else ""
            print(f"{name:16s} pdl={pdl}: {us:8.1f} µs, {row['us_per_kernel']:5.2f} µs/kernel, "
                  f"{row['us_per_layer']:5.1f} µs/layer {gbps}", flush=True)
    os.environ.pop("INFER_PDL")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"environment": env, "ceilings": ceilings, "shape": args.shape, "context": args.context,
              "max_seq_len": args.max_seq_len, "rows": rows}
    (args.out / "decode_chain.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Decode-step kernel chains — {env['device']}, {args.shape}", "",
             f"{env['date']}, commit `{env['commit']}`; torch {env['torch']}, triton {env['triton']}; batch 1, "
             f"{shape[5]} layers, context {args.context}, attention configured for {args.max_seq_len}. "
             f"Copy ceiling {ceilings['copy_gbps']:.0f} GB/s. CUDA-graph replays, median, minus an L2 flush.", "",
             f"Roofline: a layer's weights and the {layers[0].kv_bytes() / 2**20:.1f} MiB of keys and values "
             "its attention reads, at the copy ceiling.", "",
             "| chain | PDL | kernels | µs | µs/kernel | µs/layer | weight GB/s | roofline µs/layer |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gbps = f"{r['gbps']:.0f}" if r["gbps"] else "–"
        roof = f"{r['roofline_us_per_layer']:.1f}" if r["roofline_us_per_layer"] else "–"
        lines.append(f"| {r['chain']} | {'on' if r['pdl'] else 'off'} | {r['kernels']} | {r['us']:.1f} | "
                     f"{r['us_per_kernel']:.2f} | {r['us_per_layer']:.1f} | {gbps} | {roof} |")
    (args.out / "decode_chain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
