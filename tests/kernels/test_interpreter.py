"""Runs each module of ``tests/kernels/interpreted`` in its own pytest process with
``TRITON_INTERPRET=1``: the Triton kernels execute on the CPU against their torch references,
and the interpreter mode never leaks into this process or the rest of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULES = sorted(p.name for p in (HERE / "interpreted").glob("test_*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_kernels_under_triton_interpreter(module: str) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", str(HERE / "interpreted" / module), "-q", "-x",
           "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (
        f"{' '.join(cmd[2:])} (TRITON_INTERPRET=1) failed:\n{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    )
