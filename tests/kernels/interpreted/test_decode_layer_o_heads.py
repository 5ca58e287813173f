"""``DecodeLayerConfig.o_heads`` under the Triton interpreter (stage by stage): the merge stage's
programs run o_proj per (query head, row slice) into 64-bit fixed-point sums, which gate/up
reads; against the torch reference, with the attention row and ``o`` never touched."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import decode_layer as dl
from tests.kernels import decode_layer_cases as cases


@settings(max_examples=20, deadline=None)
@given(case=cases.layer_cases(programs=(1, 2, 3, 5, 8)), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_o_heads_matches_reference(case, dtype):
    """Any shape, program count (items beyond the programs run in turn), split count and ``ll``:
    the reference's outputs and cache; ``attn`` / ``o`` stay NaN, the sums end at zero
    (:func:`tests.kernels.decode_layer_cases.check_decode_layer`)."""
    cases.check_decode_layer("cpu", dtype, replace(case, o_heads=True), stage_by_stage=True)


@settings(max_examples=200, deadline=None)
@given(hidden=st.integers(1, 4096), heads=st.integers(1, 64), head_dim=st.sampled_from([32, 64, 128, 256]),
       programs=st.integers(1, 600))
def test_o_rows_cover_the_rows_within_the_budget(hidden, heads, head_dim, programs):
    """A power of two, an item's tile within 16,384 weights (one row at least); the fewest rows
    whose (head, slice) items do not outnumber the programs (at least one slice per head), unless
    the budget stops it first."""
    rows = dl.o_rows(hidden, heads, head_dim, programs)
    assert rows & (rows - 1) == 0 and (rows * head_dim <= 16384 or rows == 1)
    slices = max(programs // heads, 1)
    at_budget = 2 * rows * head_dim > 16384
    assert at_budget or -(-hidden // rows) <= slices
    assert rows == 1 or -(-hidden // (rows // 2)) > slices


def test_o_heads_flags_products_beyond_the_fixed_point_range():
    """A head's product beyond 2 ** 24 cannot be summed in the fixed-point words: it is clamped
    and the error flag says 4 (a wrong answer never passes silently)."""
    case = replace(cases.LayerCase(hidden=32, intermediate=48, kv_heads=1, group=2, head_dim=32, context=5,
                                   block_size=4, qk_norm=False, residual=True, programs=2, splits=2, tile=16,
                                   max_elements=1024, max_bk=32, prefetch=True, seed=3), o_heads=True)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cpu", torch.float32)
    weights = replace(weights, o=weights.o * 1e9)
    cfg = cases.config_for(case, torch.float32)
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, torch.float32, "cpu")
    dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg, stage_by_stage=True)
    assert ws.error.item() == 4


def test_o_heads_refusals_and_environment(monkeypatch):
    """o_heads needs the down stage (which zeroes the sums) and the same setting in every stage's
    configuration; ``INFER_DECODE_O_HEADS`` switches it in the configuration a launch picks."""
    case = replace(cases.LayerCase(hidden=32, intermediate=48, kv_heads=1, group=2, head_dim=32, context=5,
                                   block_size=4, qk_norm=False, residual=True, programs=2, splits=2, tile=16,
                                   max_elements=1024, max_bk=32, prefetch=True, seed=3), o_heads=True)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cpu", torch.float32)
    cfg = cases.config_for(case, torch.float32)
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, torch.float32, "cpu")
    with pytest.raises(ValueError, match="last_stage=6"):
        dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=replace(cfg, last_stage=4),
                        stage_by_stage=True)
    with pytest.raises(ValueError, match="same in every stage"):
        dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg, stage_by_stage=True,
                        stage_configs=[cfg] * 5 + [replace(cfg, o_heads=False)])
    monkeypatch.delenv("INFER_DECODE_O_HEADS", raising=False)
    assert not dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).o_heads
    monkeypatch.setenv("INFER_DECODE_O_HEADS", "1")
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).o_heads
