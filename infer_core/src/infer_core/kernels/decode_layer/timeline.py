"""Clock stamps of the persistent decode layer (benchmarks only, ``timeline``): every program
stamps its SM clock at each stage boundary and inside the attention and merge stages
(``benchmarks/decode_layer_timeline.py`` reads them)."""

from __future__ import annotations

import triton
import triton.language as tl

TIMELINE_SLOTS = tl.constexpr(32)  # clock stamps per program in a timeline (_stamp)


@triton.jit
def _stamp_after(timeline_ptr, pid, index, value, TIMELINE: tl.constexpr):
    """:func:`_stamp` once the scalar ``value`` is computed (the clock read depends on it: the
    stamp marks when loaded data was used, not when its load was issued)."""
    if TIMELINE:
        dep = (value != value).to(tl.int32)  # 0, but not known to be before ``value`` exists
        clock = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [dep], dtype=tl.int64,
                                          is_pure=False, pack=1)
        tl.store(timeline_ptr + pid * TIMELINE_SLOTS + index, clock)


@triton.jit
def _stamp(timeline_ptr, pid, index, TIMELINE: tl.constexpr):
    """With ``TIMELINE``, program ``pid``'s SM clock (``%clock64``) at point ``index`` (and the
    global nanosecond timer at points 0 and 13, in slots 14 and 15; points 16-23 lie inside the
    attention and merge stages) into ``timeline_ptr [P, TIMELINE_SLOTS]`` (benchmarks only: where
    the layer's time goes)."""
    if TIMELINE:
        clock = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [pid], dtype=tl.int64,
                                          is_pure=False, pack=1)
        tl.store(timeline_ptr + pid * TIMELINE_SLOTS + index, clock)
        if index == 0 or index == 13:
            now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [pid], dtype=tl.int64,
                                            is_pure=False, pack=1)
            tl.store(timeline_ptr + pid * TIMELINE_SLOTS + 14 + index // 13, now)
