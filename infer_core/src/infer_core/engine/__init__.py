"""The engine: scheduler, KV-cache backends, model runner, sampler, detokenizer."""
