"""The ``torch`` attention backend: the reference every other backend is tested against,
and the CPU path. Plain PyTorch, one request at a time, float32 softmax.

:func:`paged_attention_ref` is also the oracle of the Triton paged-attention kernel
(:mod:`infer_core.kernels.paged_attention`), called there with ``fp32_values=True`` and, for an
FP8 cache, ``kv_scales``."""

from __future__ import annotations

import torch

from infer_core.attention.backend import AttentionBackend, AttentionLayer
from infer_core.attention.metadata import AttentionMetadata


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Scatter the step's keys and values into the cache slots (reference of the KV-write
    kernel); a negative slot is a padding row and writes nothing."""
    _, num_blocks, block_size, heads, dim = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, heads, dim)
    keep = slot_mapping >= 0
    flat[0, slot_mapping[keep]] = k[keep].to(kv_cache.dtype)
    flat[1, slot_mapping[keep]] = v[keep].to(kv_cache.dtype)


def paged_attention_ref(
    layer: AttentionLayer,
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    kv_scales: torch.Tensor | None = None,
    *,
    fp32_values: bool = False,
) -> torch.Tensor:
    """Attention of every request's new queries over its cached keys (cache already written),
    one request at a time: scores and softmax in float32, a row with ``seq_len`` 0 (a CUDA-graph
    padding row, no keys) gives 0. An FP8 (e4m3) cache is dequantized with ``kv_scales``
    (``[k_scale, v_scale]``) first.

    By default (the torch backend) the probabilities are rounded to ``q``'s dtype and the
    values read in it, as eager attention does; ``fp32_values=True`` (the Triton kernel's
    oracle) keeps both in float32 and rounds the output once."""
    out = torch.empty_like(q)
    value_dtype = torch.float32 if fp32_values else q.dtype
    group = layer.num_heads // layer.num_kv_heads
    block_size = metadata.block_size
    starts = metadata.query_start_loc_cpu
    for i, seq_len in enumerate(metadata.seq_lens_cpu):
        q_start, q_end = starts[i], starts[i + 1]
        if seq_len == 0:  # a padding row: no keys
            out[q_start:q_end] = 0
            continue
        n_blocks = -(-seq_len // block_size)
        blocks = metadata.block_tables[i, :n_blocks].long()
        keys = kv_cache[0, blocks].reshape(-1, layer.num_kv_heads, layer.head_dim)[:seq_len]
        values = kv_cache[1, blocks].reshape(-1, layer.num_kv_heads, layer.head_dim)[:seq_len]
        if kv_cache.dtype == torch.float8_e4m3fn:
            assert kv_scales is not None, "fp8 KV needs kv_scales"
            keys, values = keys.float() * kv_scales[0].float(), values.float() * kv_scales[1].float()
        keys = keys.to(value_dtype).repeat_interleave(group, dim=1)  # [S, Hq, D]
        values = values.to(value_dtype).repeat_interleave(group, dim=1)
        query = q[q_start:q_end]  # [L, Hq, D]
        scores = torch.einsum("lhd,shd->hls", query.float(), keys.float()) * layer.scale
        if layer.logit_softcap is not None:
            scores = torch.tanh(scores / layer.logit_softcap) * layer.logit_softcap
        q_pos = torch.arange(seq_len - (q_end - q_start), seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        visible = k_pos <= q_pos
        if layer.sliding_window is not None:
            visible &= q_pos - k_pos < layer.sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = scores.softmax(dim=-1).to(value_dtype)
        out[q_start:q_end] = torch.einsum("hls,shd->lhd", probs, values)  # rounded to q's dtype
    return out


class TorchAttentionBackend(AttentionBackend):
    """Reference attention: correct on any device, not fast."""

    def forward(
        self,
        layer: AttentionLayer,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        write_kv(kv_cache, k, v, metadata.slot_mapping)
        return paged_attention_ref(layer, q, kv_cache, metadata)
