"""The device scripts under ``scripts/`` (run only on the lent GPU machine, where a failure costs
device time) parse as bash, and the Python ones compile."""

from __future__ import annotations

import py_compile
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELL = sorted(p.name for p in (ROOT / "scripts").glob("*.sh"))
PYTHON = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


def test_there_are_scripts():
    assert {"gpu_bench.sh", "gpu_speed.sh", "gpu_pending.sh"} <= set(SHELL)


@pytest.mark.parametrize("script", SHELL)
def test_shell_script_parses(script):
    done = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", PYTHON)
def test_python_script_compiles(script, tmp_path):
    py_compile.compile(str(ROOT / "scripts" / script), cfile=str(tmp_path / "out.pyc"), doraise=True)
