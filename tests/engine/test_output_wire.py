"""Outputs between the engine-core process and the server as deltas (``engine/output_wire``):
whatever a request's stream of outputs — text pieces, ids, logprobs or none, a final text
that differs from the pieces (a stop string cut off), an error — encoding each output in
the core and assembling it in the server gives back the same ``RequestOutput`` s; the wire
form carries only what a step added; a finished or forgotten request leaves nothing behind."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.engine.output_wire import DeltaEncoder, OutputAssembler, OutputDelta
from infer_core.request import (
    CompletionOutput,
    Logprob,
    Request,
    RequestMetrics,
    RequestOutput,
    SamplingParams,
)


def make_request(request_id: str, prompt_ids: list[int], params: SamplingParams) -> Request:
    return Request(request_id, prompt_ids, params, arrival_time=0.0, max_tokens=16)


pieces = st.lists(st.tuples(st.text(max_size=4), st.lists(st.integers(0, 50_000), max_size=3)), min_size=1, max_size=8)


def stream_of(request_id: str, prompt_ids: list[int], steps: list[tuple[str, list[int]]], with_logprobs: bool,
              final_text: str | None, error: str | None) -> list[RequestOutput]:
    """The outputs an engine streams for one request: cumulative text / ids / logprobs, this
    step's delta; the last one finished (its text ``final_text`` when given)."""
    outputs, text, ids, logprobs = [], "", [], []
    for i, (delta_text, delta_ids) in enumerate(steps):
        last = i == len(steps) - 1
        text, ids = text + delta_text, ids + delta_ids
        logprobs = logprobs + [Logprob(t, -0.5, ((t, -0.5),)) for t in delta_ids]
        completion = CompletionOutput(
            index=0, text=final_text if last and final_text is not None else text, token_ids=list(ids),
            finish_reason=("error" if error else "stop") if last else None, stop_reason="x" if last else None,
            logprobs=list(logprobs) if with_logprobs else None, delta_text=delta_text, delta_token_ids=delta_ids)
        outputs.append(RequestOutput(request_id, "the prompt", prompt_ids, [completion], finished=last,
                                     error=error if last else None, metrics=RequestMetrics(1.0, 2.0, 3.0)))
    return outputs


@settings(max_examples=60, deadline=None)
@given(steps=pieces, with_logprobs=st.booleans(), final_text=st.none() | st.text(max_size=6),
       error=st.none() | st.just("boom"), prompt_len=st.integers(0, 2000))
def test_encode_then_assemble_gives_back_every_output(steps, with_logprobs, final_text, error, prompt_len):
    request = make_request("r1", list(range(prompt_len)), SamplingParams())
    encoder, assembler = DeltaEncoder(), OutputAssembler()
    assembler.start(request, "the prompt")
    for original in stream_of("r1", request.prompt_token_ids, steps, with_logprobs, final_text, error):
        delta = pickle.loads(pickle.dumps(encoder.encode(original)))  # as it crosses the pipe
        assert isinstance(delta, OutputDelta)
        if not original.finished:  # only what the step added crosses
            assert delta.text is None and delta.token_ids is None
            assert len(delta.logprobs or ()) <= len(original.outputs[0].delta_token_ids)
        assert assembler.assemble(delta) == original
    assert len(assembler) == 0 and not encoder._logprobs_sent


def test_a_forgotten_request_is_skipped():
    request = make_request("r1", [1, 2, 3], SamplingParams())
    encoder, assembler = DeltaEncoder(), OutputAssembler()
    assembler.start(request, "the prompt")
    first, last = stream_of("r1", [1, 2, 3], [("a", [1]), ("b", [2])], False, None, None)
    assert assembler.assemble(encoder.encode(first)) == first
    assembler.discard("r1")  # it failed on the server's side; the core still sends its outputs
    assert assembler.assemble(encoder.encode(last)) is None
    assert len(assembler) == 0


def test_the_wire_form_does_not_grow_with_the_prompt():
    request = make_request("r1", list(range(4096)), SamplingParams())
    encoder = DeltaEncoder()
    output = stream_of("r1", request.prompt_token_ids, [("word", [7]), ("s", [8])], False, None, None)[0]
    assert len(pickle.dumps(encoder.encode(output))) < len(pickle.dumps(output)) // 20
