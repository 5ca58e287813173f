"""The persistent decode-layer kernel against its torch reference, shared by the interpreter
tests (stage by stage, small shapes, fp32/fp16) and the GPU tests (one launch with its grid
barriers, real shapes, bf16)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import build_attention_metadata
from infer_core.kernels import decode_layer as dl
from tests.kernels.cases import generator, randn, rope_tables

# Relative to the output's largest magnitude: a few GEMMs and attention, each rounded.
LAYER_TOL = {torch.float32: 1e-4, torch.float16: 6e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class LayerCase:
    hidden: int
    intermediate: int
    kv_heads: int
    group: int
    head_dim: int
    context: int  # keys before the step's own
    block_size: int
    qk_norm: bool
    residual: bool
    programs: int
    splits: int
    tile: int
    max_elements: int
    max_bk: int
    prefetch: bool
    seed: int
    pipeline: int = 3
    fewest_steps: bool = False
    balanced: bool = False  # the GEMM stages whose shares fit are balanced (choose_config)
    pairs: tuple[bool, bool, bool, bool] = dl.DecodeLayerConfig.pairs  # bf16 pair tiles per GEMM stage (bf16 only)


@st.composite
def layer_cases(draw, *, programs=(1, 3, 4, 5)) -> LayerCase:
    return LayerCase(
        hidden=draw(st.sampled_from([32, 64, 96])), intermediate=draw(st.sampled_from([48, 64, 160])),
        kv_heads=draw(st.sampled_from([1, 2])), group=draw(st.sampled_from([1, 2, 4])),
        head_dim=draw(st.sampled_from([32, 64])), context=draw(st.integers(0, 90)),
        block_size=draw(st.sampled_from([1, 4, 16])), qk_norm=draw(st.booleans()), residual=draw(st.booleans()),
        programs=draw(st.sampled_from(programs)), splits=draw(st.sampled_from([1, 2, 4])),
        tile=draw(st.sampled_from([16, 32])), max_elements=draw(st.sampled_from([256, 1024, 16384])),
        max_bk=draw(st.sampled_from([16, 32, 2048])), prefetch=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
        pipeline=draw(st.sampled_from([1, 2, 3])), fewest_steps=draw(st.booleans()), balanced=draw(st.booleans()),
        pairs=tuple(draw(st.lists(st.booleans(), min_size=4, max_size=4))),
    )


def layer_inputs(case: LayerCase, device: str, dtype: torch.dtype):
    gen = generator(case.seed)
    hq, hkv, d, h, i = case.kv_heads * case.group, case.kv_heads, case.head_dim, case.hidden, case.intermediate

    def w(n: int, k: int) -> torch.Tensor:
        return randn(gen, n, k, device=device, dtype=dtype, scale=k**-0.5)

    def norm_weight(n: int) -> torch.Tensor:
        return (1.0 + randn(gen, n, device="cpu", dtype=torch.float32, scale=0.2)).to(device=device, dtype=dtype)

    weights = dl.DecodeLayerWeights(
        qkv=w((hq + 2 * hkv) * d, h), o=w(h, hq * d), gate_up=w(2 * i, h), down=w(h, i),
        input_norm=norm_weight(h), post_norm=norm_weight(h), eps=1e-6,
        q_norm=norm_weight(d) if case.qk_norm else None, k_norm=norm_weight(d) if case.qk_norm else None,
    )
    layer = AttentionLayer(hq, hkv, d, d**-0.5)
    seq_len = case.context + 1
    blocks = -(-seq_len // case.block_size) + 2
    table = torch.randperm(blocks, generator=gen).tolist()  # scattered blocks, two unused
    md = build_attention_metadata([1], [seq_len], [table], case.block_size, device)
    cache = randn(gen, 2, blocks, case.block_size, hkv, d, device=device, dtype=dtype)
    cos, sin = rope_tables(d, seq_len + 8, 10000.0, device)
    positions = torch.tensor([case.context], dtype=torch.int64, device=device)
    x = randn(gen, 1, h, device=device, dtype=dtype)
    res = randn(gen, 1, h, device=device, dtype=dtype, scale=2.0) if case.residual else None
    return weights, layer, md, cache, cos, sin, positions, x, res


def config_for(case: LayerCase, dtype: torch.dtype) -> dl.DecodeLayerConfig:
    hq = case.kv_heads * case.group
    cfg = dl.choose_config(case.hidden, case.intermediate, hq, case.kv_heads, case.head_dim, case.programs, dtype,
                           max_elements=case.max_elements, max_bk=case.max_bk, fewest_steps=case.fewest_steps,
                           num_warps=8, balanced_elements=4 * case.max_elements if case.balanced else 0)
    return replace(cfg, splits=case.splits, tile=case.tile, prefetch=case.prefetch, pipeline=case.pipeline,
                   pairs=case.pairs)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6)).item()


def check_decode_layer(device: str, dtype: torch.dtype, case: LayerCase, *, stage_by_stage: bool,
                       config: dl.DecodeLayerConfig | None = None, default_config: bool = False,
                       stage_configs: list[dl.DecodeLayerConfig] | None = None) -> None:
    """``default_config``: the launch picks its own (``config=None``), else ``config`` or the case's;
    ``stage_configs``: each stage's launch its own (stage by stage)."""
    weights, layer, md, cache, cos, sin, positions, x, res = layer_inputs(case, device, dtype)
    cfg = config or config_for(case, dtype)
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, dtype, device)
    if default_config:
        cfg = None
    ref_cache = cache.clone()
    ref_out, ref_res = dl.decode_layer_ref(x, res, weights, layer, ref_cache, md, positions, cos, sin)
    out, new_res = dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg,
                                   stage_by_stage=stage_by_stage, stage_configs=stage_configs)
    tol = LAYER_TOL[dtype]
    assert relative_error(new_res, ref_res) <= tol, (relative_error(new_res, ref_res), case)
    assert relative_error(out, ref_out) <= tol, (relative_error(out, ref_out), case)
    slot = md.slot_mapping[0].item()
    flat, ref_flat = cache.view(2, -1, layer.num_kv_heads, layer.head_dim), ref_cache.view_as(
        cache.view(2, -1, layer.num_kv_heads, layer.head_dim))
    assert relative_error(flat[:, slot], ref_flat[:, slot]) <= tol, case  # the step's K/V
    others = torch.ones(flat.shape[1], dtype=torch.bool, device=device)
    others[slot] = False
    assert torch.equal(flat[:, others], ref_flat[:, others]), case  # nothing else written
    assert ws.error.item() == 0, "a grid barrier timed out"
    check_counters(ws, 0 if stage_by_stage else 1)


