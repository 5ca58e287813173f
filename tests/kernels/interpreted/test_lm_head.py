"""The one-launch LM head + argmax (``kernels.lm_head``) against its torch reference under the
Triton interpreter: the stored logits equal the float32 product rounded once (exactly, with
integer-valued operands whose sums are exact in any order; within rounding otherwise), the id
is ``torch.argmax`` of the stored logits (first index of a tie, NaN above all, -inf rows), over
shapes, dtypes and configs (a reduction over several chunks of partials); the ticket is back at
zero after every launch, so a second launch (a graph replay) is right too; bad arguments get a
sentence."""

from __future__ import annotations

import pytest
import torch
import triton
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.lm_head import (
    LMHeadConfig,
    LMHeadWorkspace,
    choose_config,
    lm_head_argmax,
    lm_head_argmax_ref,
)
from infer_core.layers.parallel import ParallelLMHead

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def run(x: torch.Tensor, w: torch.Tensor, ws: LMHeadWorkspace, config: LMHeadConfig | None = None):
    logits = torch.full((1, w.shape[0]), 7.0, dtype=w.dtype)
    ids = torch.full((1,), -5, dtype=torch.int64)
    lm_head_argmax(x, w, logits, ids, ws, config)
    return logits, ids


@st.composite
def cases(draw: st.DrawFn):
    vocab = draw(st.one_of(st.integers(1, 40), st.integers(40, 700)))
    hidden = draw(st.sampled_from([8, 16, 24, 64, 100, 128]))
    dtype = draw(st.sampled_from(DTYPES))
    exact = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if exact:  # small integers: every partial sum exact, ties everywhere
        x = torch.randint(-2, 3, (1, hidden), generator=gen).to(dtype)
        w = torch.randint(-2, 3, (vocab, hidden), generator=gen).to(dtype)
    else:
        x = torch.randn(1, hidden, generator=gen).to(dtype)
        w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(dtype)
    config = draw(st.sampled_from([None, LMHeadConfig(1, 1, 1, block_c=16, early=False),
                                   LMHeadConfig(4, 2, 1, block_c=16, early=False),
                                   LMHeadConfig(16, 4, 2, block_c=32, early=False), LMHeadConfig(64, 4, 1, early=False),
                                   LMHeadConfig(8, 4, 3, block_c=4, early=False),
                                   LMHeadConfig(2, 1, 2, 2, block_c=2, early=False),
                                   LMHeadConfig(16, 4, 2, 3, block_c=4, early=False),
                                   # the first block requested before the PDL wait, outside the loop
                                   LMHeadConfig(1, 1, 1, block_c=16, early=True),
                                   LMHeadConfig(4, 2, 2, block_c=4, early=True),
                                   LMHeadConfig(16, 4, 2, 3, block_c=4, early=True)]))
    return x, w, exact, config


@settings(max_examples=30, deadline=None)
@given(case=cases())
def test_equals_reference(case):
    x, w, exact, config = case
    ws = LMHeadWorkspace()
    want_logits, want_ids = lm_head_argmax_ref(x, w, w.dtype)
    for _ in range(2):  # the second launch finds the ticket reset
        logits, ids = run(x, w, ws, config)
        assert ids.tolist() == torch.argmax(logits, dim=-1).tolist()
        if exact:
            assert torch.equal(logits, want_logits)
            assert torch.equal(ids, want_ids)
        else:
            tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[w.dtype]
            torch.testing.assert_close(logits.float(), want_logits.float(), rtol=tol, atol=tol)
        assert ws.buffers(1, x.device)[2].item() == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("special", ["nan", "inf", "all_neg_inf", "tie_across_programs"])
def test_special_values(dtype, special):
    vocab, hidden = 300, 16
    x = torch.ones(1, hidden, dtype=dtype)
    w = torch.zeros(vocab, hidden, dtype=dtype)
    w[:, 0] = torch.linspace(-1, 1, vocab).to(dtype) * 0.5
    if special == "nan":
        w[123, 3] = float("nan")
        w[250, 3] = float("nan")
    elif special == "inf":
        w[77, 1] = float("inf")
        w[200, 1] = float("inf")
    elif special == "all_neg_inf":
        w[:, 2] = float("-inf")
    else:  # the maximum in two programs' rows: the first wins
        w[:, 0] = 0
        w[5, 0] = 1
        w[290, 0] = 1
    for config in (LMHeadConfig(4, 2, 1, block_c=16, early=False), LMHeadConfig(4, 2, 2, block_c=4, early=False),
                   LMHeadConfig(4, 2, 2, block_c=4, early=True)):
        logits, ids = run(x, w, LMHeadWorkspace(), config)
        want = {"nan": 123, "inf": 77, "all_neg_inf": 0, "tie_across_programs": 5}[special]
        assert ids.item() == want == torch.argmax(logits, dim=-1).item()


