"""Qwen 3 (Qwen3ForCausalLM, QK-norm) for infer."""
