"""The plugin module: the target of this distribution's ``infer`` entry point.

It imports nothing heavy: the policy class and its options are named as strings and
imported only when a config selects ``shortest_prompt_first``.
"""

from infer_core import hookimpl

INFER_PLUGIN_API = 1


@hookimpl
def infer_register_scheduler_policies(registry):
    registry.add(
        "shortest_prompt_first",
        "infer_example_policy.policy:ShortestPromptFirst",
        options="infer_example_policy.policy:ShortestPromptFirstOptions",
        description="Admit the shortest prompts first (ties by arrival).",
    )
