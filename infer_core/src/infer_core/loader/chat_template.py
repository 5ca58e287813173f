"""Chat templates: choosing one for a model and rendering it safely.

Templates are Jinja2 programs shipped with a model (``chat_template`` in
``tokenizer_config.json`` or a ``chat_template.jinja`` file) or by the model plugin of its
family (a ``chat_template.jinja`` beside the plugin's model file). They run in an
``ImmutableSandboxedEnvironment`` set up as transformers sets up ``apply_chat_template``
(``trim_blocks``, ``lstrip_blocks``, ``raise_exception``, a ``tojson`` that does not escape
HTML, ``strftime_now``, a ``namespace`` that refuses underscore names), so a model's template
renders here the string it renders in transformers.

Templates never come from requests: only the model directory and the installed plugins
provide them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from infer_core.errors import ModelLoadError, RequestError

if TYPE_CHECKING:
    from infer_core.loader.tokenizer import Tokenizer

BUILTIN_TEMPLATE_FILE = "chat_template.jinja"
# Names a message's reasoning may come under; templates read ``reasoning_content``.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Template variables render_chat sets itself; extra keyword arguments may not replace them.
RESERVED_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


# --- the sandbox ---------------------------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates want plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` for templates, without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore-prefixed attributes."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore-prefixed namespace attributes ({name!r})"
            )


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (assistant-mask markers used in training):
    renders its body, so that templates using it work here."""

    tags = frozenset({"generation"})

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def make_environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja2 environment chat templates render in."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """``source`` compiled in the sandbox (memoized: a server renders one template all day)."""
    if not isinstance(source, str):
        raise TypeError(f"a chat template is a string, got {type(source).__name__}")
    try:
        return make_environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ModelLoadError(
            f"the chat template is not valid Jinja (line {exc.lineno}: {exc.message}); fix "
            f"chat_template in tokenizer_config.json or chat_template.jinja in the model directory."
        ) from None


# --- messages ------------------------------------------------------------------------------------


def _plain(value: Any, where: str) -> Any:
    """A copy of ``value`` made of JSON types only (what a template may see)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise RequestError(f"{where} has a non-string key {key!r}; keys must be strings.")
            out[str.__str__(key)] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise RequestError(
        f"{where} is a {type(value).__name__}; only JSON values (strings, numbers, booleans, "
        f"null, lists and objects) can be passed to a chat template."
    )


