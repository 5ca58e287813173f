"""The persistent decode-layer kernel, stage by stage under the Triton interpreter (a spin
barrier cannot open there: programs run one after another), against its torch reference: GQA
groups, QK-norm or not, first layer or not, scattered paged blocks, uneven work over the
programs, several K tiles and row chunks per program, key splits that find no key."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import decode_layer as dl
from infer_core.kernels.decode_layer import choose_config, gemm_shape
from infer_core.kernels.decode_layer.attention import _active_splits
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


def test_balanced_stages_where_a_share_fits():
    # Qwen3-0.6B at 4 programs per SM on 132 SMs: every share fits 16384 elements (gate/up: 6 rows
    # in an 8-row tile, both halves); Llama-3.2-1B's gate/up (16 x 2048 x 2) and down (4 x 8192) do not
    cfg = choose_config(1024, 3072, 16, 8, 128, 132, programs_per_sm=4, balanced_elements=16384)
    assert cfg.balanced == (True, True, True, True)
    assert cfg.rows == (8, 2, 8, 2) and cfg.bk == (1024, 2048, 1024, 4096)
    cfg = choose_config(2048, 8192, 32, 8, 64, 132, programs_per_sm=4, balanced_elements=16384)
    assert cfg.balanced == (True, True, False, False)
    assert cfg.rows[:2] == (8, 4) and cfg.bk[:2] == (2048, 2048)
    assert choose_config(1024, 3072, 16, 8, 128, 132, programs_per_sm=4).balanced == (False,) * 4


@settings(max_examples=200, deadline=None)
@given(hidden=st.sampled_from([64, 1024, 2048, 2560]), inter=st.sampled_from([128, 3072, 6144, 8192]),
       kv_heads=st.sampled_from([1, 4, 8]), group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([64, 128]),
       sms=st.integers(1, 160), per_sm=st.integers(1, 4), cap=st.sampled_from([0, 4096, 16384, 65536]))
def test_balanced_tiles_hold_every_share(hidden, inter, kv_heads, group, head_dim, sms, per_sm, cap):
    """A balanced stage's tile covers the largest share (shares differ by at most a row) and all
    of K, within the cap; the other stages keep their chunked shapes."""
    cfg = choose_config(hidden, inter, kv_heads * group, kv_heads, head_dim, sms, programs_per_sm=per_sm,
                        balanced_elements=cap)
    plain = choose_config(hidden, inter, kv_heads * group, kv_heads, head_dim, sms, programs_per_sm=per_sm)
    q = kv_heads * group * head_dim
    stages = [(q + 2 * kv_heads * head_dim, hidden, 1), (hidden, q, 1), (inter, hidden, 2), (hidden, inter, 1)]
    for i, (n, k, halves) in enumerate(stages):
        if cfg.balanced[i]:
            shares = [(p + 1) * n // cfg.num_programs - p * n // cfg.num_programs for p in range(cfg.num_programs)]
            assert max(shares) - min(shares) <= 1 and sum(shares) == n
            assert cfg.rows[i] >= max(shares) and cfg.bk[i] >= k
            assert cfg.rows[i] * cfg.bk[i] * halves <= cap
        else:
            assert (cfg.rows[i], cfg.bk[i]) == (plain.rows[i], plain.bk[i])


def test_default_balanced_elements_reads_the_environment(monkeypatch):
    monkeypatch.delenv("INFER_DECODE_BALANCED_ELEMENTS", raising=False)
    assert dl.default_balanced_elements() == 16384
    monkeypatch.setenv("INFER_DECODE_BALANCED_ELEMENTS", "0")
    assert dl.default_balanced_elements() == 0


def test_default_kv_early_reads_the_environment(monkeypatch):
    monkeypatch.delenv("INFER_DECODE_KV_EARLY", raising=False)
    assert dl.default_kv_early() == 2 == dl.DecodeLayerConfig(1, 1, 16, (1,) * 4, (16,) * 4).kv_early
    monkeypatch.setenv("INFER_DECODE_KV_EARLY", "1")
    assert dl.default_kv_early() == 1


def test_default_norm_once_is_on_for_one_launch_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("INFER_DECODE_NORM_ONCE", raising=False)
    assert dl.default_norm_once() is True and dl.default_norm_once(stage_by_stage=True) is False
    config = dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2)
    assert config.norm_once and not dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2, True).norm_once
    monkeypatch.setenv("INFER_DECODE_NORM_ONCE", "0")
    assert dl.default_norm_once() is False
    monkeypatch.setenv("INFER_DECODE_NORM_ONCE", "1")
    assert dl.default_norm_once(stage_by_stage=True) is True


def test_launch_config_takes_group_sync_where_each_program_has_a_qkv_row(monkeypatch):
    """The configuration a launch picks for itself: ``group_sync`` 2 (or ``INFER_DECODE_GROUP_SYNC``)
    where its programs are at most the qkv rows (Qwen3-0.6B's 4,096 at 264 programs), 0 where
    they are more (a layer of 64 qkv rows: the launch would refuse group_sync)."""
    monkeypatch.delenv("INFER_DECODE_GROUP_SYNC", raising=False)
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).group_sync == 2
    assert dl.launch_config(64, 128, 2, 1, 16, 132, torch.bfloat16, 2).group_sync == 0
    monkeypatch.setenv("INFER_DECODE_GROUP_SYNC", "1")
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).group_sync == 1
    monkeypatch.setenv("INFER_DECODE_GROUP_SYNC", "0")
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).group_sync == 0


def test_launch_config_takes_kv_ahead_from_the_environment(monkeypatch):
    """``kv_ahead`` is off in the configuration a launch picks for itself (measured: it helps only
    long contexts); ``INFER_DECODE_KV_AHEAD=1`` turns it on, one launch or stage by stage."""
    monkeypatch.delenv("INFER_DECODE_KV_AHEAD", raising=False)
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).kv_ahead is False
    monkeypatch.setenv("INFER_DECODE_KV_AHEAD", "1")
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).kv_ahead is True
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 1, True).kv_ahead is True


def test_kv_ahead_is_a_cuda_hint_the_interpreter_runs_without():
    """A configuration with ``kv_ahead`` (its prefetches are PTX) runs under the interpreter as
    without it: splits of several key tiles (70 keys, 2 splits of 16-key tiles), against the
    reference."""
    case = cases.LayerCase(64, 128, 2, 2, 32, 70, 16, True, True, 4, 2, 16, 4096, 64, True, 0)
    cfg = replace(cases.config_for(case, torch.float32), kv_ahead=True)
    cases.check_decode_layer("cpu", torch.float32, case, stage_by_stage=True, config=cfg)


@settings(max_examples=16, deadline=None)
@given(case=cases.layer_cases(), splits=st.sampled_from([4, 8]), min_splits=st.sampled_from([1, 2]),
       context=st.integers(0, 150))
def test_min_splits_match_the_reference(case, splits, min_splits, context):
    """``min_splits``: each step uses the fewest splits (from ``min_splits`` up, powers of two)
    that give each split at most one key tile, at most ``splits``, the others idle and unread by
    the merge: contexts from none to several tiles per split (16- and 32-key tiles), against the
    reference."""
    case = replace(case, splits=splits, context=context)
    cfg = replace(cases.config_for(case, torch.float32), min_splits=min_splits)
    cases.check_decode_layer("cpu", torch.float32, case, stage_by_stage=True, config=cfg)


@triton.jit
def _active_splits_kernel(seq_lens_ptr, out_ptr, TILE: tl.constexpr, SPLITS: tl.constexpr, MIN_SPLITS: tl.constexpr):
    i = tl.program_id(0)
    tl.store(out_ptr + i, _active_splits(tl.load(seq_lens_ptr + i), TILE, SPLITS, MIN_SPLITS))


@settings(max_examples=20, deadline=None)
@given(seq_lens=st.lists(st.integers(1, 20000), min_size=1, max_size=8), tile=st.sampled_from([16, 32, 64]),
       splits=st.sampled_from([1, 2, 8, 16, 32]), min_splits=st.sampled_from([0, 1, 4, 8, 64]))
def test_active_splits_give_each_split_at_most_one_tile(seq_lens, tile, splits, min_splits):
    """The splits a step uses: all ``SPLITS`` without ``min_splits`` (or with one at least as
    large); else the smallest power of two from ``min_splits`` up that covers the step's key
    tiles, at most ``SPLITS``."""
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    out = torch.zeros_like(lens)
    _active_splits_kernel[(len(seq_lens),)](lens, out, TILE=tile, SPLITS=splits, MIN_SPLITS=min_splits)
    for n, got in zip(seq_lens, out.tolist(), strict=True):
        tiles = -(-n // tile)
        want = splits
        if 0 < min_splits < splits:
            want = min_splits
            while want < tiles and want < splits:
                want *= 2
        assert got == want, (n, tile, splits, min_splits)


def test_min_splits_refusals():
    """``min_splits`` other than 0 or a power of two: a clear error, no launch."""
    case = cases.LayerCase(64, 128, 2, 2, 32, 5, 16, True, True, 4, 4, 32, 4096, 64, True, 0)
    for bad in (3, 6, -2):
        cfg = replace(cases.config_for(case, torch.float32), min_splits=bad)
        with pytest.raises(ValueError, match="power of two"):
            cases.check_decode_layer("cpu", torch.float32, case, stage_by_stage=True, config=cfg)


def test_launch_config_takes_min_splits_from_the_environment(monkeypatch):
    """``min_splits`` is 0 (every step uses every split: measured faster at W1's contexts);
    ``INFER_DECODE_MIN_SPLITS`` sets it."""
    monkeypatch.delenv("INFER_DECODE_MIN_SPLITS", raising=False)
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).min_splits == 0
    monkeypatch.setenv("INFER_DECODE_MIN_SPLITS", "8")
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).min_splits == 8


def test_settings_of_removed_levers_are_named_as_ignored(monkeypatch):
    """An environment variable of a lever that was removed (measured slower) is not read; the
    persistent path says so (one sentence per variable set), and says nothing without them."""
    for name in dl.REMOVED_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert dl.ignored_settings() == []
    monkeypatch.setenv("INFER_DECODE_LL", "1")
    monkeypatch.setenv("INFER_DECODE_LAYERS", "0")
    said = dl.ignored_settings()
    assert len(said) == 2 and "INFER_DECODE_LL is ignored" in said[0] and "INFER_DECODE_LAYERS" in said[1]


def test_workspace_refuses_a_launch_of_another_kind():
    """One-launch layers on one workspace share its barrier counters: a launch whose
    ``group_sync`` differs from the one the workspace's launches ran with (with it, barriers 0
    and 1 do not count) is refused before it runs, the cache untouched."""
    case = cases.LayerCase(64, 128, 2, 2, 32, 5, 16, True, True, 4, 4, 32, 4096, 64, True, 0)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cpu", torch.float32)
    cfg = replace(cases.config_for(case, torch.float32), balanced=(True, False, False, False))
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, torch.float32, "cpu")
    ws.kind = 2  # (as after a group_sync 2 launch: the interpreter cannot run a one-launch layer)
    before = cache.clone()
    for other in (0, 1):
        with pytest.raises(ValueError, match=r"group_sync 2: a launch with .* workspace"):
            dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws,
                            config=replace(cfg, group_sync=other), stage_by_stage=False)
    assert torch.equal(cache, before) and ws.kind == 2


def test_timeline_must_hold_one_row_per_program():
    """``timeline`` (benchmarks) is CUDA-only and sized by the launch: a clear error, no launch."""
    case = cases.LayerCase(64, 128, 2, 2, 32, 5, 16, True, True, 4, 4, 32, 4096, 64, True, 0)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cpu", torch.float32)
    cfg = cases.config_for(case, torch.float32)
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, torch.float32, "cpu")
    timeline = torch.zeros(cfg.num_programs, dl.TIMELINE_SLOTS.value, dtype=torch.int64)
    before = cache.clone()
    with pytest.raises(ValueError, match="timeline must be an int64 CUDA tensor"):
        dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg, timeline=timeline)
    assert torch.equal(cache, before)


def test_stage_programs_per_sm_reads_the_environment(monkeypatch):
    monkeypatch.delenv("INFER_DECODE_STAGES", raising=False)
    assert dl.stage_programs_per_sm() == ()  # small layers: one launch per layer
    qwen3_0_6b, llama_3_2_1b = 2 * (4096 * 1024 + 1024 * 2048 + 6144 * 1024 + 1024 * 3072), 2 * (
        3072 * 2048 + 2048 * 2048 + 16384 * 2048 + 2048 * 8192)
    assert dl.stage_programs_per_sm(qwen3_0_6b) == ()
    assert dl.stage_programs_per_sm(llama_3_2_1b) == dl.STAGED_PROGRAMS_PER_SM  # large layers: stage by stage
    monkeypatch.setenv("INFER_DECODE_STAGES", "0")
    assert dl.stage_programs_per_sm(llama_3_2_1b) == ()  # one launch, whatever the size
    monkeypatch.setenv("INFER_DECODE_STAGES", "4")
    assert dl.stage_programs_per_sm() == dl.stage_programs_per_sm(qwen3_0_6b) == (4,) * 6
    monkeypatch.setenv("INFER_DECODE_STAGES", "2,1,1,4,4,3")
    assert dl.stage_programs_per_sm() == (2, 1, 1, 4, 4, 3)
    for bad in ("2,1", "x", "2,0,1,1,1,1"):
        monkeypatch.setenv("INFER_DECODE_STAGES", bad)
        with pytest.raises(ValueError, match="INFER_DECODE_STAGES"):
            dl.stage_programs_per_sm()


@settings(max_examples=8, deadline=None)
@given(case=cases.layer_cases(), programs=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=6, max_size=6))
def test_each_stage_with_its_own_program_count(case, programs):
    """Stage by stage, each stage's launch with its own configuration (program count and the
    tiles chosen for it) == the reference."""
    configs = [cases.config_for(replace(case, programs=p), torch.float32) for p in programs]
    cases.check_decode_layer("cpu", torch.float32, case, stage_by_stage=True, stage_configs=configs)


def test_stage_configs_need_six_and_stage_by_stage():
    case = cases.LayerCase(hidden=32, intermediate=48, kv_heads=1, group=1, head_dim=32, context=3, block_size=4,
                           qk_norm=False, residual=True, programs=2, splits=1, tile=16, max_elements=1024,
                           max_bk=32, prefetch=True, seed=5)
    cfg = cases.config_for(case, torch.float32)
    for configs, staged in (([cfg] * 5, True), ([cfg] * 6, False)):
        with pytest.raises(ValueError, match="six configurations"):
            cases.check_decode_layer("cpu", torch.float32, case, stage_by_stage=staged, stage_configs=configs)


@settings(max_examples=12, deadline=None)
@given(case=cases.layer_cases(), rope_early=st.sampled_from([1, 2]), kv_early=st.sampled_from([0, 2]))
def test_rope_inputs_requested_early_match_the_reference(case, rope_early, kv_early):
    """``rope_early``: the k-norm weight (1) or the rotary row and both QK-norm weights (2)
    requested before the attention stage's PDL wait (with ``kv_early`` 2) or before its items
    (else): the same layer."""
    cfg = replace(cases.config_for(case, torch.float32), rope_early=rope_early, kv_early=kv_early)
    cases.check_decode_layer("cpu", torch.float32, case, stage_by_stage=True, config=cfg)


def test_default_rope_early_and_splits_read_the_environment(monkeypatch):
    monkeypatch.delenv("INFER_DECODE_ROPE_EARLY", raising=False)
    monkeypatch.delenv("INFER_DECODE_SPLITS", raising=False)
    assert dl.default_rope_early() == dl.DecodeLayerConfig.rope_early
    assert dl.splits_for(8, 132) == 16 and dl.splits_for(8, 16) == 2
    monkeypatch.setenv("INFER_DECODE_ROPE_EARLY", "2")
    monkeypatch.setenv("INFER_DECODE_SPLITS", "4")
    assert dl.default_rope_early() == 2 and dl.splits_for(8, 132) == 4
    assert dl.launch_config(1024, 3072, 16, 8, 128, 132, torch.bfloat16, 2).splits == 4
    monkeypatch.setenv("INFER_DECODE_SPLITS", "3")
    with pytest.raises(ValueError, match="power of two"):
        dl.splits_for(8, 132)
