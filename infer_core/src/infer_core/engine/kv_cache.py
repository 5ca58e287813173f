"""The cache-backend interface and the built-in ``contiguous`` backend.

A cache backend owns the bookkeeping of KV memory: which blocks each request holds. Every
backend presents the same layout to the kernels — a block table per request, and a slot
(``block_id * block_size + offset``) per token — so kernels never know which backend runs.
The contiguous backend is a block pool whose block is the whole ``max_model_len``; the paged
backends (``infer-cache-paged``) have small blocks and may reuse cached prefixes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel


class CacheRequest(Protocol):
    """What a cache backend may read of a request (the engine's ``Request`` satisfies it).

    ``all_token_ids`` (prompt + output so far; tokens are only ever appended) and
    ``cache_salt`` (tenants with different salts never share cached blocks) are what a
    prefix-caching backend hashes; other backends need only the first two.
    """

    @property
    def request_id(self) -> str: ...

    @property
    def num_computed_tokens(self) -> int: ...

    @property
    def all_token_ids(self) -> list[int]: ...

    @property
    def cache_salt(self) -> str | None: ...


@dataclass(frozen=True)
class PrefixCacheStats:
    """Cumulative prefix-cache counters (vLLM's meanings): ``requests`` admitted after a
    lookup, ``queries`` = tokens looked up, ``hits`` = tokens found cached."""

    requests: int = 0
    queries: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class CacheBackend(ABC):
    """Block bookkeeping for the KV cache; one instance per engine.

    ``num_blocks`` blocks of ``block_size`` tokens each. Block ids are ``0 .. num_blocks-1``.
    """

    def __init__(self, num_blocks: int, block_size: int, options: BaseModel | None = None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a KV cache needs num_blocks >= 1 and block_size >= 1, got "
                             f"{num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.options = options

    @classmethod
    def block_size_for(cls, configured_block_size: int, max_model_len: int) -> int:
        """The block size this backend uses, given ``cache.block_size`` and the model length."""
        return configured_block_size

    # -- lifecycle -------------------------------------------------------------------------

    def get_computed_blocks(self, request: CacheRequest) -> tuple[list[int], int]:
        """Blocks already holding a prefix of ``request``'s tokens, and how many tokens they
        cover. Backends without prefix reuse have none."""
        return [], 0

    @abstractmethod
    def allocate_slots(
        self,
        request: CacheRequest,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] = (),
    ) -> list[int] | None:
        """Make room for ``num_new_tokens`` tokens after ``request.num_computed_tokens`` plus
        ``num_new_computed_tokens`` tokens found cached (``new_computed_blocks``, from
        :meth:`get_computed_blocks` at admission, which join the request's table first).

        Returns the ids of the newly allocated blocks (possibly none), or ``None`` — changing
        nothing — when the pool cannot hold them.
        """

    @abstractmethod
    def free(self, request_id: str) -> None:
        """Return every block of ``request_id`` to the pool (finished, aborted or preempted)
        and forget what the backend keeps for it: a request id is unique until it is freed
        (the scheduler frees every request that leaves, admitted or not), so per-request
        state such as computed block hashes may be kept by id until then."""

    # -- queries ---------------------------------------------------------------------------

    @abstractmethod
    def get_block_ids(self, request_id: str) -> list[int]:
        """The block table of ``request_id`` (empty if it holds none)."""

    @property
    @abstractmethod
    def num_free_blocks(self) -> int:
        """Blocks that ``allocate_slots`` can still hand out."""

    @abstractmethod
    def audit(self, live_request_ids: Iterable[str], reclaim: bool = False) -> dict[str, list[int]]:
        """Blocks held by requests not in ``live_request_ids`` (leaks), by request id; with
        ``reclaim``, those blocks are also freed."""

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        """Prefix-cache counters for metrics; zeros for backends without prefix reuse."""
        return PrefixCacheStats()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (e.g. between benchmark runs, or after the weights
        changed); True when done. Backends without prefix reuse have nothing to forget."""
        return True

    @property
    def num_free_tokens(self) -> int:
        return self.num_free_blocks * self.block_size

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, 0.0 .. 1.0."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def slot_mapping(self, request_id: str, start: int, end: int) -> list[int]:
        """Cache slots of token positions ``start .. end-1`` of ``request_id``."""
        table = self.get_block_ids(request_id)
        size = self.block_size
        return [table[pos // size] * size + pos % size for pos in range(start, end)]


class ContiguousCache(CacheBackend):
    """One block of ``max_model_len`` tokens per request: the classic contiguous KV cache,
    expressed as a block pool so that kernels see the same block tables as with paging."""

    @classmethod
    def block_size_for(cls, configured_block_size: int, max_model_len: int) -> int:
        return max_model_len

    def __init__(self, num_blocks: int, block_size: int, options: BaseModel | None = None):
        super().__init__(num_blocks, block_size, options)
        self._free: deque[int] = deque(range(num_blocks))
        self._tables: dict[str, list[int]] = {}

    def allocate_slots(
        self,
        request: CacheRequest,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] = (),
    ) -> list[int] | None:
        assert not new_computed_blocks, "the contiguous cache has no prefix reuse"
        table = self._tables.get(request.request_id, [])
        total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        needed = -(-total // self.block_size)
        missing = needed - len(table)
        if missing <= 0:
            return []
        if missing > len(self._free):
            return None
        new = [self._free.popleft() for _ in range(missing)]
        self._tables.setdefault(request.request_id, []).extend(new)
        return new

    def free(self, request_id: str) -> None:
        self._free.extend(self._tables.pop(request_id, ()))

    def get_block_ids(self, request_id: str) -> list[int]:
        return list(self._tables.get(request_id, ()))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def audit(self, live_request_ids: Iterable[str], reclaim: bool = False) -> dict[str, list[int]]:
        live = set(live_request_ids)
        leaks = {rid: list(t) for rid, t in self._tables.items() if rid not in live}
        if reclaim:
            for rid in leaks:
                self.free(rid)
        return leaks

