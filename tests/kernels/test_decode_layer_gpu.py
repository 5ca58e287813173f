"""The persistent decode-layer kernel on a CUDA device, as one launch with its grid barriers:
at the real shapes of Qwen3-0.6B (QK-norm) and Llama-3.2-1B over contexts from 0 to 4,000
keys, bf16, against the torch reference; small hypothesis shapes over fewer programs; the
stage-by-stage launches against the single one; the barrier counters as each launch leaves
them (never reset: each launch counts one epoch more) and the error flag clear; 28
layers captured in a CUDA graph and replayed; determinism. Run with ``pytest -m gpu``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import decode_layer as dl
from tests.kernels import decode_layer_cases as cases

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SHAPES = {  # hidden, intermediate, kv heads, group, head dim, qk-norm
    "qwen3-0.6b": (1024, 3072, 8, 2, 128, True),
    "llama-3.2-1b": (2048, 8192, 8, 4, 64, False),
}


def real_case(shape: str, context: int, residual: bool = True, seed: int = 0) -> cases.LayerCase:
    hidden, inter, hkv, group, d, qk = SHAPES[shape]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return cases.LayerCase(hidden, inter, hkv, group, d, context, 16, qk, residual, sms, 16, 64, 16384, 2048,
                           True, seed)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 1, 63, 64, 255, 1000, 4000])
def test_real_shapes(shape, context):
    """The launch's own configuration (as many programs per SM as fit)."""
    cases.check_decode_layer("cuda", torch.bfloat16, real_case(shape, context, residual=context != 1),
                             stage_by_stage=False, default_config=True)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 63, 300, 4000])
@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("pairs", ["1111", "0000", "1010"])
def test_pair_tiles(shape, context, balanced, pairs):
    """bf16 pair tiles in the GEMM stages whose digit is 1 (qkv, o, gate/up, down), bf16 tiles
    in the others, chunked or balanced, at 2 programs per SM (4 warps, fewest steps: the
    launch's own kind of configuration)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = replace(real_case(shape, context), programs=2 * sms, max_elements=8192, fewest_steps=True,
                   pipeline=1, balanced=balanced, pairs=tuple(c == "1" for c in pairs))
    cfg = replace(cases.config_for(case, torch.bfloat16), num_warps=4)
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False, config=cfg)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize(("max_elements", "pipeline", "fewest_steps", "prefetch"), [
    (4096, 3, False, True), (16384, 1, False, False), (32768, 3, False, True),
    (16384, 1, True, True), (32768, 1, True, False), (65536, 1, True, True),
])
def test_real_shapes_configs(shape, max_elements, pipeline, fewest_steps, prefetch):
    case = replace(real_case(shape, 300), prefetch=prefetch, max_elements=max_elements, pipeline=pipeline,
                   fewest_steps=fewest_steps)
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False)


@settings(max_examples=20, deadline=None)
@given(case=cases.layer_cases(programs=(1, 3, 7, 32)), dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_small_shapes_one_launch(case, dtype):
    cases.check_decode_layer("cuda", dtype, case, stage_by_stage=False)


def test_one_launch_equals_stage_by_stage():
    case = real_case("qwen3-0.6b", 500)
    outs = []
    for staged in (False, True):
        weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cuda", torch.bfloat16)
        cfg = cases.config_for(case, torch.bfloat16)
        ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                                cfg.splits, torch.bfloat16, "cuda")
        out, new_res = dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg,
                                       stage_by_stage=staged)
        outs.append((out, new_res, cache))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)  # the same arithmetic; only the barriers differ


def test_graph_of_layers_replays():
    """28 layers in one graph (ping-pong activations), replayed: equal to eager launches, and
    the same on every replay (the step's K/V slot is rewritten with the same values)."""
    case = real_case("qwen3-0.6b", 200)
    weights, layer, md, cache, cos, sin, positions, x, _ = cases.layer_inputs(case, "cuda", torch.bfloat16)
    cfg = cases.config_for(case, torch.bfloat16)
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, torch.bfloat16, "cuda")

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        h, r = x, None
        for _ in range(28):
            h, r = dl.decode_layer(h, r, weights, layer, cache, md, positions, cos, sin, ws)  # its own config
        return h, r

    eager = step()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up off the default stream, as the runner captures
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for _ in range(5):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured[0], eager[0]) and torch.equal(captured[1], eager[1])
    assert ws.error.item() == 0
    cases.check_counters(ws, 7 * 28)  # eager, warm-up and 5 replays of 28 launches (the capture runs none)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 1, 63, 300, 4000])
