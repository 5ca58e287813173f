"""Paged and prefix-caching KV-cache backends for infer (``cache.backend = "paged"`` or
``"prefix"``); see docs/cache.md."""
