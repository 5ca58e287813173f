"""``benchmarks/hopper_programs.py``: each CUDA program compiles for sm_90a into the instructions
its modes name (cluster barriers, distributed shared memory, TMA bulk copies with mbarriers, a
release/acquire counter), a run that read back a wrong value or timed out fails instead of
reporting a time, and on a GPU every mode runs and checks clean."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDS_NVCC = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs the CUDA toolkit's nvcc")


def _module():
    spec = importlib.util.spec_from_file_location("hopper_programs", ROOT / "benchmarks" / "hopper_programs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEVICE = {"device": "NVIDIA H200", "sms": 132, "cc": "9.0", "l2_bytes": 62914560, "smem_per_sm": 233472}
ENV = {"date": "2026-12-04 00:00 UTC", "commit": "abc", "nvcc": "V13.0.88"}


def _handoff(mode="grid", errors=0, timeouts=0, cluster=0):
    return {"mode": mode, "cluster": cluster, "ctas": 264, "ctas_per_sm": 2, "words": 512, "rounds": 2001,
            "us_per_round": 0.9, "launch_us": 5.0, "errors": errors, "timeouts": timeouts}


def _ptx(hp, program: str, tmp_path: Path) -> str:
    ptx = tmp_path / f"{program}.ptx"
    subprocess.run(["nvcc", *hp.NVCC_FLAGS, "-ptx", str(hp.source(program)), "-o", str(ptx)], check=True,
                   timeout=300)
    return ptx.read_text()


@NEEDS_NVCC
def test_handoffs_compile_to_cluster_and_counter_instructions(tmp_path):
    hp = _module()
    text = _ptx(hp, "handoffs", tmp_path)
    assert "barrier.cluster.arrive" in text and "barrier.cluster.wait" in text
    assert "mapa" in text  # peers' shared memory mapped into the cluster's window
    assert "red.release.gpu.global.add.u32" in text and "ld.acquire.gpu.global.u32" in text
    assert hp.build("handoffs", tmp_path).exists()


@NEEDS_NVCC
def test_gemv_stages_compile_to_bulk_copies_and_streaming_loads(tmp_path):
    hp = _module()
    text = _ptx(hp, "gemv_stages", tmp_path)
    assert "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes" in text
    assert "mbarrier.try_wait.parity" in text and "mbarrier.arrive.expect_tx" in text
    assert "ld.global.nc.L1::no_allocate.v4.u32" in text
    assert "barrier.cluster.arrive" in text and "mapa" in text  # the cluster variant's handoff
    assert hp.build("gemv_stages", tmp_path).exists()


def test_parse_rejects_a_wrong_value_or_a_timeout():
    hp = _module()
    good = [json.dumps(DEVICE), json.dumps(_handoff()), json.dumps(_handoff("cluster-push", cluster=16))]
    device, rows = hp.parse(good)
    assert device["sms"] == 132 and [r["mode"] for r in rows] == ["grid", "cluster-push"]
    with pytest.raises(hp.ProgramError, match="wrong values or timed out"):
        hp.parse([*good, json.dumps(_handoff("cluster-pull", errors=3, cluster=4))])
    with pytest.raises(hp.ProgramError):
        hp.parse([*good, json.dumps(_handoff(timeouts=1))])
    with pytest.raises(ValueError, match="no device line"):
        hp.parse(["skipped: cluster 16", json.dumps(_handoff())])


def test_markdown_has_a_line_per_row():
    hp = _module()
    md = hp.markdown("handoffs", DEVICE, ENV, [_handoff(), _handoff("cluster-pull", cluster=8)])
    assert "| grid | – | 264 | 2 | 512 | 0.900 | 5.0 |" in md
    assert "| cluster-pull | 8 | 264 | 2 | 512 | 0.900 | 5.0 |" in md
    stage = {"shape": "qwen3-0.6b.gate_up", "n": 6144, "k": 1024, "variant": "bulk", "stages": 4, "cluster": 0,
             "ctas": 132, "ctas_per_sm": 1, "us_per_round": 4.3, "stage_us": 3.1, "barrier_us": 1.2, "gbps": 4058.6}
    md = hp.markdown("gemv_stages", DEVICE, ENV, [stage, {**stage, "variant": "cluster", "cluster": 16, "ctas": 128}])
    assert "| qwen3-0.6b.gate_up | 6144 x 1024 | bulk | 4 | – | 132 | 1 | 4.300 | 3.100 | 1.200 | 4059 |" in md
    assert "| qwen3-0.6b.gate_up | 6144 x 1024 | cluster | – | 16 | 128 | 1 | 4.300 | 3.100 | 1.200 | 4059 |" in md


def test_unknown_program_is_named():
    with pytest.raises(ValueError, match="choose one of handoffs, gemv_stages"):
        _module().source("gemm")


@pytest.mark.gpu
def test_handoffs_run_every_mode_and_read_back_every_word(tmp_path):
    hp = _module()
    binary = hp.build("handoffs", tmp_path)
    run = subprocess.run([str(binary), "--rounds", "5", "--repeats", "1", "--words", "0,512",
                          "--clusters", "2,16", "--ctas-per-sm", "1,2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    _, rows = hp.parse(run.stdout.splitlines())  # raises on a wrong word or a timeout
    assert {r["mode"] for r in rows} == {"grid", "cluster-pull", "cluster-push"}
    assert all(r["ctas"] > 0 for r in rows)


@pytest.mark.gpu
def test_gemv_stages_run_every_variant_and_match_the_host_sums(tmp_path):
    hp = _module()
    binary = hp.build("gemv_stages", tmp_path)
    rows = []
    for shape in ("qwen3-0.6b.gate_up", "llama-3.2-1b.down"):
        run = subprocess.run([str(binary), "--rounds", "5", "--repeats", "1", "--stages", "2,4", "--clusters", "4,16",
                              "--shape", shape],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        rows += hp.parse(run.stdout.splitlines())[1]  # raises on a wrong sum or a timeout
    assert {r["variant"] for r in rows} == {"ldg", "ldg-early", "bulk", "cluster"}
    assert {r["cluster"] for r in rows if r["variant"] == "cluster"} == {4, 16}
    assert {r["shape"] for r in rows} == {"qwen3-0.6b.gate_up", "llama-3.2-1b.down"}
