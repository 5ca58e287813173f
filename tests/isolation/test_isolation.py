"""`pip install infer-core infer-models-qwen3` alone: a fresh venv holding only those two
distributions lists exactly their plugins, and asking for a plugin from a distribution that
is not installed says what to install.

The venv is cached under the user cache dir (keyed by the two pyproject files, the repo path
and the Python version), so only the first run pays for the install.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ("infer_core", "infer_models_qwen3")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "infer" / "test-venvs"


@pytest.fixture(scope="module")
def isolated_venv() -> Path:
    key = hashlib.sha256()
    for dist in DISTRIBUTIONS:
        key.update((REPO / dist / "pyproject.toml").read_bytes())
    key.update(str(REPO).encode())
    key.update(sys.version.encode())
    venv = _cache_root() / f"core-qwen3-{key.hexdigest()[:16]}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        torch = os.environ.get("TORCH", "torch==2.13.0")
        subprocess.run([*pip, torch], check=True)
        subprocess.run([*pip, *(arg for d in DISTRIBUTIONS for arg in ("-e", str(REPO / d)))],
                       check=True)
        done.touch()
    return venv


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run([str(venv / "bin" / "infer"), *args], capture_output=True, text=True,
                          env=env, cwd=venv)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_only_core_and_qwen3_are_listed(isolated_venv: Path):
    result = _run(isolated_venv, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {(p["name"], p["distribution"]) for p in report["plugins"]} == {
        ("infer_core", "infer-core"),
        ("infer_models_qwen3", "infer-models-qwen3"),
    }
    assert report["errors"] == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_paged_cache_needs_infer_cache_paged(isolated_venv: Path):
    result = _run(isolated_venv, "config", "--cache.backend", "paged")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: no cache backend named 'paged' (from config cache.backend). Installed: "
        "contiguous (infer-core 0.1.0). 'paged' is provided by infer-cache-paged: "
        "pip install infer-cache-paged\n"
    )
