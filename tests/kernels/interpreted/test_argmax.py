"""The two-stage argmax kernel against ``torch.argmax`` under the Triton interpreter: exact
equality over shapes and dtypes (fp32, fp16, bf16), ties across chunk boundaries (the first
index wins), -inf / +inf / NaN rows, strided rows; and the sampler with the kernel in place of
``torch.argmax`` on every argmax it takes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.engine import sampler as sampler_module
from infer_core.engine.sampler import Sampler, SamplingMetadata
from infer_core.kernels.argmax import argmax, argmax_ref, block_for
from infer_core.request import SamplingParams

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INF, NAN = float("inf"), float("nan")


def check(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    got = argmax(x, block=block)
    expected = argmax_ref(x)
    assert got.dtype == torch.int64 and got.shape == expected.shape
    assert torch.equal(got, expected), (got.tolist(), expected.tolist())
    return got


@st.composite
def logits_cases(draw: st.DrawFn) -> tuple[torch.Tensor, int | None]:
    rows = draw(st.integers(1, 9))
    cols = draw(st.one_of(st.integers(1, 300), st.integers(1, 20_000)))
    dtype = draw(st.sampled_from(DTYPES))
    block = draw(st.sampled_from([None, None, 16, 64, 2048]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):  # small integers: ties everywhere, across chunks
        x = torch.randint(-4, 4, (rows, cols), generator=gen).to(dtype)
    else:
        x = (torch.randn(rows, cols, generator=gen) * 8).to(dtype)
    for value in draw(st.lists(st.sampled_from([INF, -INF, NAN]), max_size=4)):
        r = draw(st.integers(0, rows - 1))
        c = draw(st.integers(0, cols - 1))
        x[r, c] = value
    if draw(st.booleans()):  # rows inside a wider buffer: stride(0) > V
        wide = torch.full((rows, cols + draw(st.integers(1, 9))), 100.0, dtype=dtype)
        wide[:, :cols] = x
        x = wide[:, :cols]
    return x, block


@settings(max_examples=60, deadline=None)
@given(case=logits_cases())
def test_argmax_equals_torch(case):
    x, block = case
    check(x, block)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [None, 64, 2048])
def test_ties_across_chunks_take_the_first_index(dtype, block):
    cols = 5000
    x = torch.zeros(4, cols, dtype=dtype)
    x[0, [100, 2049, 4097, 4999]] = 3.0  # in chunks 0, 1, 2 of 2048
    x[1, [2048, 4096]] = 3.0  # the first element of chunks 1 and 2
    x[2, [2047, 2048]] = 3.0  # either side of a boundary
    x[3, [4999, 3000, 4998]] = -1.0  # the maximum (0) everywhere else: index 0
    got = check(x, block)
    assert got.tolist() == [100, 2048, 2047, 0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_equal_rows_take_index_0(dtype):
    for value in (0.0, -1.5, -INF, INF):
        x = torch.full((3, 4097), value, dtype=dtype)
        assert check(x, 64).tolist() == [0, 0, 0]


def test_negative_zero_equals_zero():
    x = torch.tensor([[-0.0, 0.0, -1.0], [0.0, -0.0, -1.0]])
    assert check(x, 16).tolist() == [0, 0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_infinities(dtype):
    x = torch.randn(4, 3000).to(dtype)
    x[0, :] = -INF
    x[0, 2500] = -1e4  # the only finite value
    x[1, [2999, 700, 2100]] = INF  # the first +inf, across chunks
    x[2, :] = -INF  # all -inf: index 0
    x[3, 2999] = INF  # +inf in the last, partial chunk
    assert check(x, 1024).tolist() == [2500, 700, 0, 2999]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_ranks_above_everything(dtype):
    x = torch.randn(5, 3000).to(dtype)
    x[0, [10, 2000]] = INF
    x[0, 2500] = NAN  # NaN after +inf: NaN wins
    x[1, [2900, 1500]] = NAN  # the first NaN, in an earlier chunk
    x[1, 0] = INF
    x[2, :] = -INF
    x[2, 1999] = NAN
    x[3, :] = NAN  # all NaN: index 0
    x[4, [5, 6]] = NAN  # two NaNs in one chunk: the first
    assert check(x, 1024).tolist() == [2500, 1500, 1999, 0, 5]


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows(dtype):
    base = torch.randint(-3, 3, (10, 4200)).to(dtype)
    check(base[::3], 1024)  # rows 3 apart: stride(0) = 3 * V
    check(base[2:7, 100:4150], 1024)  # a window: stride(0) = 4200, offset start
    check(base[:, :17].t(), 16)  # stride(-1) != 1: copied to unit stride first


def test_one_column_and_no_rows():
    check(torch.randn(5, 1))
    assert argmax(torch.empty(0, 10)).shape == (0,)


def test_block_for():
    assert block_for(1, 128_256) == 4096  # one width at every batch size: one compiled variant
    assert block_for(7, 151_936) == 4096
    assert block_for(64, 128_256) == 4096
    assert block_for(256, 151_936) == 4096
    assert block_for(3, 100) == 128  # no wider than the row


# ------------------------------------------------------------------- the sampler's argmaxes


def meta_for(params: list[SamplingParams], vocab: int, outputs: list[list[int]] | None = None) -> SamplingMetadata:
    rows = len(params)
    return SamplingMetadata.from_params(
        params, [[] for _ in range(rows)], outputs or [[] for _ in range(rows)], {}, vocab, "cpu",
        [frozenset()] * rows,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampler_with_the_kernel_samples_as_with_torch(dtype, monkeypatch):
    """Every argmax the sampler takes (greedy fast path, greedy after penalties on the [B, V]
    view of a [B, V + 1] buffer, greedy rows of a mixed batch, the exponential race) through
    the kernel gives the same tokens as through torch."""
    calls = []

    def through_kernel(x):
        calls.append(tuple(x.shape))
        return check(x, 64)

    vocab = 1000
    logits = torch.randint(-3, 3, (4, vocab)).to(dtype)  # ties
    greedy = SamplingParams(temperature=0.0)
    cases = [
        meta_for([greedy] * 4, vocab),
        meta_for([greedy, SamplingParams(temperature=0.0, repetition_penalty=1.5)] * 2, vocab,
                 outputs=[[1, 2], [3], [4, 4], []]),
        meta_for([greedy, SamplingParams(temperature=1.0), greedy, SamplingParams(temperature=0.7, min_p=0.1)],
                 vocab),
        meta_for([SamplingParams(temperature=1.0, top_k=5)] * 4, vocab),
    ]
    for meta in cases:
        torch.manual_seed(0)
        expected = Sampler()(logits, meta).sampled_token_ids
        monkeypatch.setattr(sampler_module, "argmax", through_kernel)
        torch.manual_seed(0)
        got = Sampler()(logits, meta).sampled_token_ids
        monkeypatch.undo()
        assert torch.equal(got, expected), (got, expected)
    assert len(calls) == 1 + 1 + 2 + 1, calls


def test_out_takes_the_result_and_a_wrong_out_is_refused():
    """``out=``: the ids land in the given view (what a decode graph's placeholder fill reads);
    a tensor of another dtype or shape is refused before any launch."""
    x = (torch.randn(3, 5000, generator=torch.Generator().manual_seed(1)) * 4).to(torch.bfloat16)
    buffer = torch.full((8,), -7, dtype=torch.int64)
    got = argmax(x, out=buffer[2:5])
    assert got.data_ptr() == buffer[2:5].data_ptr()
    assert buffer[2:5].tolist() == argmax_ref(x).tolist() and buffer[:2].tolist() == [-7, -7]
    for bad in (torch.zeros(3, dtype=torch.int32), torch.zeros(4, dtype=torch.int64)):
        with pytest.raises(ValueError, match=r"argmax\(out=\.\.\.\)"):
            argmax(x, out=bad)
