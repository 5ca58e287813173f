"""``static``: the classic static-batching baseline, on the same engine as continuous batching.

A batch is admitted only when nothing runs: every waiting request (in arrival order) that the
step's token budget, ``max_num_seqs`` and the cache can take. The batch then runs until its
last request finishes; nothing joins it, even when some of its requests finished early.
"""

from __future__ import annotations

from collections.abc import Sequence

from infer_core.engine.policy import FCFSPolicy, R


class StaticPolicy(FCFSPolicy):
    """Arrival order and latest-arrival victims (as ``fcfs``); admission only when idle."""

    def can_admit(self, request: R, running: Sequence[R]) -> bool:
        return not running
