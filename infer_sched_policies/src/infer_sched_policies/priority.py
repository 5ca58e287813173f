"""``priority``: requests with a lower ``priority`` value go first (vLLM's convention), ties
by arrival.

Waiting requests are admitted and running ones served in ``(priority, arrival_time)`` order;
when the cache runs dry the victim is the running request last in that order. With
``preemption`` on, a waiting request that the cache or ``max_num_seqs`` refuses preempts
running requests of strictly lower priority (the last in order first) until it fits.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from infer_core.engine.policy import R, SchedulableRequest, SchedulerPolicy


class PriorityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preemption: bool = Field(
        True,
        description="Preempt running lower-priority requests to admit a waiting higher-priority "
                    "one that would not fit otherwise.",
    )


def _key(request: SchedulableRequest) -> tuple[int, float]:
    return request.priority, request.arrival_time


class PriorityPolicy(SchedulerPolicy):
    options: PriorityOptions

    def __init__(self, options: PriorityOptions | None = None) -> None:
        super().__init__(options or PriorityOptions())

    def order_waiting(self, waiting: Sequence[R]) -> list[R]:
        return sorted(waiting, key=_key)

    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=_key)

    def pick_victim(self, running: Sequence[R]) -> R:
        if not running:
            raise ValueError("pick_victim needs at least one running request")
        return max(running, key=_key)

    def preempt_for(self, request: R, running: Sequence[R]) -> R | None:
        if not self.options.preemption:
            return None
        lower = [r for r in running if r.priority > request.priority]
        return max(lower, key=_key) if lower else None
