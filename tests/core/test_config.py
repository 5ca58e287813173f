"""EngineConfig: sources and their precedence, command-line words, error messages (asserted
word for word), secrets, the example file, plugin selection and `infer config`."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from infer_core.cli import main
from infer_core.config import (
    SECTIONS,
    EngineConfig,
    combination_problems,
    config_to_dict,
    load_config,
    parse_cli_overrides,
    to_toml,
)
from infer_core.errors import ConfigError, UnknownNameError
from infer_core.plugins import make_plugin_manager
from infer_core.selection import select_plugins
from infer_core.version import __version__

EXAMPLE = Path(__file__).parents[2] / "examples" / "engine.toml"
CLI = "invalid configuration (defaults < command line): "
ENV = "invalid configuration (defaults < INFER_* environment): "


@pytest.fixture(autouse=True)
def _no_infer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's INFER_* variables must not leak into any test."""
    for name in list(os.environ):
        if name.upper().startswith("INFER_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "engine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args: Any, **kwargs: Any) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as e:
        load_config(*args, **kwargs)
    return str(e.value)


# -- defaults ----------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    cfg = load_config(environ={})
    assert cfg.model.path is None
    assert cfg.model.dtype == "auto"
    assert cfg.model.device == "auto"
    assert cfg.model.max_model_len is None
    assert cfg.model.seed == 0
    assert cfg.model.served_model_name is None
    assert cfg.cache.backend == "contiguous"
    assert cfg.cache.block_size == 16
    assert cfg.cache.memory_fraction == 0.9
    assert cfg.cache.num_blocks is None
    assert cfg.cache.kv_dtype == "auto"
    assert cfg.cache.options == {}
    assert cfg.scheduler.policy == "fcfs"
    assert cfg.scheduler.max_num_seqs == 256
    assert cfg.scheduler.max_num_batched_tokens == 8192
    assert cfg.scheduler.chunked_prefill is True
    assert cfg.scheduler.prefill_chunk_size is None
    assert cfg.scheduler.options == {}
    assert cfg.attention.backend == "auto"
    assert cfg.attention.options == {}
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8000
    assert cfg.server.api_key is None
    assert cfg.server.max_waiting_requests == 1024
    assert cfg.server.cors_origins == []
    assert cfg.server.max_body_bytes == 4 << 20
    assert cfg.server.max_list_items == 1024
    assert cfg.server.drain_timeout_s == 30.0
    assert cfg.server.log_level == "info"
    assert cfg.plugins.disable == []


def test_defaults_pass_plugin_selection_with_builtins_only():
    selection = select_plugins(load_config(environ={}), make_plugin_manager(autoload=False, env={}))
    assert selection.cache.spec.name == "contiguous"
    assert selection.scheduler.spec.name == "fcfs"
    assert selection.attention is None, "auto is resolved per device when the engine starts"


# -- examples/engine.toml ------------------------------------------------------------------------


def example_keys() -> dict[str, dict[str, bool]]:
    """``{section: {key: commented_out}}`` for every field-named key line of the example."""
    keys: dict[str, dict[str, bool]] = {}
    section = None
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        header = re.fullmatch(r"\[([\w.]+)\]", line)
        if header:
            section = header.group(1)
            continue
        key = is_key_line(line, section)
        if key:
            assert lines[i - 1].startswith("# ") and not is_key_line(lines[i - 1], section), (
                f"{section}.{key.group(2)} needs a comment line right above it"
            )
            keys.setdefault(section, {})[key.group(2)] = key.group(1) is not None
    return keys


def is_key_line(line: str, section: str | None) -> re.Match[str] | None:
    """``key = ...`` or ``# key = ...`` where key is a field of ``section``."""
    key = re.match(r"(# )?(\w+) = ", line)
    if section in SECTIONS and key and key.group(2) in SECTIONS[section].model_fields:
        return key
    return None


def test_example_shows_every_key_of_every_section():
    keys = example_keys()
    for name, section in SECTIONS.items():
        expected = set(section.model_fields) - {"options"}
        assert set(keys.get(name, {})) == expected, name
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in ("cache", "scheduler", "attention"):
        assert f"\n[{name}.options]\n" in text


def test_example_comments_out_exactly_the_unset_keys():
    commented = {
        f"{section}.{key}" for section, ks in example_keys().items() for key, c in ks.items() if c
    }
    assert commented == {
        "model.path", "model.max_model_len", "model.served_model_name", "model.cuda_graph_sizes",
        "model.small_m_gemm", "model.persistent_decode", "cache.num_blocks",
        "scheduler.prefill_chunk_size", "server.api_key",
    }


