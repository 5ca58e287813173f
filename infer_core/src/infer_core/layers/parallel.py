"""Tensor-parallel layers (Megatron-LM's split, as vLLM has it). Each holds its rank's part of
the weight and knows how to cut that part out of the full checkpoint tensor
(``weight_loader``), so every rank loads the same Hugging Face checkpoint and keeps only its
shard. With a group of one rank (the default ``TPGroup()``) they are the plain layers.

- :class:`QKVParallelLinear`: the fused q/k/v projection, split by heads (query heads
  ``num_heads / size`` per rank; KV heads split the same way, or one replicated per rank
  when there are fewer KV heads than ranks);
- :class:`MergedColumnParallelLinear`: fused gate/up, each projection split by rows;
- :class:`RowParallelLinear`: o_proj / down_proj, split along the input; the partial
  products are summed with one all-reduce;
- :class:`VocabParallelEmbedding` / :class:`ParallelLMHead`: the vocabulary split in
  contiguous ranges (padded to a multiple of the size); the embedding sums the ranks'
  lookups (each rank zeroes the ids it does not own), the LM head gathers the logits.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from infer_core.kernels.device import gather_rows_enabled
from infer_core.layers.linear import Linear, MergedLinear
from infer_core.layers.norm import RMSNorm
from infer_core.parallel.group import TPGroup


def _full(param: nn.Parameter, rows: int, cols: int) -> tuple[int, ...]:
    return (rows, cols) if param.dim() == 2 else (rows,)


class QKVParallelLinear(MergedLinear):
    """``[q | k | v]`` of this rank's heads: checkpoint tensors 0 (q_proj), 1 (k_proj), 2 (v_proj)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, tp: TPGroup | None = None) -> None:
        self.tp = tp or TPGroup()
        self.head_dim = head_dim
        self.num_heads = self.tp.split(num_heads, "attention heads")
        self.first_kv_head, self.num_kv_heads = self.tp.kv_heads(num_kv_heads)
        self.total_heads = (num_heads, num_kv_heads, num_kv_heads)
        super().__init__(hidden_size, [self.num_heads * head_dim, *[self.num_kv_heads * head_dim] * 2], bias=bias)

    def checkpoint_shape(self, param: nn.Parameter, index: int) -> tuple[int, ...]:
        return _full(param, self.total_heads[index] * self.head_dim, self.in_features)

    @torch.no_grad()
    def weight_loader(self, param: nn.Parameter, tensor: torch.Tensor, index: int) -> None:
        first = self.tp.rank * self.num_heads if index == 0 else self.first_kv_head
        count = self.num_heads if index == 0 else self.num_kv_heads
        param[self.shard_rows(index)].copy_(tensor.narrow(0, first * self.head_dim, count * self.head_dim))


class MergedColumnParallelLinear(MergedLinear):
    """Several projections of the same input (gate / up), each split by output rows."""

    def __init__(self, in_features: int, sizes: list[int], bias: bool = False, tp: TPGroup | None = None) -> None:
        self.tp = tp or TPGroup()
        super().__init__(in_features, [self.tp.split(n, "intermediate size") for n in sizes], bias=bias)

    def checkpoint_shape(self, param: nn.Parameter, index: int) -> tuple[int, ...]:
        return _full(param, self.sizes[index] * self.tp.size, self.in_features)

    @torch.no_grad()
    def weight_loader(self, param: nn.Parameter, tensor: torch.Tensor, index: int) -> None:
        rows = self.sizes[index]
        param[self.shard_rows(index)].copy_(tensor.narrow(0, self.tp.rank * rows, rows))


