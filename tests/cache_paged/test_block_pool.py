"""The block pool: the linked free queue, reference counts, double frees, LRU eviction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_cache_paged.block_pool import BlockPool, DoubleFreeError, FreeBlockQueue, KVBlock


def ids(blocks) -> list[int]:
    return [b.block_id for b in blocks]


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["popleft", "append", "appendleft", "remove"]),
                              st.integers(0, 9)), max_size=60))
def test_free_queue_behaves_like_a_list(ops):
    blocks = [KVBlock(i) for i in range(10)]
    queue = FreeBlockQueue(blocks)
    model = list(range(10))
    for op, i in ops:
        if op == "popleft":
            if model:
                assert queue.popleft().block_id == model.pop(0)
        elif op == "remove":
            if i in model:
                queue.remove(blocks[i])
                model.remove(i)
        elif i not in model:
            getattr(queue, op)(blocks[i])
            model.append(i) if op == "append" else model.insert(0, i)
        assert ids(queue) == model
        assert len(queue) == len(model)
        assert all((blocks[j] in queue) == (j in model) for j in range(10))


def test_remove_from_the_middle_relinks_neighbours():
    blocks = [KVBlock(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[2])
    assert ids(queue) == [0, 1, 3, 4]
    assert blocks[1].next is blocks[3] and blocks[3].prev is blocks[1]
    assert blocks[2].prev is None and blocks[2].next is None


def test_double_free_raises():
    pool = BlockPool(4)
    [block] = pool.get_new_blocks(1)
    pool.free_blocks([block])
    with pytest.raises(DoubleFreeError, match=r"KV block 0 was freed while no request held it"):
        pool.free_blocks([block])
    assert pool.num_free_blocks == 4


def test_shared_block_is_free_only_after_its_last_holder():
    pool = BlockPool(3)
    [block] = pool.get_new_blocks(1)
    pool.touch([block])
    assert block.ref_cnt == 2
    pool.free_blocks([block])
    assert pool.num_free_blocks == 2 and block not in pool.free_queue
    pool.free_blocks([block])
    assert pool.num_free_blocks == 3 and block in pool.free_queue


def test_cached_blocks_are_reused_last_and_evicted_least_recently_used_first():
    pool = BlockPool(4)
    a, b, c, _ = pool.get_new_blocks(4)
    pool.cache_block(a, b"a")
    pool.cache_block(b, b"b")
    pool.free_blocks([b, a])  # b freed first: least recently used
    pool.free_blocks([c])  # uncached: handed out before any cached block
    assert ids(pool.free_queue) == [2, 1, 0]
    [first] = pool.get_new_blocks(1)
    assert first is c and pool.num_evictions == 0 and set(pool.cached) == {b"a", b"b"}
    [second] = pool.get_new_blocks(1)
    assert second is b and pool.num_evictions == 1 and set(pool.cached) == {b"a"}
    assert b.block_hash is None


def test_touching_a_cached_free_block_takes_it_out_of_the_queue():
    pool = BlockPool(3)
    [a] = pool.get_new_blocks(1)
    pool.cache_block(a, b"h")
    pool.free_blocks([a])
    assert pool.get_cached_block(b"h") is a and a in pool.free_queue
    pool.touch([a])
    assert a.ref_cnt == 1 and a not in pool.free_queue and pool.num_free_blocks == 2
    assert pool.get_new_blocks(2) and pool.num_evictions == 0  # the hit block is not handed out


def test_second_block_with_the_same_content_is_not_registered():
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    assert pool.cache_block(a, b"x") is True
    assert pool.cache_block(b, b"x") is False
    assert b.block_hash is None and pool.get_cached_block(b"x") is a


def test_reset_hashes_forgets_everything_and_requeues_cached_blocks_first():
    pool = BlockPool(3)
    a, b, c = pool.get_new_blocks(3)
    pool.cache_block(a, b"a")
    pool.cache_block(b, b"b")
    pool.free_blocks([a, c])
    pool.reset_hashes()
    assert pool.cached == {} and a.block_hash is None and b.block_hash is None
    assert ids(pool.free_queue) == [0, 2]
    pool.free_blocks([b])
    assert pool.num_free_blocks == 3