def test_the_lm_head_layer_takes_it_only_where_it_applies(monkeypatch):
    head = ParallelLMHead(50, 16)
    torch.nn.init.normal_(head.weight)
    hidden = torch.randn(1, 16)
    logits, ids = torch.zeros(1, 50), torch.zeros(1, dtype=torch.int64)
    assert not head.forward_greedy(hidden, logits, ids)  # a CPU tensor: the caller's path
    assert not logits.any() and not ids.any()
    calls = []
    import infer_core.kernels.lm_head as kernel

    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # as on a GPU
    monkeypatch.setattr(kernel, "use_pdl", lambda t: False)
    original = kernel.lm_head_argmax
    monkeypatch.setattr(kernel, "lm_head_argmax", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert head.forward_greedy(hidden, logits, ids)
    torch.testing.assert_close(logits, head(hidden))
    assert ids.item() == torch.argmax(logits).item() and calls == [1]
    assert not head.forward_greedy(torch.randn(2, 16), torch.zeros(2, 50), torch.zeros(2, dtype=torch.int64))
    monkeypatch.setenv("INFER_LM_HEAD_ARGMAX", "0")
    assert not head.forward_greedy(hidden, logits, ids) and calls == [1]


def test_config_and_errors():
    assert choose_config(151_936, 1024) == LMHeadConfig(8, 4, programs_per_sm=4, num_stages=3)
    assert choose_config(128_256, 2048) == LMHeadConfig(8, 4, programs_per_sm=2, num_stages=3)
    assert choose_config(151_936, 2560) == LMHeadConfig(8, 8, programs_per_sm=1, num_stages=3)
    for hidden in (64, 640, 1024, 2048, 2560, 5120, 8192, 16384):
        for size in (2, 4):
            c = choose_config(1000, hidden, size)
            assert c.programs_per_sm * c.num_stages * c.block_n * triton.next_power_of_2(hidden) * size <= 192 * 1024 \
                or c.block_n == c.num_stages == c.programs_per_sm == 1
    ws = LMHeadWorkspace()
    w = torch.zeros(10, 8)
    with pytest.raises(ValueError, match="one row"):
        lm_head_argmax(torch.zeros(2, 8), w, torch.zeros(1, 10), torch.zeros(1, dtype=torch.int64), ws)
    with pytest.raises(ValueError, match="logits of shape"):
        lm_head_argmax(torch.zeros(1, 8), w, torch.zeros(1, 11), torch.zeros(1, dtype=torch.int64), ws)
    with pytest.raises(ValueError, match="int64 id"):
        lm_head_argmax(torch.zeros(1, 8), w, torch.zeros(1, 10), torch.zeros(1, dtype=torch.int32), ws)


def test_config_override(monkeypatch):
    monkeypatch.delenv("INFER_LM_HEAD_EARLY", raising=False)
    monkeypatch.setenv("INFER_LM_HEAD_CONFIG", "8,4,2,3")
    assert choose_config(151_936, 1024) == LMHeadConfig(8, 4, programs_per_sm=2, num_stages=3, early=True)
    monkeypatch.setenv("INFER_LM_HEAD_CONFIG", "32,8,1")
    assert choose_config(151_936, 1024) == LMHeadConfig(32, 8, programs_per_sm=1)
    monkeypatch.setenv("INFER_LM_HEAD_EARLY", "0")
    assert choose_config(151_936, 1024) == LMHeadConfig(32, 8, programs_per_sm=1, early=False)
    monkeypatch.delenv("INFER_LM_HEAD_CONFIG")
    assert choose_config(151_936, 1024) == LMHeadConfig(8, 4, programs_per_sm=4, num_stages=3, early=False)
    monkeypatch.delenv("INFER_LM_HEAD_EARLY")
    assert choose_config(151_936, 1024).early
    for bad in ("a,b", "32,8", "8,4,0", "8,4,2,3,1"):
        monkeypatch.setenv("INFER_LM_HEAD_CONFIG", bad)
        with pytest.raises(ValueError, match="INFER_LM_HEAD_CONFIG takes"):
            choose_config(151_936, 1024)


@settings(max_examples=20, deadline=None)
@given(vocab=st.integers(1, 300), hidden=st.sampled_from([8, 24, 64, 100]), dtype=st.sampled_from(DTYPES),
       config=st.sampled_from([None, LMHeadConfig(4, 2, 2, block_c=4, early=False), LMHeadConfig(16, 4, 1, early=True)]),
       seed=st.integers(0, 2**16))
def test_the_final_norm_folded_in(vocab, hidden, dtype, config, seed):
    """``norm=(residual, weight, eps)``: the logits of ``RMSNorm(x + residual)`` (Llama / Qwen's
    numerics, the layer's torch path) within rounding, the id their argmax; a second launch the same."""
    from infer_core.layers.norm import RMSNorm

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, hidden, generator=gen) * 3).to(dtype)
    residual = (torch.randn(1, hidden, generator=gen) * 3).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(dtype)
    norm = RMSNorm(hidden, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_((torch.rand(hidden, generator=gen) + 0.5).to(dtype))
        want_logits, _ = lm_head_argmax_ref(norm(x, residual)[0], w, dtype)
    ws = LMHeadWorkspace()
    for _ in range(2):
        logits = torch.full((1, vocab), 7.0, dtype=dtype)
        ids = torch.full((1,), -5, dtype=torch.int64)
        lm_head_argmax(x, w, logits, ids, ws, config, norm=(residual, norm.weight.detach(), norm.eps))
        tol = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
        torch.testing.assert_close(logits.float(), want_logits.float(), rtol=tol, atol=tol)
        assert ids.item() == torch.argmax(logits, dim=-1).item()


def test_the_head_layer_folds_the_final_norm_only_where_asked(monkeypatch):
    """``ParallelLMHead.forward_greedy(norm=(residual, final_norm))``: with ``INFER_LM_HEAD_NORM=1``
    one launch gives the logits of the head over ``final_norm(hidden, residual)``; without it, or
    with Gemma's norm, it declines (the caller norms first) and writes nothing."""
    from infer_core.layers.norm import RMSNorm

    head = ParallelLMHead(50, 16)
    torch.nn.init.normal_(head.weight)
    final = RMSNorm(16)
    torch.nn.init.uniform_(final.weight, 0.5, 1.5)
    hidden, residual = torch.randn(1, 16), torch.randn(1, 16)
    logits, ids = torch.zeros(1, 50), torch.zeros(1, dtype=torch.int64)
    with torch.no_grad():
        normed_row = final(hidden, residual)[0]
        want = head(normed_row)
    import infer_core.kernels.lm_head as kernel

    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # as on a GPU
    monkeypatch.setattr(kernel, "use_pdl", lambda t: False)
    monkeypatch.delenv("INFER_LM_HEAD_NORM", raising=False)
    assert not head.forward_greedy(hidden, logits, ids, norm=(residual, final))
    monkeypatch.setenv("INFER_LM_HEAD_NORM", "1")
    assert not head.forward_greedy(hidden, logits, ids, norm=(residual, RMSNorm(16, gemma=True)))
    assert not logits.any() and not ids.any()
    assert head.forward_greedy(hidden, logits, ids, norm=(residual, final))
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    assert ids.item() == torch.argmax(logits).item()
    # a model's forward_greedy from its stack's output: folded (hidden is the stack's output) ...
    logits.zero_()
    got, done = head.forward_greedy_after_stack(hidden, residual, final, logits, ids)
    assert done and got is hidden
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    # ... or the norm first, then the head (hidden is the normed row)
    monkeypatch.setenv("INFER_LM_HEAD_NORM", "0")
    monkeypatch.setattr(final, "forward", lambda x, r: (normed_row, x + r))
    logits.zero_()
    got, done = head.forward_greedy_after_stack(hidden, residual, final, logits, ids)
    assert done and got is normed_row
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
