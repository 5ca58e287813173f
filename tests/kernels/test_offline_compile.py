"""``benchmarks/offline_compile.py`` (the persistent decode layer, the LM head and the row gather
compiled for sm_90 on a machine without a GPU) still matches the kernels' signatures: it compiles
both model shapes, with the timeline stamps too, the head with the final norm folded in and the
gather with the placeholder fill, and reports the registers the residency check would count."""

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
                                   "--kv-ahead", "1"]])
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


def test_multi_layer_launch_keeps_the_vector_loads(tmp_path):
    """Four layers in one launch (``--layers 4``: each layer's addresses loaded from the table,
    marked 16-byte aligned) compile to the one-layer launch's 128-bit loads, every one of them
    (without the marks the weight tiles' loads would split into narrower ones), in registers
    that still fit."""
    sass, regs = {}, {}
    for layers in (1, 4):
        sass[layers], regs[layers] = compile_sass(tmp_path, f"layers{layers}", "--shape", "qwen3-0.6b",
                                                  "--programs-per-sm", "2", "--layers", str(layers))
    wide = {n: len(re.findall(r"LDG\.E[.A-Z]*\.128", text)) for n, text in sass.items()}
    assert wide[1] > 0 and wide[4] == wide[1], wide
    assert regs[4] <= 255


def test_settled_words_poll_without_cta_barriers(tmp_path):
    """``ll`` 3's inline PTX (each thread re-reads its own stale words) assembles for sm_90, and
    its polls add no CTA barrier: the launch has fewer ``BAR.SYNC`` than with ``ll`` 1 (whose
    polls agree on readiness across the CTA), and its re-reads are strong 64-bit loads."""
    sass = {ll: compile_sass(tmp_path, f"ll{ll}", "--shape", "qwen3-0.6b", "--programs-per-sm", "2", "--ll", str(ll))[0]
            for ll in (1, 3)}
    assert sass[3].count("BAR.SYNC") < sass[1].count("BAR.SYNC")
    assert "LDG.E.64.STRONG.GPU" in sass[3]


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
