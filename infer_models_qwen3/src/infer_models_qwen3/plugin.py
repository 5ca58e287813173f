"""The `infer` plugin of infer-models-qwen3: the entry point ``infer_models_qwen3`` points here.

It declares the plugin API it was built for. Its registrations (architecture Qwen3ForCausalLM (the Models issue)) are added
together with their implementations; until then it registers nothing.
"""

INFER_PLUGIN_API = 1
