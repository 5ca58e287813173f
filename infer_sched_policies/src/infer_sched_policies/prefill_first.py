"""``prefill_first``: new prompts get each step's token budget before running requests.

Waiting requests are admitted (in arrival order) before the running ones are served, so a new
prompt starts in the step after it arrives whenever a sequence slot and the cache allow it;
running requests share what the prompts leave, those still prefilling before the decodes.
This favours time to first token over steady decoding (vLLM V0's default behaviour).
"""

from __future__ import annotations

from collections.abc import Sequence

from infer_core.engine.policy import FCFSPolicy, R
from infer_sched_policies.phases import is_decoding


class PrefillFirstPolicy(FCFSPolicy):
    admit_waiting_first = True

    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=lambda r: (is_decoding(r), r.arrival_time))
