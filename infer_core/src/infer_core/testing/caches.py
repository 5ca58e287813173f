"""A cache backend for tests: the contiguous pool's bookkeeping with any block size.

Block tables of many small blocks, handed out in reverse order, exercise the same paths a
paged backend does (growth block by block, preemption when the pool runs dry, scattered
slots), without prefix reuse. Register it in-process with :data:`PLUGIN`::

    pm = make_plugin_manager(plugins=[infer_core.testing.caches])
    # then cache.backend = "small_blocks"
"""

from __future__ import annotations

from pydantic import BaseModel

from infer_core import hookimpl
from infer_core.engine.kv_cache import ContiguousCache

INFER_PLUGIN_API = 1


class SmallBlockCache(ContiguousCache):
    @classmethod
    def block_size_for(cls, configured_block_size: int, max_model_len: int) -> int:
        return configured_block_size

    def __init__(self, num_blocks: int, block_size: int, options: BaseModel | None = None):
        super().__init__(num_blocks, block_size, options)
        self._free.reverse()


@hookimpl
def infer_register_cache_backends(registry):
    registry.add(
        "small_blocks", "infer_core.testing.caches:SmallBlockCache",
        description="Test backend: the block pool with cache.block_size blocks, no prefix reuse.",
    )