class RowParallelLinear(Linear):
    """``x [T, in / size] @ weight[:, rank's inputs].T``, summed over ranks (one all-reduce);
    the bias, whole on every rank, is added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TPGroup | None = None) -> None:
        self.tp = tp or TPGroup()
        super().__init__(self.tp.split(in_features, "projection inputs"), out_features, bias=bias)

    def reduce_output(self, y: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None or self.tp.size == 1:
            return super().forward(x)
        return self.tp.all_reduce(F.linear(x, self.weight)) + self.bias

    def checkpoint_shape(self, param: nn.Parameter, index: int | None) -> tuple[int, ...]:
        return _full(param, self.out_features, self.in_features * self.tp.size)

    @torch.no_grad()
    def weight_loader(self, param: nn.Parameter, tensor: torch.Tensor, index: int | None) -> None:
        param.copy_(tensor.narrow(-1, self.tp.rank * self.in_features, self.in_features) if param is self.weight else tensor)


class VocabParallelEmbedding(nn.Module):
    """This rank's rows ``[rank * n, (rank + 1) * n)`` of the embedding, ``n = ceil(vocab / size)``
    (rows past the vocabulary are zero); the lookup of ids outside the range is zero, and the
    ranks' lookups are summed."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup | None = None) -> None:
        super().__init__()
        self.tp = tp or TPGroup()
        self.vocab_size = vocab_size
        self.rows = -(-vocab_size // self.tp.size)
        self.start = self.tp.rank * self.rows
        self.weight = nn.Parameter(torch.empty(self.rows, hidden_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            if gather_rows_enabled(ids) and ids.dim() == 1:  # a PDL launch (INFER_GATHER_ROWS=0: torch's)
                from infer_core.kernels.gather_rows import gather_rows

                return gather_rows(self.weight, ids)
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(out.masked_fill(outside[:, None], 0))

    def checkpoint_shape(self, param: nn.Parameter, index: int | None) -> tuple[int, ...]:
        return (self.vocab_size, param.shape[1])

    @torch.no_grad()
    def weight_loader(self, param: nn.Parameter, tensor: torch.Tensor, index: int | None) -> None:
        end = min(self.start + self.rows, self.vocab_size)
        param.zero_()
        param[: max(end - self.start, 0)].copy_(tensor[self.start:end])


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection over this rank's vocabulary range (the embedding's, so a tied
    head shares its shard); :meth:`forward` returns the whole vocabulary's logits on every
    rank (one all-gather of ``[rows, vocab / size]``)."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup | None = None) -> None:
        super().__init__(vocab_size, hidden_size, tp)
        self._head_workspace = None  # kernels.lm_head's partials and ticket, made on first use

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight)
        if self.tp.size == 1:
            return logits
        return self.tp.all_gather_last(logits)[..., : self.vocab_size]

    def forward_greedy(self, hidden: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                       norm: tuple[torch.Tensor, RMSNorm] | None = None) -> bool:
        """``logits = forward(hidden)`` and ``ids = logits.argmax(-1)`` in one launch
        (``kernels.lm_head``) where it applies: one row, CUDA, one rank, the weight's dtype,
        unless ``INFER_LM_HEAD_ARGMAX=0`` (A/B runs). Returns whether it did; else nothing is
        written. ``norm = (residual, final_norm)``: ``hidden`` is the stack's output before its
        final norm, folded into the same launch (``forward(final_norm(hidden, residual)[0])``)
        where it also applies: Llama / Qwen's RMSNorm (not Gemma's) with
        ``INFER_LM_HEAD_NORM=1`` (opt-in: W1 Qwen3-0.6B on an H200 0.6453 against 0.6462 ms per
        token, within the runs' spread)."""
        if (hidden.shape[0] != 1 or not hidden.is_cuda or self.tp.size != 1 or hidden.dtype != self.weight.dtype
                or logits.dtype != self.weight.dtype or os.environ.get("INFER_LM_HEAD_ARGMAX", "1") == "0"):
            return False
        folded = None
        if norm is not None:
            residual, final = norm
            if (residual is None or final.gemma or final.weight.dtype != hidden.dtype or residual.shape != hidden.shape
                    or os.environ.get("INFER_LM_HEAD_NORM", "0") != "1"):
                return False
            folded = (residual.contiguous(), final.weight, final.eps)
        from infer_core.kernels.lm_head import LMHeadWorkspace, lm_head_argmax

        if self._head_workspace is None:
            self._head_workspace = LMHeadWorkspace()
        lm_head_argmax(hidden.contiguous(), self.weight, logits, ids, self._head_workspace, norm=folded)
        return True

    def forward_greedy_after_stack(self, h: torch.Tensor, residual: torch.Tensor, final_norm: RMSNorm,
                                   logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """A model's ``CausalLM.forward_greedy`` from its decoder stack's output ``(h, residual)``
        before ``final_norm``: the norm folded into this head's launch where that applies
        (``hidden`` then ``h``), else the norm then :meth:`forward_greedy`. Returns ``(hidden,
        whether logits and ids were written)``."""
        if self.forward_greedy(h, logits, ids, norm=(residual, final_norm)):
            return h, True
        hidden = final_norm(h, residual)[0]
        return hidden, self.forward_greedy(hidden, logits, ids)
