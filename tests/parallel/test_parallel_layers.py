"""The tensor-parallel layers without processes: each rank's layer, loaded from the full
checkpoint tensor by its ``weight_loader``, computes its part of the full layer's output
(column layers: their rows; row layers: a partial sum; the vocabulary layers: their range),
and the parts combine (concatenated, summed) into the unsplit layer's result, for any
group size that divides the shapes (hypothesis). Sizes that do not divide are a
configuration error with one sentence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.errors import ConfigError
from infer_core.layers.parallel import (
    MergedColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from infer_core.parallel.group import TPGroup


def groups(size: int) -> list[TPGroup]:
    return [TPGroup(rank, size, None) for rank in range(size)]


@settings(max_examples=30, deadline=None)
@given(size=st.sampled_from([1, 2, 4]), kv=st.sampled_from([1, 2, 4, 8]), d=st.sampled_from([2, 4]), seed=st.integers(0, 99))
def test_qkv_ranks_hold_their_heads(size, kv, d, seed):
    gen = torch.Generator().manual_seed(seed)
    heads, hidden = 8, 6
    w = [torch.randn(n * d, hidden, generator=gen) for n in (heads, kv, kv)]
    x = torch.randn(3, hidden, generator=gen)
    parts = []
    for tp in groups(size):
        layer = QKVParallelLinear(hidden, d, heads, kv, tp=tp)
        for i, t in enumerate(w):
            assert layer.checkpoint_shape(layer.weight, i) == tuple(t.shape)
            layer.weight_loader(layer.weight, t, i)
        parts.append(F.linear(x, layer.weight).split(layer.sizes, dim=-1))
    full = [F.linear(x, t) for t in w]
    assert torch.allclose(torch.cat([p[0] for p in parts], dim=-1), full[0], atol=1e-5)
    for j in (1, 2):
        if kv >= size:  # split: the ranks' heads in order
            assert torch.allclose(torch.cat([p[j] for p in parts], dim=-1), full[j], atol=1e-5)
        else:  # replicated: rank r holds KV head r // (size / kv)
            for rank, p in enumerate(parts):
                head = rank // (size // kv)
                assert torch.allclose(p[j], full[j][:, head * d:(head + 1) * d], atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(size=st.sampled_from([1, 2, 3]), seed=st.integers(0, 99))
def test_column_and_row_parallel_mlp_equals_the_full_one(size, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = 5, 6
    gate, up, down = torch.randn(inter, hidden, generator=gen), torch.randn(inter, hidden, generator=gen), torch.randn(hidden, inter, generator=gen)
    bias = torch.randn(hidden, generator=gen)
    x = torch.randn(4, hidden, generator=gen)
    total = 0
    for tp in groups(size):
        gate_up = MergedColumnParallelLinear(hidden, [inter, inter], tp=tp)
        gate_up.weight_loader(gate_up.weight, gate, 0)
        gate_up.weight_loader(gate_up.weight, up, 1)
        row = RowParallelLinear(inter, hidden, bias=True, tp=tp)
        assert row.checkpoint_shape(row.weight, None) == (hidden, inter)
        row.weight_loader(row.weight, down, None)
        row.weight_loader(row.bias, bias, None)
        g, u = F.linear(x, gate_up.weight).chunk(2, dim=-1)
        total = total + F.linear(F.silu(g) * u, row.weight)  # the partial sum all-reduce adds up
    want = F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
    assert torch.allclose(total, want, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(size=st.sampled_from([1, 2, 3, 4]), vocab=st.integers(5, 23), seed=st.integers(0, 99))
def test_vocabulary_ranges_cover_the_embedding_and_the_head(size, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, 4, generator=gen)
    ids = torch.randint(0, vocab, (9,), generator=gen)
    hidden = torch.randn(3, 4, generator=gen)
    looked_up, logits = 0, []
    for tp in groups(size):
        embed, head = VocabParallelEmbedding(vocab, 4, tp=tp), ParallelLMHead(vocab, 4, tp=tp)
        for layer in (embed, head):
            layer.weight_loader(layer.weight, table, None)
        local = ids - embed.start
        outside = (local < 0) | (local >= embed.rows)
        looked_up = looked_up + F.embedding(local.masked_fill(outside, 0), embed.weight).masked_fill(outside[:, None], 0)
        logits.append(F.linear(hidden, head.weight))
    assert torch.allclose(looked_up, F.embedding(ids, table))
    assert torch.allclose(torch.cat(logits, dim=-1)[:, :vocab], F.linear(hidden, table), atol=1e-5)


def test_sizes_that_do_not_divide_are_configuration_errors():
    with pytest.raises(ConfigError, match=r"tensor_parallel_size = 2 does not divide the model's attention heads \(9\)"):
        QKVParallelLinear(576, 64, 9, 3, tp=TPGroup(0, 2, None))
    with pytest.raises(ConfigError, match=r"neither divides the model's KV heads \(3\) nor is a multiple of them"):
        QKVParallelLinear(64, 8, 12, 3, tp=TPGroup(0, 2, None))
    with pytest.raises(ConfigError, match=r"does not divide the model's intermediate size \(10\)"):
        MergedColumnParallelLinear(4, [10, 10], tp=TPGroup(0, 4, None))
