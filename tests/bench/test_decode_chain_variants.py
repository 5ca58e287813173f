"""``benchmarks/decode_chain.py``'s persistent-layer variants (what the device scripts time) still
name real configuration fields, and every variant the device scripts name exists: a device call
must not fail, or time the wrong thing, on a variant left behind by a change to the kernel's
configuration. Both checked on the CPU (configurations for an H200's 132 SMs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from infer_core.bench.checkpoints import shape_config
from infer_core.loader.hf_config import head_dim_of

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
decode_chain = pytest.importorskip("decode_chain")


@pytest.mark.parametrize("shape", ["qwen3-0.6b", "llama-3.2-1b"])
@pytest.mark.parametrize("variant", sorted(decode_chain.SYNC_VARIANTS))
def test_every_variant_builds_its_configuration(shape, variant):
    """Each variant's fields exist (``dataclasses.replace`` refuses an unknown one) and take
    effect; a staged variant gets six stage launches."""
    cfg = shape_config(shape)
    sync = decode_chain.SYNC_VARIANTS[variant]
    conf, stage_configs, staged = decode_chain.variant_configs(
        cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
        head_dim_of(cfg), 132, sync, programs_per_sm=2)
    for field, value in sync.items():
        if field not in ("rows_gu", "stages", "balanced_elements"):
            assert getattr(conf, field) == value, (field, value)
    assert (stage_configs is not None and len(stage_configs) == 6) == isinstance(staged, tuple)


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


def test_the_device_scripts_name_existing_variants():
    found = script_variants()
    assert len(found) >= 8, found  # (the parsing still finds the scripts' chains)
    missing = sorted((script, name) for script, name in found if name not in decode_chain.SYNC_VARIANTS)
    assert not missing, missing


def test_unknown_chains_and_variants_are_refused_before_any_device_work():
    for script, args in (("decode_chain.py", ["--chains", "layer-persistent-default-s2,layer-persistent-nosuch-s2"]),
                         ("decode_layer_timeline.py", ["--variants", "nosuch"])):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", "/tmp/unused"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 2 and "unknown" in done.stderr and "nosuch" in done.stderr, done.stderr[-800:]
