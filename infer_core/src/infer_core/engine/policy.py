"""The scheduler-policy interface and the built-in ``fcfs`` policy.

The scheduler owns admission, token budgets and preemption; a policy only decides *order*
(which waiting request to admit next, which running request to serve first) and *victims*
(which running request to preempt when the cache cannot grow). Policies are plugins registered
through ``infer_register_scheduler_policies``; ``infer_core.testing`` has the conformance
suite every policy passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, TypeVar

from pydantic import BaseModel


class SchedulableRequest(Protocol):
    """What a policy may read of a request (the engine's ``Request`` satisfies it)."""

    @property
    def request_id(self) -> str: ...

    @property
    def arrival_time(self) -> float: ...

    @property
    def priority(self) -> int: ...

    @property
    def num_prompt_tokens(self) -> int: ...

    @property
    def num_computed_tokens(self) -> int: ...

    @property
    def num_tokens(self) -> int: ...


R = TypeVar("R", bound=SchedulableRequest)


class SchedulerPolicy(ABC):
    """Decides order and victims. Constructed once per engine with its validated options.

    Implementations return new lists (never mutate their inputs) that are permutations of
    their inputs; ``pick_victim`` returns a member of ``running``.
    """

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options

    @abstractmethod
    def order_waiting(self, waiting: Sequence[R]) -> list[R]:
        """The waiting queue in the order requests should be admitted."""

    @abstractmethod
    def order_running(self, running: Sequence[R]) -> list[R]:
        """Running requests in the order they get this step's token budget."""

    @abstractmethod
    def pick_victim(self, running: Sequence[R]) -> R:
        """The running request to preempt when the cache cannot fit the step."""


class FCFSPolicy(SchedulerPolicy):
    """First come, first served: order by arrival; preempt the latest arrival."""

    def order_waiting(self, waiting: Sequence[R]) -> list[R]:
        return sorted(waiting, key=lambda r: r.arrival_time)

    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=lambda r: r.arrival_time)

    def pick_victim(self, running: Sequence[R]) -> R:
        if not running:
            raise ValueError("pick_victim needs at least one running request")
        return max(running, key=lambda r: r.arrival_time)
