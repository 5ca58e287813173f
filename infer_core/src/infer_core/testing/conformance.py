"""The conformance suites: one class per extension point, subclassed by every plugin's tests.

Each suite looks the component up by ``name`` through a real plugin manager (so it also proves
the plugin is installed and registered through its entry point), checks its spec and options
model, and then the behaviour its interface promises. They grow as the interfaces land.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from infer_core.config import load_config
from infer_core.engine.kv_cache import CacheBackend
from infer_core.engine.policy import SchedulerPolicy
from infer_core.errors import ConfigError
from infer_core.plugins import InferPluginManager, make_plugin_manager
from infer_core.registry import Spec
from infer_core.selection import select_plugins
from infer_core.testing.requests import SyntheticRequest, synthetic_requests
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
    """Scheduler policies: orderings are permutations, victims are members, inputs untouched."""

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


_cache_ops = st.lists(
    st.one_of(
        st.tuples(st.just("grow"), st.integers(0, 11), st.integers(1, 300)),
        st.tuples(st.just("free"), st.integers(0, 11), st.just(0)),
    ),
    max_size=80,
)


class CacheBackendConformance(PluginConformance):
    """Cache backends: block accounting under random grow / free sequences.

    Invariants after every operation: no block is held by two requests (without prefix
    sharing), held + free == total, a refused allocation changes nothing, a request's table
    covers its tokens, slots are in range; after freeing everything the pool is whole and the
    leak audit is empty.
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
                req = requests.get(rid) or SyntheticRequest(rid, num_prompt_tokens=n)
                n = min(n, self.max_model_len - req.num_computed_tokens)
                if n <= 0:
                    continue
                before = (cache.num_free_blocks, cache.get_block_ids(rid))
                new = cache.allocate_slots(req, n)
                if new is None:
                    assert (cache.num_free_blocks, cache.get_block_ids(rid)) == before
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

    def test_refuses_when_full_and_recovers(self, spec: Spec) -> None:
        cache = self.make_cache(spec, num_blocks=2)
        per_request = cache.block_size
        a, b, c = (SyntheticRequest(f"r{i}", num_prompt_tokens=per_request) for i in range(3))
        assert cache.allocate_slots(a, per_request) is not None
        assert cache.allocate_slots(b, per_request) is not None
        assert cache.allocate_slots(c, per_request) is None
        cache.free("r0")
        assert cache.allocate_slots(c, per_request) is not None
        cache.free("r1")
        cache.free("r2")
        assert cache.num_free_blocks == 2


class AttentionBackendConformance(PluginConformance):
    """Attention backends. Behavioural checks (against the torch reference over random flat
    batches) arrive with the attention-backend interface."""

    kind = "attention backend"
    section = "attention"


class ArchitectureConformance(PluginConformance):
    """Model architectures. Behavioural checks (parity with transformers on a tiny random
    config) arrive with the model interface."""

    kind = "architecture"
