"""``kernels.device.gather_rows_enabled``: the PDL row gather only for CUDA tensors, unless
``INFER_GATHER_ROWS=0``; the CPU path keeps torch's gather (and never imports Triton for it)."""

from __future__ import annotations

import torch

from infer_core.kernels.device import gather_rows_enabled


class FakeCuda:
    is_cuda = True


def test_gather_rows_is_on_by_default_and_cuda_only(monkeypatch):
    monkeypatch.delenv("INFER_GATHER_ROWS", raising=False)
    assert gather_rows_enabled(FakeCuda())  # type: ignore[arg-type]
    assert not gather_rows_enabled(torch.zeros(2))
    monkeypatch.setenv("INFER_GATHER_ROWS", "0")
    assert not gather_rows_enabled(FakeCuda())  # type: ignore[arg-type]
    monkeypatch.setenv("INFER_GATHER_ROWS", "1")
    assert gather_rows_enabled(FakeCuda())  # type: ignore[arg-type]
    assert not gather_rows_enabled(torch.zeros(2))


def test_embedding_on_the_cpu_is_torchs_with_the_switch_on(monkeypatch):
    from infer_core.layers.parallel import VocabParallelEmbedding

    monkeypatch.setenv("INFER_GATHER_ROWS", "1")
    emb = VocabParallelEmbedding(10, 4)
    torch.nn.init.normal_(emb.weight)
    ids = torch.tensor([1, 9, 1])
    assert torch.equal(emb(ids), torch.nn.functional.embedding(ids, emb.weight))
