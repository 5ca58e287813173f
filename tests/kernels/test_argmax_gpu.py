"""The two-stage argmax kernel on a CUDA device at real vocabulary sizes (Llama 3's 128,256,
Qwen's 151,936) in bf16 against ``torch.argmax``: random logits, ties planted across chunks,
+inf / NaN rows, a strided [B, V] view, capture in a CUDA graph; and the sampler's greedy
path taking it. Run with ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from infer_core.engine.sampler import Sampler, SamplingMetadata
from infer_core.request import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = "cuda"
VOCABS = [128_256, 151_936]
BATCHES = [1, 7, 256]


def check(x: torch.Tensor) -> torch.Tensor:
    from infer_core.kernels.argmax import argmax, argmax_ref

    got = argmax(x)
    expected = argmax_ref(x)
    assert got.dtype == torch.int64 and got.shape == expected.shape
    mismatch = (got != expected).nonzero().flatten().tolist()
    assert not mismatch, [(r, got[r].item(), expected[r].item()) for r in mismatch[:10]]
    return got


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("batch", BATCHES)
def test_argmax_real_shapes(batch, vocab):
    gen = torch.Generator(CUDA).manual_seed(batch + vocab)
    check(torch.randn(batch, vocab, device=CUDA, generator=gen).mul_(4).bfloat16())
    # bf16 keeps 8 bits of mantissa: small integers tie everywhere, within and across chunks
    check(torch.randint(-50, 50, (batch, vocab), device=CUDA, generator=gen).bfloat16())
    check(torch.randn(batch, vocab, device=CUDA, generator=gen, dtype=torch.float32))


@pytest.mark.parametrize("vocab", VOCABS)
def test_planted_ties_and_specials(vocab):
    x = torch.randn(8, vocab, device=CUDA).bfloat16()
    late = [vocab - 1, vocab // 2 + 1, 2049, 8193]  # unordered, across chunks
    x[0, late] = 100.0
    x[1, :] = float("-inf")
    x[2, late] = float("inf")
    x[3, vocab - 1] = float("nan")
    x[3, 5] = float("inf")
    x[4, late] = float("nan")
    x[5, :] = 7.0
    x[6, [vocab - 1, 0]] = 100.0
    x[7, -1] = 100.0  # the last element, in the last (partial) chunk
    got = check(x)
    assert got.tolist() == [2049, 0, 2049, vocab - 1, 2049, 0, 0, vocab - 1]


@pytest.mark.parametrize("vocab", VOCABS)
def test_strided_rows(vocab):
    wide = torch.randint(-20, 20, (64, vocab + 1), device=CUDA).bfloat16()  # the sampler's [B, V + 1] buffer
    check(wide[:, :vocab])
    check(wide[::5, 1:])


def test_capturable_in_a_cuda_graph():
    from infer_core.kernels.argmax import argmax

    x = torch.randn(256, VOCABS[0], device=CUDA).bfloat16()
    argmax(x)  # compile outside the capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        argmax(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = argmax(x)
    for seed in range(3):
        x.copy_(torch.randn(x.shape, device=CUDA, generator=torch.Generator(CUDA).manual_seed(seed)))
        graph.replay()
        torch.testing.assert_close(out, x.argmax(dim=-1), rtol=0, atol=0)


@pytest.mark.parametrize("batch", BATCHES)
def test_sampler_greedy_uses_the_kernel(batch, monkeypatch):
    from infer_core.kernels import argmax as argmax_module

    calls = []
    kernel = argmax_module.argmax

    def counted(x, *args, **kwargs):
        calls.append(x.shape)
        return kernel(x, *args, **kwargs)

    monkeypatch.setattr(argmax_module, "argmax", counted)
    vocab = VOCABS[0]
    logits = torch.randint(-20, 20, (batch, vocab), device=CUDA).bfloat16()
    params = [SamplingParams(temperature=0.0)] * batch
    meta = SamplingMetadata.from_params(params, [[]] * batch, [[]] * batch, {}, vocab, CUDA,
                                        [frozenset()] * batch)
    got = Sampler()(logits, meta).sampled_token_ids
    assert calls == [logits.shape]
    assert torch.equal(got, logits.argmax(dim=-1))
