"""The persistent decode layer's synchronization: grid barriers (a counter per barrier,
never reset: each launch waits for its own epoch's count) and ``group_sync``'s per-KV-group
counters, on which an attention item waits for its own group's qkv producers only and a
merge for its group's key splits only.

Counters (``DecodeWorkspace.counters``, int32): 0-4 the barriers between the six stages,
:data:`EPOCH_SLOT` the launches' count, then two per KV group from :data:`GROUP_SLOT`."""

from __future__ import annotations

import triton
import triton.language as tl

from infer_core.kernels.decode_layer.gemm import _share

EPOCH_SLOT = tl.constexpr(6)  # the launches' count (counters[6]): the barrier counters (0-4) are never reset
MAX_SPINS = tl.constexpr(1 << 22)  # polls of one barrier before giving up (seconds: a bug, never a wait)


@triton.jit
def _grid_barrier(counters_ptr, index, target, error_ptr, POLL_SLEEP: tl.constexpr):
    """Wait until all programs reached barrier ``index`` (its counter reached ``target``,
    :func:`_target`); their stores before it are visible after it (release add, acquire polls,
    CTA barriers around both)."""
    seen = _arrive(counters_ptr, index)
    _wait(counters_ptr, index, seen, target, error_ptr, POLL_SLEEP)


@triton.jit
def _target(counters_ptr, num_programs):
    """``(target, epoch)``: the count every barrier counter reaches when all programs of this
    launch arrived. The counters are never reset: launch ``e`` (the epoch in
    ``counters[EPOCH_SLOT]``, read after the PDL wait, when the launch before finished) waits
    for ``(e + 1) * num_programs``, in int32 arithmetic that wraps (the comparisons take the
    difference)."""
    epoch = tl.load(counters_ptr + EPOCH_SLOT, cache_modifier=".cg")
    return (epoch + 1) * num_programs, epoch


@triton.jit
def _arrive(counters_ptr, index):
    """This program's arrival at barrier ``index`` (its stores before it released): the count
    of programs arrived so far. The release is a GPU-scope fence, which also waits for the
    program's loads in flight: a load issued between :func:`_arrive` and :func:`_wait`
    overlaps the wait instead of delaying the arrival."""
    tl.debug_barrier()
    return tl.atomic_add(counters_ptr + index, 1, sem="acq_rel", scope="gpu") + 1


@triton.jit
def _wait(counters_ptr, index, seen, target, error_ptr, POLL_SLEEP: tl.constexpr):
    """Poll barrier ``index`` (acquire atomics) until its counter reached ``target`` (all
    programs arrived; ``seen - target`` is compared, so a counter that wrapped around compares
    right). With ``POLL_SLEEP`` > 0 (CUDA only), each poll comes after a ``nanosleep`` of that
    many nanoseconds: fewer atomics on the counter's L2 slice while the last programs arrive.
    (Acquire loads instead of the atomics measured slower: 20.3 against 19.6 µs per layer,
    benchmarks/reports/multi-layer-launch-2026-12-04-h200.)"""
    counter = counters_ptr + index
    spins = 0
    while (seen - target < 0) & (spins < MAX_SPINS):
        if POLL_SLEEP > 0:
            tl.inline_asm_elementwise("nanosleep.u32 $1;\nmov.b32 $0, 0;", "=r,r", [spins * 0 + POLL_SLEEP],
                                      dtype=tl.int32, is_pure=False, pack=1)
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        spins += 1
    if seen - target < 0:
        tl.atomic_xchg(error_ptr, 1, sem="relaxed", scope="gpu")
    tl.debug_barrier()


# group_sync: counters[8 + g] count KV group g's qkv producers, counters[8 + HKV + g] its attention items done
GROUP_SLOT = tl.constexpr(8)


@triton.jit
def _interval_programs(a, b, num_programs, N: tl.constexpr):
    """How many programs of a balanced stage (:func:`_share`, at most ``N`` programs) hold rows
    of ``[a, b)``: the owners of its first and last rows (row ``r``'s is ``((r + 1) P - 1) // N``)
    and every one between."""
    return ((b * num_programs - 1) // N) - (((a + 1) * num_programs - 1) // N) + 1


@triton.jit
def _touches(lo, hi, a, b):
    return (lo < b) & (a < hi)


@triton.jit
def _group_rows(g, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr):
    """KV group ``g``'s rows of the qkv output: its query heads', its key's and its value's
    (three ``[start, end)`` intervals)."""
    q0 = g * (HQ // HKV) * D
    k0 = HQ * D + g * D
    v0 = (HQ + HKV) * D + g * D
    return q0, q0 + (HQ // HKV) * D, k0, k0 + D, v0, v0 + D


@triton.jit
def _group_arrive(counters_ptr, pid, num_programs, N: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr,
                  D: tl.constexpr):
    """group_sync's arrival after the qkv stage (a balanced share, :func:`_share`): one release
    add on KV group ``g``'s counter per interval of the group's rows (:func:`_group_rows`) that
    this program's share holds rows of (the CTA barrier first: every thread's stores before it)."""
    lo, hi = _share(pid, num_programs, N)
    tl.debug_barrier()
    for g in tl.static_range(HKV):
        q0, q1, k0, k1, v0, v1 = _group_rows(g, HQ, HKV, D)
        n = _touches(lo, hi, q0, q1).to(tl.int32) + _touches(lo, hi, k0, k1).to(tl.int32) \
            + _touches(lo, hi, v0, v1).to(tl.int32)
        if n > 0:
            tl.atomic_add(counters_ptr + GROUP_SLOT + g, n, sem="release", scope="gpu")


@triton.jit
def _group_target(g, epoch, num_programs, N: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr):
    """The count KV group ``g``'s counter reaches once every producer of its rows arrived in
    launch ``epoch`` (the counters are never reset: ``epoch + 1`` launches' worth)."""
    q0, q1, k0, k1, v0, v1 = _group_rows(g, HQ, HKV, D)
    per_launch = (_interval_programs(q0, q1, num_programs, N) + _interval_programs(k0, k1, num_programs, N)
                  + _interval_programs(v0, v1, num_programs, N))
    return (epoch + 1) * per_launch
