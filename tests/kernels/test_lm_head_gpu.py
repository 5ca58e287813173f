"""The one-launch LM head + argmax on a CUDA device at the real heads' shapes (bf16): the id is
``torch.argmax`` of the stored logits and the logits are cuBLAS's within bf16 rounding; replayed
from a CUDA graph with new inputs each time (the ticket resets itself). Run with ``-m gpu``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer_core.kernels.lm_head import (
    LMHeadConfig,
    LMHeadWorkspace,
    lm_head_argmax,
    lm_head_argmax_ref,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(("vocab", "hidden"), [(151_936, 1024), (128_256, 2048), (262_144, 640), (1000, 96)])
@pytest.mark.parametrize("config", [None, LMHeadConfig(4, 2, 1, block_c=64, early=False),
                                    LMHeadConfig(16, 8, 2, 2, early=False),
                                    LMHeadConfig(8, 4, 4, 3, early=True), LMHeadConfig(8, 4, 2, 3, early=True)])
def test_real_shapes(vocab, hidden, config):
    gen = torch.Generator(device="cuda").manual_seed(vocab + hidden)
    w = (torch.randn(vocab, hidden, device="cuda", generator=gen) / hidden**0.5).to(torch.bfloat16)
    ws = LMHeadWorkspace()
    logits = torch.empty(1, vocab, device="cuda", dtype=torch.bfloat16)
    ids = torch.empty(1, device="cuda", dtype=torch.int64)
    for _ in range(3):
        x = torch.randn(1, hidden, device="cuda", generator=gen).to(torch.bfloat16)
        lm_head_argmax(x, w, logits, ids, ws, config)
        assert ids.item() == torch.argmax(logits).item()
        want, _ = lm_head_argmax_ref(x, w, torch.bfloat16)
        torch.testing.assert_close(logits.float(), want.float(), rtol=1.6e-2, atol=1e-2)
        torch.testing.assert_close(logits.float(), F.linear(x, w).float(), rtol=1.6e-2, atol=1e-2)
        assert ws.buffers(1, x.device)[2].item() == 0


def test_graph_replays():
    vocab, hidden = 151_936, 1024
    w = torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16)
    x = torch.empty(1, hidden, device="cuda", dtype=torch.bfloat16)
    logits = torch.empty(1, vocab, device="cuda", dtype=torch.bfloat16)
    ids = torch.empty(1, device="cuda", dtype=torch.int64)
    ws = LMHeadWorkspace()
    x.normal_()
    lm_head_argmax(x, w, logits, ids, ws)  # compile and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lm_head_argmax(x, w, logits, ids, ws)
    for _ in range(5):
        x.normal_()
        graph.replay()
        want = torch.argmax(F.linear(x, w).float()).item()
        assert ids.item() == torch.argmax(logits).item()
        # cuBLAS's logits may round a near-tie the other way: the pick's value is the maximum
        assert F.linear(x, w).float()[0, ids.item()].item() >= F.linear(x, w).float()[0, want].item() - 0.05
