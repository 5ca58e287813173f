"""Uniform decode steps padded to a CUDA-graph size give the same tokens as unpadded steps,
and padding rows touch no KV memory. On the CPU the padded step runs eagerly (graphs are
only captured on CUDA; ``tests/kernels/test_engine_gpu.py`` compares replay with eager), so
this checks the padding arithmetic itself: rows ``B..G-1`` with slot -1 and ``seq_len`` 0."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.engine.cuda_graphs import DecodeGraphs, default_capture_sizes
from infer_core.testing import caches
from infer_core.testing.fixtures import tiny_checkpoint

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=2)
SENTINEL = 7.0


def make_llm(arch: str) -> LLM:
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    return LLM(model=str(checkpoint), plugins=[caches], device="cpu", max_model_len=96, max_num_seqs=8,
               max_num_batched_tokens=64, cache={"backend": "paged", "num_blocks": 64, "block_size": 4})


def prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(n)
    return [torch.randint(1, 512, (int(k),), generator=gen).tolist() for k in torch.randint(1, 30, (n,), generator=gen)]


def test_default_ladder():
    assert default_capture_sizes(256)[:6] == [1, 2, 4, 8, 16, 24]
    assert default_capture_sizes(256)[-1] == 256 and len(default_capture_sizes(256)) == 35
    assert default_capture_sizes(3) == [1, 2, 3]
    assert default_capture_sizes(1000)[-1] == 512
    graphs = DecodeGraphs([1, 2, 4, 8])
    assert [graphs.size_for(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_padded_decode_steps_equal_unpadded(arch):
    plain, padded = make_llm(arch), make_llm(arch)
    runner = padded.engine.runner
    runner.graphs = DecodeGraphs([4, 8])  # pad every uniform decode step to 4 or 8 rows
    sizes = []
    prepare = runner._prepare_inputs

    def spy(out):
        step = prepare(out)
        sizes.append((len(out.num_scheduled_tokens), step.graph_size))
        return step

    runner._prepare_inputs = spy
    for layer_cache in kv_caches(padded):
        layer_cache[:, -1] = SENTINEL  # the last block: no request is given it here
    for n in (3, 5):
        want = plain.generate(prompts(n), GREEDY)
        got = padded.generate(prompts(n), GREEDY)
        for a, b in zip(want, got, strict=True):
            assert a.outputs[0].token_ids == b.outputs[0].token_ids
            for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
                assert x.token_id == y.token_id and x.logprob == pytest.approx(y.logprob, abs=1e-4)
    assert (3, 4) in sizes and (5, 8) in sizes  # padded steps did run
    assert all(g is None or g >= b for b, g in sizes)
    for layer_cache in kv_caches(padded):  # padding rows wrote nowhere
        assert torch.all(layer_cache[:, -1] == SENTINEL)
    assert padded.engine.cache.num_free_blocks == 64


def kv_caches(llm: LLM) -> list[torch.Tensor]:
    return [m.kv_cache for m in llm.engine.model.modules() if hasattr(m, "kv_cache") and m.kv_cache.numel()]


def test_which_sizes_are_captured():
    from infer_core.attention.torch import TorchAttentionBackend
    from infer_core.attention.triton import TritonAttentionBackend
    from infer_core.config import EngineConfig
    from infer_core.engine.llm_engine import LLMEngine

    def sizes(device="cuda", backend=TritonAttentionBackend, **model):
        config = EngineConfig(model=model, scheduler={"max_num_seqs": 24})
        return LLMEngine._graph_sizes(config, backend(), torch.device(device))

    assert sizes() == [1, 2, 4, 8, 16, 24]
    assert sizes(cuda_graph_sizes=[32, 4, 1, 4]) == [1, 4]  # above max_num_seqs: dropped
    assert sizes(enforce_eager=True) == []
    assert sizes(device="cpu") == []
    assert sizes(backend=TorchAttentionBackend) == []  # reads host lists: cannot be captured


def test_bad_capture_sizes_are_a_config_error():
    from infer_core.config import load_config
    from infer_core.errors import ConfigError

    with pytest.raises(ConfigError, match="cuda_graph_sizes"):
        load_config(overrides={"model": {"cuda_graph_sizes": [0, 8]}}, environ={})
