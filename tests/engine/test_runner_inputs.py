"""The runner's incremental step inputs against straightforward references: the flat batch
(ids, positions, slots, offsets, block tables) equals ``build_attention_metadata`` built from
scratch over prefix hits, chunks, resumed requests, decodes and slot reuse; a cached
``SamplingBatch`` gives the same metadata as building it fresh each step, also when the batch
composition changes; ``step(finished_only=True)`` gives the same final outputs."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.attention.metadata import build_attention_metadata
from infer_core.engine.block_table import BlockTable
from infer_core.engine.runner import SEED_STRIDE, ModelRunner
from infer_core.engine.sampler import SamplingMetadata
from infer_core.engine.scheduler import CachedRequestData, NewRequestData, SchedulerOutput
from infer_core.testing import caches
from infer_core.testing.fixtures import tiny_checkpoint

BLOCK = 4


@pytest.fixture(scope="module")
def llm() -> LLM:
    checkpoint = tiny_checkpoint("llama", tokenizer=True, vocab_size=512)
    return LLM(model=str(checkpoint), plugins=[caches], device="cpu", max_model_len=64, max_num_seqs=4,
               max_num_batched_tokens=128, cache={"backend": "paged", "num_blocks": 64, "block_size": BLOCK})


def fresh_runner(llm: LLM):
    engine = llm.engine
    return ModelRunner(engine.model, block_size=BLOCK, max_num_seqs=4, max_num_batched_tokens=128,
                       max_model_len=64, vocab_size=engine.vocab_size, device=torch.device("cpu"))


def check_step(runner, out: SchedulerOutput) -> list[str]:
    """Prepare ``out`` and compare every input with the reference built from scratch."""
    runner._update_states(out)
    step = runner._prepare_inputs(out)
    metadata, num_tokens, sample_ids = step.metadata, step.num_rows, step.sample_ids
    sample_rows = runner.logits_indices.device[: len(sample_ids)].tolist()
    starts = {n.request_id: n.num_computed_tokens for n in out.scheduled_new_reqs}
    starts.update({c.request_id: c.num_computed_tokens for c in out.scheduled_cached_reqs})
    ids, positions, expected_rows, expected_sampled = [], [], [], []
    for request_id, num in out.num_scheduled_tokens.items():
        state, start = runner.requests[request_id], starts[request_id]
        ids += state.token_ids[start:start + num]
        positions += range(start, start + num)
        if start + num == len(state.token_ids):
            expected_rows.append(len(ids) - 1)
            expected_sampled.append(request_id)
    ref = build_attention_metadata(
        list(out.num_scheduled_tokens.values()),
        [starts[r] + n for r, n in out.num_scheduled_tokens.items()],
        [runner.requests[r].block_ids for r in out.num_scheduled_tokens], BLOCK)
    assert num_tokens == len(ids)
    assert runner.input_ids.device[:num_tokens].tolist() == ids
    assert runner.positions.device[:num_tokens].tolist() == positions
    assert metadata.slot_mapping.tolist() == ref.slot_mapping.tolist()
    assert metadata.query_start_loc.tolist() == ref.query_start_loc.tolist() == metadata.query_start_loc_cpu
    assert metadata.seq_lens.tolist() == ref.seq_lens.tolist() == metadata.seq_lens_cpu
    assert (metadata.max_query_len, metadata.max_seq_len) == (ref.max_query_len, ref.max_seq_len)
    for row, table in enumerate(ref.block_tables.tolist()):  # the blocks its tokens use
        blocks = -(-metadata.seq_lens_cpu[row] // BLOCK)
        assert metadata.block_tables[row, :blocks].tolist() == table[:blocks]
    assert list(sample_rows) == expected_rows and sample_ids == expected_sampled
    return sample_ids


def new(request_id: str, prompt: list[int], blocks: list[int], computed: int = 0, output=()) -> NewRequestData:
    return NewRequestData(request_id, prompt, list(output), SamplingParams(temperature=0), blocks, computed)


def test_inputs_match_the_reference_over_hits_chunks_decodes_and_slot_reuse(llm):
    runner = fresh_runner(llm)
    a, b, c = list(range(1, 6)), list(range(100, 140)), [7, 8, 9]
    step1 = SchedulerOutput(
        [new("a", a, [3, 9]), new("b", b, [11, 12, 13, 14, 20, 21], computed=16),  # prefix hit, chunk
         new("c", c, [30, 31], output=[5, 6])],  # resumed after preemption: recompute its output
        [], {"a": 5, "b": 8, "c": 5}, 18)
    assert check_step(runner, step1) == ["a", "c"]
    runner.requests["a"].token_ids.append(42)
    runner.requests["c"].token_ids.append(43)
    step2 = SchedulerOutput(
        [], [CachedRequestData("c", [32], 5), CachedRequestData("a", [], 5),
             CachedRequestData("b", [22, 23, 24, 25, 26], 24)], {"c": 1, "a": 1, "b": 16}, 18)
    assert check_step(runner, step2) == ["c", "a", "b"]
    slot_a = runner.requests["a"].slot
    d = list(range(200, 211))
    step3 = SchedulerOutput([new("d", d, [40, 41, 42])], [CachedRequestData("c", [], 6)],
                            {"d": 11, "c": 1}, 12, finished_req_ids=["a"], preempted_req_ids=["b"])
    runner.requests["c"].token_ids.append(44)
    assert check_step(runner, step3) == ["d", "c"]
    assert runner.requests["d"].slot == slot_a  # a's row went back and was reused
    assert set(runner.requests) == {"c", "d"}


def test_block_table_rows_follow_appends_and_reuse():
    table = BlockTable(3, 8, torch.device("cpu"))
    s0, s1 = table.add([5, 6]), table.add([7])
    table.append(s0, [8])
    table.append(s1, [])
    assert table.gather(torch.tensor([s1, s0]), 3)[:, :1].tolist() == [[7], [5]]
    assert table.gather(torch.tensor([s0]), 3).tolist() == [[5, 6, 8]]
    table.remove(s0)
    s2 = table.add([1, 2, 3, 4])
    assert s2 == s0 and table.num_free_slots == 1
    assert table.gather(torch.tensor([s2, s1]), 4)[0].tolist() == [1, 2, 3, 4]


def same_metadata(got: SamplingMetadata, want: SamplingMetadata) -> None:
    for name in SamplingMetadata.__dataclass_fields__:
        x, y = getattr(got, name), getattr(want, name)
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape and torch.equal(x, y), name
        elif name == "generators":
            assert x.keys() == y.keys()
            assert all(torch.equal(x[k].get_state(), y[k].get_state()) for k in x), name
        else:
            assert x == y, name


def test_cached_sampling_metadata_equals_a_fresh_build_as_the_batch_changes(llm):
    runner = fresh_runner(llm)
    params = {
        "greedy": SamplingParams(temperature=0),
        "pen": SamplingParams(temperature=0.7, repetition_penalty=1.3, frequency_penalty=0.5, top_k=5),
        "minimum": SamplingParams(temperature=0.9, min_tokens=2, stop_token_ids=[3], top_p=0.8),
        "seeded": SamplingParams(temperature=1.0, seed=7, presence_penalty=0.2),
    }
    for i, (name, p) in enumerate(params.items()):
        runner._update_states(SchedulerOutput(
            [NewRequestData(name, [10 + i, 20, 30], [], p, [i], 0)], [], {name: 3}, 3))

    def fresh(names):
        states = [runner.requests[n] for n in names]
        generators = {}
        for row, state in enumerate(states):
            if state.params.seed is not None:
                position = len(state.token_ids) - 3
                generators[row] = torch.Generator().manual_seed(state.params.seed * SEED_STRIDE + position)
        return SamplingMetadata.from_params(
            [s.params for s in states], [s.token_ids[:3] for s in states], [s.token_ids[3:] for s in states],
            generators, runner.vocab_size, "cpu", [s.eos_token_ids for s in states])

    batches = [["greedy", "minimum"], ["greedy", "minimum"], ["greedy", "minimum", "pen", "seeded"],
               ["greedy", "minimum", "pen", "seeded"], ["seeded", "pen"], ["greedy"], ["greedy"]]
    for step, names in enumerate(batches):
        same_metadata(runner._sampling_metadata(names), fresh(names))
        for n in names:
            runner.requests[n].token_ids.append(3 + step)
    greedy = runner._sampling_metadata(["greedy"])
    assert runner._sampling_metadata(["greedy"]) is greedy  # nothing changes per step: reused


def test_finished_only_steps_give_the_same_final_outputs(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)

    def run(finished_only: bool):
        for k, prompt in enumerate([[1, 2, 3], [4, 5, 6, 7, 8], [9]]):
            engine.add_request(engine.make_request(prompt, params, request_id=f"f{finished_only}-{k}"))
        final = {}
        while engine.has_unfinished_requests():
            for out in engine.step(finished_only=finished_only):
                assert out.finished or not finished_only
                if out.finished:
                    final[out.request_id.split("-")[1]] = out
        return final

    streamed, finished = run(False), run(True)
    assert streamed.keys() == finished.keys() == {"0", "1", "2"}
    for k in streamed:
        a, b = streamed[k].outputs[0], finished[k].outputs[0]
        assert (a.token_ids, a.text, a.logprobs, a.finish_reason) == (b.token_ids, b.text, b.logprobs, b.finish_reason)
