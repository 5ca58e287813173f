"""Chat templates: rendering equals transformers' ``apply_chat_template`` (the model's own
template, and each plugin's built-in family template against the official one), the sandbox,
message validation and template selection."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from infer_core.errors import InferError, ModelLoadError, RequestError
from infer_core.loader.chat_template import (
    builtin_template,
    normalize_messages,
    render_chat,
    render_chat_for,
    resolve_chat_template,
)
from infer_core.loader.tokenizer import Tokenizer
from tests.core.test_tokenizer import make_tiny_tokenizer, real_dir

transformers = pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

PLUGINS = {"llama": "infer_models_llama", "qwen3": "infer_models_qwen3", "gemma3": "infer_models_gemma3"}

# Plain conversations (user and assistant alternate, as Gemma requires).
CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is 2+2? \n"}],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you? 😀 中文"},
    ],
    [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "two\n"},
    ],
]
# Qwen 3 also strips the reasoning of earlier assistant turns and keeps the last one's.
THINKING_CONVERSATIONS = [
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nb"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "<think>x</think>d"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "reasoning_content": "because"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d", "reasoning_content": "\nsince\n"},
    ],
]
GENERATION = [True, False]


def hf_render(template: str, messages, *, add_generation_prompt=True, tools=None, **kwargs) -> str:
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, tools=tools,
        add_generation_prompt=add_generation_prompt, **kwargs,
    )
    return rendered[0]


# --- the sandbox and its helpers: same behaviour as transformers -------------------------------------

ENVIRONMENT_TEMPLATES = [
    # tojson with every argument transformers exposes, no HTML escaping, no ASCII escaping
    "{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|{{ tools | tojson(sort_keys=true) }}"
    "|{{ tools | tojson(separators=(',', ':')) }}|{{ tools | tojson(ensure_ascii=true) }}",
    # trim_blocks / lstrip_blocks
    "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n",
    # namespace, dict(), loop controls, the {% generation %} tag, string methods
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}{{ dict(a=1) | tojson }}"
    "{% generation %}{{ messages[0].content.upper().strip() }}{% endgeneration %}",
    "{{ strftime_now('%Y') }}|{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ custom }}",
]
TOOLS = [{"type": "function", "function": {"name": "f", "description": "<b>&'é 中</b>",
                                           "parameters": {"z": 1, "a": [1, 2]}}}]


@pytest.mark.parametrize("template", ENVIRONMENT_TEMPLATES)
def test_environment_matches_transformers(template):
    messages = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]
    kwargs = dict(bos_token="<s>", eos_token="</s>", custom="x")
    ours = render_chat(template, messages, tools=TOOLS, add_generation_prompt=False, **kwargs)
    assert ours == hf_render(template, messages, tools=TOOLS, add_generation_prompt=False, **kwargs)


def test_tojson_does_not_escape():
    out = render_chat("{{ tools | tojson }}", [{"role": "user", "content": ""}], tools=TOOLS)
    assert "<b>&'é 中</b>" in out and json.loads(out) == TOOLS


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ messages.append(1) }}",  # the environment is immutable
        "{{ messages[0].update({'role': 'x'}) }}",
        "{% set ns = namespace(_secret=1) %}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
    ],
)
def test_sandbox_refuses_unsafe_code(template):
    with pytest.raises(ModelLoadError, match=r"^the chat template tried something the sandbox forbids \(.+\); the template is unsafe"):
        render_chat(template, [{"role": "user", "content": "hi"}])


def test_template_errors_are_request_errors():
    with pytest.raises(RequestError, match=r"^the chat template rejected the conversation: roles must alternate\.$"):
        render_chat("{{ raise_exception('roles must alternate') }}", [{"role": "user", "content": "hi"}])
    with pytest.raises(RequestError, match="could not render these messages"):
        render_chat("{{ 1 // 0 }}", [{"role": "user", "content": "hi"}])


def test_syntax_error_is_a_model_error():
    with pytest.raises(ModelLoadError, match=r"the chat template is not valid Jinja \(line 1: .*\); fix chat_template"):
        render_chat("{% for m in messages %}", [{"role": "user", "content": "hi"}])


def test_missing_special_tokens_are_undefined_not_none():
    assert render_chat("[{{ bos_token }}]", [{"role": "user", "content": "hi"}], bos_token=None) == "[]"
    assert render_chat("[{{ pad_token }}]", [{"role": "user", "content": "hi"}], pad_token=None) == "[]"
    assert render_chat("[{{ flag }}]", [{"role": "user", "content": "hi"}], flag=None) == "[None]"


def test_reserved_variables_cannot_be_overridden():
    with pytest.raises(RequestError, match=r"^documents cannot be passed as a template variable"):
        render_chat("x", [{"role": "user", "content": "hi"}], documents=[])


# --- messages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], r"messages must be a non-empty list"),
        ("hello", r"messages must be a non-empty list"),
        (["hello"], r"messages\[0\] must be an object with 'role' and 'content', got str"),
        ([{"content": "hi"}], r"messages\[0\]\.role must be a non-empty string, got None"),
        ([{"role": 3, "content": "hi"}], r"messages\[0\]\.role must be a non-empty string, got 3"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": 5}], r"messages\[0\]\.content must be a string or a list of text parts, got int"),
        ([{"role": "user", "content": None}], r"content must be a string or a list of text parts, got null"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
         r"messages\[0\]\.content\[0\] is not a text part \('image_url'\)"),
        ([{"role": "user", "content": [{"type": "text"}]}], r"is not a text part \('text'\)"),
        ([{"role": "user", "content": "hi", "extra": object()}], r"messages\[0\]\.extra is a object; only JSON values"),
    ],
)
def test_invalid_messages(messages, message):
    with pytest.raises(RequestError, match=message):
        render_chat("{{ messages }}", messages)
    assert issubclass(RequestError, InferError)


def test_text_parts_become_one_string():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert normalize_messages(parts)[0]["content"] == "a\nb"
    assert normalize_messages([{"role": "assistant", "content": None, "tool_calls": []}])[0]["content"] == ""


def test_reasoning_aliases_and_no_mutation():
    messages = [{"role": "assistant", "content": "x", "thinking": "t"}]
    out = normalize_messages(messages)
    assert out[0]["reasoning_content"] == "t" and messages == [{"role": "assistant", "content": "x", "thinking": "t"}]


# --- built-in family templates -----------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(PLUGINS))
def test_builtin_templates_ship_with_plugins(family):
    source = builtin_template(PLUGINS[family])
    assert source.startswith("{#-")
    from importlib import resources

    assert resources.files(PLUGINS[family]).joinpath("chat_template.jinja").is_file()


def test_builtin_template_of_a_package_without_one():
    with pytest.raises(ModelLoadError, match=r"package 'infer_core\.loader' ships no chat_template\.jinja"):
        builtin_template("infer_core.loader")
    with pytest.raises(ModelLoadError, match=r"package 'infer_core\.errors' ships no chat_template\.jinja"):
        builtin_template("infer_core.errors")  # a module, not a package
    with pytest.raises(ModelLoadError, match=r"package 'no_such_package_xyz' ships no chat_template\.jinja"):
        builtin_template("no_such_package_xyz")


def llama3_reference(messages, add_generation_prompt: bool) -> str:
    """The Llama 3 format, spelled out."""
    out = "<|begin_of_text|>"
    for m in messages:
        out += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
    if add_generation_prompt:
        out += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return out


@pytest.mark.parametrize(("conversation", "generation"), list(itertools.product(CONVERSATIONS, GENERATION)))
def test_llama_builtin_is_llama3_format(conversation, generation):
    out = render_chat(builtin_template(PLUGINS["llama"]), conversation, add_generation_prompt=generation,
                      bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert out == llama3_reference(conversation, generation)


def test_builtin_templates_refuse_tools():
    for family, package in PLUGINS.items():
        with pytest.raises(RequestError, match="does not format tools"):
            render_chat(builtin_template(package), CONVERSATIONS[0], tools=TOOLS, bos_token="<s>")
        assert family


def test_gemma_builtin_requires_alternation():
    with pytest.raises(RequestError, match="alternate user and assistant turns"):
        render_chat(builtin_template(PLUGINS["gemma3"]), [{"role": "user", "content": "a"}] * 2, bos_token="<bos>")


# --- template selection ------------------------------------------------------------------------------


def test_resolve_prefers_the_models_own_template(tmp_path):
    own = make_tiny_tokenizer(tmp_path / "own", tokenizer_config={"chat_template": "OWN"})
    assert resolve_chat_template(own, Tokenizer.from_dir(own), "FAMILY") == "OWN"
    assert resolve_chat_template(own, None, "FAMILY") == "OWN"
    bare = make_tiny_tokenizer(tmp_path / "bare")
    assert resolve_chat_template(bare, Tokenizer.from_dir(bare), "FAMILY") == "FAMILY"
    family = builtin_template(PLUGINS["qwen3"])
    assert resolve_chat_template(bare, None, family) == family


def test_no_template_anywhere_fails_with_where_templates_live(tmp_path):
    bare = make_tiny_tokenizer(tmp_path / "bare")
    with pytest.raises(ModelLoadError) as info:
        resolve_chat_template(bare, Tokenizer.from_dir(bare), None)
    assert str(info.value) == (
        f"'{bare}' has no chat template and its model plugin ships none: add one as "
        f"'chat_template' in tokenizer_config.json or as a chat_template.jinja file in the model "
        f"directory, or install a model plugin that ships a chat_template.jinja for this family "
        f"(/v1/completions works without one)."
    )


def test_tiny_tokenizer_template_matches_transformers(tmp_path):
    template = builtin_template(PLUGINS["qwen3"])
    path = make_tiny_tokenizer(tmp_path, files={"chat_template.jinja": template})
    tok, hf = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))
    for conversation, generation in itertools.product(CONVERSATIONS, GENERATION):
        ours = render_chat_for(tok, tok.chat_template, conversation, add_generation_prompt=generation)
        assert ours == hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation)


# --- real tokenizers: the model's own template, and our family template against it -------------------

REAL_FAMILY = {"smollm2": None, "gemma3": "gemma3", "qwen3": "qwen3"}  # SmolLM2 speaks ChatML, not Llama 3
THINKING = [{}, {"enable_thinking": False}, {"enable_thinking": True}]


@pytest.fixture(scope="module", params=sorted(REAL_FAMILY))
def real(request):
    path = real_dir(request.param)
    return request.param, Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))


def real_cases(name: str):
    conversations = CONVERSATIONS + (THINKING_CONVERSATIONS if name == "qwen3" else [])
    options = THINKING if name == "qwen3" else [{}]
    return itertools.product(conversations, GENERATION, options)


@pytest.mark.slow
def test_real_own_template_matches_transformers(real):
    name, tok, hf = real
    assert tok.chat_template is not None and tok.chat_template == hf.get_chat_template()
    for conversation, generation, options in real_cases(name):
        expected = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation, **options)
        ours = render_chat_for(tok, tok.chat_template, conversation, add_generation_prompt=generation, **options)
        assert ours == expected, (conversation, generation, options)


@pytest.mark.slow
def test_real_builtin_family_template_matches_official(real):
    name, tok, hf = real
    if REAL_FAMILY[name] is None:
        pytest.skip(f"{name} ships a template of another family")
    builtin = builtin_template(PLUGINS[REAL_FAMILY[name]])
    for conversation, generation, options in real_cases(name):
        expected = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation, **options)
        ours = render_chat_for(tok, builtin, conversation, add_generation_prompt=generation, **options)
        assert ours == expected, (conversation, generation, options)


@pytest.mark.slow
def test_real_text_parts_render_like_strings(real):
    name, tok, hf = real
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    plain = [{"role": "user", "content": "Hello there"}]
    assert render_chat_for(tok, tok.chat_template, parts) == render_chat_for(tok, tok.chat_template, plain)
    if name == "gemma3":  # its template reads text parts itself: transformers renders them the same
        assert render_chat_for(tok, tok.chat_template, parts) == hf.apply_chat_template(
            parts, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_real_prompt_encodes_like_transformers(real):
    _, tok, hf = real
    conversation = CONVERSATIONS[2]
    prompt = render_chat_for(tok, tok.chat_template, conversation)
    expected = hf.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert tok.encode(prompt, add_special_tokens=False) == list(expected)


@pytest.mark.slow
def test_real_template_is_read_from_model_dir(real):
    _, tok, _ = real
    assert resolve_chat_template(Path(tok.name), None, None) == tok.chat_template
    assert resolve_chat_template(Path(tok.name), tok, "FAMILY") == tok.chat_template
