"""The sampler: one vectorized pass over the batch's logits, on their device (vLLM V1's order).

1. min_tokens: a row with fewer outputs than its ``min_tokens`` cannot pick EOS or a stop id;
2. penalties: repetition over prompt + output (a positive logit divided by the penalty, a
   negative one multiplied), presence and frequency over the output
   (``logit -= presence * (count > 0) + frequency * count``);
3. greedy rows (temperature 0) take ``argmax`` of these logits;
4. random rows: divide by the temperature, top-k, top-p (the smallest set of best tokens whose
   mass reaches ``top_p``, renormalized after top-k), min-p (drop ``p < min_p * p_max``), then
   the exponential race ``argmax(p / q)``, ``q ~ Exp(1)``: a row with its own generator (a
   seeded request) draws its ``q`` from it, the others share one batch draw.

Top-k and top-p work on candidates, best first: ``topk(max_top_k)`` when every random row has
a top-k (the common case, no sort), else one descending sort of the vocabulary; top-k keeps
exactly k candidates. Without top-k / top-p the candidates are the whole vocabulary, unsorted.

Logprobs are vLLM V1's "raw" ones: ``log_softmax`` of the model's logits, before any of the
above. ``__call__`` never waits for the device; ``SamplerOutput.to_lists`` does, once.
The input logits are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from infer_core.request import SamplingParams

MIN_TEMPERATURE = 1e-5  # random rows divide by at least this (no overflow on tiny temperatures)


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
        """Build the step's metadata from plain lists (one host-to-device copy per tensor)."""
        num_rows = len(params)
        assert len(prompt_ids) == len(output_ids) == len(eos_ids_per_row) == num_rows
        assert all(0 <= row < num_rows for row in generators), "generator for a missing row"
        columns: list[list[float]] = [[] for _ in range(7)]
        forbidden: list[list[int]] = []
        for p, out, eos in zip(params, output_ids, eos_ids_per_row, strict=True):
            greedy = p.temperature == 0.0
            top_k = p.top_k if not greedy and 0 < p.top_k < vocab_size else 0
            for column, value in zip(columns, (
                p.temperature, top_k, 1.0 if greedy else p.top_p, 0.0 if greedy else p.min_p,
                p.repetition_penalty, p.presence_penalty, p.frequency_penalty,
            ), strict=True):
                column.append(float(value))
            banned: list[int] = []
            if len(out) < p.min_tokens:  # vLLM masks EOS here even with ignore_eos
                banned = sorted(t for t in {*eos, *p.stop_token_ids} if 0 <= t < vocab_size)
            forbidden.append(banned)
        temps, top_ks, top_ps, min_ps, reps, press, freqs = columns
        values = torch.tensor(columns, dtype=torch.float32, device=device)  # [7, B], one copy
        needs_output = [r != 1.0 or pr != 0.0 or f != 0.0 for r, pr, f in zip(reps, press, freqs, strict=True)]
        prompts = [ids if r != 1.0 else () for ids, r in zip(prompt_ids, reps, strict=True)]
        outputs = [ids if need else () for ids, need in zip(output_ids, needs_output, strict=True)]
        random_top_ks = [k for k, t in zip(top_ks, temps, strict=True) if t != 0.0]
        return cls(
            temperature=values[0],
            top_k=values[1].to(torch.int32),
            top_p=values[2],
            min_p=values[3],
            repetition_penalty=values[4],
            presence_penalty=values[5],
            frequency_penalty=values[6],
            generators=dict(generators),
            prompt_token_ids=_padded(prompts, vocab_size, device),
            output_token_ids=_padded(outputs, vocab_size, device),
            min_tokens_mask=_padded(forbidden, vocab_size, device),
            max_num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=None),
            all_greedy=all(t == 0.0 for t in temps),
            all_random=all(t != 0.0 for t in temps),
            no_penalties=not any(needs_output),
            no_top_k_top_p=not any(top_ks) and all(p == 1.0 for p in top_ps),
            no_min_p=not any(min_ps),
            no_top_p=all(p == 1.0 for p in top_ps),
            all_top_k=all(k > 0 for k in random_top_ks),
            max_top_k=int(max(random_top_ks, default=0)),
        )