def test_example_loads_with_the_default_values_and_passes_plugin_selection():
    cfg = load_config(EXAMPLE, environ={})
    assert cfg == load_config(environ={})
    selection = select_plugins(cfg, make_plugin_manager(env={}))
    assert selection.cache.spec.name == "contiguous"
    assert selection.cache.options is None
    assert selection.scheduler.spec.name == "fcfs"
    assert selection.attention is None


def test_example_commented_keys_are_valid_once_uncommented(tmp_path):
    commented = {k for ks in example_keys().values() for k, c in ks.items() if c}
    text = EXAMPLE.read_text(encoding="utf-8")

    def uncomment(keys: set[str]) -> str:
        return re.sub(
            r"^# (\w+) = ",
            lambda m: f"{m.group(1)} = " if m.group(1) in keys else m.group(0),
            text,
            flags=re.MULTILINE,
        )

    cfg = load_config(write(tmp_path, uncomment(commented - {"num_blocks"})), environ={})
    assert cfg.model.path is not None
    assert cfg.model.max_model_len is not None
    assert cfg.model.served_model_name is not None
    assert cfg.scheduler.prefill_chunk_size is not None
    assert cfg.server.api_key is not None
    # num_blocks, when set, sizes the cache and memory_fraction is not used.
    cfg = load_config(write(tmp_path, uncomment({"num_blocks"}), "both.toml"), environ={})
    assert cfg.cache.num_blocks is not None


def roundtrip(cfg: EngineConfig, *, reveal_secrets: bool = False) -> EngineConfig:
    document = to_toml(config_to_dict(cfg, reveal_secrets=reveal_secrets))
    return load_config(overrides=tomllib.loads(document), environ={})


def test_example_round_trips_through_to_toml():
    cfg = load_config(EXAMPLE, environ={})
    assert roundtrip(cfg) == cfg


def test_a_non_default_config_round_trips_through_to_toml():
    cfg = load_config(overrides={
        "model": {"path": "/models/x y", "max_model_len": 4096, "served_model_name": "x\"y",
                  "device": "cuda:1", "dtype": "float16", "seed": -3},
        "cache": {"block_size": 32, "memory_fraction": 0.5, "kv_dtype": "fp8",
                  "options": {"watermark": 0.01, "nested": {"a b": [1, 2]}}},
        "scheduler": {"policy": "priority", "max_num_seqs": 8, "max_num_batched_tokens": 512,
                      "prefill_chunk_size": 128},
        "attention": {"backend": "triton", "options": {"num_warps": 4}},
        "server": {"port": 0, "cors_origins": ["http://a", "http://b"]},
        "plugins": {"disable": ["infer_example_policy"]},
    }, environ={})
    assert roundtrip(cfg) == cfg


def test_a_config_with_an_api_key_round_trips_when_secrets_are_revealed():
    cfg = load_config(overrides={"server": {"api_key": "s3cret"}}, environ={})
    assert roundtrip(cfg, reveal_secrets=True) == cfg


def test_a_config_with_num_blocks_round_trips_through_to_toml():
    cfg = load_config(overrides={"cache": {"num_blocks": 100}}, environ={})
    assert roundtrip(cfg) == cfg


# -- precedence -------------------------------------------------------------------------------------


def test_command_line_beats_environment_beats_file(tmp_path, monkeypatch):
    path = write(tmp_path, "[server]\nport = 1111\n")
    monkeypatch.setenv("INFER_SERVER__PORT", "2222")
    assert load_config(path, ["--server.port", "3333"]).server.port == 3333
    assert load_config(path).server.port == 2222
    monkeypatch.delenv("INFER_SERVER__PORT")
    assert load_config(path).server.port == 1111


def test_environment_beats_file(tmp_path):
    path = write(tmp_path, "[cache]\nblock_size = 8\n")
    cfg = load_config(path, environ={"INFER_CACHE__BLOCK_SIZE": "64"})
    assert cfg.cache.block_size == 64


def test_infer_config_names_the_file_when_no_path_is_given(tmp_path, monkeypatch):
    from_env = write(tmp_path, "[server]\nport = 1234\n", "env.toml")
    monkeypatch.setenv("INFER_CONFIG", str(from_env))
    assert load_config().server.port == 1234
    explicit = write(tmp_path, "[server]\nport = 4321\n", "explicit.toml")
    assert load_config(explicit).server.port == 4321, "an explicit path beats INFER_CONFIG"
    assert load_config(environ={"INFER_CONFIG": str(from_env)}).server.port == 1234


