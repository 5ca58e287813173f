"""The conformance suites: one class per extension point, subclassed by every plugin's tests.

Each suite looks the component up by ``name`` through a real plugin manager (so it also proves
the plugin is installed and registered through its entry point), checks its spec and options
model, and then the behaviour its interface promises. They grow as the interfaces land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from infer_core.attention.backend import AttentionBackend, AttentionLayer
from infer_core.attention.metadata import build_attention_metadata
from infer_core.config import load_config
from infer_core.engine.kv_cache import CacheBackend
from infer_core.engine.policy import SchedulerPolicy
from infer_core.errors import ConfigError
from infer_core.loader.hf_config import read_hf_config
from infer_core.models.base import CausalLM
from infer_core.plugins import InferPluginManager, make_plugin_manager
from infer_core.registry import Spec
from infer_core.selection import select_plugins
from infer_core.testing.caches import SmallBlockCache
from infer_core.testing.requests import SyntheticRequest, synthetic_requests
from infer_core.testing.runner import PromptRunner, load_for_test
from infer_core.testing.scheduling import Workload, simulate
from infer_core.testing.scheduling import workloads as scheduler_workloads
from infer_core.version import PLUGIN_API_VERSION

# Each suite's property tests run once per subclass (one per plugin under test); hypothesis
# sees the same test function called from several classes, which is the intent here.
suite_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.differing_executors]
)


class PluginConformance:
    """What every registered component must satisfy, whatever its kind."""

    kind: ClassVar[str]
    """The registry kind (``"scheduler policy"``, ``"cache backend"``, ...)."""
    section: ClassVar[str | None] = None
    """The config section whose ``options`` table configures this kind."""
    interface: ClassVar[type | None] = None
    """The base class the target must subclass (``None`` until that interface lands)."""
    name: ClassVar[str]
    """The registered name under test: set it in your subclass."""
    options: ClassVar[dict[str, Any]] = {}
    """Options (as in the config's ``options`` table) to build the component with."""

    @pytest.fixture(scope="class")
    @classmethod
    def plugin_manager(cls) -> InferPluginManager:
        return make_plugin_manager()

    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls, plugin_manager: InferPluginManager) -> Spec:
        return plugin_manager.registries[cls.kind].get(cls.name, where="conformance suite")

    def test_owner_declares_current_plugin_api(self, spec: Spec) -> None:
        assert spec.owner.api_version == PLUGIN_API_VERSION
        assert spec.owner.builtin or spec.owner.distribution, (
            f"{self.kind} '{self.name}' must come from an installed distribution's entry point"
        )

    def test_description_is_one_line(self, spec: Spec) -> None:
        assert spec.description.strip(), f"{self.kind} '{self.name}' has no description"
        assert "\n" not in spec.description

    def test_target_loads_and_implements_interface(self, spec: Spec) -> None:
        target = spec.load()
        assert callable(target)
        if self.interface is not None:
            assert isinstance(target, type) and issubclass(target, self.interface), (
                f"{spec.target} must subclass {self.interface.__module__}."
                f"{self.interface.__qualname__}"
            )

    def test_options_model_has_defaults_and_forbids_unknown_keys(self, spec: Spec) -> None:
        model = spec.options_model()
        if model is None:
            return
        assert issubclass(model, BaseModel)
        model()  # every option has a default, so an empty [section.options] works
        with pytest.raises(ConfigError, match="__no_such_option__"):
            spec.validate_options({"__no_such_option__": 1}, self.section or "plugin")

    def test_configured_options_validate(self, spec: Spec) -> None:
        spec.validate_options(self.options, self.section or "plugin")


