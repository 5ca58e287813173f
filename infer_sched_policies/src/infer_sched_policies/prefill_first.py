"""``prefill_first``: prompts get each step's token budget before running decodes.

Each step serves, in this order: running requests still prefilling (a chunked prompt, or a
recompute), then new prompts admitted from the queue (in arrival order), then the decodes
with what is left. A new prompt starts as soon as a sequence slot and the cache allow it;
decodes wait while prompts fill the steps. This favours time to first token over steady
inter-token latency (as vLLM V0's default scheduler did).
"""

from __future__ import annotations

from collections.abc import Sequence

from infer_core.engine.policy import FCFSPolicy, R
from infer_sched_policies.phases import is_decoding


class PrefillFirstPolicy(FCFSPolicy):
    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=lambda r: (is_decoding(r), r.arrival_time))

    def admit_before(self, request: R) -> bool:
        return is_decoding(request)