def test_infer_config_is_a_switch_not_a_config_key(tmp_path):
    path = write(tmp_path, "")
    assert load_config(environ={"INFER_CONFIG": str(path)}) == load_config(environ={})
    assert load_config(environ={"INFER_CONFIG": ""}) == load_config(environ={})


def test_nested_environment_variable(monkeypatch):
    monkeypatch.setenv("INFER_CACHE__BLOCK_SIZE", "32")
    cfg = load_config()
    assert cfg.cache.block_size == 32
    assert isinstance(cfg.cache.block_size, int)


def test_environment_names_are_case_insensitive():
    assert load_config(environ={"infer_cache__block_size": "32"}).cache.block_size == 32


def test_environment_lists_are_json(monkeypatch):
    monkeypatch.setenv("INFER_SERVER__CORS_ORIGINS", '["http://a"]')
    assert load_config().server.cors_origins == ["http://a"]


def test_environment_booleans_and_text():
    cfg = load_config(environ={
        "INFER_SCHEDULER__CHUNKED_PREFILL": "false",
        "INFER_MODEL__SERVED_MODEL_NAME": "123",
    })
    assert cfg.scheduler.chunked_prefill is False
    assert cfg.model.served_model_name == "123"


def test_sources_merge_key_by_key(tmp_path):
    path = write(tmp_path, '[cache]\nbackend = "paged"\n[server]\nport = 1\n')
    cfg = load_config(
        path,
        ["--server.host", "0.0.0.0"],
        environ={"INFER_CACHE__BLOCK_SIZE": "32"},
    )
    assert cfg.cache.backend == "paged"
    assert cfg.cache.block_size == 32
    assert cfg.server.port == 1
    assert cfg.server.host == "0.0.0.0"


def test_options_tables_merge_key_by_key(tmp_path):
    path = write(tmp_path, "[cache.options]\na = 1\nb = 2\n")
    cfg = load_config(path, ["--cache.options.b", "3"], environ={"INFER_CACHE__OPTIONS__C": "4"})
    assert cfg.cache.options == {"a": 1, "b": 3, "c": "4"}


def test_overrides_may_be_a_nested_mapping(tmp_path):
    path = write(tmp_path, "[cache]\nblock_size = 8\nkv_dtype = \"float16\"\n")
    cfg = load_config(path, {"cache": {"block_size": 64}}, environ={})
    assert (cfg.cache.block_size, cfg.cache.kv_dtype) == (64, "float16")


# -- command-line words --------------------------------------------------------------------------


def test_equals_and_separate_value_forms():
    assert parse_cli_overrides(["--a.b=v"]) == {"a": {"b": "v"}}
    assert parse_cli_overrides(["--a.b", "v"]) == {"a": {"b": "v"}}
    assert parse_cli_overrides(["--server.port=9000", "--cache.block_size", "32"]) == {
        "server": {"port": 9000}, "cache": {"block_size": 32},
    }


def test_value_may_contain_equals_signs():
    assert parse_cli_overrides(["--model.path=/m/a=b"]) == {"model": {"path": "/m/a=b"}}


def test_bare_flag_means_true(tmp_path):
    assert parse_cli_overrides(["--scheduler.chunked_prefill"]) == {
        "scheduler": {"chunked_prefill": True}
    }
    path = write(tmp_path, "[scheduler]\nchunked_prefill = false\n")
    cfg = load_config(path, ["--scheduler.chunked_prefill", "--server.port", "1"], environ={})
    assert cfg.scheduler.chunked_prefill is True
    assert cfg.server.port == 1


def test_explicit_false():
    cfg = load_config(overrides=["--scheduler.chunked_prefill", "false"], environ={})
    assert cfg.scheduler.chunked_prefill is False


def test_dashes_in_keys_become_underscores():
    assert parse_cli_overrides(["--scheduler.max-num-seqs", "8"]) == {
        "scheduler": {"max_num_seqs": 8}
    }
    assert load_config(overrides=["--scheduler.max-num-seqs", "8"], environ={}).scheduler.max_num_seqs == 8


def test_values_are_toml_literals():
    assert parse_cli_overrides([
        "--cache.block_size", "32",
        "--cache.memory_fraction", "0.5",
        "--model.seed", "-5",
        "--server.cors_origins", '["http://a", "http://b"]',
        "--scheduler.chunked_prefill", "false",
    ]) == {
        "cache": {"block_size": 32, "memory_fraction": 0.5},
        "model": {"seed": -5},
        "server": {"cors_origins": ["http://a", "http://b"]},
        "scheduler": {"chunked_prefill": False},
    }


