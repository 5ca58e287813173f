"""Per-row sampling parameters as device tensors (``SamplingMetadata``), and ``SamplingBatch``,
which builds them once per batch composition.

Most of a step's metadata depends only on which requests are sampled, in which order: their
temperatures, top-k/top-p/min-p, penalties and (for repetition penalties) prompt ids. A
``SamplingBatch`` holds that part; each step it adds only what changes with the step — the
seeded rows' generators, the output ids of penalized rows and the ``min_tokens`` mask of rows
still short of their minimum — and returns the same metadata object when none applies (an
all-greedy decode batch, for instance, allocates nothing per step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from infer_core.request import SamplingParams


@dataclass
class SamplingMetadata:
    """Per-row sampling parameters of one step, as device tensors ([B] each).

    Greedy rows carry top_k 0, top_p 1 and min_p 0, so the flags describe the random rows.
    Token-id tensors are padded with ``vocab_size`` (out of range: the sampler writes those
    into a scratch column). ``prompt_token_ids`` only holds the rows with a repetition penalty
    and ``output_token_ids`` the rows with any penalty (others are all padding; width 0 when no
    row needs them); ``min_tokens_mask`` holds the ids a row may not sample yet ([B, 0] when
    none).
    """

    temperature: torch.Tensor  # float32; 0 = greedy
    top_k: torch.Tensor  # int32; 0 = off
    top_p: torch.Tensor  # float32; 1 = off
    min_p: torch.Tensor  # float32; 0 = off
    repetition_penalty: torch.Tensor  # float32; 1 = off
    presence_penalty: torch.Tensor  # float32; 0 = off
    frequency_penalty: torch.Tensor  # float32; 0 = off
    generators: dict[int, torch.Generator]  # row -> the request's own generator
    prompt_token_ids: torch.Tensor  # int64 [B, Lp], pad = vocab_size
    output_token_ids: torch.Tensor  # int64 [B, Lo], pad = vocab_size
    min_tokens_mask: torch.Tensor  # int64 [B, K], pad = vocab_size
    max_num_logprobs: int | None
    all_greedy: bool
    all_random: bool
    no_penalties: bool
    no_top_k_top_p: bool
    no_min_p: bool
    no_top_p: bool = True
    all_top_k: bool = False  # every random row has a top_k: filter on topk(max_top_k), no sort
    max_top_k: int = 0  # the largest top_k of a random row (0 = no row uses top-k)

    @property
    def num_rows(self) -> int:
        return self.temperature.shape[0]

    @property
    def no_min_tokens(self) -> bool:
        return self.min_tokens_mask.shape[1] == 0

    @property
    def argmax_only(self) -> bool:
        """Every row greedy, nothing to mask or penalize, no logprobs: the sample is the
        argmax of the logits (which a decode CUDA graph has already computed)."""
        return self.all_greedy and self.no_min_tokens and self.no_penalties and self.max_num_logprobs is None

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        prompt_ids: Sequence[Sequence[int]],
        output_ids: Sequence[Sequence[int]],
        generators: dict[int, torch.Generator],
        vocab_size: int,
        device: torch.device | str,
        eos_ids_per_row: Sequence[frozenset[int]],
    ) -> SamplingMetadata:
        """Build one step's metadata from plain lists (one host-to-device copy per tensor)."""
        assert len(output_ids) == len(params)
        batch = SamplingBatch(None, params, prompt_ids, eos_ids_per_row, vocab_size, device)
        return batch.metadata([len(ids) for ids in output_ids], lambda: output_ids, generators)


