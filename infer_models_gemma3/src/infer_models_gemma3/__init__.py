"""Gemma 3 (Gemma3ForCausalLM, sliding-window layers) for infer."""
