"""The model runner: one flat batch per step, logits only where sampled, sampling on device.

It keeps the state of every request it has seen (token ids, a block-table row, a sampling
row) so that a step's ``SchedulerOutput`` only carries what changed. Per-step inputs are
computed with numpy over the batch (no per-token Python) into one int32 staging buffer
allocated once at start-up (``input_ids``, ``positions``, ``slot_mapping``, query offsets,
sequence lengths, batch slots, logits rows; pinned on the host, copied to the device in one
copy per step) and block tables, so the tensors a decode step reads never move — the
precondition for replaying it as a CUDA graph. A decode graph also holds the gather of the
step's block-table rows, the logits of every row and their argmax (``DecodeOutputs``), and
with async scheduling the fill of the ids still in flight (``kernels.fill_ids``, from the
buffer the last step's argmax or sampled ids went to): a greedy decode step launches one
graph and one copy of the sampled ids. Block-table rows are written
only where a request gained blocks (``BlockTable``); the sampler's per-row
parameters are rebuilt only when the set of sampled requests changes (``SamplingBatch``).
The step's one device-to-host sync is the read of the sampled ids.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from infer_core.attention.metadata import AttentionMetadata
from infer_core.engine.block_table import BlockTable
from infer_core.engine.buffers import StagingBuffer
from infer_core.engine.cuda_graphs import DecodeGraphs
from infer_core.engine.sampler import (
    HostSamples,
    SampledLists,
    Sampler,
    SamplerOutput,
    SamplingMetadata,
    argmax,
)
from infer_core.engine.sampling_metadata import SamplingBatch
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
    slot: int  # its row in the block table
    uid: int  # unique over the runner's life (a request id may come back after preemption)
    pending: int = 0  # tokens sampled by launched steps, not yet read back (async scheduling)


@dataclass(slots=True)
class StepInputs:
    metadata: AttentionMetadata
    num_rows: int  # tokens the model runs over (padding rows included)
    sample_ids: list[str]  # requests sampled this step, in the order of logits_indices
    graph_size: int | None  # the padded size of a uniform decode step, else None
    all_sampled: bool  # every request samples: logits rows 0..n-1 in a uniform decode step


@dataclass(frozen=True, slots=True)
class DecodeOutputs:
    """What a decode CUDA graph of ``G`` rows writes on every replay."""

    hidden: torch.Tensor  # [G, hidden_size]
    logits: torch.Tensor  # [G, vocab], rows of the runner's logits buffer
    greedy: torch.Tensor  # [G] int64, the argmax of each row's logits


@dataclass(slots=True)
class LaunchedStep:
    """A step whose kernels are launched; ``ModelRunner.finish`` reads its sampled ids."""

    sample_ids: list[str]
    sampled: HostSamples | None  # the sampled ids on their way to the host


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
        graph_sizes: Sequence[int] = (),
    ) -> None:
        self.model = model
        self.max_model_len = max_model_len
        # Uniform decode steps are padded to these sizes; replayed as CUDA graphs once
        # captured (capture_cuda_graphs), run eagerly with the same padding before that.
        self.graphs: DecodeGraphs[DecodeOutputs] | None = DecodeGraphs(graph_sizes) if graph_sizes else None
        self._graph_logits: torch.Tensor | None = None  # [max G, vocab], written by the graphs
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.sampler = Sampler()
        self.requests: dict[str, RunnerRequest] = {}
        self.max_blocks = -(-max_model_len // block_size)
        seqs = max(max_num_seqs, *graph_sizes) if graph_sizes else max_num_seqs
        tokens = max(max_num_batched_tokens, seqs)
        self.block_table = BlockTable(seqs, self.max_blocks, device)
        # per-request regions first, per-token regions last: a step copies the prefix that
        # ends at its last slot_mapping value, in one host-to-device copy
        self.staging = StagingBuffer({
            "query_start_loc": seqs + 1, "seq_lens": seqs, "batch_slots": seqs, "logits_indices": seqs,
            "placeholder_rows": seqs, "placeholder_sources": seqs, "fill_from": seqs,
            "input_ids": tokens, "positions": tokens, "slot_mapping": tokens,
        }, device)
        regions = self.staging.regions
        self.query_start_loc, self.seq_lens = regions["query_start_loc"], regions["seq_lens"]
        self.batch_slots, self.logits_indices = regions["batch_slots"], regions["logits_indices"]
        self.placeholder_rows, self.placeholder_sources = regions["placeholder_rows"], regions["placeholder_sources"]
        # a captured decode graph fills its placeholders itself (kernels.fill_ids): per row, the
        # row of the last step's sampled ids (self._sampled_ids) or -1
        self.fill_from = regions["fill_from"]
        self.input_ids, self.positions = regions["input_ids"], regions["positions"]
        self.slot_mapping = regions["slot_mapping"]
        # the last launched step's sampled ids (device) and each sampled request's row in them:
        # the next step reads a token still in flight from there (async scheduling)
        self._last_sampled: torch.Tensor | None = None
        self._last_rows: dict[str, int] = {}
        # with graph_fill (CUDA graphs; INFER_GRAPH_FILL=0 turns it off for A/B runs: W1 Qwen3-0.6B
        # 0.68 against 0.69 ms per token on an H200) the decode graphs write their argmax here and read their
        # placeholders from here; every other step copies its sampled ids here, so _last_sampled
        # always views this buffer
        self.graph_fill = self.graphs is not None and os.environ.get("INFER_GRAPH_FILL", "1") != "0"
        # INFER_GRAPH_FILL_GATHER=1: that fill in the block-table gather's launch (kernels.gather_rows' fill),
        # one launch fewer per decode graph; opt-in (W1 Qwen3-0.6B on an H200: 0.6457 against 0.6462 ms per token)
        self.fill_in_gather = self.graph_fill and os.environ.get("INFER_GRAPH_FILL_GATHER", "0") == "1"
        self._sampled_ids = torch.zeros(seqs, dtype=torch.int64, device=device)
        self._arange = np.arange(max(tokens, seqs) + 1, dtype=np.int64)
        self._uids = itertools.count()
        self._sampling: SamplingBatch | None = None
        self._inputs_copied = torch.cuda.Event() if device.type == "cuda" else None

    def _update_states(self, out: SchedulerOutput) -> None:
        for request_id in (*out.finished_req_ids, *out.preempted_req_ids):
            state = self.requests.pop(request_id, None)
            if state is not None:
                self.block_table.remove(state.slot)
        for new in out.scheduled_new_reqs:
            self.requests[new.request_id] = RunnerRequest(
                token_ids=[*new.prompt_token_ids, *new.output_token_ids],
                num_prompt_tokens=len(new.prompt_token_ids),
                block_ids=list(new.block_ids),
                params=new.sampling_params,
                eos_token_ids=self.eos_token_ids,
                slot=self.block_table.add(new.block_ids),
                uid=next(self._uids),
            )
        for cached in out.scheduled_cached_reqs:
            if cached.new_block_ids:
                state = self.requests[cached.request_id]
                state.block_ids.extend(cached.new_block_ids)
                self.block_table.append(state.slot, cached.new_block_ids)

    def execute_model(
        self, out: SchedulerOutput, while_running: Callable[[], None] | None = None
    ) -> ModelRunnerOutput:
        """Run one step. ``while_running`` (host work that does not depend on this step) is
        called once, after the model's kernels are launched and before the sampled ids are
        read: on CUDA it runs while the device computes the step."""
        return self.finish(self.launch(out, while_running))

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, while_running: Callable[[], None] | None = None) -> LaunchedStep:
        """Launch a step's kernels (model, logits, sampler) without waiting for them. A
        request whose last token was sampled by a launched step not finished yet takes it
        on the device (async scheduling); the step must not sample such a request with
        penalties (they need the ids on the host)."""
        self._update_states(out)
        if out.is_empty:
            if while_running is not None:
                while_running()
            return LaunchedStep([], None)
        step = self._prepare_inputs(out)
        sample_ids = step.sample_ids
        n = len(sample_ids)
        graph = None
        logits = None
        if self.graphs is not None and step.graph_size in self.graphs.captured:
            graph = self.graphs.replay(step.graph_size)  # logits and argmax included
        else:
            rows = step.num_rows
            hidden = self.model(self.input_ids.device[:rows], self.positions.device[:rows], step.metadata)
            logits = self.model.compute_logits(hidden, self.logits_indices.device[:n]) if n else None
        if while_running is not None:
            while_running()
        if not n:
            return LaunchedStep([], None)
        meta = self._sampling_metadata(sample_ids)
        if graph is not None and step.all_sampled and meta.argmax_only:
            sampled = SamplerOutput(graph.greedy[:n])
        else:
            if graph is not None:
                logits = graph.logits[:n] if step.all_sampled else graph.logits[self.logits_indices.device[:n]]
            assert logits is not None
            sampled = self.sampler(logits, meta)
        for request_id in sample_ids:
            self.requests[request_id].pending += 1
        ids = sampled.sampled_token_ids
        if self.graph_fill and ids.data_ptr() != self._sampled_ids.data_ptr():  # (a graph's argmax is there)
            self._sampled_ids[:n].copy_(ids)
            ids = self._sampled_ids[:n]
        self._last_sampled = ids
        self._last_rows = {request_id: row for row, request_id in enumerate(sample_ids)}
        return LaunchedStep(sample_ids, sampled.to_host())

    def finish(self, launched: LaunchedStep) -> ModelRunnerOutput:
        """Wait for a launched step and take its sampled ids (the step's one sync)."""
        if launched.sampled is None:
            return ModelRunnerOutput([], [])
        return self._runner_output(launched.sample_ids, self._sample_lists(launched.sampled))

    @staticmethod
    def _sample_lists(sampled: HostSamples) -> SampledLists:
        return sampled.lists()  # the step's one wait for the device

    def _prepare_inputs(self, out: SchedulerOutput) -> StepInputs:
        """Write the flat batch (scheduler order) into the step buffers, padded to a graph
        size for a uniform decode step; returns the attention metadata, the rows the model
        runs over and the request ids to sample (their rows are in ``logits_indices``)."""
        if self._inputs_copied is not None:  # the last step's copies have read the host buffers
            self._inputs_copied.synchronize()  # (a step that samples has waited already)
        num_reqs = len(out.num_scheduled_tokens)
        starts_of = {n.request_id: n.num_computed_tokens for n in out.scheduled_new_reqs}
        starts_of.update({c.request_id: c.num_computed_tokens for c in out.scheduled_cached_reqs})
        req_ids = list(out.num_scheduled_tokens)
        states = [self.requests[r] for r in req_ids]
        num_sched = np.fromiter(out.num_scheduled_tokens.values(), np.int64, num_reqs)
        starts = np.fromiter((starts_of[r] for r in req_ids), np.int64, num_reqs)
        ends = starts + num_sched
        cu = self.query_start_loc.np[: num_reqs + 1]
        cu[0] = 0
        np.cumsum(num_sched, out=cu[1:])
        num_tokens = int(cu[num_reqs])
        slots = self.batch_slots.np[:num_reqs]
        slots[:] = np.fromiter((s.slot for s in states), np.int64, num_reqs)
        positions = self.positions.np[:num_tokens]
        in_flight = [i for i, s in enumerate(states) if s.pending]  # last token still on the device
        if num_tokens == num_reqs:  # decodes only: one token per request
            positions[:] = starts
            token_slots = slots
            if in_flight:
                self.input_ids.np[:num_tokens] = [s.token_ids[p] if p < len(s.token_ids) else 0
                                                  for s, p in zip(states, starts.tolist(), strict=True)]
            else:
                self.input_ids.np[:num_tokens] = [s.token_ids[p] for s, p in zip(states, starts.tolist(), strict=True)]
        else:
            positions[:] = np.repeat(starts - cu[:-1], num_sched) + self._arange[:num_tokens]
            token_slots = np.repeat(slots, num_sched)
            ids: list[int] = []
            for state, start, end in zip(states, starts.tolist(), ends.tolist(), strict=True):
                ids += state.token_ids[start:end]
                ids += [0] * (end - max(start, len(state.token_ids)))  # in flight: filled on the device
            self.input_ids.np[:num_tokens] = ids
        placeholders = [i for i in in_flight if ends[i] > len(states[i].token_ids)]
        for k, i in enumerate(placeholders):
            assert ends[i] == len(states[i].token_ids) + 1, "a step may read one token in flight per request"
            self.placeholder_rows.np[k] = cu[i + 1] - 1
            self.placeholder_sources.np[k] = self._last_rows[req_ids[i]]
        size = self.block_size
        blocks = self.block_table.np[token_slots, positions // size]
        np.add(blocks * size, positions % size, out=self.slot_mapping.np[:num_tokens])
        self.seq_lens.np[:num_reqs] = ends
        lengths = np.fromiter((len(s.token_ids) + s.pending for s in states), np.int64, num_reqs)
        sampled = np.flatnonzero(ends == lengths)  # the last known token: sample the next one
        sample_rows = cu[1:][sampled] - 1
        sample_ids = [req_ids[i] for i in sampled.tolist()]
        self.logits_indices.np[: len(sample_rows)] = sample_rows

        graph_size = self.graphs.size_for(num_reqs) if self.graphs is not None and num_tokens == num_reqs else None
        all_sampled = len(sample_ids) == num_reqs
        if graph_size is None:
            seq_lens_cpu = ends.tolist()
            metadata = self._copy_inputs(num_reqs, max(seq_lens_cpu), int(num_sched.max()), seq_lens_cpu)
            step = StepInputs(metadata, num_tokens, sample_ids, None, all_sampled)
        else:
            self._write_padding(num_reqs, graph_size)
            captured = graph_size in self.graphs.captured  # the graph gathers its block-table rows
            in_graph = captured and self.graph_fill  # and fills its placeholders
            if in_graph:  # (one token per row: a placeholder's row is its request's index)
                n = len(placeholders)
                self.fill_from.np[:num_reqs] = -1
                self.fill_from.np[self.placeholder_rows.np[:n]] = self.placeholder_sources.np[:n]
            metadata = self._copy_inputs(graph_size, self.max_model_len, 1,
                                         ends.tolist() + [0] * (graph_size - num_reqs), gather=not captured)
            step = StepInputs(metadata, graph_size, sample_ids, graph_size, all_sampled)
            if in_graph:
                return step
        if placeholders:  # ids sampled by the step in flight, device to device, after the copy
            n = len(placeholders)
            assert self._last_sampled is not None
            ids = self._last_sampled.index_select(0, self.placeholder_sources.device[:n]).to(torch.int32)
            self.input_ids.device.index_put_((self.placeholder_rows.device[:n],), ids)
        return step

    def _write_padding(self, start: int, end: int) -> None:
        """Rows ``start..end-1`` of a padded decode step: token 0 at position 0 with no KV (slot
        -1 is skipped by the KV write, ``seq_len`` 0 gives attention no key)."""
        rows = slice(start, end)
        self.input_ids.np[rows] = 0
        self.positions.np[rows] = 0
        self.slot_mapping.np[rows] = -1
        self.fill_from.np[rows] = -1
        self.seq_lens.np[rows] = 0
        self.batch_slots.np[rows] = 0
        self.query_start_loc.np[start + 1 : end + 1] = self._arange[start + 1 : end + 1]

    def _copy_inputs(self, rows: int, max_seq_len: int, max_query_len: int, seq_lens_cpu: list[int],
                     gather: bool = True) -> AttentionMetadata:
        """Copy the first ``rows`` requests' inputs (one token each when padded) to the device;
        with ``gather`` also lay out their block-table rows (a captured decode graph does it
        itself, into the same buffer)."""
        num_tokens = int(self.query_start_loc.np[rows])
        self.staging.to_device(self.slot_mapping.start + num_tokens)
        self.block_table.commit()
        size = self.block_size
        width = -(-max_seq_len // size)  # all max_blocks in a padded step (max_model_len)
        slots = self.batch_slots.device[:rows]
        metadata = AttentionMetadata(
            query_start_loc=self.query_start_loc.device[: rows + 1],
            seq_lens=self.seq_lens.device[:rows],
            block_tables=self.block_table.gather(slots, width) if gather else self.block_table.view(rows, width),
            slot_mapping=self.slot_mapping.device[:num_tokens],
            block_size=size,
            max_query_len=max_query_len,
            max_seq_len=max_seq_len,
            query_start_loc_cpu=self.query_start_loc.np[: rows + 1].tolist(),
            seq_lens_cpu=seq_lens_cpu,
        )
        if self._inputs_copied is not None:
            self._inputs_copied.record()
        return metadata

    @torch.inference_mode()
    def capture_cuda_graphs(self) -> float:
        """Capture the decode graphs of every size (CUDA only); returns the seconds it took."""
        assert self.graphs is not None and self.device.type == "cuda"

        def prepare(size: int) -> AttentionMetadata:
            if self._inputs_copied is not None:
                self._inputs_copied.synchronize()
            self._write_padding(0, size)
            return self._copy_inputs(size, self.max_model_len, 1, [0] * size, gather=False)

        def forward(metadata: AttentionMetadata) -> DecodeOutputs:
            rows = metadata.num_requests
            tables = metadata.block_tables
            assert tables.data_ptr() == self.block_table.view(rows, tables.shape[1]).data_ptr()
            fill = None
            if self.graph_fill:  # the placeholders (async scheduling) from the last step's sampled ids
                fill = (self.input_ids.device[:rows], self.fill_from.device[:rows], self._sampled_ids)
                if not self.fill_in_gather:
                    from infer_core.kernels.fill_ids import fill_ids

                    fill_ids(*fill)
                    fill = None
            self.block_table.gather(self.batch_slots.device[:rows], tables.shape[1], fill=fill)
            inputs = (self.input_ids.device[:rows], self.positions.device[:rows], metadata)
            hidden = None
            if self._graph_logits is None:  # the first call: the largest size, eager, before any capture
                hidden = self.model(*inputs)
                self._graph_logits = torch.empty_like(self.model.compute_logits(hidden))
            out = self._graph_logits[:rows]  # one buffer for every size (a graph's own would stay allocated)
            greedy = self._sampled_ids[:rows] if self.graph_fill else torch.empty(rows, dtype=torch.int64,
                                                                                  device=out.device)
            if hidden is None:  # (the head one launch at one row, the final norm maybe folded in)
                hidden, done = self.model.forward_greedy(*inputs, out, greedy)
            else:
                done = self.model.compute_logits_greedy(hidden, out, greedy)
            if not done:
                out.copy_(self.model.compute_logits(hidden))
                argmax(out, out=greedy)
            return DecodeOutputs(hidden, out, greedy)

        self.graphs.capture(prepare, forward)
        return self.graphs.capture_seconds

    def _runner_output(self, sample_ids: list[str], sampled: SampledLists) -> ModelRunnerOutput:
        requests = self.requests
        for request_id, token in zip(sample_ids, sampled.sampled_token_ids, strict=True):
            state = requests.get(request_id)  # gone if finished or preempted since the launch
            if state is not None:
                state.token_ids.append(token)
                state.pending -= 1
        if sampled.logprobs is None:
            return ModelRunnerOutput(sample_ids, sampled.sampled_token_ids)
        logprobs: list[Logprob | None] = []
        for row, request_id in enumerate(sample_ids):
            state = requests.get(request_id)
            n = None if state is None else state.params.logprobs
            if n is None:
                logprobs.append(None)
                continue
            top = tuple(zip(sampled.top_token_ids[row][:n], sampled.top_logprobs[row][:n], strict=True))
            logprobs.append(Logprob(sampled.sampled_token_ids[row], sampled.logprobs[row], top))
        return ModelRunnerOutput(sample_ids, sampled.sampled_token_ids, logprobs)

    def _sampling_metadata(self, request_ids: list[str]) -> SamplingMetadata:
        states = [self.requests[r] for r in request_ids]
        key = tuple(s.uid for s in states)
        batch = self._sampling
        if batch is None or batch.key != key:  # the sampled set changed: rebuild its rows
            batch = self._sampling = SamplingBatch(
                key, [s.params for s in states], [s.token_ids[: s.num_prompt_tokens] for s in states],
                [s.eos_token_ids for s in states], self.vocab_size, self.device)
        generators = {}
        for row, state in enumerate(states):
            seed = state.params.seed
            if seed is not None and not state.params.greedy:
                position = len(state.token_ids) + state.pending - state.num_prompt_tokens
                generator = torch.Generator(self.device)
                generator.manual_seed((seed * SEED_STRIDE + position) % (2**63))
                generators[row] = generator
        return batch.metadata(
            [len(s.token_ids) + s.pending - s.num_prompt_tokens for s in states],
            lambda: [s.token_ids[s.num_prompt_tokens:] for s in states],
            generators,
        )
