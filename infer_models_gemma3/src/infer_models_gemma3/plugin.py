"""The `infer` plugin of infer-models-gemma3: the entry point ``infer_models_gemma3`` points here."""

from infer_core import hookimpl

INFER_PLUGIN_API = 1


@hookimpl
def infer_register_architectures(registry):
    registry.add(
        "Gemma3ForCausalLM",
        "infer_models_gemma3.model:Gemma3ForCausalLM",
        description="Gemma 3 text models: sandwich norms, interleaved sliding-window and global layers.",
    )