def _padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return torch.empty(len(rows), 0, dtype=torch.int64, device=device)
    return torch.tensor([[*r, *[pad] * (width - len(r))] for r in rows], dtype=torch.int64, device=device)


@dataclass(frozen=True)
class SampledLists:
    """``SamplerOutput`` as plain Python lists (``logprobs`` etc. None unless asked for)."""

    sampled_token_ids: list[int]
    logprobs: list[float] | None = None  # the sampled token's logprob, per row
    top_token_ids: list[list[int]] | None = None  # [B][n], best first
    top_logprobs: list[list[float]] | None = None


@dataclass(frozen=True)
class SamplerOutput:
    """Device tensors: ``sampled_token_ids`` [B] int64; with logprobs asked for, the sampled
    token's raw logprob [B] and the top-n (n = ``max_num_logprobs``) ids and logprobs [B, n],
    best first. Rows that asked for fewer are sliced by the caller."""

    sampled_token_ids: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_token_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None

    def to_lists(self) -> SampledLists:
        """Everything in one device-to-host copy (packed as float64: ids < 2**53 are exact)."""
        if self.logprobs is None:
            return SampledLists(self.sampled_token_ids.tolist())
        assert self.top_token_ids is not None and self.top_logprobs is not None
        n = self.top_token_ids.shape[1]
        packed = torch.cat([
            self.sampled_token_ids.double()[:, None], self.logprobs.double()[:, None],
            self.top_token_ids.double(), self.top_logprobs.double(),
        ], dim=1).cpu().tolist()
        return SampledLists(
            sampled_token_ids=[int(row[0]) for row in packed],
            logprobs=[row[1] for row in packed],
            top_token_ids=[[int(t) for t in row[2:2 + n]] for row in packed],
            top_logprobs=[row[2 + n:] for row in packed],
        )