class SamplingBatch:
    """The parts of ``SamplingMetadata`` fixed by the batch composition (``key``: anything
    that identifies it), built once; ``metadata`` adds each step's changing parts."""

    def __init__(
        self,
        key: Hashable,
        params: Sequence[SamplingParams],
        prompt_ids: Sequence[Sequence[int]],
        eos_ids_per_row: Sequence[frozenset[int]],
        vocab_size: int,
        device: torch.device | str,
    ) -> None:
        num_rows = len(params)
        assert len(prompt_ids) == len(eos_ids_per_row) == num_rows
        self.key = key
        self.vocab_size = vocab_size
        self.device = device
        columns: list[list[float]] = [[] for _ in range(7)]
        for p in params:
            greedy = p.temperature == 0.0
            top_k = p.top_k if not greedy and 0 < p.top_k < vocab_size else 0
            for column, value in zip(columns, (
                p.temperature, top_k, 1.0 if greedy else p.top_p, 0.0 if greedy else p.min_p,
                p.repetition_penalty, p.presence_penalty, p.frequency_penalty,
            ), strict=True):
                column.append(float(value))
        temps, top_ks, top_ps, min_ps, reps, press, freqs = columns
        values = _to_device(torch.tensor(columns, dtype=torch.float32), device)  # [7, B], one copy
        self.needs_output = [r != 1.0 or pr != 0.0 or f != 0.0 for r, pr, f in zip(reps, press, freqs, strict=True)]
        prompts = [ids if r != 1.0 else () for ids, r in zip(prompt_ids, reps, strict=True)]
        # rows whose min_tokens mask may apply: (row, min_tokens, the ids it may not sample)
        self.min_tokens_rows = [
            (row, p.min_tokens, sorted(t for t in {*eos, *p.stop_token_ids} if 0 <= t < vocab_size))
            for row, (p, eos) in enumerate(zip(params, eos_ids_per_row, strict=True)) if p.min_tokens > 0
        ]  # vLLM masks EOS here even with ignore_eos
        random_top_ks = [k for k, t in zip(top_ks, temps, strict=True) if t != 0.0]
        empty = torch.empty(num_rows, 0, dtype=torch.int64, device=device)
        self.base = SamplingMetadata(
            temperature=values[0],
            top_k=values[1].to(torch.int32),
            top_p=values[2],
            min_p=values[3],
            repetition_penalty=values[4],
            presence_penalty=values[5],
            frequency_penalty=values[6],
            generators={},
            prompt_token_ids=_padded(prompts, vocab_size, device),
            output_token_ids=empty,
            min_tokens_mask=empty,
            max_num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=None),
            all_greedy=all(t == 0.0 for t in temps),
            all_random=all(t != 0.0 for t in temps),
            no_penalties=not any(self.needs_output),
            no_top_k_top_p=not any(top_ks) and all(p == 1.0 for p in top_ps),
            no_min_p=not any(min_ps),
            no_top_p=all(p == 1.0 for p in top_ps),
            all_top_k=all(k > 0 for k in random_top_ks),
            max_top_k=int(max(random_top_ks, default=0)),
        )

    def metadata(
        self,
        num_output_tokens: Sequence[int],
        output_ids: Callable[[], Sequence[Sequence[int]]],
        generators: dict[int, torch.Generator],
    ) -> SamplingMetadata:
        """This step's metadata: ``num_output_tokens`` per row, ``output_ids`` called only
        when a row has a penalty, ``generators`` of the seeded random rows."""
        num_rows = self.base.num_rows
        assert len(num_output_tokens) == num_rows
        assert all(0 <= row < num_rows for row in generators), "generator for a missing row"
        changes: dict = {}
        if generators:
            changes["generators"] = dict(generators)
        if not self.base.no_penalties:
            outputs = [ids if need else () for ids, need in zip(output_ids(), self.needs_output, strict=True)]
            changes["output_token_ids"] = _padded(outputs, self.vocab_size, self.device)
        banned = {row: ids for row, minimum, ids in self.min_tokens_rows if num_output_tokens[row] < minimum}
        if banned:
            rows = [banned.get(row, []) for row in range(num_rows)]
            changes["min_tokens_mask"] = _padded(rows, self.vocab_size, self.device)
        return dataclasses.replace(self.base, **changes) if changes else self.base


def _padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return torch.empty(len(rows), 0, dtype=torch.int64, device=device)
    return _to_device(torch.tensor([[*r, *[pad] * (width - len(r))] for r in rows], dtype=torch.int64), device)


def _to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``host`` on ``device`` without waiting for the device (pinned, asynchronous on CUDA)."""
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