def _text_of_parts(parts: list, where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RequestError(
                f"{where}.content[{j}] is not a text part ({kind!r}); content must be a string "
                f'or a list of {{"type": "text", "text": "..."}} parts.'
            )
        texts.append(part["text"])
    return "\n".join(texts)


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Checked, plain copies of chat ``messages`` for a template.

    Each message is an object with a string ``role`` and a ``content`` that is a string, a list
    of text parts (joined with newlines into one string, as OpenAI-compatible servers do, so
    that templates written for strings render them), or null on an assistant message (rendered
    as ``""``). Other fields (``tool_calls``, ``name``, ``reasoning_content``, ...) pass through;
    ``thinking`` / ``reasoning`` are also offered as ``reasoning_content``, as transformers does.
    """
    if not isinstance(messages, list | tuple) or not messages:
        raise RequestError("messages must be a non-empty list of {\"role\", \"content\"} objects.")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise RequestError(f"{where} must be an object with 'role' and 'content', got {type(message).__name__}.")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(f"{where}.role must be a non-empty string, got {role!r}.")
        if "content" not in message:
            raise RequestError(f"{where} has no 'content'; give it a string (\"\" if empty).")
        message = _plain(message, where)
        content = message["content"]
        if isinstance(content, list):
            message["content"] = _text_of_parts(content, where)
        elif content is None and role == "assistant":
            message["content"] = ""
        elif not isinstance(content, str):
            raise RequestError(
                f"{where}.content must be a string or a list of text parts, got "
                f"{'null' if content is None else type(content).__name__}."
            )
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


# --- rendering -----------------------------------------------------------------------------------


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """The prompt ``template`` renders for ``messages``.

    ``bos_token`` / ``eos_token`` (and any other special token passed in ``extra``, such as
    ``pad_token``) are visible to the template when not ``None``; other ``extra`` keywords
    (``enable_thinking=False``, ...) are template variables. Encode the result with
    ``add_special_tokens=False``: templates write the BOS token themselves.
    """
    compiled = compile_template(template)
    reserved = RESERVED_VARIABLES & extra.keys()
    if reserved:
        raise RequestError(f"{', '.join(sorted(reserved))} cannot be passed as a template variable.")
    chat = normalize_messages(messages)
    if tools is not None:
        if not isinstance(tools, list | tuple) or not all(isinstance(t, Mapping) for t in tools):
            raise RequestError("tools must be a list of JSON-schema objects.")
        tools = _plain(list(tools), "tools")
    variables: dict[str, Any] = {}
    for key, value in (("bos_token", bos_token), ("eos_token", eos_token)):
        if value is not None:
            variables[key] = value
    for key, value in extra.items():
        if value is None and key.endswith("_token"):
            continue  # a missing special token is undefined in templates, not the string "None"
        variables[key] = _plain(value, key)
    try:
        return compiled.render(
            **variables, messages=chat, tools=tools, documents=None,
            add_generation_prompt=bool(add_generation_prompt),
        )
    except jinja2.exceptions.SecurityError as exc:
        raise ModelLoadError(
            f"the chat template tried something the sandbox forbids ({_reason(exc)}); the "
            f"template is unsafe: replace it with a trusted one."
        ) from None
    except jinja2.exceptions.TemplateError as exc:  # raise_exception(), undefined names
        raise RequestError(f"the chat template rejected the conversation: {_reason(exc)}.") from None
    except (TypeError, ValueError, AttributeError, LookupError, ArithmeticError) as exc:
        raise RequestError(
            f"the chat template could not render these messages ({type(exc).__name__}: "
            f"{_reason(exc)}); check their roles and content."
        ) from None


def _reason(exc: Exception) -> str:
    return str(exc).strip().rstrip(".")


def render_chat_for(tokenizer: Tokenizer, template: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
    """:func:`render_chat` with every named special token of ``tokenizer`` visible to the
    template, as transformers' ``apply_chat_template`` does."""
    tokens = {k: v for k, v in tokenizer.special_tokens.items() if k not in kwargs}
    return render_chat(template, messages, **tokens, **kwargs)


# --- choosing the template -----------------------------------------------------------------------


def builtin_template(package: str) -> str:
    """The ``chat_template.jinja`` a model plugin ships in ``package`` (its family's default)."""
    try:
        return resources.files(package).joinpath(BUILTIN_TEMPLATE_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, TypeError, FileNotFoundError, NotADirectoryError) as exc:
        raise ModelLoadError(
            f"package '{package}' ships no {BUILTIN_TEMPLATE_FILE}; reinstall it, or give the model "
            f"a chat template of its own."
        ) from exc


def family_template(model_cls: type) -> str | None:
    """The built-in template of the model plugin that provides ``model_cls``: the
    ``chat_template.jinja`` beside its model module, if it ships one."""
    package = model_cls.__module__.rpartition(".")[0] or model_cls.__module__
    try:
        return resources.files(package).joinpath(BUILTIN_TEMPLATE_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, TypeError, FileNotFoundError, NotADirectoryError):
        return None


def resolve_chat_template(
    model_dir: str | Path, tokenizer: Tokenizer | None, family_default: str | None,
) -> str:
    """The chat template to use for the model in ``model_dir``: its own when it has one, else
    ``family_default`` (the model plugin's built-in template), else a :class:`ModelLoadError`."""
    if tokenizer is not None and tokenizer.chat_template is not None:
        return tokenizer.chat_template
    if tokenizer is None:
        from infer_core.loader.tokenizer import read_chat_templates

        own = read_chat_templates(model_dir).get("default")
        if own is not None:
            return own
    if family_default is not None:
        return family_default
    raise ModelLoadError(
        f"'{Path(model_dir)}' has no chat template and its model plugin ships none: add one as "
        f"'chat_template' in tokenizer_config.json or as a chat_template.jinja file in the model "
        f"directory, or install a model plugin that ships a chat_template.jinja for this family "
        f"(/v1/completions works without one)."
    )
