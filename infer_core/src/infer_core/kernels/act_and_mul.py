"""Gated activations over a fused ``[gate | up]`` projection: ``act(gate) * up``.

``x [..., 2N] -> [..., N]`` with ``act`` SiLU (Llama, Qwen) or tanh-approximated GELU
(Gemma). As in eager PyTorch, the activation is computed in float32 and rounded to the
input dtype before the product, which is rounded once more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from infer_core.kernels.pdl import use_pdl, wait_for_prior

SILU = 0
GELU_TANH = 1


@triton.jit
def gated(gate, up, ACT: tl.constexpr):
    """``act(gate) * up`` in float32, the activation rounded to ``gate``'s dtype first (as the
    unfused model computes it), the product rounded to it too. Shared with the GEMM prologue of
    :mod:`~infer_core.kernels.small_m_gemm`."""
    g = gate.to(tl.float32)
    if ACT == 0:
        e = tl.exp(-tl.abs(g))  # never overflows
        a = g * tl.where(g >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    else:
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        e = tl.exp(-2.0 * tl.abs(z))
        tanh = (1.0 - e) / (1.0 + e)
        a = 0.5 * g * (1.0 + tl.where(z >= 0, tanh, -tanh))
    y = a.to(gate.dtype).to(tl.float32) * up.to(tl.float32)
    return y.to(gate.dtype)


@triton.jit
def _act_and_mul_kernel(x_ptr, out_ptr, stride_x, n_cols, ACT: tl.constexpr, BLOCK: tl.constexpr,
                        PDL: tl.constexpr):
    if PDL:
        wait_for_prior()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0)
    y = gated(gate, up, ACT)
    tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, act: int) -> torch.Tensor:
    assert x.shape[-1] % 2 == 0, x.shape
    n = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    if x2.shape[0] and n:
        block = min(triton.next_power_of_2(n), 1024)
        pdl = use_pdl(x2)
        _act_and_mul_kernel[(x2.shape[0], triton.cdiv(n, block))](
            x2, out, x2.stride(0), n, ACT=act, BLOCK=block, PDL=pdl, num_warps=4, launch_pdl=pdl,
        )
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _launch(x, SILU)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _launch(x, GELU_TANH)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up
