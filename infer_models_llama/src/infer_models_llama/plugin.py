"""The `infer` plugin of infer-models-llama: the entry point ``infer_models_llama`` points here."""

from infer_core import hookimpl

INFER_PLUGIN_API = 1


@hookimpl
def infer_register_architectures(registry):
    registry.add(
        "LlamaForCausalLM",
        "infer_models_llama.model:LlamaForCausalLM",
        description="Llama 3.x and Llama-architecture models (SmolLM2), incl. llama3 RoPE scaling.",
    )