def test_launches_with_different_inputs_share_a_workspace(shape, context):
    """At 2 programs per SM, three launches with different inputs on one workspace, each against
    its reference (a barrier that opened on the launch before's count would let a stage read the
    previous input's values), the counters at three epochs."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = replace(real_case(shape, context), programs=2 * sms, max_elements=8192, fewest_steps=True)
    cfg = replace(cases.config_for(case, torch.bfloat16), num_warps=4)
    ws = None
    for seed in range(3):
        weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(replace(case, seed=seed), "cuda",
                                                                                   torch.bfloat16)
        if ws is None:
            ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads,
                                    layer.head_dim, cfg.splits, torch.bfloat16, "cuda")
        ref_out, ref_res = dl.decode_layer_ref(x, res, weights, layer, cache.clone(), md, positions, cos, sin)
        out, new_res = dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg)
        tol = cases.LAYER_TOL[torch.bfloat16]
        assert cases.relative_error(out, ref_out) <= tol and cases.relative_error(new_res, ref_res) <= tol, seed
    assert ws.error.item() == 0
    cases.check_counters(ws, 3)


def test_several_programs_per_sm():
    """2 programs per SM, the most that fit since the sixth session's attention stage (208-254
    registers per thread; 4 fit before), unbalanced chunked GEMM stages."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = replace(real_case("qwen3-0.6b", 300), programs=2 * sms, max_elements=8192)
    cfg = replace(cases.config_for(case, torch.bfloat16), num_warps=4)
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False, config=cfg)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 300])
@pytest.mark.parametrize("per_sm", [1, 2])
def test_balanced_stages(shape, context, per_sm):
    """choose_config(balanced_elements=...): the stages whose shares fit take one contiguous
    share per program, requested whole before the barrier."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = replace(real_case(shape, context), programs=per_sm * sms, max_elements=8192 // per_sm, balanced=True)
    cfg = replace(cases.config_for(case, torch.bfloat16), num_warps=4)
    assert any(cfg.balanced), cfg
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False, config=cfg)


def test_refuses_programs_that_cannot_all_be_resident():
    """More programs than fit at once would wait at the first barrier forever: refused."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = replace(real_case("qwen3-0.6b", 300), programs=64 * sms)
    with pytest.raises(ValueError, match="fit on"):
        cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False)



@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 63, 300, 4000])
@pytest.mark.parametrize("poll_sleep", [0, 100])
@pytest.mark.parametrize(("arrive_first", "kv_early"), [(False, 0), (True, 0), (False, 1), (True, 1), (True, 2)])
def test_barrier_variants(shape, context, poll_sleep, arrive_first, kv_early):
    """``poll_sleep``: a nanosleep before each barrier poll (the default) or none;
    ``arrive_first``: the arrival before the next stage's first tiles are requested;
    ``kv_early``: the first key tile requested before barrier 0's wait (1) or at the launch's
    start (2). Against the reference, the counters as a launch leaves them."""
    case = replace(real_case(shape, context), max_elements=8192)
    cfg = replace(cases.config_for(case, torch.bfloat16), num_warps=4, poll_sleep=poll_sleep,
                  arrive_first=arrive_first, kv_early=kv_early)
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False, config=cfg)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 63, 300, 4000])
@pytest.mark.parametrize(("rope_early", "splits"), [(1, 0), (2, 0), (0, 4), (2, 4), (0, 8), (0, 2)])
def test_rope_early_and_splits(shape, context, rope_early, splits):
    """``rope_early``: the attention stage's k-norm weight (1) or its rotary row and both QK-norm
    weights (2) requested between barrier 0's arrival and its wait; ``splits``: fewer key splits
    per KV head than the default (0). One launch, against the reference."""
    case = replace(real_case(shape, context), max_elements=8192)
    cfg = replace(cases.config_for(case, torch.bfloat16), num_warps=4, rope_early=rope_early)
    if splits:
        cfg = replace(cfg, splits=splits)
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False, config=cfg)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 300, 1500, 4000, 9000])
@pytest.mark.parametrize(("splits", "min_splits", "kv_ahead"), [(16, 0, True), (16, 8, False), (32, 8, True)])
def test_long_context_levers(shape, context, splits, min_splits, kv_ahead):
    """``kv_ahead`` (each attention item asks L2 for its split's later key tiles: a hint, the
    same layer; several tiles per split from 1,025 keys on) and ``min_splits`` (each step uses
    the fewest splits from ``min_splits`` up that give each at most one key tile, at most
    ``splits``; 32: 256 items for 264 programs), one launch with the launch's own configuration
    (group_sync 2: the unused splits only arrive). Against the reference. (Few configurations:
    each compiles the whole layer.)"""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = replace(real_case(shape, context), splits=splits)
    args = (case.hidden, case.intermediate, case.kv_heads * case.group, case.kv_heads, case.head_dim, sms,
            torch.bfloat16)
    cfg = replace(dl.launch_config(*args, 2), splits=splits, min_splits=min_splits, kv_ahead=kv_ahead)
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False, config=cfg)


