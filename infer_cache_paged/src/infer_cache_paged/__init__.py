"""Paged and prefix-caching KV-cache backends for infer."""
