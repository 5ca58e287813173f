"""The standard workloads W1..W6, deterministic for a seed.

Prompts are token ids of exact lengths and every request sets ``ignore_eos``, so prompt and
output lengths are exactly what the workload says (W5 sends chat messages: their text is made
of whole-word tokens, :mod:`infer_core.bench.text`). A family expands into runnable
:class:`Workload` s: W3 into one per concurrency level, W5 into the shared-prefix run and its
0 %-hit control.

=====  ==========================================================================================
W1     one request, 256 prompt tokens, 256 output tokens (latency: ms per output token)
W2     nano-vllm's benchmark: 256 sequences, prompt and output lengths uniform in [100, 1024],
       token ids uniform in [0, 10000], temperature 0.6; the random stream is nano-vllm's, so
       seed 0 gives its exact prompts (throughput: output tokens/s)
W3     1024 prompt tokens, 128 output, at concurrency 1, 8, 32, 128 (max(8, 2c) requests each)
W4     mixed: 64 requests, prompts uniform in [32, 1024], outputs uniform in [64, 256]
W5     shared prefix: 64 chat requests with one 1024-token system prompt and a 32-token user
       message each, 64 output tokens; control: the same shapes, every system prompt different
W6     long-prompt interference: 32 requests (256 in, 256 out) decoding while 4 prompts of
       4096 tokens (16 out) arrive, at 0.5 s intervals over HTTP (with the others offline)
=====  ==========================================================================================
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from infer_core.errors import ConfigError

FAMILIES = ("W1", "W2", "W3", "W4", "W5", "W6")
NANO_VLLM_MAX_TOKEN_ID = 10_000  # nano-vllm draws prompt ids with randint(0, 10000)
W3_CONCURRENCY = (1, 8, 32, 128)


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload: token ids (completions) or chat ``messages``."""

    max_tokens: int
    prompt_len: int  # tokens of the prompt (chat: of the message contents, without the template)
    prompt_token_ids: list[int] | None = None
    messages: list[dict[str, str]] | None = None
    temperature: float = 0.0
    arrival_offset: float | None = None  # seconds after the run starts (W6's late arrivals)
    tag: str = ""

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class Workload:
    """A runnable set of requests."""

    name: str  # W1, W3-c8, W5-shared, ...
    family: str
    description: str
    requests: list[BenchRequest]
    max_concurrency: int | None = None  # W3 sets its own
    http_only: bool = False  # W3: concurrency needs a client
    headline: str = "output_throughput"  # the figure the summary leads with

    def to_dict(self) -> dict[str, Any]:
        prompts = [r.prompt_len for r in self.requests]
        outputs = [r.max_tokens for r in self.requests]
        return {
            "name": self.name, "family": self.family, "description": self.description,
            "num_requests": len(self.requests), "max_concurrency": self.max_concurrency,
            "prompt_tokens": sum(prompts), "output_tokens": sum(outputs),
            "prompt_len_range": [min(prompts), max(prompts)] if prompts else None,
            "output_len_range": [min(outputs), max(outputs)] if outputs else None,
        }


@dataclass(frozen=True)
class WorkloadOptions:
    """What the generators need beyond the seed.

    ``vocab_size`` bounds prompt ids (ids are drawn below ``min(vocab_size, 10001)``);
    ``text_maker`` (a :class:`~infer_core.bench.text.TextMaker`) is needed by W5 only;
    ``scale`` multiplies every length (quick runs, small models; offsets are kept);
    ``num_prompts`` keeps at most that many requests of each workload (W6 keeps its long ones).
    """

    seed: int = 0
    vocab_size: int = NANO_VLLM_MAX_TOKEN_ID + 1
    text_maker: Any = None
    scale: float = 1.0
    num_prompts: int | None = None
    concurrency: Sequence[int] = W3_CONCURRENCY

    def length(self, n: int) -> int:
        return max(1, round(n * self.scale))

    @property
    def max_token_id(self) -> int:
        return min(self.vocab_size - 1, NANO_VLLM_MAX_TOKEN_ID)


def _rng(family: str, seed: int) -> random.Random:
    return random.Random(f"{family}:{seed}")  # str seeds hash with sha512: stable everywhere


def _ids(rng: random.Random, n: int, opts: WorkloadOptions) -> list[int]:
    return [rng.randint(0, opts.max_token_id) for _ in range(n)]


def _cap(requests: list[BenchRequest], opts: WorkloadOptions) -> list[BenchRequest]:
    return requests if opts.num_prompts is None else requests[: opts.num_prompts]


def w1(opts: WorkloadOptions) -> list[Workload]:
    rng = _rng("W1", opts.seed)
    p, o = opts.length(256), opts.length(256)
    request = BenchRequest(max_tokens=o, prompt_len=p, prompt_token_ids=_ids(rng, p, opts))
    return [Workload("W1", "W1", f"1 request, {p} prompt tokens, {o} output tokens", [request],
                     max_concurrency=1, headline="ms_per_output_token")]


