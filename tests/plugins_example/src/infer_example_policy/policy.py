"""``shortest_prompt_first``: admit short prompts first to cut their time to first token."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from infer_core.engine.policy import R, SchedulerPolicy


class ShortestPromptFirstOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    longest_first: bool = Field(False, description="Reverse the order: longest prompts first.")
    max_prompt_tokens: int = Field(
        0, ge=0, description="Prompts longer than this are admitted by arrival only (0 = no limit)."
    )


class ShortestPromptFirst(SchedulerPolicy):
    options: ShortestPromptFirstOptions

    def __init__(self, options: ShortestPromptFirstOptions | None = None) -> None:
        super().__init__(options or ShortestPromptFirstOptions())

    def _length_key(self, request: R) -> int:
        limit = self.options.max_prompt_tokens
        if limit and request.num_prompt_tokens > limit:
            return 1 << 62  # after every short prompt, in arrival order
        n = request.num_prompt_tokens
        return -n if self.options.longest_first else n

    def order_waiting(self, waiting: Sequence[R]) -> list[R]:
        return sorted(waiting, key=lambda r: (self._length_key(r), r.arrival_time))

    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=lambda r: r.arrival_time)

    def pick_victim(self, running: Sequence[R]) -> R:
        return max(running, key=lambda r: (r.num_tokens - r.num_computed_tokens, r.arrival_time))