def test_text_keys_keep_the_word_as_written():
    cfg = load_config(overrides=[
        "--model.served_model_name", "123",
        "--model.path", "true",
        "--model.device", "cuda:0",
        "--server.api_key", "007",
    ], environ={})
    assert cfg.model.served_model_name == "123"
    assert cfg.model.path == "true"
    assert cfg.model.device == "cuda:0"
    assert cfg.server.api_key.get_secret_value() == "007"


def test_words_that_are_not_toml_stay_strings():
    assert parse_cli_overrides(["--model.dtype", "float16"]) == {"model": {"dtype": "float16"}}


def test_plugin_options_from_the_command_line():
    cfg = load_config(overrides=["--cache.options.watermark", "0.1"], environ={})
    assert cfg.cache.options == {"watermark": 0.1}


@pytest.mark.parametrize(("words", "message"), [
    (["cache.block_size", "32"],
     "unexpected argument 'cache.block_size'; overrides look like --section.key value."),
    (["--cache", "32"], "unexpected argument '--cache'; overrides look like --section.key value."),
    (["--cache.block_size", "32", "64"],
     "unexpected argument '64'; overrides look like --section.key value."),
    (["--cache..block_size", "32"],
     "malformed override '--cache..block_size'; overrides look like --section.key value."),
    (["--cache.=3"], "malformed override '--cache.=3'; overrides look like --section.key value."),
    (["--cache.backend", "x", "--cache.backend.y", "1"],
     "override '--cache.backend.y' conflicts with an earlier override of backend."),
])
def test_malformed_words(words, message):
    with pytest.raises(ConfigError) as e:
        parse_cli_overrides(words)
    assert str(e.value) == message
    assert config_error(overrides=words) == message


# -- error messages ---------------------------------------------------------------------------------


def test_unknown_key_in_file_suggests_the_closest(tmp_path):
    path = write(tmp_path, "[cache]\nblok_size = 32\n")
    assert config_error(path) == (
        f"invalid configuration (defaults < file {path}): unknown key 'cache.blok_size' "
        f"(did you mean 'cache.block_size'?)."
    )


def test_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "[server]\nzzz = 1\n")
    assert config_error(path) == (
        f"invalid configuration (defaults < file {path}): unknown key 'server.zzz' (known: host, "
        f"port, api_key, max_waiting_requests, cors_origins, max_body_bytes, max_list_items, "
        f"drain_timeout_s, log_level, engine_process, debug_endpoints)."
    )


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[caches]\nblock_size = 32\n")
    assert config_error(path) == (
        f"invalid configuration (defaults < file {path}): unknown key 'caches' "
        f"(did you mean 'cache'?)."
    )
    path = write(tmp_path, "[frobnicate]\nx = 1\n", "other.toml")
    assert config_error(path) == (
        f"invalid configuration (defaults < file {path}): unknown key 'frobnicate' "
        f"(known: model, cache, scheduler, attention, server, parallel, plugins)."
    )


def test_typo_in_an_environment_variable(monkeypatch):
    monkeypatch.setenv("INFER_CACHE__BLOK_SIZE", "32")
    with pytest.raises(ConfigError) as e:
        load_config()
    assert str(e.value) == ENV + "unknown key 'cache.blok_size' (did you mean 'cache.block_size'?)."


def test_every_source_is_named_in_the_message(tmp_path):
    path = write(tmp_path, "")
    message = config_error(
        path, ["--server.port", "70000"], environ={"INFER_CACHE__BLOCK_SIZE": "32"}
    )
    assert message == (
        f"invalid configuration (defaults < file {path} < INFER_* environment < command line): "
        f"server.port: Input should be less than or equal to 65535 (got 70000)."
    )


def test_unparsable_json_in_the_environment():
    message = config_error(environ={"INFER_SERVER__CORS_ORIGINS": "[bad"})
    assert message == (
        'invalid INFER_* environment variable: error parsing value for field "server" from '
        'source "EnvSettingsSource".'
    )


def test_wrong_type():
    assert config_error(overrides=["--cache.block_size", "abc"]) == CLI + (
        "cache.block_size: Input should be a valid integer, unable to parse string as an "
        "integer (got 'abc')."
    )