class SchedulerPolicyConformance(PluginConformance):
    """Scheduler policies: orderings are permutations, victims and hook answers are members of
    what they were given, inputs untouched; and under the real scheduler, random workloads
    drain with every budget kept."""

    kind = "scheduler policy"
    section = "scheduler"
    interface = SchedulerPolicy

    def make_policy(self, spec: Spec) -> SchedulerPolicy:
        return spec.load()(spec.validate_options(self.options, "scheduler"))

    def test_selectable_by_config(self, plugin_manager: InferPluginManager) -> None:
        config = load_config(
            overrides={"scheduler": {"policy": self.name, "options": dict(self.options)}},
            environ={},
        )
        selection = select_plugins(config, plugin_manager)
        assert selection.scheduler.spec.name == self.name

    @suite_settings
    @given(requests=synthetic_requests())
    def test_order_waiting_is_a_permutation(self, spec: Spec, requests: list) -> None:
        policy = self.make_policy(spec)
        before = list(requests)
        ordered = policy.order_waiting(requests)
        assert requests == before, "order_waiting must not mutate its input"
        assert sorted(map(id, ordered)) == sorted(map(id, requests))

    @suite_settings
    @given(requests=synthetic_requests(), steps=st.integers(1, 6))
    def test_order_running_is_a_permutation_every_step(
        self, spec: Spec, requests: list, steps: int
    ) -> None:
        policy = self.make_policy(spec)
        for _ in range(steps):
            before = list(requests)
            ordered = policy.order_running(requests)
            assert requests == before, "order_running must not mutate its input"
            assert sorted(map(id, ordered)) == sorted(map(id, requests))

    @suite_settings
    @given(requests=synthetic_requests(min_size=1))
    def test_pick_victim_is_running(self, spec: Spec, requests: list) -> None:
        policy = self.make_policy(spec)
        victim = policy.pick_victim(requests)
        assert any(victim is r for r in requests)

    def test_step_knobs_are_well_formed(self, spec: Spec) -> None:
        policy = self.make_policy(spec)
        cap = policy.max_prefill_tokens
        assert cap is None or (isinstance(cap, int) and cap >= 1), (
            f"max_prefill_tokens must be None or >= 1 (a step must be able to make progress), got {cap!r}")

    @suite_settings
    @given(requests=synthetic_requests(min_size=1), data=st.data())
    def test_hooks_answer_about_their_inputs(self, spec: Spec, requests: list, data: st.DataObject) -> None:
        policy = self.make_policy(spec)
        split = data.draw(st.integers(0, len(requests) - 1))
        waiting, running = requests[split], requests[split + 1:]
        before = list(running)
        assert isinstance(policy.can_admit(waiting, running), bool)
        assert all(isinstance(policy.admit_before(r), bool) for r in running)
        owed = policy.must_serve(policy.order_running(running))
        assert all(any(o is r for r in running) for o in owed), "must_serve returned a non-running request"
        victim = policy.preempt_for(waiting, running)
        assert victim is None or any(victim is r for r in running), "preempt_for returned a non-running request"
        assert running == before, "hooks must not mutate their inputs"
        policy.on_step({r.request_id: 1 for r in running})

    @settings(suite_settings, max_examples=40)
    @given(workload=scheduler_workloads())
    def test_drains_random_workloads_in_the_scheduler(self, spec: Spec, workload: Workload) -> None:
        """Under the real scheduler (budgets, chunked prefill, preemption, aborts), every request
        finishes, budgets and the policy's own prefill cap and owed tokens hold at every step,
        and every block comes back: no livelock between the policy's order and its victims."""
        trace = simulate(workload, self.make_policy(spec))
        assert trace.drained, f"{self.name} did not drain the workload in {len(trace.steps)} steps"
        assert trace.cache.num_free_blocks == trace.cache.num_blocks


_cache_ops = st.lists(
    st.one_of(
        st.tuples(st.just("grow"), st.integers(0, 11), st.integers(1, 300)),
        st.tuples(st.just("free"), st.integers(0, 11), st.just(0)),
    ),
    max_size=80,
)

# admit (request index, token family, prompt length, salted) / grow (index, tokens) / free (index)
_prefix_ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 7), st.integers(0, 2),
                  st.one_of(st.integers(1, 120), st.sampled_from([16, 32, 64])), st.booleans()),
        st.tuples(st.just("grow"), st.integers(0, 7), st.just(0), st.integers(1, 40), st.just(False)),
        st.tuples(st.just("free"), st.integers(0, 7), st.just(0), st.just(0), st.just(False)),
    ),
    max_size=60,
)


def family_tokens(family: int, start: int, end: int) -> list[int]:
    """Token ids of positions ``start .. end-1`` of a sequence of ``family``: sequences of
    one family are equal, so their blocks can be shared."""
    return [(family * 1009 + pos * 31) % 4093 for pos in range(start, end)]


