"""The persistent decode-layer kernel, stage by stage under the Triton interpreter (a spin
barrier cannot open there: programs run one after another), against its torch reference: GQA
groups, QK-norm or not, first layer or not, scattered paged blocks, uneven work over the
programs, several K tiles and row chunks per program, key splits that find no key."""

from __future__ import annotations

from dataclasses import replace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import decode_layer as dl
from infer_core.kernels.decode_layer import choose_config, gemm_shape
from tests.kernels import decode_layer_cases as cases


@settings(max_examples=25, deadline=None)
@given(case=cases.layer_cases(), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_decode_layer_matches_reference(case, dtype):
    cases.check_decode_layer("cpu", dtype, case, stage_by_stage=True)


def test_gemm_shape_balances_rows_over_programs():
    # Qwen3-0.6B on 132 SMs: qkv 4096 rows over K 1024, o 1024 over 2048, gate/up 3072 (x2), down 1024 over 3072
    assert gemm_shape(4096, 1024, 132, False) == (16, 1024)  # 32 rows for the busiest either way; widest
    assert gemm_shape(1024, 2048, 132, False) == (8, 2048)
    assert gemm_shape(3072, 1024, 132, True) == (8, 1024)  # 24 rows (3 chunks) beat 32 (one of 32)
    assert gemm_shape(1024, 3072, 132, False) == (8, 1024)  # K tiles that divide K
    cfg = choose_config(1024, 3072, 16, 8, 128, 132)
    assert cfg.splits == 16 and cfg.num_programs == 132 and cfg.tile == 64


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 1 << 16).map(lambda n: 16 * n), min_size=4, max_size=4),
       budget=st.integers(0, 1 << 21))
def test_l2_windows_ask_each_byte_once_and_never_behind(sizes, budget):
    """The three windows (before attention, at gate/up, at down) are disjoint, in order, within
    the bytes, multiples of 16; never more than the budget ahead of what the stage before
    them consumed; never bytes a stage already read; and everything when the budget covers
    the rest of the layer at each point."""
    o, gu, down, nxt = sizes
    windows = dl.l2_windows(budget, o, gu, down, nxt)
    total = o + gu + down + nxt
    consumed = (0, o, o + gu)  # bytes read before each window's stage
    ahead = budget // 16 * 16
    end = 0
    for (lo, hi), done in zip(windows, consumed, strict=True):
        assert lo % 16 == 0 and hi % 16 == 0 and 0 <= lo <= hi <= total
        assert hi == lo or (lo >= end and lo >= done)
        assert hi <= done + ahead
        end = max(end, hi)
    if budget >= total:
        assert windows[0] == (0, total)
    asked = sum(hi - lo for lo, hi in windows)
    if ahead >= gu + down + nxt and ahead >= o:  # every stage's window reaches the end
        assert asked == total


@settings(max_examples=6, deadline=None)
@given(case=cases.layer_cases(), dtype=st.sampled_from([torch.float32, torch.float16]),
       flags=st.sampled_from([(True, False), (False, True), (True, True)]))
def test_decode_layer_variants(case, dtype, flags):
    """``fused_merge`` (each KV head's last split merges its query group; the per-head counters
    left at zero, checked in check_decode_layer) and ``kv_prefetch`` (each attention program's
    first key tile loaded before the stage, the step's own key patched in): the same result."""
    fused_merge, kv_prefetch = flags
    config = replace(cases.config_for(case, dtype), fused_merge=fused_merge, kv_prefetch=kv_prefetch)
    cases.check_decode_layer("cpu", dtype, case, stage_by_stage=True, config=config)
