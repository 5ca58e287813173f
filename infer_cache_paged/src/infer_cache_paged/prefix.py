"""The ``prefix`` cache backend: paged blocks plus content-addressed reuse of full blocks.

- As soon as a block of a request is full (prompt or output tokens), it gets a hash chained
  from its parent's (:mod:`infer_cache_paged.hashing`) and enters the pool's hash map.
- A new (or resumed) request looks up its full blocks' hashes in order and reuses the
  longest run found (each reused block gains a holder); only the rest is computed. At most
  ``num_tokens - 1`` tokens are reused, so the last token is always computed and has logits
  to sample from: when the whole prompt is cached and ends on a block boundary, its last
  block is recomputed into a fresh block (cached blocks are never written again).
- A freed block keeps its hash and stays in the free queue in LRU order; it is evicted only
  when a free block is needed and no uncached free block is left.
- ``prefix_cache_stats`` counts, per admitted request, tokens looked up and tokens hit.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from infer_cache_paged.block_pool import KVBlock
from infer_cache_paged.hashing import BlockHasher, HashAlgorithm
from infer_cache_paged.paged import PagedCache, PagedCacheOptions
from infer_core.engine.kv_cache import CacheRequest, PrefixCacheStats


class PrefixCacheOptions(PagedCacheOptions):
    """``[cache.options]`` of the ``prefix`` backend."""

    hash_algorithm: HashAlgorithm = Field(
        "sha256", description="Digest of the chained block hashes: sha256 or blake2b.")


class PrefixCache(PagedCache):
    """Paged KV bookkeeping with automatic prefix caching (vLLM's APC)."""

    options_model = PrefixCacheOptions

    def __init__(self, num_blocks: int, block_size: int, options: BaseModel | None = None):
        super().__init__(num_blocks, block_size, options)
        self.hasher = BlockHasher(self.options.hash_algorithm)
        self._hashes: dict[str, list[bytes]] = {}  # full-block hashes of a request's tokens
        self._num_hashed: dict[str, int] = {}  # leading blocks of a request's table done hashing
        self._lookups: dict[str, tuple[int, int]] = {}  # (tokens queried, tokens hit) until admitted
        self._stats = PrefixCacheStats()

    def _block_hashes(self, request: CacheRequest, num_blocks: int, token_ids: Sequence[int] | None = None) -> list[bytes]:
        """Hashes of ``request``'s first ``num_blocks`` full blocks (tokens are append-only,
        so hashes computed once stay valid)."""
        hashes = self._hashes.setdefault(request.request_id, [])
        if len(hashes) < num_blocks:
            tokens = request.all_token_ids if token_ids is None else token_ids
            parent = hashes[-1] if hashes else self.hasher.root(request.cache_salt)
            hashes.extend(self.hasher.chain(parent, tokens, self.block_size, len(hashes), num_blocks))
        return hashes

    def get_computed_blocks(self, request: CacheRequest) -> tuple[list[int], int]:
        tokens = request.all_token_ids
        max_blocks = (len(tokens) - 1) // self.block_size  # leave the last token to compute
        hit: list[int] = []
        for block_hash in self._block_hashes(request, max_blocks, tokens)[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hit.append(block.block_id)
        num_hit = len(hit) * self.block_size
        self._lookups[request.request_id] = (len(tokens), num_hit)
        return hit, num_hit

    def allocate_slots(
        self,
        request: CacheRequest,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] = (),
    ) -> list[int] | None:
        new = super().allocate_slots(request, num_new_tokens, num_new_computed_tokens, new_computed_blocks)
        if new is not None and request.request_id in self._lookups:
            queried, hit = self._lookups.pop(request.request_id)
            s = self._stats
            self._stats = PrefixCacheStats(s.requests + 1, s.queries + queried, s.hits + hit)
        return new

    def _on_allocated(self, request: CacheRequest, table: list[KVBlock], num_tokens: int) -> None:
        """Hash the blocks that this step's tokens fill (their KV is written in this step's
        forward pass, before any attention of that layer reads it)."""
        request_id = request.request_id
        done = self._num_hashed.get(request_id, 0)
        if num_tokens // self.block_size <= done:
            return
        tokens = request.all_token_ids
        num_full = min(num_tokens, len(tokens)) // self.block_size  # blocks whose tokens are known
        hashes = self._block_hashes(request, num_full, tokens)
        for i in range(done, num_full):
            if table[i].block_hash is None:  # not a hit; if another block has this content, skip
                self.pool.cache_block(table[i], hashes[i])
        self._num_hashed[request_id] = max(done, num_full)

    def free(self, request_id: str) -> None:
        super().free(request_id)
        self._hashes.pop(request_id, None)
        self._num_hashed.pop(request_id, None)
        self._lookups.pop(request_id, None)

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self._stats

    def reset_prefix_cache(self) -> bool:
        self.pool.reset_hashes()
        return True

    @property
    def num_cached_blocks(self) -> int:
        """Blocks whose content can be hit (held or free)."""
        return len(self.pool.cached)
