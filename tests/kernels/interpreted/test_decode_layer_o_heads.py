"""o by head (``DecodeLayerConfig.o_parts``), its stage alone under the Triton interpreter, in
bf16 with pair tiles and bf16 tiles: each (query head, share of o_proj's rows) item merges its
head's split partials and adds its products into int64 fixed-point sums. Against torch
(attention_reduce's merge rounded to bf16, then the projection), with splits that saw no key,
uneven shares, fewer programs than items. (The whole bf16 layer cannot run here: attention's
bf16 ``tl.dot`` is wrong under the interpreter; the GPU tests run it.)"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import decode_layer as dl
from tests.kernels.cases import generator, randn


@triton.jit
def _o_stage(w_o_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, o_ptr, num_programs,
             HIDDEN: tl.constexpr, HQ: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
             O_PARTS: tl.constexpr, ROWS: tl.constexpr, SUB: tl.constexpr):
    pid = tl.program_id(0)
    for item in range(pid, HQ * O_PARTS, num_programs):
        w = dl._o_head_tile(w_o_ptr, item, True, HIDDEN, HQ * HEAD_DIM, HEAD_DIM, O_PARTS, ROWS, SUB)
        dl._o_head_item(item, w, part_acc_ptr, part_max_ptr, part_sum_ptr, o_ptr, HIDDEN, HEAD_DIM, SPLITS,
                        O_PARTS, ROWS, SUB, tl.bfloat16)


def merged_ref(acc: torch.Tensor, m: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """attention_reduce's merge of ``[H, S, D]`` partials, per head, in float64."""
    top = m.max(dim=1, keepdim=True).values
    w = torch.where(m == float("-inf"), 0.0, torch.exp2(m - top.clamp_min(-1e30)))
    total = (sums * w).sum(dim=1, keepdim=True)
    return (acc * w[:, :, None]).sum(dim=1) / torch.where(total > 0, total, 1.0)


@settings(max_examples=20, deadline=None)
@given(hidden=st.sampled_from([32, 96, 128]), heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([16, 32, 64]),
       splits=st.sampled_from([1, 2, 4]), programs=st.sampled_from([1, 3, 8, 16]), pairs=st.booleans(),
       empty=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_o_by_head_matches_torch(hidden, heads, head_dim, splits, programs, pairs, empty, seed):
    gen = generator(seed)
    parts, rows, bk = dl.o_heads_shape(hidden, heads, head_dim, programs)
    w = randn(gen, hidden, heads * head_dim, device="cpu", dtype=torch.bfloat16, scale=(heads * head_dim) ** -0.5)
    acc = randn(gen, heads, splits, head_dim, device="cpu", dtype=torch.float32, scale=3.0)
    m = randn(gen, heads, splits, device="cpu", dtype=torch.float32, scale=2.0)
    sums = 1.0 + randn(gen, heads, splits, device="cpu", dtype=torch.float32).abs()
    m.view(-1)[: min(empty, heads * splits)] = float("-inf")  # splits that saw no key (a head may see none)
    acc.view(-1, head_dim)[: min(empty, heads * splits)] = 0.0
    o = torch.zeros(hidden, dtype=torch.int64)
    sub = dl.pair_sub(rows, bk, heads * head_dim, 4) if pairs else 0
    _o_stage[(programs,)](w, acc, m, sums, o, programs, HIDDEN=hidden, HQ=heads, HEAD_DIM=head_dim, SPLITS=splits,
                          O_PARTS=parts, ROWS=rows, SUB=sub, num_warps=4)
    attn = merged_ref(acc.double(), m.double(), sums.double()).to(torch.bfloat16)  # as the merge stage stores it
    ref = attn.reshape(1, -1).double() @ w.double().T
    got = o.double() / dl.O_SCALE.value
    scale = ref.abs().max().clamp_min(1e-6)
    # the interpreter truncates float32 -> bf16 at the merge's rounding: one bf16 step of the inputs
    assert ((got - ref).abs().max() / scale).item() <= 2e-2, (parts, rows, sub)
    plain = torch.zeros_like(o)
    _o_stage[(programs,)](w, acc, m, sums, plain, programs, HIDDEN=hidden, HQ=heads, HEAD_DIM=head_dim, SPLITS=splits,
                          O_PARTS=parts, ROWS=rows, SUB=0, num_warps=4)
    assert ((plain.double() - o.double()).abs().max() / dl.O_SCALE.value / scale).item() <= 1e-5  # pairs == bf16 tiles


def test_shares_cover_every_row_once():
    for hidden, heads, programs in [(1024, 16, 264), (2048, 32, 528), (96, 8, 3), (100, 3, 17)]:
        parts, rows, _ = dl.o_heads_shape(hidden, heads, 64, programs)
        shares = [((p + 1) * hidden // parts) - (p * hidden // parts) for p in range(parts)]
        assert sum(shares) == hidden and max(shares) <= rows and max(shares) - min(shares) <= 1
        assert heads * parts <= max(programs, heads)  # one item per program when there are enough
