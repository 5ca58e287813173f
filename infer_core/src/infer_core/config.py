"""``EngineConfig``: every setting of the engine, in sections.

Sources, later winning: defaults < TOML file (``--config PATH`` or ``INFER_CONFIG``) <
``INFER_<SECTION>__<KEY>`` environment variables < command-line flags (``--section.key value``).
Every section forbids unknown keys. Each section's ``options`` table belongs to the plugin the
section names and is validated by that plugin's options model (see :mod:`infer_core.selection`).
Combinations that cannot work are rejected here, one sentence each.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from infer_core.errors import ConfigError

ENV_PREFIX = "INFER_"
CONFIG_PATH_ENV = "INFER_CONFIG"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    path: str | None = Field(None, description="Hugging Face model directory (config.json, *.safetensors, tokenizer.json).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weight and activation dtype; auto = bfloat16 on CUDA, float32 on the CPU.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N; auto = cuda when available.")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + output; default from the model's config.")
    seed: int = Field(0, description="Seed of the engine's random generator (per-request seeds override).")
    served_model_name: str | None = Field(None, description="Model name clients use; default: the model directory's name.")
    enforce_eager: bool = Field(False, description="Never replay decode steps as CUDA graphs (slower; for debugging).")
    small_m_gemm: bool | None = Field(
        None, description="Linear layers take the Triton small-M GEMM for one-row inputs (batch-1 decode) instead "
                          "of cuBLAS (1.1-3x faster there on an H200). Default: on for CUDA; true needs CUDA.")
    small_m_prologues: Literal["none", "act", "norm", "all"] = Field(
        "norm", description="With the small-M GEMM at one row, fold into its prologue the gated activation before "
                            "down_proj (act), the RMSNorm before the qkv and gate/up projections (norm), or both "
                            "(all): a launch fewer per fold and layer at batch 1. norm by default: on an H200 W1 "
                            "0.92 vs 0.94 ms per token (Llama-3.2-1B) and 0.86 vs 0.90 (Qwen3-0.6B) without; "
                            "the activation fold measured slower; docs/kernels.md.")
    small_m_gated_epilogue: bool = Field(
        False, description="With the small-M GEMM at one row, run the MLP's gated activation (SiLU / GELU-tanh "
                           "and-mul) in the gate/up GEMM's epilogue instead of its own launch (combines with the "
                           "norm prologue). When on, it takes precedence over the act prologue (act / all): "
                           "gate/up runs the activation and down_proj runs plain. Off by default: on an H200 W1 "
                           "measured no faster (Qwen3-0.6B 0.86 ms per token either way; docs/kernels.md).")
    persistent_decode: bool | None = Field(
        None, description="Batch-1 decode steps of Llama / Qwen 3 models run each decoder layer as one persistent "
                          "Triton launch (grid barriers between its stages) instead of about eight kernels; needs "
                          "one tensor-parallel rank and the standard KV-cache layout (a model that does not "
                          "qualify keeps the usual path, with a log line). Default: on for CUDA (W1 on an H200: "
                          "0.71 vs 0.86 ms per token for Qwen3-0.6B, 0.86 vs 0.92 for Llama-3.2-1B); true needs "
                          "CUDA, false turns it off (docs/kernels.md).")
    cuda_graph_sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="Decode batch sizes captured as CUDA graphs; default 1, 2, 4, then every 8 up to "
                          "min(max_num_seqs, 512). Sizes above scheduler.max_num_seqs are dropped.")


    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise PydanticCustomError(
                "device", "must be auto, cpu, cuda or cuda:N", {"value": value}
            )
        return value


class CacheConfig(Section):
    backend: str = Field("contiguous", description="Cache backend plugin: contiguous (built in), paged, prefix, ...")
    block_size: int = Field(16, ge=1, le=4096, description="Tokens per KV block (the contiguous backend uses max_model_len).")
    memory_fraction: float = Field(0.9, gt=0, le=1, description="Share of free device memory after weights for the KV cache.")
    num_blocks: int | None = Field(None, ge=1, description="Exact number of KV blocks; when set, memory_fraction is not used.")
    cpu_kv_cache_gib: float = Field(4.0, gt=0, description="KV cache size on the CPU, in GiB (memory_fraction sizes it on CUDA).")
    kv_dtype: Literal["auto", "float32", "float16", "bfloat16", "fp8"] = Field(
        "auto", description="KV cache dtype; auto = the model dtype; fp8 = e4m3 with per-layer scales (CUDA).")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the chosen cache backend.")


class SchedulerConfig(Section):
    policy: str = Field("fcfs", description="Scheduler policy plugin: fcfs (built in), round_robin, priority, ...")
    max_num_seqs: int = Field(256, ge=1, description="Most requests running at once.")
    max_num_batched_tokens: int = Field(8192, ge=1, description="Token budget of one step (prefill chunks + decodes).")
    chunked_prefill: bool = Field(True, description="Split long prompts over several steps.")
    prefill_chunk_size: int | None = Field(None, ge=1, description="Most prompt tokens of one request per step; default: the step budget.")
    async_scheduling: bool = Field(
        True, description="Schedule and launch step N+1 while step N runs on the device (its sampled ids "
                            "feed step N+1 there); steps with waiting requests or penalties run in order.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the chosen policy.")


class AttentionConfig(Section):
    backend: str = Field("auto", description="Attention backend plugin; auto = triton on CUDA, torch elsewhere.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the chosen attention backend.")


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 keeps the server local.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    api_key: SecretStr | None = Field(None, description="If set, every route but /health needs 'Authorization: Bearer <key>'.")
    max_waiting_requests: int = Field(1024, ge=1, description="Queue length beyond which new requests get 503.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off.")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest request body in bytes; larger ones get 413.")
    max_list_items: int = Field(
        1024, ge=1, description="Most items in a request's lists (prompts, messages, stop strings, stop token ids).")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long running requests may finish (new ones get 503) before exit.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the server and its access log.")
    engine_process: bool = Field(
        True, description="Run the engine core in its own process (vLLM V1's design): HTTP, tokenization and "
                          "streaming keep this process's interpreter to themselves; false runs it in a thread.")
    debug_endpoints: bool = Field(
        False, description="Serve GET /debug/engine (KV blocks, request states; for soak tests). Keep off in production.")


class ParallelConfig(Section):
    tensor_parallel_size: int = Field(
        1, ge=1, description="Ranks the model is split over (torch.distributed: NCCL on CUDA, one GPU per rank; gloo "
                             "on the CPU). The engine starts one worker process per rank beyond the first.")
    timeout_s: float = Field(
        120.0, gt=0, description="How long a rank waits in a collective before it gives up (a rank that died "
                                 "ends the engine with its error instead of a hang).")


class PluginsConfig(Section):
    disable: list[str] = Field(default_factory=list, description="Plugins (entry-point names) not to load.")


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig,
    "cache": CacheConfig,
    "scheduler": SchedulerConfig,
    "attention": AttentionConfig,
    "server": ServerConfig,
    "parallel": ParallelConfig,
    "plugins": PluginsConfig,
}


def _incompatible(message: str) -> PydanticCustomError:
    return PydanticCustomError("incompatible", "{message}", {"message": message})


class EngineConfig(BaseSettings):
    """The whole configuration. Build it with :func:`load_config` to get every source;
    ``EngineConfig(...)`` alone reads keyword arguments over ``INFER_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True,
        case_sensitive=False,
    )

    model: ModelConfig = Field(default_factory=ModelConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings)

    @model_validator(mode="after")
    def _check_combinations(self) -> EngineConfig:
        problems = combination_problems(self)
        if problems:
            raise _incompatible(" ".join(problems))
        return self


