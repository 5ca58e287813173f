"""Every script under ``benchmarks/`` (most of them run only on the GPU machine) imports and
parses its arguments on the CPU: a refactor that moves or renames what they import fails here,
not in a device call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))


def test_there_are_scripts():
    assert {"decode_chain.py", "offline_compile.py", "profile_step.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr[-2000:]
