"""The `infer` plugin of infer-cache-paged: the entry point ``infer_cache_paged`` points here.

It registers the ``paged`` and ``prefix`` cache backends; targets are strings, imported only
when a backend is used.
"""

from infer_core import hookimpl

INFER_PLUGIN_API = 1


@hookimpl
def infer_register_cache_backends(registry):
    registry.add(
        "paged",
        "infer_cache_paged.paged:PagedCache",
        options="infer_cache_paged.paged:PagedCacheOptions",
        description="Fixed-size KV blocks from one pool, allocated as tokens arrive (vLLM's paging).",
    )
    registry.add(
        "prefix",
        "infer_cache_paged.prefix:PrefixCache",
        options="infer_cache_paged.prefix:PrefixCacheOptions",
        description="Paged blocks plus reuse of cached prompt prefixes (content hashes, refcounts, LRU).",
    )