class CacheBackendConformance(PluginConformance):
    """Cache backends: block accounting under random grow / free sequences, and prefix reuse
    driven the way the scheduler drives it.

    Invariants after every operation: no block is held by two requests unless it was handed
    out as a cached prefix, held + free == total, a refused allocation changes nothing, a
    request's table covers its tokens, slots are in range, no request ever writes into a
    block another request holds, and a reused block holds exactly the KV of the same salt and
    token prefix; after freeing everything the pool is whole and the leak audit is empty.
    """

    kind = "cache backend"
    section = "cache"
    interface = CacheBackend
    block_size: ClassVar[int] = 16
    max_model_len: ClassVar[int] = 512
    num_blocks: ClassVar[int] = 24

    def make_cache(self, spec: Spec, num_blocks: int | None = None) -> CacheBackend:
        cls = spec.load()
        block_size = cls.block_size_for(self.block_size, self.max_model_len)
        return cls(num_blocks or self.num_blocks, block_size, spec.validate_options(self.options, "cache"))

    def check_invariants(self, cache: CacheBackend, requests: dict[str, SyntheticRequest]) -> None:
        held: list[int] = []
        for rid, req in requests.items():
            table = cache.get_block_ids(rid)
            assert len(table) * cache.block_size >= req.num_computed_tokens
            held.extend(table)
        assert len(held) == len(set(held)), "a block is held by two requests"
        assert all(0 <= b < cache.num_blocks for b in held)
        assert len(held) + cache.num_free_blocks == cache.num_blocks
        assert 0.0 <= cache.usage <= 1.0
        assert cache.num_free_tokens == cache.num_free_blocks * cache.block_size

    @settings(suite_settings, max_examples=80)
    @given(ops=_cache_ops)
    def test_block_accounting(self, spec: Spec, ops: list) -> None:
        cache = self.make_cache(spec)
        requests: dict[str, SyntheticRequest] = {}
        for op, idx, n in ops:
            rid = f"req-{idx}"
            if op == "free":
                cache.free(rid)
                requests.pop(rid, None)
            else:
                req = requests.get(rid) or SyntheticRequest(
                    rid, num_prompt_tokens=n, prompt_token_ids=family_tokens(idx, 0, n))
                n = min(n, self.max_model_len - req.num_computed_tokens)
                if n <= 0:
                    continue
                if rid in requests:  # grow: the tokens to compute are output tokens
                    req.output_token_ids.extend(family_tokens(idx, req.num_tokens, req.num_tokens + n))
                    req.num_output_tokens += n
                before = (cache.num_free_blocks, cache.get_block_ids(rid))
                new = cache.allocate_slots(req, n)
                if new is None:
                    assert (cache.num_free_blocks, cache.get_block_ids(rid)) == before
                    if rid in requests:
                        del req.output_token_ids[-n:]
                        req.num_output_tokens -= n
                    continue
                assert cache.get_block_ids(rid)[len(before[1]):] == new
                requests[rid] = req
                slots = cache.slot_mapping(rid, req.num_computed_tokens, req.num_computed_tokens + n)
                assert len(set(slots)) == n
                assert all(0 <= s < cache.num_blocks * cache.block_size for s in slots)
                req.num_computed_tokens += n
            self.check_invariants(cache, requests)
        assert set(cache.audit([])) == {r for r in requests if cache.get_block_ids(r)}
        assert cache.audit(requests) == {}
        for rid in list(requests):
            cache.free(rid)
        assert cache.num_free_blocks == cache.num_blocks
        assert cache.audit([]) == {}

    @settings(suite_settings, max_examples=80)
    @given(ops=_prefix_ops)
    def test_prefix_reuse_is_sound(self, spec: Spec, ops: list) -> None:
        """As the scheduler does: ``get_computed_blocks`` at admission, then
        ``allocate_slots`` with those blocks; KV contents are modelled slot by slot."""
        cache = self.make_cache(spec)
        size = cache.block_size
        live: dict[str, SyntheticRequest] = {}
        families: dict[str, int] = {}
        filled: dict[int, tuple] = {}  # full block id -> (salt, every token id up to its end)

        def holders(block: int) -> list[str]:
            return [rid for rid in live if block in cache.get_block_ids(rid)]

        def compute(req: SyntheticRequest, start: int, end: int) -> None:
            tokens = req.all_token_ids
            for pos, slot in zip(range(start, end), cache.slot_mapping(req.request_id, start, end), strict=True):
                block = slot // size
                assert holders(block) == [req.request_id], (
                    f"{req.request_id} writes into block {block}, held by {holders(block)}")
                filled.pop(block, None)
                if slot % size == size - 1:
                    filled[block] = (req.cache_salt, tuple(tokens[: pos + 1]))
            req.num_computed_tokens = end

        for op, idx, family, n, salted in ops:
            rid = f"req-{idx}"
            req = live.get(rid)
            if op == "free":
                cache.free(rid)
                live.pop(rid, None)
            elif op == "admit" and req is None:
                req = SyntheticRequest(rid, num_prompt_tokens=n, prompt_token_ids=family_tokens(family, 0, n),
                                       cache_salt=f"tenant-{idx % 2}" if salted else None)
                blocks, num_hit = cache.get_computed_blocks(req)
                assert num_hit == len(blocks) * size and num_hit <= n - 1, (blocks, num_hit, n)
                for i, block in enumerate(blocks):
                    assert filled.get(block) == (req.cache_salt, tuple(req.all_token_ids[: (i + 1) * size])), (
                        f"block {block} reused for the wrong prefix or tenant")
                before = (cache.num_free_blocks, cache.get_block_ids(rid))
                if cache.allocate_slots(req, n - num_hit, num_hit, blocks) is None:
                    assert (cache.num_free_blocks, cache.get_block_ids(rid)) == before
                    # it leaves without running (as an aborted waiting request does): a later
                    # request may reuse its id with other tokens
                    cache.free(rid)
                    continue
                assert cache.get_block_ids(rid)[: len(blocks)] == blocks
                live[rid], families[rid] = req, family
                req.num_computed_tokens = num_hit
                compute(req, num_hit, n)
            elif op == "grow" and req is not None:
                n = min(n, self.max_model_len - req.num_tokens)
                if n <= 0:
                    continue
                start = req.num_tokens
                req.output_token_ids.extend(family_tokens(families[rid], start, start + n))
                req.num_output_tokens += n
                if cache.allocate_slots(req, n) is None:
                    del req.output_token_ids[-n:]
                    req.num_output_tokens -= n
                    continue
                compute(req, start, start + n)
            held = {b for rid in live for b in cache.get_block_ids(rid)}
            assert len(held) + cache.num_free_blocks == cache.num_blocks
            stats = cache.prefix_cache_stats
            assert 0 <= stats.hits <= stats.queries
        for rid in list(live):
            cache.free(rid)
        assert cache.num_free_blocks == cache.num_blocks
        assert cache.audit([]) == {}
        assert cache.reset_prefix_cache() is True

    def test_refuses_when_full_and_recovers(self, spec: Spec) -> None:
        cache = self.make_cache(spec, num_blocks=2)
        per_request = cache.block_size
        a, b, c = (SyntheticRequest(f"r{i}", num_prompt_tokens=per_request,
                                    prompt_token_ids=family_tokens(i, 0, per_request)) for i in range(3))
        assert cache.allocate_slots(a, per_request) is not None
        assert cache.allocate_slots(b, per_request) is not None
        assert cache.allocate_slots(c, per_request) is None
        cache.free("r0")
        assert cache.allocate_slots(c, per_request) is not None
        cache.free("r1")
        cache.free("r2")
        assert cache.num_free_blocks == 2

    def test_audit_reclaims_leaked_blocks(self, spec: Spec) -> None:
        cache = self.make_cache(spec, num_blocks=4)
        for i in range(3):
            req = SyntheticRequest(f"r{i}", num_prompt_tokens=3, prompt_token_ids=family_tokens(i, 0, 3))
            assert cache.allocate_slots(req, 3) is not None
        leaks = cache.audit(["r1"])
        assert set(leaks) == {"r0", "r2"}
        assert cache.audit(["r1"], reclaim=True) == leaks
        assert cache.audit(["r1"]) == {}
        assert cache.num_free_blocks == cache.num_blocks - len(cache.get_block_ids("r1"))
        cache.free("r1")
        cache.free("r1")  # freeing a request that holds nothing is allowed (finish after preempt)
        assert cache.num_free_blocks == cache.num_blocks