def test_persistent_decode_is_a_boolean_unset_by_default(tmp_path):
    assert load_config(environ={}).model.persistent_decode is None  # on with CUDA, off on the CPU
    assert load_config(overrides=["--model.persistent_decode", "true"], environ={}).model.persistent_decode is True
    cfg = load_config(write(tmp_path, "[model]\npersistent_decode = true\n"), environ={})
    assert cfg.model.persistent_decode is True
    assert config_error(overrides=["--model.persistent_decode", "maybe"]) == CLI + (
        "model.persistent_decode: Input should be a valid boolean, unable to interpret input (got 'maybe')."
    )


def test_small_m_gated_epilogue_is_a_boolean_off_by_default(tmp_path):
    assert load_config(environ={}).model.small_m_gated_epilogue is False
    assert load_config(overrides=["--model.small_m_gated_epilogue", "true"], environ={}).model.small_m_gated_epilogue is True
    cfg = load_config(write(tmp_path, "[model]\nsmall_m_gated_epilogue = true\n"), environ={})
    assert cfg.model.small_m_gated_epilogue is True
    assert config_error(overrides=["--model.small_m_gated_epilogue", "maybe"]) == CLI + (
        "model.small_m_gated_epilogue: Input should be a valid boolean, unable to interpret input (got 'maybe')."
    )


def test_several_field_errors_are_joined():
    assert config_error(overrides=["--cache.block_size", "0", "--server.port", "-1"]) == CLI + (
        "cache.block_size: Input should be greater than or equal to 1 (got 0); "
        "server.port: Input should be greater than or equal to 0 (got -1)."
    )


@pytest.mark.parametrize(("words", "message"), [
    (["--cache.memory_fraction", "0"],
     "cache.memory_fraction: Input should be greater than 0 (got 0)."),
    (["--cache.memory_fraction", "1.5"],
     "cache.memory_fraction: Input should be less than or equal to 1 (got 1.5)."),
    (["--server.port", "70000"],
     "server.port: Input should be less than or equal to 65535 (got 70000)."),
    (["--cache.block_size", "8192"],
     "cache.block_size: Input should be less than or equal to 4096 (got 8192)."),
    (["--model.device", "gpu"],
     "model.device: must be auto, cpu, cuda or cuda:N (got 'gpu')."),
    (["--model.dtype", "fp16"],
     "model.dtype: Input should be 'auto', 'float32', 'float16' or 'bfloat16' (got 'fp16')."),
])
def test_out_of_range_values(words, message):
    assert config_error(overrides=words) == CLI + message


@pytest.mark.parametrize("words", [
    ["--cache.memory_fraction", "1"],
    ["--server.port", "0"],
    ["--server.port", "65535"],
    ["--cache.block_size", "4096"],
    ["--model.device", "cuda"],
    ["--model.device", "cuda:3"],
    ["--model.device", "cpu"],
])
def test_boundary_values_are_accepted(words):
    load_config(overrides=words, environ={})


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    assert config_error(path) == (
        f"config file '{path}' does not exist; pass an existing TOML file to --config."
    )


def test_missing_file_named_by_infer_config(tmp_path):
    path = tmp_path / "nope.toml"
    assert config_error(environ={"INFER_CONFIG": str(path)}) == (
        f"config file '{path}' does not exist; pass an existing TOML file to --config."
    )


def test_invalid_toml(tmp_path):
    text = "[cache\nblock_size = 3\n"
    path = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError) as decode:
        tomllib.loads(text)
    assert config_error(path) == f"config file '{path}' is not valid TOML: {decode.value}."


# -- combinations ------------------------------------------------------------------------------------

