"""The plugin manager, registries and their error messages (asserted word for word)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from infer_core.errors import DuplicateNameError, PluginError, PluginLoadError, UnknownNameError
from infer_core.plugins import make_plugin_manager
from infer_core.registry import PluginInfo, Registry
from infer_core.version import __version__

FIRST_PARTY = {
    "infer_core": "infer-core",
    "infer_models_llama": "infer-models-llama",
    "infer_models_qwen3": "infer-models-qwen3",
    "infer_models_gemma3": "infer-models-gemma3",
    "infer_cache_paged": "infer-cache-paged",
    "infer_sched_policies": "infer-sched-policies",
}

POLICY_PLUGIN = """
from infer_core import hookimpl
INFER_PLUGIN_API = {api}

@hookimpl
def infer_register_scheduler_policies(registry):
    registry.add({name!r}, "infer_core.engine.policy:FCFSPolicy", description="A policy.")
"""


def policy_plugin(name: str, api: int = 1) -> str:
    return POLICY_PLUGIN.format(name=name, api=api)


def test_all_first_party_distributions_load_with_their_versions():
    pm = make_plugin_manager(env={})
    assert pm.errors == []
    for plugin, dist in FIRST_PARTY.items():
        status = pm.statuses[plugin]
        assert status.state == "loaded"
        assert status.info.distribution == dist
        assert status.info.version == "0.1.0"
        assert status.info.api_version == 1
    assert next(iter(pm.statuses)) == "infer_core", "built-ins register first"
    assert pm.statuses["infer_core"].info.builtin


def test_builtins_register_through_the_same_hooks():
    pm = make_plugin_manager(autoload=False, env={})
    assert pm.cache_backends.get("contiguous").owner.name == "infer_core"
    assert pm.scheduler_policies.get("fcfs").target == "infer_core.engine.policy:FCFSPolicy"
    assert pm.get_plugin("infer_core") is not None
    assert "infer_register_cache_backends" in {
        impl.function.__name__ for impl in pm.hook.infer_register_cache_backends.get_hookimpls()
    }


def test_infer_plugins_json_lists_all_six_distributions():
    infer = Path(sys.executable).with_name("infer")
    out = subprocess.run([str(infer), "plugins", "--json"], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    report = json.loads(out.stdout)
    dists = {p["distribution"] for p in report["plugins"]}
    assert set(FIRST_PARTY.values()) <= dists
    assert report["errors"] == []
    assert report["plugin_api_version"] == 1
    core = next(p for p in report["plugins"] if p["name"] == "infer_core")
    assert core["registers"]["cache backend"][0]["name"] == "contiguous"
    assert core["version"] == __version__


def test_listing_plugins_does_not_import_torch():
    code = (
        "import sys; from infer_core.cli import main; rc = main(['plugins', '--json']);"
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# -- unknown names -----------------------------------------------------------------------------


def test_unknown_name_lists_installed_and_suggests_close_matches():
    pm = make_plugin_manager(env={})
    with pytest.raises(UnknownNameError) as e:
        pm.scheduler_policies.get("fcsf")
    assert str(e.value) == (
        "no scheduler policy named 'fcsf' (from config scheduler.policy). Installed: fcfs "
        "(infer-core 0.1.0), shortest_prompt_first (infer-example-policy 0.3.0), decode_first, "
        "prefill_first, priority, round_robin, static (infer-sched-policies 0.1.0). Did you mean "
        "'fcfs'? Run 'infer plugins' to see what is installed."
    )


def test_unknown_name_groups_installed_names_by_distribution():
    registry = Registry(kind="cache backend", config_key="cache.backend")
    core = PluginInfo("infer_core", "infer_core.builtins", "infer-core", "0.1.0", 1, True)
    paged = PluginInfo("infer_cache_paged", "infer_cache_paged.plugin", "infer-cache-paged", "0.1.0", 1)
    registry.scoped(core).add("contiguous", "a.b:C")
    registry.scoped(paged).add("prefix", "a.b:P")
    registry.scoped(paged).add("paged", "a.b:Q")
    with pytest.raises(UnknownNameError) as e:
        registry.get("pagd")
    assert str(e.value) == (
        "no cache backend named 'pagd' (from config cache.backend). Installed: contiguous "
        "(infer-core 0.1.0), paged, prefix (infer-cache-paged 0.1.0). Did you mean 'paged'? "
        "Run 'infer plugins' to see what is installed."
    )


def test_known_name_of_a_missing_distribution_says_what_to_install():
    pm = make_plugin_manager(autoload=False, env={})
    with pytest.raises(UnknownNameError) as e:
        pm.cache_backends.get("paged")
    assert str(e.value) == (
        "no cache backend named 'paged' (from config cache.backend). Installed: contiguous "
        "(infer-core 0.1.0). 'paged' is provided by infer-cache-paged: "
        "pip install infer-cache-paged"
    )


def test_known_name_of_a_disabled_plugin_says_how_to_enable_it():
    pm = make_plugin_manager(blocked=["infer_sched_policies"], env={})
    assert pm.statuses["infer_sched_policies"].state == "disabled"
    with pytest.raises(UnknownNameError) as e:
        pm.scheduler_policies.get("round_robin", where="config scheduler.policy")
    assert str(e.value).endswith(
        "'round_robin' is provided by infer-sched-policies, which is installed but disabled by "
        "INFER_DISABLE_PLUGINS or [plugins] disable; remove 'infer_sched_policies' from it to "
        "use 'round_robin'."
    )


def test_infer_disable_plugins_env_blocks_by_entry_point_name():
    pm = make_plugin_manager(env={"INFER_DISABLE_PLUGINS": "infer_models_llama, infer_models_qwen3"})
    assert pm.statuses["infer_models_llama"].state == "disabled"
    assert pm.statuses["infer_models_qwen3"].state == "disabled"
    assert pm.get_plugin("infer_models_llama") is None
    assert pm.statuses["infer_models_gemma3"].state == "loaded"


# -- plugins that misbehave --------------------------------------------------------------------


def test_same_name_from_two_plugins_names_both(make_distribution):
    make_distribution("my-fork", "0.3.0", {"my_fork": "my_fork_plugin"},
                      {"my_fork_plugin": policy_plugin("fcfs")})
    with pytest.raises(DuplicateNameError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "scheduler policy 'fcfs' is registered by both infer_core (infer-core 0.1.0) and "
        "my_fork (my-fork 0.3.0). Uninstall one or set INFER_DISABLE_PLUGINS=my_fork."
    )
    pm = make_plugin_manager(env={"INFER_DISABLE_PLUGINS": "my_fork"})
    assert pm.scheduler_policies.get("fcfs").owner.name == "infer_core"


def test_same_name_twice_from_one_plugin(make_distribution):
    source = policy_plugin("twice") + (
        "\n@hookimpl(specname='infer_register_scheduler_policies')\n"
        "def again(registry):\n    registry.add('twice', 'x.y:Z')\n"
    )
    make_distribution("twice", "1.0", {"twice": "twice_plugin"}, {"twice_plugin": source})
    with pytest.raises(DuplicateNameError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "scheduler policy 'twice' is registered twice by twice (twice 1.0); each name may be "
        "registered once."
    )


def test_plugin_that_fails_to_import_stops_start_up(make_distribution):
    make_distribution("infer-models-broken", "0.1.0", {"infer_models_broken": "broken_plugin"},
                      {"broken_plugin": "import x_missing_dependency\n"})
    with pytest.raises(PluginLoadError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "error importing plugin 'infer_models_broken' (infer-models-broken 0.1.0): "
        "ModuleNotFoundError: No module named 'x_missing_dependency'. To start without it: "
        "INFER_DISABLE_PLUGINS=infer_models_broken."
    )
    assert isinstance(e.value.__cause__, ModuleNotFoundError)
    assert make_plugin_manager(env={"INFER_DISABLE_PLUGINS": "infer_models_broken"}).errors == []


def test_collect_mode_reports_every_broken_plugin(make_distribution):
    make_distribution("broken-a", "1.0", {"broken_a": "broken_a_plugin"},
                      {"broken_a_plugin": "raise RuntimeError('boom')\n"})
    make_distribution("old-api", "2.0", {"old_api": "old_api_plugin"},
                      {"old_api_plugin": policy_plugin("old", api=0)})
    pm = make_plugin_manager(env={}, on_error="collect")
    assert [type(e).__name__ for e in pm.errors] == ["PluginLoadError", "PluginLoadError"]
    assert pm.statuses["broken_a"].state == "error"
    assert pm.statuses["old_api"].state == "error"
    assert "old" not in pm.scheduler_policies
    assert pm.statuses["infer_models_llama"].state == "loaded"


def test_plugin_built_for_another_api_version(make_distribution):
    make_distribution("future-plugin", "9.0", {"future": "future_plugin"},
                      {"future_plugin": policy_plugin("future", api=2)})
    with pytest.raises(PluginLoadError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "plugin future (future-plugin 9.0) was built for infer plugin API 2, but infer-core "
        f"{__version__} supports plugin API 1. Install a version of future-plugin built for "
        "plugin API 1, or start without it: INFER_DISABLE_PLUGINS=future."
    )


def test_plugin_without_api_declaration(make_distribution):
    make_distribution("undeclared", "1.0", {"undeclared": "undeclared_plugin"},
                      {"undeclared_plugin": "x = 1\n"})
    with pytest.raises(PluginLoadError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "plugin undeclared (undeclared 1.0) does not declare the plugin API it was built for; "
        "add INFER_PLUGIN_API = 1 to module 'undeclared_plugin', or start without it: "
        "INFER_DISABLE_PLUGINS=undeclared."
    )


def test_two_distributions_with_one_plugin_name(make_distribution):
    make_distribution("fork-a", "1.0", {"samename": "samename_a"}, {"samename_a": policy_plugin("a")})
    make_distribution("fork-b", "2.0", {"samename": "samename_b"}, {"samename_b": policy_plugin("b")})
    with pytest.raises(PluginError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "the infer plugin name 'samename' is declared by several installed distributions: "
        "fork-a 1.0 and fork-b 2.0. Uninstall all but one."
    )


def test_hook_that_raises_names_the_plugin(make_distribution):
    source = (
        "from infer_core import hookimpl\nINFER_PLUGIN_API = 1\n"
        "@hookimpl\ndef infer_register_architectures(registry):\n    raise KeyError('oops')\n"
    )
    make_distribution("raiser", "1.0", {"raiser": "raiser_plugin"}, {"raiser_plugin": source})
    with pytest.raises(PluginLoadError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "plugin raiser (raiser 1.0) failed in infer_register_architectures: KeyError: 'oops'. "
        "To start without it: INFER_DISABLE_PLUGINS=raiser."
    )


def test_unknown_hook_is_rejected(make_distribution):
    source = (
        "from infer_core import hookimpl\nINFER_PLUGIN_API = 1\n"
        "@hookimpl\ndef infer_register_tokenizers(registry):\n    pass\n"
    )
    make_distribution("typo-hook", "1.0", {"typo_hook": "typo_hook_plugin"},
                      {"typo_hook_plugin": source})
    with pytest.raises(PluginLoadError) as e:
        make_plugin_manager(env={})
    assert str(e.value) == (
        "plugin typo_hook (typo-hook 1.0) implements 'infer_register_tokenizers', a hook this "
        "infer-core does not define (known hooks: infer_register_architectures, "
        "infer_register_cache_backends, infer_register_scheduler_policies, "
        "infer_register_attention_backends). Update the plugin or infer-core, or start without "
        "it: INFER_DISABLE_PLUGINS=typo_hook."
    )


def test_target_that_cannot_be_imported_fails_on_use_with_its_owner(make_distribution):
    source = (
        "from infer_core import hookimpl\nINFER_PLUGIN_API = 1\n@hookimpl\n"
        "def infer_register_cache_backends(registry):\n"
        "    registry.add('ghost', 'ghost_pkg.cache:Ghost', description='Missing.')\n"
    )
    make_distribution("ghost", "1.0", {"ghost": "ghost_plugin"}, {"ghost_plugin": source})
    pm = make_plugin_manager(env={})
    spec = pm.cache_backends.get("ghost")  # registering is lazy: nothing imported yet
    with pytest.raises(PluginLoadError) as e:
        spec.load()
    assert str(e.value) == (
        "cache backend 'ghost' from ghost (ghost 1.0) cannot be loaded: its target "
        "'ghost_pkg.cache:Ghost' failed to import: ModuleNotFoundError: No module named "
        "'ghost_pkg'"
    )


@pytest.mark.parametrize(("target", "options"), [("no_colon", None), ("a.b:C", 42), ("a.b:C", "bad")])
def test_registry_rejects_malformed_specs(target, options):
    registry = Registry(kind="scheduler policy")
    owner = PluginInfo("mine", "mine.plugin", "mine", "1.0", 1)
    with pytest.raises(PluginError):
        registry.scoped(owner).add("x", target, options=options)
    assert "x" not in registry


def test_in_process_plugins_register_like_entry_points():
    from infer_core import hookimpl

    local = types.ModuleType("local_policies")
    local.INFER_PLUGIN_API = 1

    @hookimpl
    def infer_register_scheduler_policies(registry):
        registry.add("local", "infer_core.engine.policy:FCFSPolicy", description="Local.")

    local.infer_register_scheduler_policies = infer_register_scheduler_policies
    pm = make_plugin_manager(autoload=False, plugins=[local], env={})
    assert pm.scheduler_policies.get("local").owner.name == "local_policies"


def test_trace_prints_each_hook_call(capsys):
    make_plugin_manager(autoload=False, env={"INFER_TRACE_PLUGINS": "1"})
    err = capsys.readouterr().err
    assert "infer: infer_register_cache_backends() -> infer_core (infer-core 0.1.0)" in err
    make_plugin_manager(autoload=False, env={})
    assert capsys.readouterr().err == ""
