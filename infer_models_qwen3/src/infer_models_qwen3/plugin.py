"""The `infer` plugin of infer-models-qwen3: the entry point ``infer_models_qwen3`` points here."""

from infer_core import hookimpl

INFER_PLUGIN_API = 1


@hookimpl
def infer_register_architectures(registry):
    registry.add(
        "Qwen3ForCausalLM",
        "infer_models_qwen3.model:Qwen3ForCausalLM",
        description="Qwen 3 dense models: GQA with QK-norm, explicit head_dim, tied embeddings.",
    )
