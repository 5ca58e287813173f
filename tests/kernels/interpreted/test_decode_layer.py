"""The persistent decode-layer kernel, stage by stage under the Triton interpreter (a spin
barrier cannot open there: programs run one after another), against its torch reference: GQA
groups, QK-norm or not, first layer or not, scattered paged blocks, uneven work over the
programs, several K tiles and row chunks per program, key splits that find no key."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.decode_layer import choose_config, gemm_shape
from tests.kernels import decode_layer_cases as cases


@settings(max_examples=25, deadline=None)
@given(case=cases.layer_cases(), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_decode_layer_matches_reference(case, dtype):
    cases.check_decode_layer("cpu", dtype, case, stage_by_stage=True)


def test_gemm_shape_balances_rows_over_programs():
    # Qwen3-0.6B on 132 SMs: qkv 4096 rows over K 1024, o 1024 over 2048, gate/up 3072 (x2), down 1024 over 3072
    assert gemm_shape(4096, 1024, 132, False) == (16, 1024)  # 32 rows for the busiest either way; widest
    assert gemm_shape(1024, 2048, 132, False) == (8, 2048)
    assert gemm_shape(3072, 1024, 132, True) == (8, 1024)  # 24 rows (3 chunks) beat 32 (one of 32)
    assert gemm_shape(1024, 3072, 132, False) == (8, 1024)  # K tiles that divide K
    cfg = choose_config(1024, 3072, 16, 8, 128, 132)
    assert cfg.splits == 16 and cfg.num_programs == 132 and cfg.tile == 64