def w2(opts: WorkloadOptions) -> list[Workload]:
    # nano-vllm's bench.py, call for call: prompts first (length, then ids), then max_tokens.
    rng = random.Random(opts.seed)
    lo, hi = opts.length(100), opts.length(1024)
    prompts = [[rng.randint(0, opts.max_token_id) for _ in range(rng.randint(lo, hi))]
               for _ in range(256)]
    outputs = [rng.randint(lo, hi) for _ in range(256)]
    requests = [BenchRequest(max_tokens=o, prompt_len=len(p), prompt_token_ids=p, temperature=0.6)
                for p, o in zip(prompts, outputs, strict=True)]
    return [Workload("W2", "W2", f"nano-vllm: 256 sequences, prompts and outputs uniform in "
                                 f"[{lo}, {hi}], temperature 0.6", _cap(requests, opts))]


def w3(opts: WorkloadOptions) -> list[Workload]:
    p, o = opts.length(1024), opts.length(128)
    out = []
    for c in opts.concurrency:
        rng = _rng(f"W3-c{c}", opts.seed)
        n = max(8, 2 * c)
        requests = [BenchRequest(max_tokens=o, prompt_len=p, prompt_token_ids=_ids(rng, p, opts))
                    for _ in range(n)]
        out.append(Workload(f"W3-c{c}", "W3", f"{n} requests, {p} in / {o} out, concurrency {c}",
                            _cap(requests, opts), max_concurrency=c, http_only=True))
    return out


def w4(opts: WorkloadOptions) -> list[Workload]:
    rng = _rng("W4", opts.seed)
    requests = []
    for _ in range(64):
        p = rng.randint(opts.length(32), opts.length(1024))
        o = rng.randint(opts.length(64), opts.length(256))
        requests.append(BenchRequest(max_tokens=o, prompt_len=p, prompt_token_ids=_ids(rng, p, opts)))
    return [Workload("W4", "W4", "mixed: 64 requests, prompts 32-1024, outputs 64-256 (scaled)",
                     _cap(requests, opts))]


def w5(opts: WorkloadOptions) -> list[Workload]:
    if opts.text_maker is None:
        raise ConfigError(
            "W5 sends chat messages, whose text must have exact token counts; give the served "
            "model's tokenizer (--tokenizer DIR, a directory with tokenizer.json)."
        )
    sys_len, user_len, o = opts.length(1024), opts.length(32), opts.length(64)
    n = 64 if opts.num_prompts is None else min(64, opts.num_prompts)
    runs = []
    for variant in ("shared", "control"):
        rng = _rng(f"W5-{variant}", opts.seed)
        shared = opts.text_maker.text(sys_len, rng)
        requests = []
        for _ in range(n):
            system = shared if variant == "shared" else opts.text_maker.text(sys_len, rng)
            user = opts.text_maker.text(user_len, rng)
            requests.append(BenchRequest(
                max_tokens=o, prompt_len=sys_len + user_len, tag=variant,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            ))
        what = "one shared" if variant == "shared" else "distinct (0 % prefix hits)"
        runs.append(Workload(f"W5-{variant}", "W5", f"{n} chat requests, {what} {sys_len}-token "
                             f"system prompt, {user_len}-token user message, {o} out", requests,
                             headline="ttft"))
    return runs


def w6(opts: WorkloadOptions) -> list[Workload]:
    rng = _rng("W6", opts.seed)
    sp, so, lp, lo = opts.length(256), opts.length(256), opts.length(4096), opts.length(16)
    shorts = [BenchRequest(max_tokens=so, prompt_len=sp, prompt_token_ids=_ids(rng, sp, opts),
                           arrival_offset=0.0, tag="short") for _ in range(32)]
    longs = [BenchRequest(max_tokens=lo, prompt_len=lp, prompt_token_ids=_ids(rng, lp, opts),
                          arrival_offset=0.5 * (i + 1), tag="long") for i in range(4)]
    return [Workload("W6", "W6", f"{len(_cap(shorts, opts))} requests ({sp} in, {so} out) decoding "
                     f"while 4 prompts of {lp} tokens arrive", _cap(shorts, opts) + longs,
                     headline="itl_p99")]


GENERATORS: dict[str, Callable[[WorkloadOptions], list[Workload]]] = {
    "W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6,
}


def parse_workloads(spec: str | Sequence[str]) -> list[str]:
    """``"W1,W2"`` / ``["w1", "W3-c8"]`` / ``"all"`` as workload names (families or variants)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [item.strip().upper() for item in items if item.strip()]
    if names == ["ALL"]:
        return list(FAMILIES)
    for name in names:
        family = name.split("-")[0]
        if family not in GENERATORS:
            raise ConfigError(f"unknown workload '{name}'; choose from {', '.join(FAMILIES)} "
                              f"(or a variant such as W3-c8, W5-shared), or 'all'.")
    return names


def make_workloads(names: Sequence[str], opts: WorkloadOptions) -> list[Workload]:
    """The runnable workloads for ``names`` (families expand into their variants)."""
    out: list[Workload] = []
    for name in parse_workloads(names):
        family = name.split("-")[0]
        variants = GENERATORS[family](opts)
        if name != family:
            variants = [w for w in variants if w.name.upper() == name]
            if not variants:
                known = ", ".join(w.name for w in GENERATORS[family](opts))
                raise ConfigError(f"workload {family} has no variant '{name}'; it has {known}.")
        out.extend(variants)
    return out