def combination_problems(cfg: EngineConfig) -> list[str]:
    """Each combination of settings that cannot work, as one sentence."""
    problems = []
    s, m, c = cfg.scheduler, cfg.model, cfg.cache
    if s.max_num_seqs > s.max_num_batched_tokens:
        problems.append(
            f"scheduler.max_num_seqs ({s.max_num_seqs}) exceeds scheduler.max_num_batched_tokens "
            f"({s.max_num_batched_tokens}), but every running request needs at least one token "
            f"of a step's budget; lower max_num_seqs or raise max_num_batched_tokens."
        )
    if s.prefill_chunk_size is not None and not s.chunked_prefill:
        problems.append(
            "scheduler.prefill_chunk_size is set but scheduler.chunked_prefill is false; "
            "enable chunked_prefill or remove prefill_chunk_size."
        )
    if s.prefill_chunk_size is not None and s.prefill_chunk_size > s.max_num_batched_tokens:
        problems.append(
            f"scheduler.prefill_chunk_size ({s.prefill_chunk_size}) exceeds "
            f"scheduler.max_num_batched_tokens ({s.max_num_batched_tokens}), so no step could "
            f"hold a whole chunk; lower prefill_chunk_size or raise max_num_batched_tokens."
        )
    if not s.chunked_prefill and m.max_model_len is not None and (
        s.max_num_batched_tokens < m.max_model_len
    ):
        problems.append(
            f"scheduler.max_num_batched_tokens ({s.max_num_batched_tokens}) is smaller than "
            f"model.max_model_len ({m.max_model_len}) while scheduler.chunked_prefill is false, "
            f"so a long prompt could never be scheduled; raise max_num_batched_tokens or "
            f"enable chunked_prefill."
        )
    if c.kv_dtype == "fp8" and m.device == "cpu":
        problems.append(
            "cache.kv_dtype 'fp8' needs a CUDA device, but model.device is 'cpu'; use "
            "kv_dtype 'auto' on the CPU."
        )
    if cfg.attention.backend == "triton" and m.device == "cpu":
        problems.append(
            "attention.backend 'triton' needs a CUDA device, but model.device is 'cpu'; use "
            "'torch' or 'auto' on the CPU."
        )
    if cfg.attention.backend == "auto" and cfg.attention.options:
        problems.append(
            "attention.options are set but attention.backend is 'auto', which picks a backend "
            "per device; name the backend the options are for."
        )
    if cfg.server.api_key is not None and not cfg.server.api_key.get_secret_value():
        problems.append(
            "server.api_key is empty; set a non-empty key, or remove it to serve without one."
        )
    return problems


