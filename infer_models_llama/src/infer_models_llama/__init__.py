"""Llama 3.x (LlamaForCausalLM, incl. llama3 RoPE scaling) for infer."""
