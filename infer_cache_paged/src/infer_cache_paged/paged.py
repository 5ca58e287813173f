"""The ``paged`` cache backend: fixed-size blocks from one pool, handed out as tokens arrive.

A request's block table grows one block at a time as its tokens are computed, so a request
holds ``ceil(tokens / block_size)`` blocks instead of a whole ``max_model_len`` region.
Allocation and free are O(1) per block (:class:`~infer_cache_paged.block_pool.BlockPool`).
Each block remembers its holders' count and each table its owner, so a block returned twice
raises :class:`~infer_cache_paged.block_pool.DoubleFreeError` and :meth:`PagedCache.audit`
finds (and can reclaim) blocks of requests the engine no longer knows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from infer_cache_paged.block_pool import BlockPool, KVBlock
from infer_core.engine.kv_cache import CacheBackend, CacheRequest
from infer_core.errors import ConfigError


class PagedCacheOptions(BaseModel):
    """``[cache.options]`` of the ``paged`` backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    watermark: float = Field(
        0.01, ge=0.0, lt=1.0,
        description="Share of blocks kept free when admitting a request, so running requests "
                    "can grow without being preempted at once (vLLM's watermark).",
    )


class PagedCache(CacheBackend):
    """Paged KV bookkeeping: small blocks, O(1) allocate and free, owner tables."""

    options_model: type[PagedCacheOptions] = PagedCacheOptions

    @classmethod
    def block_size_for(cls, configured_block_size: int, max_model_len: int) -> int:
        if configured_block_size > max_model_len:
            raise ConfigError(
                f"cache.block_size ({configured_block_size}) exceeds model.max_model_len "
                f"({max_model_len}), so every block would be mostly empty; use a block size of "
                f"at most {max_model_len} (16 is usual), or the contiguous backend."
            )
        return configured_block_size

    def __init__(self, num_blocks: int, block_size: int, options: BaseModel | None = None):
        options = options if options is not None else self.options_model()
        super().__init__(num_blocks, block_size, options)
        self.pool = BlockPool(num_blocks)
        self.watermark_blocks = int(options.watermark * num_blocks)
        self._tables: dict[str, list[KVBlock]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def allocate_slots(
        self,
        request: CacheRequest,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] = (),
    ) -> list[int] | None:
        request_id = request.request_id
        table = self._tables.get(request_id)
        if table is not None and not new_computed_blocks:  # a running request (a decode, mostly)
            total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
            if -(-total // self.block_size) <= len(table):  # its blocks hold the new tokens
                self._on_allocated(request, table, total)
                return []
        admitting = table is None
        held = 0 if table is None else len(table)
        hits = [self.pool.blocks[b] for b in new_computed_blocks]
        total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        missing = max(0, -(-total // self.block_size) - held - len(hits))
        # hit blocks nobody holds are in the free queue: taking them leaves fewer to hand out
        available = self.pool.num_free_blocks - sum(1 for b in hits if b.ref_cnt == 0)
        if missing > available:
            return None
        if admitting and self.pool.num_used_blocks and available - missing < self.watermark_blocks:
            return None  # keep headroom for the running requests (never refuses an idle pool)
        if table is None:
            if not hits and not missing:
                return []
            table = self._tables[request_id] = []
        self.pool.touch(hits)
        new = self.pool.get_new_blocks(missing)
        table.extend(hits)
        table.extend(new)
        self._on_allocated(request, table, total)
        return [b.block_id for b in new]

    def _on_allocated(self, request: CacheRequest, table: list[KVBlock], num_tokens: int) -> None:
        """Hook after a successful allocation covering ``num_tokens`` tokens."""

    def free(self, request_id: str) -> None:
        table = self._tables.pop(request_id, None)
        if table:
            # tail first: the end of a sequence is the least likely to be shared again
            self.pool.free_blocks(reversed(table))

    # -- queries -------------------------------------------------------------------------------

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self._tables.get(request_id, ())]

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def audit(self, live_request_ids: Iterable[str], reclaim: bool = False) -> dict[str, list[int]]:
        live = set(live_request_ids)
        leaks = {rid: [b.block_id for b in table] for rid, table in self._tables.items()
                 if rid not in live and table}
        if reclaim:
            for rid in leaks:
                self.free(rid)
        return leaks

    def owners(self) -> dict[int, list[str]]:
        """Which requests hold each held block (for debugging and invariant checks)."""
        owners: dict[int, list[str]] = {}
        for rid, table in self._tables.items():
            for block in table:
                owners.setdefault(block.block_id, []).append(rid)
        return owners
