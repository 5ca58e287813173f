"""``benchmarks/decode_chain.py``'s persistent-layer variants (what the device scripts time) still
name real configuration fields, and every variant the device scripts name exists: a device call
must not fail, or time the wrong thing, on a variant left behind by a change to the kernel's
configuration. Both checked on the CPU (configurations for an H200's 132 SMs).

``decode_chain`` is imported in a child process: it puts ``benchmarks/`` first on ``sys.path``
for its ``kernels`` module, which would shadow the ``kernels`` package transformers imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import json, sys
sys.path.insert(0, "benchmarks")
import decode_chain
from infer_core.bench.checkpoints import shape_config
from infer_core.loader.hf_config import head_dim_of

problems = []
for shape in ("qwen3-0.6b", "llama-3.2-1b"):
    cfg = shape_config(shape)
    for name, sync in decode_chain.SYNC_VARIANTS.items():
        try:
            conf, stage_configs, staged = decode_chain.variant_configs(
                cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                cfg["num_key_value_heads"], head_dim_of(cfg), 132, sync, programs_per_sm=2)
        except Exception as e:  # (an unknown field: dataclasses.replace refuses it)
            problems.append(f"{shape} {name}: {e!r}")
            continue
        for field, value in sync.items():
            if field not in ("rows_gu", "stages", "balanced_elements") and getattr(conf, field) != value:
                problems.append(f"{shape} {name}: {field} is {getattr(conf, field)!r}, not {value!r}")
        if (stage_configs is not None and len(stage_configs) == 6) != isinstance(staged, tuple):
            problems.append(f"{shape} {name}: stage configurations {stage_configs!r} for stages {staged!r}")
print(json.dumps({"variants": sorted(decode_chain.SYNC_VARIANTS), "problems": problems}))
"""


@pytest.fixture(scope="module")
def checked() -> dict:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_variant_builds_its_configuration(checked):
    """Each variant's fields exist and take effect at both real shapes; a staged variant gets six
    stage launches."""
    assert len(checked["variants"]) > 20 and not checked["problems"], checked["problems"]


def script_variants() -> set[tuple[str, str]]:
    """The persistent variants the device scripts name: ``layer-persistent-<variant>-s<N>`` chains
    (``$P`` expanded) and ``--variants`` lists of the timeline, as (script, variant)."""
    found = set()
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        text = script.read_text().replace("$P", "layer-persistent")
        for name in re.findall(r"layer-persistent-([a-z0-9-]+?)-s\d\b", text):
            if not re.fullmatch(r"e\d+-w\d+-p\d+-f\d", name):  # (the sweep's own names)
                found.add((script.name, name))
        for listed in re.findall(r"--variants\s+\"?(?:\$\{[A-Z_]+:-)?([a-z0-9,-]+)", text):
            found.update((script.name, name) for name in listed.split(","))
    return found


def test_the_device_scripts_name_existing_variants(checked):
    found = script_variants()
    assert len(found) >= 8, found  # (the parsing still finds the scripts' chains)
    missing = sorted((script, name) for script, name in found if name not in checked["variants"])
    assert not missing, missing


def test_unknown_chains_and_variants_are_refused_before_any_device_work():
    for script, args in (("decode_chain.py", ["--chains", "layer-persistent-default-s2,layer-persistent-nosuch-s2"]),
                         ("decode_layer_timeline.py", ["--variants", "nosuch"])):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", "/tmp/unused"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 2 and "unknown" in done.stderr and "nosuch" in done.stderr, done.stderr[-800:]