@st.composite
def attention_cases(draw, head_dims: tuple[int, ...] = (8, 16, 64)) -> dict[str, Any]:
    """A random flat batch: requests with some tokens already cached and a chunk of new
    queries (1 = a decode), GQA ratio, block size, optional window and softcap."""
    num_kv_heads = draw(st.sampled_from([1, 2]))
    return {
        "num_kv_heads": num_kv_heads,
        "num_heads": num_kv_heads * draw(st.sampled_from([1, 2, 4])),
        "head_dim": draw(st.sampled_from(head_dims)),
        "block_size": draw(st.sampled_from([1, 4, 16, 128])),
        "context_lens": draw(st.lists(st.integers(0, 40), min_size=1, max_size=4)),
        "query_lens": draw(st.lists(st.integers(1, 20), min_size=4, max_size=4)),
        "sliding_window": draw(st.one_of(st.none(), st.integers(1, 32))),
        "logit_softcap": draw(st.one_of(st.none(), st.just(30.0))),
        "seed": draw(st.integers(0, 2**16)),
    }


def dense_attention(layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last ``len(q)`` positions of one sequence over all of ``k``/``v``
    (``[S, Hkv, D]``), written from scratch as an oracle independent of any cache layout."""
    group = layer.num_heads // layer.num_kv_heads
    k = k.repeat_interleave(group, dim=1).float()
    v = v.repeat_interleave(group, dim=1).float()
    seq, new = k.shape[0], q.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * layer.scale
    if layer.logit_softcap is not None:
        scores = layer.logit_softcap * torch.tanh(scores / layer.logit_softcap)
    q_pos = torch.arange(seq - new, seq)[:, None]
    k_pos = torch.arange(seq)[None, :]
    mask = k_pos <= q_pos
    if layer.sliding_window is not None:
        mask &= q_pos - k_pos < layer.sliding_window
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


class AttentionBackendConformance(PluginConformance):
    """Attention backends: over random flat batches (prefill chunks over cached context mixed
    with decodes, GQA, any block size, windows, softcap), the output equals dense causal
    attention and the cache holds every written K/V at its slot. Backends that declare
    ``supports_fp8_kv`` are checked with an FP8 (e4m3) cache and per-layer scales too; backends
    that declare ``supports_fused_kv_write``: ``attend`` over the cache ``forward`` just filled
    gives ``forward``'s output, bit for bit."""

    kind = "attention backend"
    section = "attention"
    interface = AttentionBackend
    device: ClassVar[str] = "cpu"
    dtype: ClassVar[torch.dtype] = torch.float32
    head_dims: ClassVar[tuple[int, ...]] = (8, 16, 64)
    atol: ClassVar[float] = 2e-5
    max_examples: ClassVar[int] = 60
    """Hypothesis examples per property (lower it for slow backends, e.g. under an interpreter)."""
    fp8_kv_scales: ClassVar[tuple[float, float]] = (0.5, 2.0)

    def make_backend(self, spec: Spec) -> AttentionBackend:
        return spec.load()(spec.validate_options(self.options, "attention"))

    def _settings(self) -> settings:
        return settings(suite_settings, max_examples=self.max_examples)

    def test_matches_dense_attention(self, spec: Spec) -> None:
        @self._settings()
        @given(case=attention_cases(self.head_dims))
        def check(case: dict[str, Any]) -> None:
            self.check_case(spec, case, fp8=False)

        check()

    def test_fp8_cache_matches_dense_attention(self, spec: Spec) -> None:
        if not getattr(spec.load(), "supports_fp8_kv", False):
            pytest.skip(f"attention backend '{self.name}' does not declare supports_fp8_kv")

        @self._settings()
        @given(case=attention_cases(self.head_dims))
        def check(case: dict[str, Any]) -> None:
            self.check_case(spec, case, fp8=True)

        check()

    def check_case(self, spec: Spec, case: dict[str, Any], fp8: bool) -> None:
        backend = self.make_backend(spec)
        layer = AttentionLayer(
            case["num_heads"], case["num_kv_heads"], case["head_dim"], case["head_dim"] ** -0.5,
            case["sliding_window"], case["logit_softcap"],
        )
        ctx_lens = case["context_lens"]
        q_lens = case["query_lens"][: len(ctx_lens)]
        bs = case["block_size"]
        gen = torch.Generator().manual_seed(case["seed"])
        seq_lens = [c + q for c, q in zip(ctx_lens, q_lens, strict=True)]
        blocks_per = [-(-n // bs) for n in seq_lens]
        order = torch.randperm(sum(blocks_per) + 3, generator=gen).tolist()  # shuffled blocks
        tables = []
        for n in blocks_per:
            tables.append(order[:n])
            order = order[n:]
        cache_dtype = torch.float8_e4m3fn if fp8 else self.dtype
        kv_cache = torch.zeros(backend.kv_cache_shape(
            sum(blocks_per) + 3, bs, layer.num_kv_heads, layer.head_dim), dtype=cache_dtype, device=self.device)
        scales = torch.tensor(self.fp8_kv_scales, dtype=torch.float32, device=self.device) if fp8 else None
        extra = {"kv_scales": scales} if fp8 else {}

        def rand(*shape: int, scale: float | None = None) -> torch.Tensor:
            x = torch.randn(*shape, generator=gen)
            if scale is not None:  # a value the FP8 cache holds exactly: x = e4m3 * scale
                x = (x / scale).to(torch.float8_e4m3fn).float() * scale
            return x.to(self.device, self.dtype)

        k_scale, v_scale = self.fp8_kv_scales if fp8 else (None, None)
        keys = [rand(n, layer.num_kv_heads, layer.head_dim, scale=k_scale) for n in seq_lens]
        values = [rand(n, layer.num_kv_heads, layer.head_dim, scale=v_scale) for n in seq_lens]
        queries = [rand(q, layer.num_heads, layer.head_dim) for q in q_lens]
        # Step 1: the cached context, as a prefill of the requests that have one.
        with_ctx = [i for i, c in enumerate(ctx_lens) if c]
        if with_ctx:
            md = build_attention_metadata([ctx_lens[i] for i in with_ctx], [ctx_lens[i] for i in with_ctx],
                                          [tables[i] for i in with_ctx], bs, self.device)
            ctx_k = torch.cat([keys[i][: ctx_lens[i]] for i in with_ctx])
            ctx_v = torch.cat([values[i][: ctx_lens[i]] for i in with_ctx])
            backend.forward(layer, rand(ctx_k.shape[0], layer.num_heads, layer.head_dim), ctx_k, ctx_v,
                            kv_cache, md, **extra)
        # Step 2, under test: every request's new tokens in one flat batch.
        md = build_attention_metadata(q_lens, seq_lens, tables, bs, self.device)
        new_k = torch.cat([k[c:] for k, c in zip(keys, ctx_lens, strict=True)])
        new_v = torch.cat([v[c:] for v, c in zip(values, ctx_lens, strict=True)])
        out = backend.forward(layer, torch.cat(queries), new_k, new_v, kv_cache, md, **extra)
        assert out.shape == (sum(q_lens), layer.num_heads, layer.head_dim)
        assert out.dtype == self.dtype
        if backend.supports_fused_kv_write:
            again = backend.attend(layer, torch.cat(queries), kv_cache, md, **extra)
            assert torch.equal(again, out), "attend over the written cache differs from forward"
        starts = md.query_start_loc_cpu
        for i in range(len(seq_lens)):
            expected = dense_attention(layer, queries[i].cpu(), keys[i].cpu(), values[i].cpu())
            torch.testing.assert_close(out[starts[i]: starts[i + 1]].float().cpu(), expected,
                                       atol=self.atol, rtol=0)
            cached = kv_cache[:, tables[i]].reshape(2, -1, layer.num_kv_heads, layer.head_dim).float().cpu()
            if fp8:
                cached = cached * torch.tensor(self.fp8_kv_scales).view(2, 1, 1, 1)
            torch.testing.assert_close(cached[0, : seq_lens[i]], keys[i].float().cpu(), atol=0, rtol=0)
            torch.testing.assert_close(cached[1, : seq_lens[i]], values[i].float().cpu(), atol=0, rtol=0)


class ArchitectureConformance(PluginConformance):
    """Model architectures: the engine's equivalences on a tiny checkpoint.

    Provide the checkpoint with a class-scoped ``checkpoint_dir`` fixture (e.g. a transformers
    model with a tiny config saved with ``save_pretrained``). Parity with transformers is the
    architecture's own test; this suite checks what the engine relies on: logits of the same
    prompt are the same alone or in a batch, whole or prefilled in chunks, and
    ``compute_logits`` at chosen rows equals those rows of the full logits.
    """

    kind = "architecture"
    interface = CausalLM
    max_model_len: ClassVar[int] = 128
    atol: ClassVar[float] = 1e-5

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        pytest.fail(f"{cls.__name__} must define a class-scoped checkpoint_dir fixture returning "
                    f"a tiny Hugging Face checkpoint of {cls.name}.")

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, checkpoint_dir: Path) -> CausalLM:
        return load_for_test(checkpoint_dir, max_model_len=cls.max_model_len)

    @pytest.fixture(scope="class")
    @classmethod
    def hf_config(cls, checkpoint_dir: Path) -> dict[str, Any]:
        return read_hf_config(checkpoint_dir)

    @pytest.fixture(scope="class")
    @classmethod
    def prompts(cls, hf_config: dict[str, Any]) -> list[list[int]]:
        gen = torch.Generator().manual_seed(0)
        return [torch.randint(0, hf_config["vocab_size"], (n,), generator=gen).tolist()
                for n in (37, 5, 64, 1)]

    def _runner(self, model: CausalLM, block_size: int = 16) -> PromptRunner:
        num_blocks = 4 * -(-self.max_model_len // block_size)  # room for the 4 test prompts
        return PromptRunner(model, max_model_len=self.max_model_len, num_blocks=num_blocks,
                            block_size=block_size, cache_cls=SmallBlockCache)

    def test_batched_equals_alone(self, model: CausalLM, prompts: list[list[int]]) -> None:
        batched = self._runner(model).prompt_logits(prompts)
        for prompt, logits in zip(prompts, batched, strict=True):
            alone = self._runner(model).prompt_logits([prompt])[0]
            torch.testing.assert_close(logits, alone, atol=self.atol, rtol=0)

    def test_chunked_equals_unchunked(self, model: CausalLM, prompts: list[list[int]]) -> None:
        whole = self._runner(model).prompt_logits(prompts)
        for block_size, chunk in ((16, 7), (1, 16), (self.max_model_len, 5)):
            chunked = self._runner(model, block_size).prompt_logits(prompts, chunk_size=chunk)
            for a, b in zip(whole, chunked, strict=True):
                torch.testing.assert_close(a, b, atol=self.atol, rtol=0)

    def test_forward_greedy_is_forward_and_the_greedy_head(self, model: CausalLM, prompts: list[list[int]]) -> None:
        """``forward_greedy`` (a decode graph's body) on one row: the hidden states of ``forward``
        (the same inputs, the same cache writes) and, where it says it wrote them, the logits of
        ``compute_logits`` and their argmax; else ``logits`` and ``ids`` untouched."""
        runner = self._runner(model)
        prompt = prompts[0]
        tables = [list(range(-(-len(prompt) // runner.cache.block_size)))]
        md = build_attention_metadata([len(prompt)], [len(prompt)], tables, runner.cache.block_size, runner.device)
        ids = torch.tensor(prompt, device=runner.device)
        positions = torch.arange(len(prompt), device=runner.device)
        with torch.inference_mode():
            hidden = model(ids, positions, md)
            vocab = model.compute_logits(hidden[-1:]).shape[-1]
            logits = torch.full((1, vocab), 7.0, dtype=hidden.dtype, device=hidden.device)
            picked = torch.full((1,), -1, dtype=torch.int64, device=hidden.device)
            got, done = model.forward_greedy(ids, positions, md, logits, picked)
            torch.testing.assert_close(got, hidden, atol=0, rtol=0)
            if done:
                torch.testing.assert_close(logits, model.compute_logits(hidden[-1:]), atol=self.atol, rtol=0)
                assert picked.item() == int(torch.argmax(logits))
            else:
                assert bool((logits == 7.0).all()) and picked.item() == -1

    def test_logits_only_at_requested_rows(self, model: CausalLM, hf_config: dict[str, Any]) -> None:
        hidden = torch.randn(6, hf_config["hidden_size"], generator=torch.Generator().manual_seed(1))
        rows = torch.tensor([5, 0, 3])
        with torch.inference_mode():
            torch.testing.assert_close(model.compute_logits(hidden, rows), model.compute_logits(hidden)[rows])
