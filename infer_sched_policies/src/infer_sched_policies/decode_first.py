"""``decode_first``: running decodes get each step's token budget first; prompts get at most
``max_prefill_tokens`` per step (Sarathi-style stall-free batching).

Every running request that is decoding is served every step (``max_num_seqs`` never exceeds
the budget), so inter-token latency stays steady while long prompts are prefilled in chunks
of the capped size. Admission is in arrival order, as ``fcfs``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from infer_core.engine.policy import FCFSPolicy, R
from infer_sched_policies.phases import is_decoding


class DecodeFirstOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_prefill_tokens: int = Field(
        512, ge=1,
        description="Most prompt (and recompute) tokens one step may schedule, over all "
                    "requests; with chunked_prefill = false a step's first prompt may exceed it.",
    )


class DecodeFirstPolicy(FCFSPolicy):
    options: DecodeFirstOptions

    def __init__(self, options: DecodeFirstOptions | None = None) -> None:
        super().__init__(options or DecodeFirstOptions())
        self.max_prefill_tokens = self.options.max_prefill_tokens

    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=lambda r: (not is_decoding(r), r.arrival_time))
