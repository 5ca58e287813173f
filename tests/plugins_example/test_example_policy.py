"""A third-party plugin, installed as its own distribution, is found through the `infer`
entry points, selectable by config, validated by its options model, and passes the same
conformance suite as the built-in policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from infer_core.config import load_config
from infer_core.errors import ConfigError
from infer_core.plugins import make_plugin_manager
from infer_core.selection import select_plugins
from infer_core.testing import SchedulerPolicyConformance, SyntheticRequest


class TestShortestPromptFirstConformance(SchedulerPolicyConformance):
    name = "shortest_prompt_first"
    options = {"max_prompt_tokens": 1000}


class TestLongestFirstConformance(SchedulerPolicyConformance):
    name = "shortest_prompt_first"
    options = {"longest_first": True}


def test_registered_by_its_own_distribution():
    pm = make_plugin_manager(env={})
    spec = pm.scheduler_policies.get("shortest_prompt_first")
    assert spec.owner.name == "infer_example_policy"
    assert (spec.owner.distribution, spec.owner.version) == ("infer-example-policy", "0.3.0")
    assert not spec.owner.builtin


def test_selected_by_a_config_file_with_its_options(tmp_path: Path):
    path = tmp_path / "engine.toml"
    path.write_text(
        '[scheduler]\npolicy = "shortest_prompt_first"\n\n'
        "[scheduler.options]\nlongest_first = true\n"
    )
    config = load_config(path, environ={})
    selection = select_plugins(config, make_plugin_manager(env={}))
    policy = selection.scheduler.spec.load()(selection.scheduler.options)
    short, long = SyntheticRequest("s", num_prompt_tokens=5), SyntheticRequest("l", num_prompt_tokens=50)
    assert policy.order_waiting([short, long]) == [long, short]
    assert selection.scheduler.options_dict() == {"longest_first": True, "max_prompt_tokens": 0}


def test_bad_options_are_reported_with_plugin_and_distribution():
    config = load_config(
        overrides=["--scheduler.policy", "shortest_prompt_first",
                   "--scheduler.options.max_prompt_tokens", "-1"],
        environ={},
    )
    with pytest.raises(ConfigError) as e:
        select_plugins(config, make_plugin_manager(env={}))
    assert str(e.value) == (
        "invalid [scheduler.options] for scheduler policy 'shortest_prompt_first' "
        "(infer-example-policy 0.3.0): max_prompt_tokens: Input should be greater than or "
        "equal to 0"
    )


def test_disabled_by_config():
    config = load_config(overrides={"plugins": {"disable": ["infer_example_policy"]}}, environ={})
    pm = make_plugin_manager(blocked=config.plugins.disable, env={})
    assert "shortest_prompt_first" not in pm.scheduler_policies
