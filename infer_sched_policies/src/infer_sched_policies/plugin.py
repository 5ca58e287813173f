"""The `infer` plugin of infer-sched-policies: the entry point ``infer_sched_policies`` points here.

It declares the plugin API it was built for. Its registrations (scheduler policies round_robin, priority, prefill_first, decode_first and static (the infer-sched-policies issue)) are added
together with their implementations; until then it registers nothing.
"""

INFER_PLUGIN_API = 1