def group_producers(ws: dl.DecodeWorkspace, programs: int) -> list[int]:
    """:func:`group_producer_counts` of a workspace's layer shape."""
    hkv = (ws.counters.numel() - 8) // 2
    hq = ws.part_max.numel() // ws.splits
    return group_producer_counts(programs, hq, hkv, ws.qkv.numel() // (hq + 2 * hkv))


def group_producer_counts(programs: int, hq: int, hkv: int, d: int) -> list[int]:
    """Per KV group, how many (program, interval) pairs a group_sync launch counts: the programs
    whose balanced qkv share holds rows of the group's query heads, key and value, counted per
    interval, by brute force over the shares."""
    rows = (hq + 2 * hkv) * d
    shares = [((p * rows) // programs, ((p + 1) * rows) // programs) for p in range(programs)]
    out = []
    for g in range(hkv):
        q0, k0, v0 = g * (hq // hkv) * d, hq * d + g * d, (hq + hkv) * d + g * d
        intervals = [(q0, q0 + (hq // hkv) * d), (k0, k0 + d), (v0, v0 + d)]
        out.append(sum(lo < b and a < hi for a, b in intervals for lo, hi in shares))
    return out


def check_counters(ws: dl.DecodeWorkspace, launches: int) -> None:
    """The barrier counters after ``launches`` one-launch layers on a fresh workspace, of the kind
    the workspace recorded (``ws.kind``: the group_sync that took effect): every barrier's
    counter holds ``launches`` times the programs and the epoch ``launches`` (never reset); with
    ``group_sync`` barrier 0 is not used, and each KV group's first counter holds ``launches``
    times its producers, :func:`group_producers`; with ``group_sync = 2`` barrier 1 is not
    either, and each group's second counter holds ``launches`` times the key splits. Without a
    launch, all zero."""
    counters = ws.counters.tolist()
    counters, groups = counters[:8], counters[8:]
    group_sync = ws.kind or 0
    if launches:
        programs = counters[4] // launches
        used = [programs * launches] * 2  # barriers 0 and 1
        hkv = len(groups) // 2
        if group_sync:
            used[0] = 0
        if group_sync >= 2:
            used[1] = 0
        assert programs > 0 and counters == used + [programs * launches] * 3 + [0, launches, 0], counters
        producers = [launches * n for n in group_producers(ws, programs)] if group_sync else [0] * hkv
        merged = [launches * ws.splits] * hkv if group_sync >= 2 else [0] * hkv
        assert groups == producers + merged, (groups, producers + merged)
    else:
        assert not any(counters + groups), counters + groups  # left clean for the next launch