COMBINATIONS = {
    "max_num_seqs above the step budget": (
        {"scheduler": {"max_num_seqs": 10, "max_num_batched_tokens": 5}},
        "scheduler.max_num_seqs (10) exceeds scheduler.max_num_batched_tokens (5), but every "
        "running request needs at least one token of a step's budget; lower max_num_seqs or "
        "raise max_num_batched_tokens.",
    ),
    "prefill_chunk_size without chunked_prefill": (
        {"scheduler": {"chunked_prefill": False, "prefill_chunk_size": 512}},
        "scheduler.prefill_chunk_size is set but scheduler.chunked_prefill is false; enable "
        "chunked_prefill or remove prefill_chunk_size.",
    ),
    "prefill_chunk_size above the step budget": (
        {"scheduler": {"prefill_chunk_size": 9000}},
        "scheduler.prefill_chunk_size (9000) exceeds scheduler.max_num_batched_tokens (8192), "
        "so no step could hold a whole chunk; lower prefill_chunk_size or raise "
        "max_num_batched_tokens.",
    ),
    "no chunked prefill with a budget below max_model_len": (
        {"scheduler": {"chunked_prefill": False, "max_num_batched_tokens": 2048},
         "model": {"max_model_len": 4096}},
        "scheduler.max_num_batched_tokens (2048) is smaller than model.max_model_len (4096) "
        "while scheduler.chunked_prefill is false, so a long prompt could never be scheduled; "
        "raise max_num_batched_tokens or enable chunked_prefill.",
    ),
    "fp8 on the cpu": (
        {"cache": {"kv_dtype": "fp8"}, "model": {"device": "cpu"}},
        "cache.kv_dtype 'fp8' needs a CUDA device, but model.device is 'cpu'; use kv_dtype "
        "'auto' on the CPU.",
    ),
    "triton on the cpu": (
        {"attention": {"backend": "triton"}, "model": {"device": "cpu"}},
        "attention.backend 'triton' needs a CUDA device, but model.device is 'cpu'; use 'torch' "
        "or 'auto' on the CPU.",
    ),
    "attention options with auto": (
        {"attention": {"options": {"num_warps": 4}}},
        "attention.options are set but attention.backend is 'auto', which picks a backend per "
        "device; name the backend the options are for.",
    ),
    "empty api_key": (
        {"server": {"api_key": ""}},
        "server.api_key is empty; set a non-empty key, or remove it to serve without one.",
    ),
}


def constructed(sections: dict[str, dict[str, Any]]) -> EngineConfig:
    """An EngineConfig whose sections are validated but whose combinations are not."""
    return EngineConfig.model_construct(
        **{name: SECTIONS[name](**values) for name, values in sections.items()}
    )


@pytest.mark.parametrize("case", list(COMBINATIONS))
def test_combination_is_rejected_with_its_sentence(case):
    sections, sentence = COMBINATIONS[case]
    assert combination_problems(constructed(sections)) == [sentence]
    message = config_error(overrides=sections)
    assert message == CLI + sentence


def test_combination_message_ends_with_one_period():
    sections, sentence = COMBINATIONS["empty api_key"]
    assert config_error(overrides=sections) == CLI + sentence


def test_combinations_at_their_limits_are_accepted():
    cfg = load_config(overrides={
        "scheduler": {"max_num_seqs": 64, "max_num_batched_tokens": 64, "prefill_chunk_size": 64},
    }, environ={})
    assert combination_problems(cfg) == []
    cfg = load_config(overrides={
        "scheduler": {"chunked_prefill": False, "max_num_batched_tokens": 4096},
        "model": {"max_model_len": 4096, "device": "cpu"},
        "cache": {"num_blocks": 10},
        "attention": {"backend": "torch", "options": {"x": 1}},
        "server": {"api_key": "k"},
    }, environ={})
    assert combination_problems(cfg) == []
    assert cfg.cache.memory_fraction == 0.9, "unset memory_fraction keeps its default"


def test_num_blocks_overrides_a_memory_fraction_from_the_file(tmp_path):
    path = write(tmp_path, "[cache]\nmemory_fraction = 0.5\n")
    cfg = load_config(path, ["--cache.num_blocks", "10"], environ={})
    assert (cfg.cache.num_blocks, cfg.cache.memory_fraction) == (10, 0.5)


def test_several_bad_combinations_are_reported_together():
    message = config_error(overrides={"server": {"api_key": ""}, "scheduler": {"max_num_seqs": 9000}})
    assert "scheduler.max_num_seqs (9000) exceeds" in message
    assert message.endswith("server.api_key is empty; set a non-empty key, or remove it to serve without one.")


# -- secrets ----------------------------------------------------------------------------------------


def test_api_key_is_masked_unless_revealed():
    cfg = load_config(overrides=["--server.api_key", "s3cret"], environ={})
    assert config_to_dict(cfg)["server"]["api_key"] == "***"
    assert cfg.server.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in to_toml(config_to_dict(cfg))
    assert config_to_dict(load_config(environ={}))["server"]["api_key"] is None


def test_api_key_is_shown_when_revealed():
    cfg = load_config(overrides=["--server.api_key", "s3cret"], environ={})
    assert config_to_dict(cfg, reveal_secrets=True)["server"]["api_key"] == "s3cret"


