"""The official ``openai`` client against a real server: completions and chat, streamed and
not, usage, stop, seeds, logprobs — each output equal to the engine's own for the request."""

from __future__ import annotations

import pytest

from infer_core import SamplingParams

from .conftest import run_server, tiny_llm

PROMPTS = ["The quick brown fox", "Once upon a time", "numbers 12345"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def llm():
    return tiny_llm()


@pytest.fixture(scope="module")
def server(llm, expected):
    with run_server(llm) as running:
        yield running


def offline(llm, prompts, **params):
    """What the engine itself generates (before the server starts: they share the engine)."""
    return [o.outputs[0] for o in llm.generate(prompts, SamplingParams(**params))]


def chat_offline(llm, messages, **params):
    return llm.chat(messages, SamplingParams(**params))[0].outputs[0]


@pytest.fixture(scope="module")
def expected(llm):
    greedy = dict(temperature=0, max_tokens=12, ignore_eos=True)
    return {
        "completions": offline(llm, PROMPTS, **greedy),
        "chat": chat_offline(llm, MESSAGES, **greedy),
        "seeded": offline(llm, PROMPTS[:1], temperature=1.0, seed=1234, max_tokens=12, ignore_eos=True)[0],
        "logprobs": offline(llm, PROMPTS[:1], temperature=0, max_tokens=6, ignore_eos=True, logprobs=3)[0],
    }


def test_completion_equals_the_engine(server, expected):
    client = server.client()
    for prompt, want in zip(PROMPTS, expected["completions"], strict=True):
        out = client.completions.create(model=server.model, prompt=prompt, max_tokens=12,
                                        temperature=0, extra_body={"ignore_eos": True})
        assert out.object == "text_completion" and out.model == server.model
        assert out.id.startswith("cmpl-")
        assert out.choices[0].text == want.text
        assert out.choices[0].finish_reason == "length"
        prompt_tokens = len(server.llm.tokenizer.encode(prompt))
        assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
            prompt_tokens, 12, prompt_tokens + 12)


def test_completion_with_a_list_of_prompts_and_token_ids(server, expected):
    client = server.client()
    out = client.completions.create(model=server.model, prompt=PROMPTS, max_tokens=12,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.text for c in out.choices] == [e.text for e in expected["completions"]]
    assert out.usage.completion_tokens == 36
    ids = server.llm.tokenizer.encode(PROMPTS[0])
    out = client.completions.create(model=server.model, prompt=ids, max_tokens=12, temperature=0,
                                    extra_body={"ignore_eos": True, "return_token_ids": True})
    assert out.choices[0].text == expected["completions"][0].text
    assert out.choices[0].model_extra["token_ids"] == expected["completions"][0].token_ids
    assert out.choices[0].model_extra["prompt_token_ids"] == ids


def test_streamed_list_of_prompts_and_echo(server, expected):
    stream = server.client().completions.create(
        model=server.model, prompt=PROMPTS, max_tokens=12, temperature=0, stream=True,
        echo=True, extra_body={"ignore_eos": True})
    texts, finishes = ["", "", ""], [[], [], []]
    for chunk in stream:
        [choice] = chunk.choices
        texts[choice.index] += choice.text
        finishes[choice.index].append(choice.finish_reason)
    assert texts == [p + e.text for p, e in zip(PROMPTS, expected["completions"], strict=True)]
    assert all(f[-1] == "length" and not any(f[:-1]) for f in finishes)


def test_streamed_completion_adds_up_with_usage_last(server, expected):
    stream = server.client().completions.create(
        model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    text_chunks = chunks[:-1]
    assert "".join(c.choices[0].text for c in text_chunks) == expected["completions"][0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_chat_equals_the_engine_streamed_and_not(server, expected):
    client = server.client()
    want = expected["chat"]
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=12,
                                         temperature=0, extra_body={"ignore_eos": True})
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == want.text
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_completion_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == want.text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.prompt_tokens == out.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == 12


def test_stop_strings_end_the_output_before_them(server, expected):
    full = expected["completions"][1].text
    stop = full[5:8]
    assert stop.strip() and full.index(stop) == 5, "pick a stop string that first occurs at 5"
    for stream in (False, True):
        out = server.client().completions.create(
            model=server.model, prompt=PROMPTS[1], max_tokens=12, temperature=0, stop=[stop],
            stream=stream, extra_body={"ignore_eos": True})
        chunks = list(out) if stream else [out]
        assert "".join(c.choices[0].text for c in chunks) == full[:5]
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].choices[0].model_extra["stop_reason"] == stop


def test_seeded_sampling_is_reproducible_and_equals_the_engine(server, expected):
    client = server.client()
    texts = [
        client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12,
                                  temperature=1.0, seed=1234, extra_body={"ignore_eos": True}
                                  ).choices[0].text
        for _ in range(2)
    ]
    assert texts[0] == texts[1] == expected["seeded"].text
    other = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12,
                                      temperature=1.0, seed=99, extra_body={"ignore_eos": True})
    assert other.choices[0].text != texts[0]


def test_logprobs_match_the_engine(server, expected):
    want = expected["logprobs"]
    client = server.client()
    out = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=6,
                                    temperature=0, logprobs=3, extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([x.logprob for x in want.logprobs])
    assert "".join(lp.tokens) == want.text or len(lp.tokens) == 6
    # top-3 plus the chosen token, keyed by text (tokens that decode alike share a key)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 4 and top[token] == pytest.approx(value)
    assert lp.text_offset[0] == 0
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=6,
                                          temperature=0, logprobs=True, top_logprobs=2,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 6
    for item in content:
        assert len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)  # greedy: the best
    stream = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=6,
                                            temperature=0, logprobs=True, stream=True,
                                            extra_body={"ignore_eos": True})
    streamed = [x for c in stream if c.choices and c.choices[0].logprobs
                for x in c.choices[0].logprobs.content]
    assert [x.logprob for x in streamed] == pytest.approx([x.logprob for x in content])


def test_models(server):
    client = server.client()
    models = client.models.list().data
    assert [m.id for m in models] == [server.model]
    assert models[0].model_extra["max_model_len"] == 256
    assert client.models.retrieve(server.model).id == server.model
