"""The block pool: every KV block, its reference count, its content hash, and the free queue.

The free queue is a doubly linked list threaded through the blocks themselves (vLLM's
``FreeKVCacheBlockQueue``): taking the head, appending at either end and pulling a block out of
the middle — a cached block that a new request hits — are all O(1), with no allocation.

A block is *free* when no request holds it (``ref_cnt == 0``); then it is in the queue. A free
block may still carry a hash: its KV is a cached prefix that a later request can take back
(``touch``) until the block is handed out for something else, which evicts the hash. Blocks
freed without a hash go to the head of the queue, so they are reused before any cached block;
hashed blocks go to the tail, so the head of the hashed part is the least recently used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class DoubleFreeError(RuntimeError):
    """A block was returned to the pool while no request held it: a bookkeeping bug."""


class KVBlock:
    """One block of ``block_size`` KV slots (in every layer's KV tensor)."""

    __slots__ = ("block_hash", "block_id", "next", "prev", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: bytes | None = None
        self.prev: KVBlock | None = None  # links of the free queue; None when not queued
        self.next: KVBlock | None = None

    def __repr__(self) -> str:
        cached = f", hash={self.block_hash.hex()[:8]}" if self.block_hash else ""
        return f"KVBlock({self.block_id}, ref_cnt={self.ref_cnt}{cached})"


class FreeBlockQueue:
    """Doubly linked list of free blocks between two sentinels; O(1) everywhere."""

    def __init__(self, blocks: Iterable[KVBlock]) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next, self._tail.prev = self._tail, self._head
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __contains__(self, block: KVBlock) -> bool:
        return block.prev is not None

    def __iter__(self) -> Iterator[KVBlock]:
        node = self._head.next
        while node is not self._tail:
            assert node is not None
            yield node
            node = node.next

    def _insert_after(self, anchor: KVBlock, block: KVBlock) -> None:
        assert block.prev is None and block.next is None, f"{block} is already queued"
        after = anchor.next
        assert after is not None
        block.prev, block.next = anchor, after
        anchor.next = after.prev = block
        self._len += 1

    def append(self, block: KVBlock) -> None:
        """At the tail: handed out last."""
        assert self._tail.prev is not None
        self._insert_after(self._tail.prev, block)

    def appendleft(self, block: KVBlock) -> None:
        """At the head: handed out first."""
        self._insert_after(self._head, block)

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block.prev, block.next
        assert prev is not None and nxt is not None, f"{block} is not queued"
        prev.next, nxt.prev = nxt, prev
        block.prev = block.next = None
        self._len -= 1

    def popleft(self) -> KVBlock:
        block = self._head.next
        assert block is not None and block is not self._tail, "the free queue is empty"
        self.remove(block)
        return block


class BlockPool:
    """``num_blocks`` blocks: reference counts, the free queue and the hash → block map."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[bytes, KVBlock] = {}
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached ones included (they can be evicted at once)."""
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """``n`` blocks for one request (``ref_cnt`` 1); a cached block taken here is evicted."""
        assert n <= len(self.free_queue), f"asked for {n} blocks, {len(self.free_queue)} free"
        blocks = []
        for _ in range(n):
            block = self.free_queue.popleft()
            assert block.ref_cnt == 0, block
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            blocks.append(block)
        return blocks

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """One more holder for each of ``blocks`` (prefix hits); free ones leave the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, blocks: Iterable[KVBlock]) -> None:
        """One holder fewer for each of ``blocks``, in eviction order (first = evicted first
        among the hashed ones). Raises :class:`DoubleFreeError` for a block nobody holds."""
        for block in blocks:
            if block.ref_cnt <= 0:
                raise DoubleFreeError(
                    f"KV block {block.block_id} was freed while no request held it (a double "
                    f"free); the cache backend's tables are inconsistent."
                )
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    self.free_queue.appendleft(block)
                else:
                    self.free_queue.append(block)

    # -- the hash map --------------------------------------------------------------------------

    def cache_block(self, block: KVBlock, block_hash: bytes) -> bool:
        """Give a full, held block its content hash so later requests can reuse it. False
        (nothing changes) when another block already holds that content."""
        assert block.ref_cnt > 0 and block.block_hash is None, block
        if block_hash in self.cached:
            return False
        block.block_hash = block_hash
        self.cached[block_hash] = block
        return True

    def get_cached_block(self, block_hash: bytes) -> KVBlock | None:
        return self.cached.get(block_hash)

    def _evict(self, block: KVBlock) -> None:
        del self.cached[block.block_hash]  # type: ignore[arg-type]
        block.block_hash = None
        self.num_evictions += 1

    def reset_hashes(self) -> None:
        """Forget every cached prefix. Held blocks keep their KV but can no longer be hit;
        free cached blocks move to the head of the queue (they hold nothing useful now)."""
        for block in list(self.cached.values()):
            block.block_hash = None
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
                self.free_queue.appendleft(block)
        self.cached.clear()
