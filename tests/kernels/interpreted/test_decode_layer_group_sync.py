"""group_sync's arithmetic (``DecodeLayerConfig.group_sync``) under the Triton interpreter: the
counts the qkv programs add to each KV group's counter (:func:`_group_arrive`) reach exactly
the target an attention item waits for (:func:`_group_target`), which also equals a brute-force
count over the balanced shares. The waits themselves need every program resident at once
(GPU tests: tests/kernels/test_decode_layer_gpu.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.decode_layer.sync import _group_arrive, _group_target
from tests.kernels.decode_layer_cases import group_producer_counts


@triton.jit
def _arrive_kernel(counters_ptr, N: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr):
    _group_arrive(counters_ptr, tl.program_id(0), tl.num_programs(0), N, HQ, HKV, D)


@triton.jit
def _target_kernel(out_ptr, epoch, programs, N: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr,
                   D: tl.constexpr):
    g = tl.program_id(0)
    tl.store(out_ptr + g, _group_target(g, epoch, programs, N, HQ, HKV, D))


@settings(max_examples=30, deadline=None)
@given(hkv=st.sampled_from([1, 2, 4, 8]), group=st.sampled_from([1, 2, 4]), d=st.sampled_from([16, 64, 128]),
       programs=st.integers(1, 300), epoch=st.integers(0, 5))
def test_group_counts_reach_the_target(hkv, group, d, programs, epoch):
    hq = hkv * group
    rows = (hq + 2 * hkv) * d
    programs = min(programs, rows)  # decode_layer refuses more programs than qkv rows
    counters = torch.zeros(8 + 2 * hkv, dtype=torch.int32)
    for _ in range(epoch + 1):  # one launch's arrivals per epoch, never reset
        _arrive_kernel[(programs,)](counters, N=rows, HQ=hq, HKV=hkv, D=d)
    target = torch.zeros(hkv, dtype=torch.int32)
    _target_kernel[(hkv,)](target, epoch, programs, N=rows, HQ=hq, HKV=hkv, D=d)
    expected = [(epoch + 1) * n for n in group_producer_counts(programs, hq, hkv, d)]
    assert counters[8:8 + hkv].tolist() == expected == target.tolist()
    assert not counters[:8].any() and not counters[8 + hkv:].any()
