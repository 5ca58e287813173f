"""The `infer` plugin of infer-cache-paged: the entry point ``infer_cache_paged`` points here.

It declares the plugin API it was built for. Its registrations (cache backends paged and prefix (the infer-cache-paged issue)) are added
together with their implementations; until then it registers nothing.
"""

INFER_PLUGIN_API = 1
