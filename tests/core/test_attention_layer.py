"""``Attention.forward_rope`` dispatch on the CPU: where the RoPE kernel does not run, every
backend (with or without ``supports_fused_kv_write``) gets ``forward(q, k, v, ...)`` with the
rotated q and k, exactly as the models called it before; the base ``attend`` explains what a
backend must do to receive a fused write. (The fused path itself: the interpreter tests in
``tests/kernels/interpreted/test_triton_backend.py`` and ``test_rope_kv_write.py``.)"""

from __future__ import annotations

import pytest
import torch

from infer_core.attention.backend import AttentionBackend, AttentionLayer
from infer_core.attention.metadata import build_attention_metadata
from infer_core.layers.attention import Attention
from infer_core.layers.norm import RMSNorm
from infer_core.layers.rotary import RotaryEmbedding
from infer_core.loader.hf_config import RopeSpec


class Recording(AttentionBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def forward(self, layer, q, k, v, kv_cache, metadata, kv_scales=None):
        self.calls.append((q.clone(), k.clone(), v.clone()))
        return torch.zeros_like(q)


class RecordingFused(Recording):
    supports_fused_kv_write = True

    def attend(self, layer, q, kv_cache, metadata, kv_scales=None):
        raise AssertionError("attend on the CPU path")


@pytest.mark.parametrize("backend_cls", [Recording, RecordingFused])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_cpu_path_calls_forward_with_rotated_qk(backend_cls, qk_norm):
    gen = torch.Generator().manual_seed(0)
    tokens, hq, hkv, d = 5, 4, 2, 16
    rotary = RotaryEmbedding(d, RopeSpec(10_000.0), 64)
    norms = (RMSNorm(d, 1e-6), RMSNorm(d, 1e-6)) if qk_norm else (None, None)
    for norm in norms:
        if norm is not None:
            norm.weight.data = torch.randn(d, generator=gen)
    q, k, v = (torch.randn(tokens, h, d, generator=gen) for h in (hq, hkv, hkv))
    positions = torch.randint(0, 64, (tokens,), generator=gen)
    md = build_attention_metadata([tokens], [tokens], [[0]], 16, "cpu")
    attn = Attention(AttentionLayer(hq, hkv, d, d**-0.5), backend_cls())

    out = attn.forward_rope(positions, q, k, v, md, rotary, *norms)

    if qk_norm:
        q_ref, k_ref = rotary.forward_with_qk_norm(positions, q, k, *norms)
    else:
        q_ref, k_ref = rotary(positions, q, k)
    (got_q, got_k, got_v), = attn.backend.calls
    assert torch.equal(got_q, q_ref) and torch.equal(got_k, k_ref) and torch.equal(got_v, v)
    assert out.shape == (tokens, hq * d)


def test_base_attend_says_what_to_implement():
    with pytest.raises(NotImplementedError, match="supports_fused_kv_write = True and implement attend"):
        Recording().attend(AttentionLayer(2, 1, 8, 1.0), torch.zeros(1, 2, 8), torch.zeros(0), None)
