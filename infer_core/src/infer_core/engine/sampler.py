"""The sampler: one vectorized pass over the batch's logits, on their device (vLLM V1's order).

1. min_tokens: a row with fewer outputs than its ``min_tokens`` cannot pick EOS or a stop id;
2. penalties: repetition over prompt + output (a positive logit divided by the penalty, a
   negative one multiplied), presence and frequency over the output
   (``logit -= presence * (count > 0) + frequency * count``);
3. greedy rows (temperature 0) take ``argmax`` of these logits (a Triton kernel on CUDA);
4. random rows: divide by the temperature, top-k, top-p (the smallest set of best tokens whose
   mass reaches ``top_p``, renormalized after top-k), min-p (drop ``p < min_p * p_max``), then
   the exponential race ``argmax(p / q)``, ``q ~ Exp(1)``: a row with its own generator (a
   seeded request) draws its ``q`` from it, the others share one batch draw.

Top-k and top-p work on candidates, best first: ``topk(max_top_k)`` when every random row has
a top-k (the common case, no sort), else one descending sort of the vocabulary; top-k keeps
exactly k candidates. Without top-k / top-p the candidates are the whole vocabulary, unsorted.

Logprobs are vLLM V1's "raw" ones: ``log_softmax`` of the model's logits, before any of the
above. ``__call__`` never waits for the device; ``SamplerOutput.to_lists`` does, once.
The input logits (any float dtype; the work is in float32) are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infer_core.engine.sampling_metadata import SamplingMetadata

__all__ = ["HostSamples", "SampledLists", "Sampler", "SamplerOutput", "SamplingMetadata"]

MIN_TEMPERATURE = 1e-5  # random rows divide by at least this (no overflow on tiny temperatures)


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
        """Everything as lists, in one device-to-host copy (waits for the device)."""
        return self.to_host().lists()

    def to_host(self) -> HostSamples:
        """Start the copy to the host (packed as float64 when logprobs are asked for: ids <
        2**53 are exact) without waiting: on CUDA into pinned memory behind an event, so that
        work launched later on the stream does not delay reading these ids."""
        if self.logprobs is None:
            packed, width = self.sampled_token_ids, None
        else:
            assert self.top_token_ids is not None and self.top_logprobs is not None
            width = self.top_token_ids.shape[1]
            packed = torch.cat([
                self.sampled_token_ids.double()[:, None], self.logprobs.double()[:, None],
                self.top_token_ids.double(), self.top_logprobs.double(),
            ], dim=1)
        if packed.device.type != "cuda":
            return HostSamples(packed, width, None)
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return HostSamples(host, width, event)


@dataclass(frozen=True)
class HostSamples:
    """A ``SamplerOutput`` on its way to the host; ``lists`` waits for it."""

    packed: torch.Tensor
    logprobs_width: int | None  # None: ids only
    ready: torch.cuda.Event | None

    def lists(self) -> SampledLists:
        if self.ready is not None:
            self.ready.synchronize()
        rows = self.packed.tolist()
        n = self.logprobs_width
        if n is None:
            return SampledLists(rows)
        return SampledLists(
            sampled_token_ids=[int(row[0]) for row in rows],
            logprobs=[row[1] for row in rows],
            top_token_ids=[[int(t) for t in row[2:2 + n]] for row in rows],
            top_logprobs=[row[2 + n:] for row in rows],
        )


class Sampler:
    """Stateless; the caller keeps the seeded generators across steps."""

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        assert logits.dim() == 2 and logits.shape[0] == meta.num_rows, (logits.shape, meta.num_rows)
        if meta.argmax_only:
            # argmax in the model's dtype: widening to float32 is exact, so it picks the same
            # id, without writing a float32 copy of the logits
            return SamplerOutput(argmax(logits))
        raw = logits.float()
        logits = self.apply_logits_processors(raw, meta)
        if meta.all_greedy:
            sampled = argmax(logits)
        else:
            probs, ids = self.filter(logits, meta)
            sampled = self.exponential_race(probs, ids, meta.generators, logits.shape[1])
            if not meta.all_random:
                sampled = torch.where(meta.temperature == 0.0, argmax(logits), sampled)
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
        best = argmax(probs.div_(noise))
        return best if ids is None else ids.gather(1, best[:, None]).squeeze(1)


def argmax(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x.argmax(dim=-1)`` of [B, V] (first index of the maximum, NaN above all): on CUDA the
    two-stage Triton kernel (a few µs where torch's generic reduction takes 40-50), else torch;
    into ``out`` (int64 [B]) when given."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16, torch.float32):
        from infer_core.kernels.argmax import argmax as triton_argmax

        return triton_argmax(x, out=out)
    if out is None:
        return x.argmax(dim=-1)
    return torch.argmax(x, dim=-1, out=out)


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

