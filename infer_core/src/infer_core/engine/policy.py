"""The scheduler-policy interface and the built-in ``fcfs`` policy.

The scheduler owns admission, token budgets and preemption; a policy decides *order* (which
waiting request to admit next, which running request to serve first) and *victims* (which
running request to preempt when the cache cannot grow). A few optional hooks, neutral by
default, let a policy shape the step without a second code path in the scheduler:

==========================  ==============================================================
``admit_before``            admit waiting requests before serving this running request
                            (``prefill_first``: new prompts before running decodes)
``max_prefill_tokens``      most prompt / recompute tokens one step may schedule
                            (``decode_first``)
``can_admit``               gate admission, e.g. only when nothing runs (``static``)
``must_serve``              running requests that get at least one token this step
                            (``round_robin``'s every-N-steps guarantee)
``preempt_for``             a running request to preempt so a waiting one can be admitted
                            (``priority``)
``on_step``                 what the step scheduled, for policies that keep state
==========================  ==============================================================

Policies are plugins registered through ``infer_register_scheduler_policies``;
``infer_core.testing`` has the conformance suite every policy passes (docs/policies.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
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

    max_prefill_tokens: int | None = None
    """Most prefill tokens (prompt chunks and recompute after preemption, over all requests)
    one step may schedule; ``None`` = the step budget. With chunked prefill off, the first
    prompt of a step may exceed it (a prompt is never split), so progress is never blocked."""

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
        """The running request to preempt when the cache cannot fit the step.

        ``running`` holds every running request, including ones already scheduled this step
        (their scheduling is undone). A policy that never picks some request while others
        run guarantees that request progresses every step it is served."""

    # -- optional hooks: the defaults leave the scheduler's behaviour unchanged --------------

    def admit_before(self, request: R) -> bool:
        """Whether waiting requests are admitted before running ``request`` is served. The
        scheduler admits before the first request in :meth:`order_running` order for which
        this is True (default: never, so admission comes after every running request)."""
        return False

    def can_admit(self, request: R, running: Sequence[R]) -> bool:
        """Whether ``request`` (next in :meth:`order_waiting`) may be admitted now.

        ``running``: the requests running before this step's admissions. Returning False
        ends admission for this step (nothing behind ``request`` overtakes it)."""
        return True

    def must_serve(self, running: Sequence[R]) -> list[R]:
        """Members of ``running`` that must get at least one token this step: the scheduler
        keeps a token of the budget for each until it reaches it, admission included
        (unless the cache forces its preemption)."""
        return []

    def preempt_for(self, request: R, running: Sequence[R]) -> R | None:
        """A member of ``running`` to preempt so that waiting ``request`` can be admitted,
        asked when the cache or ``max_num_seqs`` refuses it; ``None`` = let it wait.

        Asked again after each preemption until ``request`` fits or this returns ``None``."""
        return None

    def on_step(self, num_scheduled_tokens: Mapping[str, int]) -> None:
        """Called at the end of every scheduling step with the tokens scheduled per request
        id (empty if nothing was)."""
        return None


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
