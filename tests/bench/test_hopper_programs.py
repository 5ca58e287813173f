"""``benchmarks/hopper_programs.py``: each CUDA program compiles for sm_90a into the instructions
its modes name (cluster barriers, distributed shared memory, TMA bulk copies with mbarriers, a
release/acquire counter), a run that read back a wrong value or timed out fails instead of
reporting a time, and on a GPU every mode runs and checks clean."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NEEDS_NVCC = pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                                reason="needs the CUDA toolkit's nvcc")


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
    subprocess.run([hp.find_nvcc(), *hp.NVCC_FLAGS, "-ptx", str(hp.source(program)), "-o", str(ptx)], check=True,
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


def _layer_row(variant="grid", errors=0):
    return {"variant": variant, "cluster": 16 if variant == "cluster" else 0, "ctas": 224, "ctas_per_sm": 2,
            "splits": 16, "poll_ns": 100, "context": 384, "layers": 28, "us_per_layer": 37.0, "us_per_layer_min": 36.8,
            "max_rel_err": 8.5e-3, "errors": errors, "timeouts": 0}


def _timeline(variant="grid", qkv=2.5):
    names = ["prologue, PDL wait", "norm 1", "qkv"]
    return {"timeline": variant, "cluster": 16 if variant == "cluster" else 0, "ctas": 224, "clock_khz": 1980000,
            "intervals": [{"name": n, "min": 0.1, "median": qkv if n == "qkv" else 1.0, "max": 3.0} for n in names]}


def test_a_refused_cooperative_launch_is_a_row_not_an_error():
    """``--cooperative 1``: a grid the driver cannot keep resident at once is refused at launch
    (a row naming the error), where without it the grid barriers would spin to their limit."""
    hp = _module()
    refused = {"variant": "cluster", "cluster": 8, "ctas": 240, "ctas_per_sm": 2, "cooperative": 1,
               "refused": "too many blocks in cooperative launch"}
    lines = [json.dumps(DEVICE), json.dumps(_layer_row()), json.dumps(refused)]
    _, rows = hp.parse(lines)  # not broken
    md = hp.markdown("decode_layer", DEVICE, ENV, rows)
    assert "| default | grid | – | 224 | 2 | no | 16 | 100 | 384 | 37.00 | 36.80 | 8.5e-03 |" in md
    assert "| default | cluster | 8 | 240 | 2 | yes | – | – | – | refused: too many blocks in cooperative launch | – | – |" in md


def test_builds_name_their_flags():
    hp = _module()
    assert hp.builds([]) == [("default", [])]
    assert hp.builds(["atomics=-DDL_REDUCE=0", "both=-DDL_REDUCE=0 -DDL_MERGE=1", "three=-DA,-DB=2,-DC"]) == [
        ("default", []), ("atomics", ["-DDL_REDUCE=0"]), ("both", ["-DDL_REDUCE=0", "-DDL_MERGE=1"]),
        ("three", ["-DA", "-DB=2", "-DC"])]
    assert hp.builds(["default=-DDL_KEEP_RES=1"]) == [("default", ["-DDL_KEEP_RES=1"])]
    for bad in ("-DDL_REDUCE=0", "=x", "a b=-DX"):
        with pytest.raises(ValueError, match="NAME=FLAGS"):
            hp.builds([bad])


def test_timelines_are_not_rows_and_get_their_own_table():
    hp = _module()
    lines = [json.dumps(DEVICE), json.dumps(_layer_row()), json.dumps(_timeline()),
             json.dumps(_timeline("cluster", qkv=4.4))]
    _, rows = hp.parse(lines)
    assert [r["variant"] for r in rows] == ["grid"]
    items = hp.timelines(hp.json_lines(lines))
    assert [t["timeline"] for t in items] == ["grid", "cluster"]
    md = hp.timeline_markdown([{**items[0], "build": "atomics"}, items[1]])
    assert "| interval | atomics grid | default cluster 16 |" in md
    assert "| qkv | 2.50 (3.00) | 4.40 (3.00) |" in md
    assert "| sum of medians | 4.50 | 6.40 |" in md
    assert hp.timeline_markdown([]) == ""


def test_main_runs_every_build_and_keeps_what_a_hung_one_printed(tmp_path, monkeypatch):
    """Each ``--build`` is compiled and run in turn; one that hangs past ``--timeout`` keeps the
    rows it printed, the others still run, and both files name every build."""
    hp = _module()
    built = []

    def fake_build(program, out_dir, nvcc=None, defines=None, name=""):
        built.append((name, defines))
        hang = "time.sleep(30)" if "-DHANG" in defines else ""
        variant = "cluster" if "-DDL_REDUCE=0" in defines else "grid"
        script = out_dir / f"fake-{name}"
        script.write_text(f"""#!{sys.executable}
