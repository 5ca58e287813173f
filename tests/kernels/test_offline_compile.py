"""``benchmarks/offline_compile.py`` (the persistent decode layer, the LM head and the row gather
compiled for sm_90 on a machine without a GPU) still matches the kernels' signatures: it compiles
both model shapes, with the timeline stamps too, the head with the final norm folded in and the
gather with the placeholder fill, the engine's own Qwen3-0.6B launch (group_sync 2), and reports the
registers the residency check would count."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [["--shape", "qwen3-0.6b", "--arrive-first", "0", "--kv-early", "0", "--last-stage", "2"],
                                  ["--shape", "llama-3.2-1b", "--timeline"],
                                  ["--kernel", "lm_head", "--lm-head-norm", "1"], ["--kernel", "gather_rows", "--gather-fill", "1"],
                                  ["--shape", "qwen3-0.6b", "--programs-per-sm", "2", "--splits", "32", "--min-splits", "8",
                                   "--kv-ahead", "1"],
                                  ["--shape", "qwen3-0.6b", "--programs-per-sm", "2", "--group-sync", "2"]])
def test_offline_compile_reports_registers(args):
    registers(offline_compile(*args))


def offline_compile(*args: str) -> subprocess.CompletedProcess:
    """``benchmarks/offline_compile.py ARGS`` run to success (compiled, not interpreted)."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "offline_compile.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def registers(done: subprocess.CompletedProcess) -> int:
    """The registers per thread an offline compile reported (present, and within the 255 a thread has)."""
    regs = re.search(r"REG:(\d+)", done.stdout)
    assert regs and 0 < int(regs.group(1)) <= 255, done.stdout
    return int(regs.group(1))


def compile_sass(tmp_path: Path, name: str, *args: str) -> tuple[str, int]:
    """The disassembly and the registers per thread of ``offline_compile.py ARGS``."""
    out = tmp_path / f"{name}.sass"
    done = offline_compile(*args, "--sass", str(out))
    return out.read_text(), registers(done)


@pytest.mark.parametrize("shape", ["qwen3-0.6b", "llama-3.2-1b"])
def test_kv_ahead_prefetches_the_later_key_tiles(tmp_path, shape):
    """``kv_ahead`` compiles to per-thread L2 prefetches (``CCTL.E.PF2``: each thread its own
    lines, no loop over the warp's lanes as a bulk prefetch's uniform operands would need) in
    registers that fit; without it the launch has none."""
    args = ("--shape", shape, "--programs-per-sm", "2")
    sass = {on: compile_sass(tmp_path, f"kv{on}", *args, "--kv-ahead", str(on)) for on in (0, 1)}
    assert "CCTL.E.PF2" in sass[1][0] and "CCTL.E.PF2" not in sass[0][0]
    assert "UBLKPF" not in sass[1][0]
    assert sass[1][1] <= 255


@pytest.mark.parametrize("shape", ["qwen3-0.6b", "llama-3.2-1b"])
@pytest.mark.parametrize(("stage", "per_sm"), list(zip(range(1, 7), (4, 1, 1, 4, 4, 4), strict=True)))
def test_stage_by_stage_launches_compile(shape, stage, per_sm):
    """Each stage's own launch (stage by stage: what the engine runs for layers of 64 MiB and
    more, at 4, 1, 1, 4, 4, 4 programs per SM) compiles for sm_90 in registers that fit."""
    done = offline_compile("--shape", shape, "--stage", str(stage), "--programs-per-sm", str(per_sm))
    registers(done)
    assert f"stage {stage}" in done.stdout, done.stdout


def test_sass_set_compares_against_an_earlier_set(tmp_path):
    """``benchmarks/offline_sass_set.py`` (the refactor check: a fixed set of launches, their
    registers and SASS hashes): the same source compares equal to its own earlier set (exit 0),
    and a launch whose disassembly differs is named (exit 1)."""
    import json

    script = [sys.executable, str(ROOT / "benchmarks" / "offline_sass_set.py"), "--only", "qwen3-0.6b-stage3"]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    first = subprocess.run([*script, "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((tmp_path / "a" / "sass.json").read_text())
    assert 0 < before["launches"]["qwen3-0.6b-stage3"]["registers"] <= 255
    same = subprocess.run([*script, "--out", str(tmp_path / "b"), "--against", str(tmp_path / "a" / "sass.json")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert same.returncode == 0 and "as in" in same.stdout, same.stdout + same.stderr[-2000:]
    before["launches"]["qwen3-0.6b-stage3"]["sha256"] = "0" * 64
    (tmp_path / "old.json").write_text(json.dumps(before))
    changed = subprocess.run([*script, "--out", str(tmp_path / "c"), "--against", str(tmp_path / "old.json")],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert changed.returncode == 1 and "qwen3-0.6b-stage3" in changed.stdout, changed.stdout + changed.stderr[-2000:]
