"""``infer-bench serve`` against our server (``infer-serve`` in a subprocess on 127.0.0.1, a
tiny checkpoint on the CPU), a few requests per workload (no figure is asserted)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from infer_core.bench.cli import main
from infer_core.testing.fixtures import tiny_checkpoint

try:
    import infer_core.server.cli  # noqa: F401
except ImportError as exc:  # the server is issue 8
    pytest.skip(f"the OpenAI server (issue 8) is not importable: {exc}", allow_module_level=True)

STARTUP_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint("llama", tokenizer=True, vocab_size=512, max_position_embeddings=512)


@pytest.fixture(scope="module", params=["thread", "process"])
def server(checkpoint, request) -> Iterator[str]:
    """The engine in a thread of the server, then in its own process (server.engine_process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "infer_core.server.cli", "--model.path", str(checkpoint),
           "--model.device", "cpu", "--model.max_model_len", "256", "--cache.num_blocks", "16",
           "--scheduler.max_num_batched_tokens", "512", "--scheduler.max_num_seqs", "8",
           "--server.port", str(port), "--server.log_level", "warning",
           "--server.engine_process", str(request.param == "process").lower()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"infer-serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"infer-serve did not answer /health within {STARTUP_S} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_against_our_server(server, checkpoint, tmp_path):
    code = main(["serve", "--base-url", server, "--workload", "W1,W3-c2,W5-shared", "--concurrency", "2",
                 "--tokenizer", str(checkpoint), "--model-dir", str(checkpoint), "--dtype", "float32",
                 "--scale", "0.05", "--num-prompts", "3", "--out", str(tmp_path), "--label", "tiny",
                 "--no-progress", "--no-plots"])
    assert code == 0
    data = json.loads((tmp_path / "report.json").read_text())
    runs = {r["workload"]: r for r in data["runs"]}
    assert set(runs) == {"W1", "W3-c2", "W5-shared"}
    for run in runs.values():
        m = run["metrics"]
        assert run["source"] == "serve" and m["failed"] == 0
        assert m["completed"] == run["workload_info"]["num_requests"]
        assert m["total_output_tokens"] == run["workload_info"]["output_tokens"]  # ignore_eos honoured
        assert m["short_outputs"] == 0 and m["ttft_ms"]["count"] == m["completed"]
    assert runs["W3-c2"]["workload_info"]["max_concurrency"] == 2
    # the server's own view, from its /metrics: the same requests, TTFT from the engine's arrival,
    # which is inside the client's (sent -> first chunk read)
    for run in runs.values():
        view, m = run["server"], run["metrics"]
        assert view["ttft_requests"] == view["queue_requests"] == m["completed"]
        assert 0 <= view["queue_mean_ms"] <= view["ttft_mean_ms"] <= m["ttft_ms"]["mean"]
    assert "## The server's view" in (tmp_path / "summary.md").read_text()
    # chat: the usage's prompt count includes the template around the exact-length contents
    assert runs["W5-shared"]["metrics"]["total_input_tokens"] > runs["W5-shared"]["workload_info"]["prompt_tokens"]
    assert data["models"]["tiny"]["architecture"] == "LlamaForCausalLM"


def test_failures_are_counted_and_listed(server, checkpoint, tmp_path):
    # prompts longer than the server's max_model_len (256) are refused: every request fails
    code = main(["serve", "--base-url", server, "--workload", "W3-c1", "--concurrency", "1",
                 "--tokenizer", str(checkpoint), "--scale", "0.5", "--num-prompts", "2", "--num-warmups", "0",
                 "--out", str(tmp_path), "--no-progress", "--no-plots"])
    assert code == 1
    (run,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert run["metrics"]["failed"] == 2 and run["metrics"]["completed"] == 0
    assert all(e.startswith("HTTP 4") and "max_model_len" in e for e in run["metrics"]["errors"]), run["metrics"]["errors"]


def test_serve_repeats_against_the_same_server(server, checkpoint, tmp_path, capsys):
    code = main(["serve", "--base-url", server, "--workload", "W4", "--tokenizer", str(checkpoint),
                 "--scale", "0.05", "--num-prompts", "2", "--repeats", "2", "--out", str(tmp_path),
                 "--label", "tiny", "--no-progress", "--no-plots"])
    assert code == 0
    (entry,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert entry["repeats"] == 2 and len(entry["runs"]) == 2
    assert all(r["metrics"]["completed"] == 2 and r["metrics"]["failed"] == 0 for r in entry["runs"])
    assert entry["spread"]["metric"] == "output_throughput"
    assert "[run 2/2]" in capsys.readouterr().out
