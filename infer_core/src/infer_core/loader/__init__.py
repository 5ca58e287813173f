"""Loading models from Hugging Face directories: config, safetensors weights, tokenizer,
chat templates."""