import json, sys, time
print(json.dumps({DEVICE!r}))
print(json.dumps({_layer_row(variant)!r}), flush=True)
print(json.dumps({_timeline(variant)!r}), flush=True)
{hang}
""")
        script.chmod(0o755)
        return script

    monkeypatch.setattr(hp, "build", fake_build)
    monkeypatch.setattr(hp, "find_nvcc", lambda: "nvcc")
    monkeypatch.setattr(hp, "environment", lambda nvcc: ENV)
    code = hp.main(["decode_layer", "--out", str(tmp_path), "--timeline", "--timeout", "2",
                    "--build", "atomics=-DDL_REDUCE=0", "--build", "stuck=-DHANG"])
    assert code == 1  # one build did not finish
    assert built == [("default", ["-DDL_TIMELINE"]), ("atomics", ["-DDL_REDUCE=0", "-DDL_TIMELINE"]),
                     ("stuck", ["-DHANG", "-DDL_TIMELINE"])]
    report = json.loads((tmp_path / "decode_layer.json").read_text())
    assert [(r["build"], r["variant"]) for r in report["rows"]] == [
        ("default", "grid"), ("atomics", "cluster"), ("stuck", "grid")]
    assert [t["build"] for t in report["timelines"]] == ["default", "atomics", "stuck"]
    assert report["failed"] == ["stuck: exited with timeout"]
    md = (tmp_path / "decode_layer.md").read_text()
    assert "| atomics | cluster | 16 |" in md and "Did not finish: stuck" in md
    assert (tmp_path / "decode_layer-stuck.log").read_text().count("{") >= 3


def test_unknown_program_is_named():
    with pytest.raises(ValueError, match="choose one of handoffs, gemv_stages, decode_layer"):
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


# --- decode_layer.cu: the host reference its GPU check trusts, against the same layer in torch

H, NQ, NKV, D, INTER = 1024, 16, 8, 128, 3072
QROWS, KVROWS = NQ * D, NKV * D
SPECS = {  # name: (tensor id, rows, cols, 1 / scale, offset), as decode_layer.cu's spec()
    "qkv": (0, QROWS + 2 * KVROWS, H, 32, 0), "o": (1, H, QROWS, 45, 0), "gu": (2, 2 * INTER, H, 32, 0),
    "down": (3, H, INTER, 55, 0), "n1": (4, 1, H, 4, 1), "n2": (5, 1, H, 4, 1), "qn": (6, 1, D, 4, 1),
    "kn": (7, 1, D, 4, 1), "kc": (8, None, D, 1, 0), "vc": (9, None, D, 1, 0), "x": (10, 1, H, 1, 0),
    "res": (11, 1, H, 1, 0),
}


def _hashed(name: str, ctx: int) -> torch.Tensor:
    """decode_layer.cu's hashed() values of layer 0's tensor ``name``, as bf16, in float64."""
    import numpy as np

    tid, rows, cols, divisor, offset = SPECS[name]
    rows = ctx * NKV if rows is None else rows
    r = np.arange(rows, dtype=np.uint64)[:, None]
    c = np.arange(cols, dtype=np.uint64)[None, :]
    mask = np.uint64(0xFFFFFFFF)
    h = ((np.uint64(tid) * np.uint64(0x9E3779B1)) & mask) ^ ((r * np.uint64(0x85EBCA77)) & mask) ^ (
        (c * np.uint64(0xC2B2AE3D)) & mask)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & mask
    h ^= h >> np.uint64(12)
    value = ((h & np.uint64(255)).astype(np.int64) - 128).astype(np.float32) / np.float32(128)
    value = value * (np.float32(1) / np.float32(divisor)) + np.float32(offset)  # (float32, as the program)
    return torch.from_numpy(value.astype(np.float32)).to(torch.bfloat16).double()


def _torch_layer(pos: int):
    ctx = pos + 1
    w = {name: _hashed(name, ctx) for name in SPECS}

    def rms(v, weight):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-6) * weight

    r = w["x"][0] + w["res"][0]
    qkv = w["qkv"] @ rms(r, w["n1"][0])
    q, k, v = qkv[:QROWS].view(NQ, D), qkv[QROWS:QROWS + KVROWS].view(NKV, D), qkv[QROWS + KVROWS:].view(NKV, D)
    angle = pos * torch.pow(torch.tensor(1e6, dtype=torch.float64), -2.0 * torch.arange(D // 2, dtype=torch.float64) / D)
    cos, sin = angle.cos().float().double(), angle.sin().float().double()  # (the program's float table)

    def rope(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    q, k = rope(rms(q, w["qn"][0])), rope(rms(k, w["kn"][0]))
    keys = w["kc"].view(ctx, NKV, D).clone()
    values = w["vc"].view(ctx, NKV, D).clone()
    keys[pos], values[pos] = k, v
    scores = torch.einsum("hgd,jhd->hgj", q.view(NKV, NQ // NKV, D), keys) / D**0.5
    attn = torch.einsum("hgj,jhd->hgd", scores.softmax(-1), values).reshape(QROWS)
    r2 = w["o"] @ attn + r
    gu = w["gu"] @ rms(r2, w["n2"][0])
    act = torch.nn.functional.silu(gu[:INTER]) * gu[INTER:]
    return {"x_out": w["down"] @ act, "res_out": r2, "k": k.reshape(-1), "v": v.reshape(-1)}


@NEEDS_NVCC
def test_decode_layer_reference_is_the_torch_layer(tmp_path):
    """The double-precision layer the program checks its GPU output against (``--reference-only``,
    no GPU needed) is Qwen 3's decode layer: the same values through torch agree to 1e-9."""
    hp = _module()
    binary = hp.build("decode_layer", tmp_path)
    pos = 20
    run = subprocess.run([str(binary), "--reference-only", "1", "--context", str(pos)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    want = _torch_layer(pos)
    for name, values in want.items():
        assert torch.allclose(torch.tensor(got[name], dtype=torch.float64), values, rtol=1e-9, atol=1e-9), name


@pytest.mark.gpu
def test_decode_layer_variants_match_the_host_layer(tmp_path):
    hp = _module()
    binary = hp.build("decode_layer", tmp_path)
    # (clusters of 4 or 8 at 2 CTAs per SM overran the co-resident CTAs on an H200: 16 only)
    run = subprocess.run([str(binary), "--layers", "2", "--repeats", "2", "--context", "100", "--clusters", "16"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    _, rows = hp.parse(run.stdout.splitlines())  # raises on a mismatch or a timeout
    assert {r["variant"] for r in rows} == {"grid", "cluster"}, run.stderr
    assert all(r["us_per_layer"] > 0 for r in rows)


@NEEDS_NVCC
@pytest.mark.parametrize("defines", [["-DDL_REDUCE=0", "-DDL_KEEP_RES=0", "-DDL_MERGE=1"],
                                     ["-DDL_MERGE=1", "-DDL_TIMELINE"]])
def test_decode_layer_variants_compile(defines, tmp_path):
    """The kernel's switches the probe compares (``--build NAME=FLAGS``) all compile for sm_90a."""
    hp = _module()
    ptx = tmp_path / "decode_layer.ptx"
    subprocess.run([hp.find_nvcc(), *hp.NVCC_FLAGS, *defines, "-ptx", str(hp.source("decode_layer")), "-o", str(ptx)],
                   check=True, timeout=300)
    text = ptx.read_text()
    assert ".entry decode_layer_grid" in text and ".entry decode_layer_cluster" in text
    assert ("dl_stamps" in text) == ("-DDL_TIMELINE" in defines)


@pytest.mark.skipif(importlib.util.find_spec("infer_core") is None, reason="needs infer_core")
def test_decode_layer_kernel_compiles_under_nvrtc(tmp_path):
    """The layer's device code compiles as it is with the engine's run-time compiler (NVRTC, no
    CUDA toolkit), so a kernel that wins on the GPU can move into infer_core unchanged."""
    from infer_core.kernels import nvrtc

    if nvrtc.find_nvrtc() is None:
        pytest.skip("needs NVRTC (the nvidia-cuda-nvrtc wheel)")
    cuda = ROOT / "infer_core" / "src" / "infer_core" / "kernels" / "cuda"
    cubin = nvrtc.compile_cubin((cuda / "decode_layer.cuh").read_text(), "decode_layer", "sm_90a",
                                [f"--include-path={cuda}"], cache=tmp_path)
    assert cubin[:4] == b"\x7fELF" and b"decode_layer_grid" in cubin and b"decode_layer_cluster" in cubin
