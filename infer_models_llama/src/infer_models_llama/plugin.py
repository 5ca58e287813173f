"""The `infer` plugin of infer-models-llama: the entry point ``infer_models_llama`` points here.

It declares the plugin API it was built for. Its registrations (architecture LlamaForCausalLM (the Models issue)) are added
together with their implementations; until then it registers nothing.
"""

INFER_PLUGIN_API = 1