class Sampler:
    """Stateless; the caller keeps the seeded generators across steps."""

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        assert logits.dim() == 2 and logits.shape[0] == meta.num_rows, (logits.shape, meta.num_rows)
        raw = logits.float()
        logits = self.apply_logits_processors(raw, meta)
        if meta.all_greedy:
            sampled = logits.argmax(dim=-1)
        else:
            probs, ids = self.filter(logits, meta)
            sampled = self.exponential_race(probs, ids, meta.generators, logits.shape[1])
            if not meta.all_random:
                sampled = torch.where(meta.temperature == 0.0, logits.argmax(dim=-1), sampled)
        if meta.max_num_logprobs is None:
            return SamplerOutput(sampled)
        logprobs = raw.log_softmax(dim=-1)
        top_logprobs, top_ids = logprobs.topk(meta.max_num_logprobs, dim=-1)
        chosen = logprobs.gather(1, sampled[:, None]).squeeze(1)
        return SamplerOutput(sampled, chosen, top_ids, top_logprobs)

    @staticmethod
    def apply_logits_processors(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """min_tokens masking then penalties; ``logits`` itself if neither applies, else a
        new [B, V] view of a [B, V + 1] buffer whose last column absorbs padded ids."""
        if meta.no_min_tokens and meta.no_penalties:
            return logits
        rows, vocab = logits.shape
        work = logits.new_empty(rows, vocab + 1)
        work[:, :vocab] = logits
        work[:, vocab] = 0.0
        if not meta.no_min_tokens:
            work.scatter_(1, meta.min_tokens_mask, float("-inf"))
        if not meta.no_penalties:
            _apply_penalties(work, meta)
        return work[:, :vocab]

    @staticmethod
    def filter(logits: torch.Tensor, meta: SamplingMetadata) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The random rows' distribution after temperature, top-k, top-p and min-p, as
        probabilities (0 where dropped; not renormalized after top-p / min-p) over candidates:
        ``(probs [B, V], None)`` when no row uses top-k / top-p, else ``(probs [B, C],
        token_ids [B, C])``, best first, with C = ``max_top_k`` when every random row has a
        top-k (one ``topk``, no sort) and C = V otherwise (one sort)."""
        temperature = meta.temperature.clamp(min=MIN_TEMPERATURE)
        if not meta.all_random:
            temperature = torch.where(meta.temperature == 0.0, 1.0, temperature)
        if meta.no_top_k_top_p:
            ids = None
            probs = (logits / temperature[:, None]).softmax(dim=-1)
        else:
            if meta.all_top_k:
                values, ids = logits.topk(meta.max_top_k, dim=-1)
            else:
                values, ids = logits.sort(dim=-1, descending=True)
            values = values / temperature[:, None]
            if meta.max_top_k:  # exactly k per row (ties broken by position); k = 0: all
                width = values.shape[1]
                positions = torch.arange(width, device=values.device)
                limit = torch.where(meta.top_k > 0, meta.top_k, width)
                values.masked_fill_(positions >= limit[:, None], float("-inf"))
            probs = values.softmax(dim=-1)
            if not meta.no_top_p:  # keep j while the mass before j is short of top_p
                before = probs.cumsum(dim=-1) - probs  # top_p 1 keeps all, rounding or not
                reach = torch.where(meta.top_p < 1.0, meta.top_p, float("inf"))
                probs.masked_fill_(before >= reach[:, None], 0.0)
        if not meta.no_min_p:
            floor = meta.min_p[:, None] * probs.amax(dim=-1, keepdim=True)
            probs.masked_fill_(probs < floor, 0.0)
        return probs, ids

    @classmethod
    def filtered_probs(cls, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """``filter`` as [B, V] (for tests and inspection; ``__call__`` stays on candidates)."""
        probs, ids = cls.filter(logits, meta)
        return probs if ids is None else torch.zeros_like(logits).scatter_(1, ids, probs)

    @staticmethod
    def exponential_race(
        probs: torch.Tensor,
        ids: torch.Tensor | None,
        generators: dict[int, torch.Generator],
        vocab_size: int,
    ) -> torch.Tensor:
        """``argmax(p / q)``, ``q ~ Exp(1)``: a draw from ``p`` without a cumsum. A row in
        ``generators`` always draws ``vocab_size`` values from its own generator (indexed by
        token id), so its stream is the same whatever the batch; the other rows share one
        batch draw over the candidates only."""
        noise = torch.empty_like(probs)
        if len(generators) < probs.shape[0]:
            noise.exponential_()
        for row, generator in generators.items():
            if ids is None:
                noise[row].exponential_(generator=generator)
            else:
                own = torch.empty(vocab_size, dtype=probs.dtype, device=probs.device)
                noise[row] = own.exponential_(generator=generator)[ids[row]]
        best = probs.div_(noise).argmax(dim=-1)
        return best if ids is None else ids.gather(1, best[:, None]).squeeze(1)


def _apply_penalties(work: torch.Tensor, meta: SamplingMetadata) -> None:
    """Penalize, in place, each token of a row's prompt + output once: gather its logit,
    compute the new value, scatter it back (a repeated id writes the same value again).
    ``work`` is [B, V + 1]; padded ids land in the last column. Counts come from a sorted copy
    of the output, so the result is deterministic (no atomics)."""
    ids = torch.cat([meta.prompt_token_ids, meta.output_token_ids], dim=1)
    if ids.shape[1] == 0:
        return
    values = work.gather(1, ids)
    rep = meta.repetition_penalty[:, None]
    values = torch.where(values > 0, values / rep, values * rep)
    output = meta.output_token_ids
    if output.shape[1]:
        ordered = output.sort(dim=1).values
        counts = (torch.searchsorted(ordered, ids, right=True) - torch.searchsorted(ordered, ids)).to(values.dtype)
        values -= meta.frequency_penalty[:, None] * counts + meta.presence_penalty[:, None] * (counts > 0)
    work.scatter_(1, ids, values)