@pytest.mark.parametrize("context", [0, 300, 4000, 9000])
def test_long_context_levers_stage_by_stage(context):
    """``min_splits`` 8 and ``kv_ahead`` stage by stage at 4, 1, 1, 4, 4, 4 programs per SM (how
    the engine runs Llama-3.2-1B), against the reference."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = real_case("llama-3.2-1b", context)
    args = (case.hidden, case.intermediate, case.kv_heads * case.group, case.kv_heads, case.head_dim, sms,
            torch.bfloat16)
    configs = [replace(dl.launch_config(*args, n, stage_by_stage=True), min_splits=8, kv_ahead=True)
               for n in (4, 1, 1, 4, 4, 4)]
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=True, stage_configs=configs)


def group_sync_config(case, per_sm: int, level: int) -> dl.DecodeLayerConfig:
    """The launch's own configuration at ``per_sm`` programs per SM with ``group_sync`` at
    ``level``; where its qkv stage is not balanced (group_sync needs the balanced shares: Llama's
    qkv rows, or one program per SM), the qkv stage balanced with a larger element budget."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    args = (case.hidden, case.intermediate, case.kv_heads * case.group, case.kv_heads, case.head_dim, sms,
            torch.bfloat16)
    cfg = replace(dl.launch_config(*args, per_sm), group_sync=level)
    if not cfg.balanced[0]:
        wide = dl.choose_config(*args, programs_per_sm=per_sm, balanced_elements=1 << 16)
        cfg = replace(cfg, rows=(wide.rows[0], *cfg.rows[1:]), bk=(wide.bk[0], *cfg.bk[1:]),
                      balanced=(wide.balanced[0], *cfg.balanced[1:]))
    return cfg


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 63, 300, 4000])
@pytest.mark.parametrize("per_sm", [1, 2])
@pytest.mark.parametrize("level", [1, 2])
def test_group_sync(shape, context, per_sm, level):
    """``group_sync``: no barrier 0, each attention item waits for its KV group's qkv rows only
    (2: no barrier 1 either, each merge waits for its group's splits only). The launch's own
    configuration with it, against the reference; the group counters hold each group's
    producers (counted by brute force over the shares) and its splits."""
    case = real_case(shape, context)
    cfg = group_sync_config(case, per_sm, level)
    assert cfg.balanced[0], cfg
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=False, config=cfg)


@pytest.mark.parametrize("level", [1, 2])
def test_group_sync_over_launches(level):
    """Three group_sync launches on one workspace: the same outputs, the group counters at three
    times their counts (never reset: each launch waits for its own epoch's count)."""
    case = real_case("qwen3-0.6b", 300)
    cfg = group_sync_config(case, 2, level)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cuda", torch.bfloat16)
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, torch.bfloat16, "cuda")
    outs = [dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg) for _ in range(3)]
    assert all(torch.equal(o[0], outs[0][0]) for o in outs)
    assert ws.error.item() == 0
    assert ws.kind == level
    cases.check_counters(ws, 3)
    with pytest.raises(ValueError, match="workspace"):  # barrier 0's counter was not kept
        dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=replace(cfg, group_sync=0))
    with pytest.raises(ValueError, match="one program per qkv row"):
        dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws,
                        config=replace(cfg, num_programs=ws.qkv.numel() + 1))


def test_timeline_stamps_every_boundary_in_order():
    """decode_layer(timeline=...) (benchmarks): every program's 14 boundary stamps rise, and
    the programs that merged a head stamped inside the merge."""
    case = replace(real_case("qwen3-0.6b", 300), max_elements=8192)
    cfg = replace(cases.config_for(case, torch.bfloat16), num_warps=4)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cuda", torch.bfloat16)
    ws = dl.DecodeWorkspace(case.hidden, case.intermediate, layer.num_heads, layer.num_kv_heads, layer.head_dim,
                            cfg.splits, torch.bfloat16, "cuda")
    timeline = torch.zeros(cfg.num_programs, dl.TIMELINE_SLOTS.value, dtype=torch.int64, device="cuda")
    dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg, timeline=timeline)
    clocks = timeline[:, :14].cpu()
    assert (clocks[:, 1:] >= clocks[:, :-1]).all() and (timeline[:, 15] > timeline[:, 14]).all().item()
    merged = timeline[:, 20].cpu() > 0
    assert merged.sum().item() == layer.num_heads  # one program per query head
    assert (timeline[merged, 20].cpu() >= clocks[merged, 5]).all()
    inner = timeline[:, 24:26].cpu()  # after the qkv and gate/up stages' input norms
    assert ((inner[:, 0] >= clocks[:, 1]) & (inner[:, 0] <= clocks[:, 2])).all()
    assert ((inner[:, 1] >= clocks[:, 9]) & (inner[:, 1] <= clocks[:, 10])).all()


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("context", [0, 300, 4000])
@pytest.mark.parametrize("per_sm", [(2, 1, 1, 4, 4, 4), (4, 1, 1, 2, 2, 2)])
def test_stages_each_with_its_own_program_count(shape, context, per_sm):
    """Stage by stage with PDL, each stage's launch at its own programs per SM (the tiles chosen
    for that count), against the reference."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = real_case(shape, context)
    configs = [dl.launch_config(case.hidden, case.intermediate, case.kv_heads * case.group, case.kv_heads,
                                case.head_dim, sms, torch.bfloat16, n) for n in per_sm]
    cases.check_decode_layer("cuda", torch.bfloat16, case, stage_by_stage=True, stage_configs=configs)