def test_infer_config_masks_the_api_key(capsys, monkeypatch):
    monkeypatch.setenv("INFER_SERVER__API_KEY", "s3cret")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert 'api_key = "***"' in out
    assert "s3cret" not in out
    assert main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["server"]["api_key"] == "***"
    assert "s3cret" not in out


def test_infer_config_shows_the_api_key_with_show_secrets(capsys):
    assert main(["config", "--show-secrets", "--server.api_key", "s3cret"]) == 0
    assert 'api_key = "s3cret"' in capsys.readouterr().out
    assert main(["config", "--json", "--show-secrets", "--server.api_key", "s3cret"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["api_key"] == "s3cret"


# -- frozen -----------------------------------------------------------------------------------------


def test_config_is_frozen():
    cfg = load_config(environ={})
    with pytest.raises(ValidationError):
        cfg.server.port = 1
    with pytest.raises(ValidationError):
        cfg.cache = cfg.cache
    assert cfg.server.port == 8000


def test_model_copy_with_update_is_how_to_derive_a_config():
    cfg = load_config(environ={})
    other = cfg.model_copy(update={"server": cfg.server.model_copy(update={"port": 1})})
    assert (cfg.server.port, other.server.port) == (8000, 1)


# -- plugin selection --------------------------------------------------------------------------------


def test_unknown_cache_backend_name():
    cfg = load_config(overrides=["--cache.backend", "contigous"], environ={})
    with pytest.raises(UnknownNameError) as e:
        select_plugins(cfg, make_plugin_manager(autoload=False, env={}))
    assert str(e.value) == (
        f"no cache backend named 'contigous' (from config cache.backend). Installed: contiguous "
        f"(infer-core {__version__}). Did you mean 'contiguous'? Run 'infer plugins' to see what "
        f"is installed."
    )


def test_first_party_cache_backend_that_is_not_installed():
    cfg = load_config(overrides=["--cache.backend", "paged"], environ={})
    with pytest.raises(UnknownNameError) as e:
        select_plugins(cfg, make_plugin_manager(autoload=False, env={}))
    assert str(e.value) == (
        f"no cache backend named 'paged' (from config cache.backend). Installed: contiguous "
        f"(infer-core {__version__}). 'paged' is provided by infer-cache-paged: pip install "
        f"infer-cache-paged"
    )


def test_unknown_scheduler_policy_name():
    cfg = load_config(overrides=["--scheduler.policy", "fcsf"], environ={})
    with pytest.raises(UnknownNameError) as e:
        select_plugins(cfg, make_plugin_manager(autoload=False, env={}))
    assert str(e.value) == (
        f"no scheduler policy named 'fcsf' (from config scheduler.policy). Installed: fcfs "
        f"(infer-core {__version__}). Did you mean 'fcfs'? Run 'infer plugins' to see what is "
        f"installed."
    )


def test_options_for_a_backend_that_takes_none(tmp_path):
    path = write(tmp_path, "[cache.options]\nwatermark = 0.1\n")
    cfg = load_config(path, environ={})
    with pytest.raises(ConfigError) as e:
        select_plugins(cfg, make_plugin_manager(autoload=False, env={}))
    assert str(e.value) == (
        f"cache backend 'contiguous' (infer-core {__version__}) takes no options, but "
        f"[cache.options] sets: watermark."
    )


def test_options_for_a_policy_that_takes_none_lists_the_keys_sorted():
    cfg = load_config(
        overrides=["--scheduler.options.b", "1", "--scheduler.options.a", "2"], environ={}
    )
    with pytest.raises(ConfigError) as e:
        select_plugins(cfg, make_plugin_manager(autoload=False, env={}))
    assert str(e.value) == (
        f"scheduler policy 'fcfs' (infer-core {__version__}) takes no options, but "
        f"[scheduler.options] sets: a, b."
    )


def test_options_for_a_named_attention_backend_are_validated():
    cfg = load_config(
        overrides=["--attention.backend", "torch", "--attention.options.x", "1"], environ={}
    )
    with pytest.raises(ConfigError) as e:
        select_plugins(cfg, make_plugin_manager(autoload=False, env={}))
    assert str(e.value) == (
        f"attention backend 'torch' (infer-core {__version__}) takes no options, but "
        f"[attention.options] sets: x."
    )
    cfg = load_config(overrides=["--attention.backend", "torch"], environ={})
    selection = select_plugins(cfg, make_plugin_manager(autoload=False, env={}))
    assert selection.attention is not None
    assert selection.attention.spec.name == "torch"


def test_plugins_disable_in_the_config_is_honoured(tmp_path):
    path = write(tmp_path, '[plugins]\ndisable = ["infer_cache_paged"]\n[cache]\nbackend = "paged"\n')
    cfg = load_config(path, environ={})
    pm = make_plugin_manager(blocked=cfg.plugins.disable, env={})
    assert pm.statuses["infer_cache_paged"].state == "disabled"
    assert pm.get_plugin("infer_cache_paged") is None
    with pytest.raises(UnknownNameError) as e:
        select_plugins(cfg, pm)
    assert str(e.value) == (
        f"no cache backend named 'paged' (from config cache.backend). Installed: contiguous "
        f"(infer-core {__version__}). 'paged' is provided by infer-cache-paged, which is "
        f"installed but disabled by INFER_DISABLE_PLUGINS or [plugins] disable; remove "
        f"'infer_cache_paged' from it to use 'paged'."
    )


def test_infer_config_honours_plugins_disable(capsys):
    assert main(["config", "--cache.backend", "paged",
                 "--plugins.disable", '["infer_cache_paged"]']) == 2
    err = capsys.readouterr().err
    assert "which is installed but disabled by INFER_DISABLE_PLUGINS or [plugins] disable" in err


# -- infer config --------------------------------------------------------------------------------------


def test_infer_config_json_of_the_example(capsys):
    assert main(["config", "--config", str(EXAMPLE), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == config_to_dict(load_config(EXAMPLE, environ={}))
    assert captured.err == ""


def test_infer_config_toml_of_the_example(capsys):
    assert main(["config", "--config", str(EXAMPLE)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert load_config(overrides=printed, environ={}) == load_config(EXAMPLE, environ={})
    assert printed["cache"]["options"] == {}
    assert "num_blocks" not in printed["cache"], "unset keys are printed as comments"


def test_infer_config_applies_overrides_in_every_form(capsys):
    assert main([
        "config", "--config", str(EXAMPLE), "--json", "--cache.block_size", "32",
        "--server.port=9000", "--model.seed", "-5", "--scheduler.max-num-seqs", "8",
        "--scheduler.chunked_prefill",
    ]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cache"]["block_size"] == 32
    assert data["server"]["port"] == 9000
    assert data["model"]["seed"] == -5
    assert data["scheduler"]["max_num_seqs"] == 8
    assert data["scheduler"]["chunked_prefill"] is True


def test_infer_config_reads_infer_config(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("INFER_CONFIG", str(write(tmp_path, "[server]\nport = 1234\n")))
    assert main(["config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["port"] == 1234


def test_infer_config_bad_override_is_one_error_line(capsys):
    assert main(["config", "--config", str(EXAMPLE), "--cache.block_size", "abc"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: invalid configuration (defaults < file {EXAMPLE} < command line): "
        f"cache.block_size: Input should be a valid integer, unable to parse string as an "
        f"integer (got 'abc').\n"
    )
    assert "Traceback" not in captured.err


def test_infer_config_malformed_word_is_one_error_line(capsys):
    assert main(["config", "--cache.block_size", "32", "stray"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: unexpected argument 'stray'; overrides look like --section.key value.\n"
    )


def test_infer_config_missing_file_is_one_error_line(capsys, tmp_path):
    path = tmp_path / "nope.toml"
    assert main(["config", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: config file '{path}' does not exist; pass an existing TOML file to --config.\n"
    )


# -- environment sections, list flags, secrets in errors -------------------------------------------


def test_env_variable_naming_no_section_is_an_error():
    with pytest.raises(ConfigError) as e:
        load_config(environ={"INFER_CACHES__BLOCK_SIZE": "32"})
    assert str(e.value) == (
        "environment variable INFER_CACHES__BLOCK_SIZE names no config section 'caches'; "
        "sections are model, cache, scheduler, attention, server, parallel, plugins "
        "(INFER_<SECTION>__<KEY>)."
    )
    assert load_config(environ={"INFER_DISABLE_PLUGINS": "x", "INFER_CONFIG": ""}).plugins.disable == []


def test_list_flags_take_comma_separated_words():
    cfg = load_config(overrides=["--plugins.disable", "a, b", "--server.cors_origins",
                                 '["http://x"]'], environ={})
    assert cfg.plugins.disable == ["a", "b"]
    assert cfg.server.cors_origins == ["http://x"]


def test_a_badly_typed_api_key_is_not_echoed(tmp_path):
    path = write(tmp_path, "[server]\napi_key = 12345\n")
    message = config_error(path)
    assert "server.api_key: Input should be a valid string" in message
    assert "12345" not in message
