"""The `infer` plugin of infer-sched-policies: the entry point ``infer_sched_policies`` points here.

Registrations name their targets as strings, so importing this module imports no policy code
(and no torch); a policy is imported when a config selects it.
"""

from infer_core import hookimpl

INFER_PLUGIN_API = 1


@hookimpl
def infer_register_scheduler_policies(registry):
    pkg = "infer_sched_policies"
    registry.add(
        "round_robin", f"{pkg}.round_robin:RoundRobinPolicy",
        options=f"{pkg}.round_robin:RoundRobinOptions",
        description="Running requests take turns at the token budget; each is served at least "
                    "once every `period` steps.",
    )
    registry.add(
        "priority", f"{pkg}.priority:PriorityPolicy",
        options=f"{pkg}.priority:PriorityOptions",
        description="Lower `priority` value first, ties by arrival; may preempt a running "
                    "lower-priority request for a waiting higher-priority one.",
    )
    registry.add(
        "prefill_first", f"{pkg}.prefill_first:PrefillFirstPolicy",
        description="New prompts get each step's token budget before running decodes "
                    "(lower time to first token, burstier decodes).",
    )
    registry.add(
        "decode_first", f"{pkg}.decode_first:DecodeFirstPolicy",
        options=f"{pkg}.decode_first:DecodeFirstOptions",
        description="Running decodes get each step's budget first; prompts share at most "
                    "`max_prefill_tokens` per step (steady inter-token latency).",
    )
    registry.add(
        "static", f"{pkg}.static:StaticPolicy",
        description="Static batching baseline: admit a new batch only when nothing runs.",
    )
