"""Running prompts through a model the way the engine does, for parity tests and debugging.

Prompts go through the engine's call path: a cache backend hands out blocks, the KV tensors
are allocated per layer, every step is one flat batch with its attention metadata, and logits
are computed only at the rows asked for. Prefill can be chunked; decode steps batch all
requests. (The engine's model runner does the same with preallocated buffers.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from infer_core.attention.kv_tensors import allocate_kv_caches
from infer_core.attention.metadata import build_attention_metadata
from infer_core.engine.kv_cache import CacheBackend, ContiguousCache
from infer_core.loader.model import load_model
from infer_core.models.base import CausalLM, ModelContext
from infer_core.plugins import make_plugin_manager


def load_for_test(
    model_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    max_model_len: int = 1024,
    attention: str = "torch",
    device: str = "cpu",
) -> CausalLM:
    pm = make_plugin_manager()
    backend = pm.attention_backends.get(attention).load()()
    return load_model(model_dir, pm, ModelContext(backend, max_model_len), dtype=dtype, device=device)


@dataclass(slots=True, eq=False)
class _Seq:
    request_id: str
    token_ids: list[int]
    num_computed_tokens: int = 0


class PromptRunner:
    """Prefill and greedy decode of a few prompts through one cache backend."""

    def __init__(
        self,
        model: CausalLM,
        *,
        max_model_len: int,
        num_blocks: int = 16,
        block_size: int = 16,
        cache_cls: type[CacheBackend] = ContiguousCache,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        param = next(model.parameters())
        self.device = param.device
        block_size = cache_cls.block_size_for(block_size, max_model_len)
        self.cache = cache_cls(num_blocks, block_size)
        allocate_kv_caches(model, num_blocks, block_size, kv_dtype or param.dtype, self.device)

    @torch.inference_mode()
    def step(self, seqs: list[_Seq], num_new: list[int], logit_rows: str) -> list[torch.Tensor]:
        """One flat-batch step: ``num_new[i]`` tokens of ``seqs[i]``; logits of every new row
        (``"all"``) or of each request's last row (``"last"``)."""
        ids, positions, tables = [], [], []
        for seq, n in zip(seqs, num_new, strict=True):
            assert self.cache.allocate_slots(seq, n) is not None, "KV cache too small for the test"
            start = seq.num_computed_tokens
            ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            tables.append(self.cache.get_block_ids(seq.request_id))
        seq_lens = [s.num_computed_tokens + n for s, n in zip(seqs, num_new, strict=True)]
        md = build_attention_metadata(num_new, seq_lens, tables, self.cache.block_size, self.device)
        hidden = self.model(
            torch.tensor(ids, device=self.device), torch.tensor(positions, device=self.device), md
        )
        ends = md.query_start_loc_cpu[1:]
        if logit_rows == "last":
            logits = self.model.compute_logits(hidden, torch.tensor([e - 1 for e in ends], device=self.device))
            out = list(logits.unbind(0))
        else:
            logits = self.model.compute_logits(hidden)
            out = [logits[s:e] for s, e in zip(md.query_start_loc_cpu, ends, strict=False)]
        for seq, n in zip(seqs, num_new, strict=True):
            seq.num_computed_tokens += n
        return out

    def prompt_logits(self, prompts: list[list[int]], chunk_size: int | None = None) -> list[torch.Tensor]:
        """Logits at every position of every prompt, all prompts in one batch per step,
        prefilled ``chunk_size`` tokens at a time (whole prompts if ``None``)."""
        seqs = [_Seq(f"p{i}", list(p)) for i, p in enumerate(prompts)]
        pieces: list[list[torch.Tensor]] = [[] for _ in seqs]
        while any(s.num_computed_tokens < len(s.token_ids) for s in seqs):
            active = [i for i, s in enumerate(seqs) if s.num_computed_tokens < len(s.token_ids)]
            sizes = [len(seqs[i].token_ids) - seqs[i].num_computed_tokens for i in active]
            if chunk_size is not None:
                sizes = [min(n, chunk_size) for n in sizes]
            for i, logits in zip(active, self.step([seqs[i] for i in active], sizes, "all"), strict=True):
                pieces[i].append(logits)
        for s in seqs:
            self.cache.free(s.request_id)
        return [torch.cat(p) for p in pieces]

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of ``max_new_tokens`` tokens, all prompts batched."""
        seqs = [_Seq(f"g{i}", list(p)) for i, p in enumerate(prompts)]
        outputs: list[list[int]] = [[] for _ in seqs]
        num_new = [len(p) for p in prompts]
        for _ in range(max_new_tokens):
            for i, logits in enumerate(self.step(seqs, num_new, "last")):
                token = int(logits.argmax())
                outputs[i].append(token)
                seqs[i].token_ids.append(token)
            num_new = [1] * len(seqs)
        for s in seqs:
            self.cache.free(s.request_id)
        return outputs
