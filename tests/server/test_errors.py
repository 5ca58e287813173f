"""Every error answer, by status code and OpenAI-shaped body; the API key on every route."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from .conftest import run_server, tiny_llm

KEY = "sk-test-key"
ORIGIN = "http://ui.example"


@pytest.fixture(scope="module")
def llm():
    return tiny_llm()


@pytest.fixture(scope="module")
def server(llm):
    with run_server(llm, api_key=KEY, cors_origins=[ORIGIN], max_body_bytes=2048,
                    max_list_items=8) as running:
        yield running


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"].endswith(".")
    return body["error"]


def post(server, path: str, body, **kwargs) -> httpx.Response:
    with server.http() as http:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return http.post(path, content=content, headers={"Content-Type": "application/json"}, **kwargs)


def completion(server, **fields):
    return post(server, "/v1/completions", {"model": server.model, "prompt": "hi", **fields})


def chat(server, **fields):
    messages = fields.pop("messages", [{"role": "user", "content": "hi"}])
    return post(server, "/v1/chat/completions", {"model": server.model, "messages": messages, **fields})


# -- 400 ------------------------------------------------------------------------------------------


def test_malformed_bodies_are_400(server):
    err = error_of(post(server, "/v1/completions", b'{"model": '), 400)
    assert err["code"] == "invalid_json" and err["type"] == "invalid_request_error"
    assert err["message"].startswith("the request body is not valid JSON")
    err = error_of(post(server, "/v1/chat/completions", [1, 2]), 400)
    assert err["message"] == "the request body must be a JSON object, got an array."
    err = error_of(post(server, "/v1/completions", {"model": server.model}), 400)
    assert err == {"message": "missing required field 'prompt' for POST /v1/completions.",
                   "type": "invalid_request_error", "param": "prompt", "code": "missing_field"}
    err = error_of(post(server, "/v1/chat/completions", {}), 400)
    assert err["message"] == ("missing required fields 'model', 'messages' for "
                              "POST /v1/chat/completions.")


# -- 401 ------------------------------------------------------------------------------------------


def route_calls(server):
    """(method, path) for every route of the app, path parameters filled in."""
    for route in server.app.routes:
        path = route.path.replace("{model:path}", server.model)
        for method in sorted(route.methods - {"HEAD"}):
            if not (path == "/health" and method == "OPTIONS"):
                yield method, path


def test_every_route_but_health_needs_the_key(server):
    calls = list(route_calls(server))
    assert {p for _, p in calls} >= {"/v1/completions", "/v1/chat/completions", "/v1/models",
                                     "/health", "/ready", "/metrics"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for method, path in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                response = http.request(method, path, headers=headers, json={})
                if path == "/health":
                    assert response.status_code == 200
                    continue
                err = error_of(response, 401)
                assert err["code"] == "invalid_api_key", (method, path)
                assert response.headers["WWW-Authenticate"] == "Bearer"
            ok = http.request(method, path, headers={"Authorization": f"Bearer {KEY}"}, json={})
            assert ok.status_code != 401, (method, path)
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()


# -- 404, 405, 413 ------------------------------------------------------------------------------


def test_unknown_model_is_422_and_unknown_resources_404(server):
    for response in (completion(server, model="gpt-4"), chat(server, model="gpt-4")):
        err = error_of(response, 422)
        assert err == {
            "message": f"the model 'gpt-4' does not exist; this server serves '{server.model}' "
                       f"(GET /v1/models).",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    with server.http() as http:
        assert error_of(http.get("/v1/models/gpt-4"), 404)["code"] == "model_not_found"
        assert error_of(http.get("/v1/nothing"), 404)["code"] == "not_found"
        assert error_of(http.get("/v1/completions"), 405)["code"] == "method_not_allowed"


def test_a_body_over_the_cap_is_413(server):
    big = {"model": server.model, "prompt": "x" * 4096}
    err = error_of(post(server, "/v1/completions", big), 413)
    assert err["message"] == ("the request body is larger than the server's limit (2048 bytes); "
                              "send a smaller one.")
    assert err["code"] == "request_too_large"


# -- 422 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"foo": 1, "bar": {}}, "foo",
     "unknown fields 'foo', 'bar' for POST /v1/completions; remove them (docs/server.md lists "
     "the supported fields)."),
    ({"stream_options": {"include_usage": True, "extra": 1}, "stream": True}, "stream_options.extra",
     "unknown field 'stream_options.extra' for POST /v1/completions; remove it (docs/server.md "
     "lists the supported fields)."),
    ({"n": 2}, "n", "n must be 1, got 2: this server returns one choice per prompt; send "
                    "separate requests (with different seeds) for more."),
    ({"temperature": -1}, "temperature", "temperature must be >= 0, got -1.0."),
    ({"top_p": 0}, "top_p", "top_p must be in (0, 1], got 0.0."),
    ({"top_p": 1.5}, "top_p", "top_p must be in (0, 1], got 1.5."),
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be >= 1, got 0."),
    ({"temperature": "hot"}, "temperature",
     "temperature: Input should be a valid number (got the string 'hot')."),
    ({"stop": 3}, "stop", "stop must be a non-empty string or a list of non-empty strings."),
    ({"stop": ["a"] * 9}, "stop",
     "stop has 9 items, more than this server accepts (8, server.max_list_items)."),
    ({"stream_options": {"include_usage": True}}, "stream_options",
     "stream_options is only allowed when stream is true."),
    ({"logit_bias": {"1": 5}}, "logit_bias", "logit_bias is not supported by this server; remove it."),
    ({"prompt": [1, "a"]}, "prompt",
     "prompt must be a string, a list of strings, a list of token ids or a list of lists of "
     "token ids; do not mix them."),
    ({"prompt": [999999]}, "prompt", "prompt token ids must be integers in [0, 512), got 999999."),
    ({"prompt": [5] * 300}, "prompt",
     "the prompt has 300 tokens, but max_model_len is 256, which leaves no room for output; "
     "shorten the prompt to at most 255 tokens."),
])
def test_invalid_completion_values_are_422(server, fields, param, message):
    err = error_of(completion(server, **fields), 422)
    assert (err["param"], err["message"], err["type"]) == (param, message, "invalid_request_error")


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"chat_template": "{{ 'owned' }}"}, "chat_template",
     "chat_template cannot be set in a request: the server renders the model's own template, "
     "and templates from requests are refused for safety."),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
     "tools are not supported by this server yet; remove them."),
    ({"top_logprobs": 2}, "top_logprobs", "top_logprobs needs logprobs set to true."),
    ({"messages": [{"role": "user", "content": "hi"}] * 9}, "messages",
     "messages has 9 items, more than this server accepts (8, server.max_list_items)."),
    ({"messages": [{"role": "user"}]}, "messages",
     "messages[0] has no 'content'; give it a string (\"\" if empty)."),
    ({"messages": []}, "messages",
     "messages must be a non-empty list of {\"role\", \"content\"} objects."),
    ({"response_format": {"type": "json_object"}}, "response_format",
     "response_format type 'json_object' is not supported; only 'text' is."),
])
def test_invalid_chat_values_are_422(server, fields, param, message):
    err = error_of(chat(server, **fields), 422)
    assert (err["param"], err["message"]) == (param, message)


def test_the_openai_client_sees_422_as_an_error(server):
    with pytest.raises(openai.UnprocessableEntityError, match="temperature must be >= 0"):
        server.client().completions.create(model=server.model, prompt="hi", temperature=-1)


# -- CORS -----------------------------------------------------------------------------------------


def test_cors_allows_only_the_configured_origins(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        preflight = http.options("/v1/completions", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code in (200, 204)
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        other = http.get("/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(llm):
    with run_server(llm) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.get("/v1/models", headers={"Origin": ORIGIN})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


# -- 503 ------------------------------------------------------------------------------------------


def test_a_full_queue_is_503_with_retry_after(slow_steps):
    llm = tiny_llm(max_num_seqs=1)  # one request runs, the next waits
    slow_steps(llm, 0.01)
    with run_server(llm, max_waiting_requests=1) as server:
        body = {"model": server.model, "prompt": "hi", "max_tokens": 250, "ignore_eos": True}
        statuses, done = [], threading.Event()
        engine = server.engine

        def stream_until_done():
            with server.http() as http, http.stream("POST", "/v1/completions",
                                                     json={**body, "stream": True}) as response:
                statuses.append(response.status_code)
                for _ in response.iter_lines():
                    if done.is_set():
                        break  # the client leaves; its request is aborted

        def start_and_wait(running, waiting):
            thread = threading.Thread(target=stream_until_done)
            thread.start()
            deadline = time.monotonic() + 20
            while not (engine.snapshot.num_running == running and engine.num_waiting == waiting):
                assert time.monotonic() < deadline, (statuses, engine.snapshot, engine.num_waiting)
                time.sleep(0.005)
            return thread

        threads = [start_and_wait(1, 0), start_and_wait(1, 1)]
        with server.http() as http:
            response = http.post("/v1/completions", json=body)
        done.set()
        err = error_of(response, 503)
        assert response.headers["Retry-After"] == "1"
        assert err["code"] == "queue_full" and err["type"] == "server_error"
        assert err["message"] == ("the server is at capacity: 1 requests are waiting "
                                  "(server.max_waiting_requests = 1); retry later.")
        for t in threads:
            t.join(60)
        assert statuses == [200, 200]
        server.wait_idle()
        with server.http() as http:
            metrics = http.get("/metrics").text
        assert f'infer_request_rejected_total{{model_name="{server.model}",reason="queue_full"}} 1.0' in metrics
