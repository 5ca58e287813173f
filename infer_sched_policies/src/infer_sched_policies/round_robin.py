"""``round_robin``: running requests take turns at the token budget.

Running requests are served least recently served first, so when the budget cannot cover them
all (long prompt chunks beside decodes) the turn passes around instead of the oldest request
taking everything. A request not served for ``period - 1`` steps is owed a token in the next
one (``must_serve``): every running request is served at least once every ``period`` steps.
Admission and victims are as ``fcfs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from infer_core.engine.policy import FCFSPolicy, R


class RoundRobinOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    period: int = Field(
        4, ge=1, description="Every running request is served at least once every this many steps.")


class RoundRobinPolicy(FCFSPolicy):
    options: RoundRobinOptions

    def __init__(self, options: RoundRobinOptions | None = None) -> None:
        super().__init__(options or RoundRobinOptions())
        self._step = 0  # the index of the step being scheduled
        self._last_served: dict[str, int] = {}  # request id -> last step it got tokens

    def _last(self, request: R) -> int:
        return self._last_served.get(request.request_id, self._step)

    def _overdue(self, request: R) -> bool:
        return self._step - self._last(request) >= self.options.period

    def order_running(self, running: Sequence[R]) -> list[R]:
        self._last_served = {r.request_id: self._last(r) for r in running}  # forget finished ones
        return sorted(running, key=lambda r: (not self._overdue(r), self._last(r), r.arrival_time))

    def must_serve(self, running: Sequence[R]) -> list[R]:
        return [r for r in running if self._overdue(r)]

    def on_step(self, num_scheduled_tokens: Mapping[str, int]) -> None:
        for request_id in num_scheduled_tokens:
            self._last_served[request_id] = self._step
        self._step += 1
