"""``LLM``: offline generation in one process (vLLM's ``LLM`` API).

    from infer_core import LLM, SamplingParams

    llm = LLM(model="/models/Qwen3-0.6B", max_model_len=4096)
    outs = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=16))
    print(outs[0].outputs[0].text)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from infer_core.config import SECTIONS, EngineConfig, load_config
from infer_core.engine.llm_engine import LLMEngine
from infer_core.errors import ConfigError, RequestError
from infer_core.loader.chat_template import family_template, render_chat_for, resolve_chat_template
from infer_core.plugins import make_plugin_manager
from infer_core.request import RequestOutput, SamplingParams

Prompt = str | Sequence[int]


def _overrides(model: str | None, flat: Mapping[str, Any]) -> dict[str, Any]:
    """``LLM(model=..., max_model_len=..., cache={"backend": "paged"})`` as config sections:
    a flat key goes to the one section that has it."""
    nested: dict[str, Any] = {"model": {"path": model}} if model is not None else {}
    for key, value in flat.items():
        if key in SECTIONS:
            nested.setdefault(key, {}).update(value)
            continue
        owners = [name for name, section in SECTIONS.items() if key in section.model_fields]
        if len(owners) != 1:
            raise ConfigError(
                f"LLM() got an unknown keyword '{key}'; pass a config key such as "
                f"max_model_len=..., or a section such as cache={{'backend': 'paged'}}."
                if not owners else
                f"LLM() keyword '{key}' is in several sections ({', '.join(owners)}); pass it "
                f"as {owners[0]}={{'{key}': ...}}."
            )
        nested.setdefault(owners[0], {})[key] = value
    return nested


class LLM:
    def __init__(
        self,
        model: str | None = None,
        *,
        config: EngineConfig | None = None,
        plugins: Sequence[object] = (),
        **overrides: Any,
    ):
        """``plugins``: plugin modules to register in-process, besides the installed ones."""
        if config is not None and (model is not None or overrides):
            raise ConfigError("LLM() takes either config=EngineConfig(...) or model=... with overrides, not both.")
        self.config = config or load_config(overrides=_overrides(model, overrides))
        pm = make_plugin_manager(blocked=self.config.plugins.disable, plugins=plugins)
        self.engine = LLMEngine(self.config, pm)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs in the order of ``prompts``.

        ``priority``: one integer per prompt, lower first (vLLM's convention); read by the
        ``priority`` scheduler policy (infer-sched-policies), ignored by ``fcfs``."""
        if isinstance(prompts, str) or (
            isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        return self._run(list(prompts), sampling_params, add_special_tokens=True, priority=priority)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Generate a reply to one conversation, or to each of several."""
        conversations = [messages] if messages and isinstance(messages[0], Mapping) else list(messages)
        template = resolve_chat_template(
            self.config.model.path, self.tokenizer, family_template(type(self.engine.model)))
        prompts = [
            render_chat_for(self.tokenizer, template, conv, add_generation_prompt=add_generation_prompt,
                            **dict(chat_template_kwargs or {}))
            for conv in conversations
        ]
        return self._run(prompts, sampling_params, add_special_tokens=False)

    def _run(self, prompts: list[Prompt], params: Any, *, add_special_tokens: bool,
             priority: Sequence[int] | None = None) -> list[RequestOutput]:
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        elif len(params) != len(prompts):
            raise RequestError(f"got {len(params)} sampling params for {len(prompts)} prompts; give one, or one each.")
        priority = self._priorities(priority, len(prompts))
        engine = self.engine
        requests = [engine.make_request(p, sp, add_special_tokens=add_special_tokens, priority=pr)
                    for p, sp, pr in zip(prompts, params, priority, strict=True)]  # all validated before any runs
        order = {}
        for i, (request, prompt) in enumerate(zip(requests, prompts, strict=True)):
            engine.add_request(request, prompt if isinstance(prompt, str) else None)
            order[request.request_id] = i
        results: list[RequestOutput | None] = [None] * len(prompts)
        remaining = len(prompts)
        while remaining:
            for output in engine.step(finished_only=True):
                if output.request_id in order:
                    results[order.pop(output.request_id)] = output
                    remaining -= 1
        return results  # type: ignore[return-value]

    @staticmethod
    def _priorities(priority: Sequence[int] | None, n: int) -> list[int]:
        if priority is None:
            return [0] * n
        if not isinstance(priority, Sequence) or isinstance(priority, str):
            raise RequestError(f"priority must be a list of integers, one per prompt, got {priority!r}.")
        if len(priority) != n:
            raise RequestError(f"got {len(priority)} priorities for {n} prompts; give one per prompt.")
        for value in priority:
            if not isinstance(value, int) or isinstance(value, bool):
                raise RequestError(f"priority must be an integer, got {value!r}.")
        return list(priority)
