"""The model runner: one flat batch per step, logits only where sampled, sampling on device.

It keeps the state of every request it has seen (token ids, block table) so that a step's
``SchedulerOutput`` only carries what changed. Per-step inputs are written into buffers
allocated once at start-up (``input_ids``, ``positions``, ``slot_mapping``, query offsets,
sequence lengths, block tables), so the tensors a decode step reads never move — the
precondition for replaying it as a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from infer_core.attention.metadata import AttentionMetadata
from infer_core.engine.sampler import Sampler, SamplingMetadata
from infer_core.engine.scheduler import SchedulerOutput
from infer_core.models.base import CausalLM
from infer_core.request import Logprob, SamplingParams

SEED_STRIDE = 1_000_003  # a seeded request's noise at output position i comes from seed, i


@dataclass(slots=True)
class RunnerRequest:
    token_ids: list[int]
    num_prompt_tokens: int
    block_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]


@dataclass(frozen=True)
class ModelRunnerOutput:
    """Sampled tokens of the requests that reached the end of their tokens this step."""

    req_ids: list[str]
    sampled_token_ids: list[int]
    logprobs: list[Logprob | None] = field(default_factory=list)


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        *,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        vocab_size: int,
        device: torch.device,
        eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.sampler = Sampler()
        self.requests: dict[str, RunnerRequest] = {}
        max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(max_num_batched_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_num_batched_tokens, dtype=torch.int64, device=device)
        self.slot_mapping = torch.zeros(max_num_batched_tokens, dtype=torch.int64, device=device)
        self.query_start_loc = torch.zeros(max_num_seqs + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(max_num_seqs, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_num_seqs, max_blocks, dtype=torch.int32, device=device)
        self.logits_indices = torch.zeros(max_num_seqs, dtype=torch.int64, device=device)

    def _update_states(self, out: SchedulerOutput) -> None:
        for request_id in (*out.finished_req_ids, *out.preempted_req_ids):
            self.requests.pop(request_id, None)
        for new in out.scheduled_new_reqs:
            self.requests[new.request_id] = RunnerRequest(
                token_ids=[*new.prompt_token_ids, *new.output_token_ids],
                num_prompt_tokens=len(new.prompt_token_ids),
                block_ids=list(new.block_ids),
                params=new.sampling_params,
                eos_token_ids=self.eos_token_ids,
            )
        for cached in out.scheduled_cached_reqs:
            self.requests[cached.request_id].block_ids.extend(cached.new_block_ids)

    def _starts(self, out: SchedulerOutput) -> dict[str, int]:
        starts = {n.request_id: n.num_computed_tokens for n in out.scheduled_new_reqs}
        starts.update({c.request_id: c.num_computed_tokens for c in out.scheduled_cached_reqs})
        return starts

    @torch.inference_mode()
    def execute_model(self, out: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(out)
        if out.is_empty:
            return ModelRunnerOutput([], [])
        starts = self._starts(out)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_starts = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        sample_ids: list[str] = []
        size = self.block_size
        req_ids = list(out.num_scheduled_tokens)
        for row, request_id in enumerate(req_ids):
            state = self.requests[request_id]
            start, num = starts[request_id], out.num_scheduled_tokens[request_id]
            end = start + num
            ids.extend(state.token_ids[start:end])
            positions.extend(range(start, end))
            table = state.block_ids
            slots.extend(table[p // size] * size + p % size for p in range(start, end))
            query_starts.append(query_starts[-1] + num)
            seq_lens.append(end)
            self.block_tables[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
            if end == len(state.token_ids):  # the last known token: sample the next one
                sample_rows.append(query_starts[-1] - 1)
                sample_ids.append(request_id)
        num_tokens, num_reqs = len(ids), len(req_ids)
        self.input_ids[:num_tokens].copy_(torch.tensor(ids), non_blocking=True)
        self.positions[:num_tokens].copy_(torch.tensor(positions), non_blocking=True)
        self.slot_mapping[:num_tokens].copy_(torch.tensor(slots), non_blocking=True)
        self.query_start_loc[: num_reqs + 1].copy_(torch.tensor(query_starts), non_blocking=True)
        self.seq_lens[:num_reqs].copy_(torch.tensor(seq_lens), non_blocking=True)
        max_blocks = -(-max(seq_lens) // size)
        metadata = AttentionMetadata(
            query_start_loc=self.query_start_loc[: num_reqs + 1],
            seq_lens=self.seq_lens[:num_reqs],
            block_tables=self.block_tables[:num_reqs, :max_blocks],
            slot_mapping=self.slot_mapping[:num_tokens],
            block_size=size,
            max_query_len=max(out.num_scheduled_tokens.values()),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_starts,
            seq_lens_cpu=seq_lens,
        )
        hidden = self.model(self.input_ids[:num_tokens], self.positions[:num_tokens], metadata)
        if not sample_ids:
            return ModelRunnerOutput([], [])
        indices = self.logits_indices[: len(sample_rows)]
        indices.copy_(torch.tensor(sample_rows), non_blocking=True)
        logits = self.model.compute_logits(hidden, indices).float()
        meta = self._sampling_metadata(sample_ids)
        sampled = self.sampler(logits, meta).to_lists()
        for request_id, token in zip(sample_ids, sampled.sampled_token_ids, strict=True):
            self.requests[request_id].token_ids.append(token)
        logprobs: list[Logprob | None] = []
        for row, request_id in enumerate(sample_ids):
            n = self.requests[request_id].params.logprobs
            if n is None or sampled.logprobs is None:
                logprobs.append(None)
                continue
            top = tuple(zip(sampled.top_token_ids[row][:n], sampled.top_logprobs[row][:n], strict=True))
            logprobs.append(Logprob(sampled.sampled_token_ids[row], sampled.logprobs[row], top))
        return ModelRunnerOutput(sample_ids, sampled.sampled_token_ids, logprobs)

    def _sampling_metadata(self, request_ids: list[str]) -> SamplingMetadata:
        states = [self.requests[r] for r in request_ids]
        generators = {}
        for row, state in enumerate(states):
            seed = state.params.seed
            if seed is not None and not state.params.greedy:
                position = len(state.token_ids) - state.num_prompt_tokens
                generator = torch.Generator(self.device)
                generator.manual_seed((seed * SEED_STRIDE + position) % (2**63))
                generators[row] = generator
        return SamplingMetadata.from_params(
            [s.params for s in states],
            [s.token_ids[: s.num_prompt_tokens] for s in states],
            [s.token_ids[s.num_prompt_tokens:] for s in states],
            generators,
            self.vocab_size,
            self.device,
            [s.eos_token_ids for s in states],
        )