# -- loading ---------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> EngineConfig:
    """Merge defaults < TOML file < ``INFER_*`` environment < ``overrides`` into a config.

    ``path`` defaults to ``$INFER_CONFIG``. ``overrides`` is a nested mapping or a list of
    command-line words (``["--cache.block_size", "32", "--server.port=9000"]``).
    """
    environ = os.environ if environ is None else environ
    path = path if path is not None else (environ.get(CONFIG_PATH_ENV) or None)
    file_data = read_toml(path) if path is not None else {}
    env_data = read_env(environ)
    cli_data = parse_cli_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    merged = deep_merge(deep_merge(file_data, env_data), cli_data)
    origin = describe_sources(path, env_data, cli_data)
    try:
        return EngineConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration ({origin}): {format_config_errors(exc)}") from None


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file '{file}' does not exist; pass an existing TOML file to --config.")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{file}' is not valid TOML: {exc}.") from None


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``INFER_<SECTION>__<KEY>`` variables as a nested mapping (pydantic-settings' parsing:
    JSON for lists and tables)."""
    source = EnvSettingsSource(
        EngineConfig, env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False,
    )
    source.env_vars = {k.lower(): v for k, v in environ.items()}
    for name in environ:
        head, sep, _ = name.upper().partition("__")
        section = head.removeprefix(ENV_PREFIX).lower()
        if sep and head.startswith(ENV_PREFIX) and section not in SECTIONS:
            raise ConfigError(
                f"environment variable {name} names no config section '{section}'; sections "
                f"are {', '.join(SECTIONS)} (INFER_<SECTION>__<KEY>)."
            )
    try:
        return source()
    except Exception as exc:  # pydantic-settings raises SettingsError on unparsable JSON
        raise ConfigError(f"invalid INFER_* environment variable: {exc}.") from None


def parse_cli_overrides(words: Sequence[str]) -> dict[str, Any]:
    """``--section.key value`` / ``--section.key=value`` / ``--section.flag`` as a mapping.

    Values are read as TOML literals (``32``, ``true``, ``["a", "b"]``) except for text keys,
    which keep the word as written; dashes in keys become underscores.
    """
    result: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or "." not in word:
            raise ConfigError(f"unexpected argument '{word}'; overrides look like --section.key value.")
        key, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                value = words[i + 1]
                i += 1
            else:
                value = "true"
        i += 1
        parts = [p.replace("-", "_") for p in key.split(".")]
        if any(not p for p in parts):
            raise ConfigError(f"malformed override '{word}'; overrides look like --section.key value.")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{word}' conflicts with an earlier override of {part}.")
        node[parts[-1]] = _cli_value(parts, value)
    return result


def _cli_value(parts: list[str], value: str) -> Any:
    kind = _field_kind(parts)
    if kind == "text":
        return value
    if kind == "list" and not value.lstrip().startswith("["):
        return [item.strip() for item in value.split(",") if item.strip()]
    return _literal(value)


def _literal(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _field_kind(parts: list[str]) -> str:
    """``text`` for string keys (kept as written), ``list`` for list keys (also accept
    ``a,b``), ``literal`` for the rest and for plugin options."""
    section = SECTIONS.get(parts[0])
    field = section.model_fields.get(parts[1]) if section is not None and len(parts) == 2 else None
    if field is None:
        return "literal"
    if field.annotation in (str, str | None, SecretStr | None):
        return "text"
    if field.annotation == list[str]:
        return "list"
    return "literal"


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_sources(path: Any, env_data: Mapping[str, Any], cli_data: Mapping[str, Any]) -> str:
    parts = ["defaults"]
    if path is not None:
        parts.append(f"file {path}")
    if env_data:
        parts.append("INFER_* environment")
    if cli_data:
        parts.append("command line")
    return " < ".join(parts)


def format_config_errors(exc: ValidationError) -> str:
    messages = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        if err["type"] == "incompatible":
            messages.append(err["msg"])
        elif err["type"] == "extra_forbidden":
            messages.append(f"unknown key '{dotted}'{_suggest(loc)}")
        elif dotted:
            shown = err.get("input")
            secret = "api_key" in loc
            got = "" if isinstance(shown, dict) or secret else f" (got {shown!r})"
            messages.append(f"{dotted}: {err['msg']}{got}")
        else:
            messages.append(err["msg"])
    return "; ".join(m.rstrip(".") for m in messages) + "."


def _suggest(loc: list[str]) -> str:
    if len(loc) == 1:
        names = list(SECTIONS)
    elif len(loc) == 2 and loc[0] in SECTIONS:
        names = list(SECTIONS[loc[0]].model_fields)
    else:
        return ""
    close = difflib.get_close_matches(loc[-1], names, n=1)
    if not close:
        return f" (known: {', '.join(names)})"
    return f" (did you mean '{'.'.join([*loc[:-1], close[0]])}'?)"


# -- printing --------------------------------------------------------------------------------


def config_to_dict(cfg: EngineConfig, *, reveal_secrets: bool = False) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    if cfg.server.api_key is not None:
        data["server"]["api_key"] = cfg.server.api_key.get_secret_value() if reveal_secrets else "***"
    return data


def to_toml(data: Mapping[str, Any]) -> str:
    """A TOML document for a config-shaped mapping (tables of scalars, lists and sub-tables);
    ``None`` values are written as comments, since TOML has no null."""
    lines: list[str] = []
    _write_table(lines, [], data)
    return "\n".join(lines).strip() + "\n"


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _toml_value(name)


def _write_table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    if prefix:
        lines.append(f"\n[{'.'.join(_key(p) for p in prefix)}]")
    subtables = []
    for name, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((name, value))
        elif value is None:
            lines.append(f"# {_key(name)} = (unset)")
        else:
            lines.append(f"{_key(name)} = {_toml_value(value)}")
    for name, value in subtables:
        _write_table(lines, [*prefix, name], value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
