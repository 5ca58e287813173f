"""The `infer` plugin of infer-models-gemma3: the entry point ``infer_models_gemma3`` points here.

It declares the plugin API it was built for. Its registrations (architecture Gemma3ForCausalLM (the Models issue)) are added
together with their implementations; until then it registers nothing.
"""

INFER_PLUGIN_API = 1
