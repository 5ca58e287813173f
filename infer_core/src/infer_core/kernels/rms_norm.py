"""RMSNorm, optionally fused with the residual add before it, in both numerics the
supported families use.

``y = x / rms(x) * w`` computed in float32. Llama / Qwen round the normalized value to the
input dtype before the weight multiply (``w * h.to(dtype)``); Gemma stores ``w`` as an offset
and multiplies by ``1 + w`` in float32 before rounding. The fused variant first forms
``h = x + residual`` (rounded to the input dtype, as an eager add is) and returns both the
normed ``h`` and ``h`` itself, the next residual: one read of each input, one write of each
output instead of three passes.

The arithmetic (``add_residual``, ``inv_rms``, ``normed``) is a set of ``@triton.jit`` helpers
shared with the RMSNorm prologue of :mod:`~infer_core.kernels.small_m_gemm`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infer_core.kernels.pdl import use_pdl, wait_for_prior


@triton.jit
def add_residual(x, r):
    """``x + r`` in float32, rounded to ``x``'s dtype (as an eager add): the new residual."""
    return (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)


@triton.jit
def inv_rms(sum_squares, n_cols, eps):
    """``1 / sqrt(mean(h^2) + eps)`` from the float32 sum of squares over ``n_cols`` columns."""
    return 1.0 / tl.sqrt(sum_squares / n_cols + eps)


@triton.jit
def normed(h, rstd, w, GEMMA: tl.constexpr):
    """RMSNorm of ``h`` (input dtype) given its ``rstd`` (float32, broadcast against ``h``)
    and the weight ``w``, rounded to ``h``'s dtype: Llama / Qwen round ``h * rstd`` to the
    dtype, then multiply by ``w`` in float32; Gemma multiplies by ``1 + w`` in float32. Shared
    with the GEMM prologue of :mod:`~infer_core.kernels.small_m_gemm`."""
    y = h.to(tl.float32) * rstd
    w = w.to(tl.float32)
    if GEMMA:  # noqa: SIM108 (a constexpr branch)
        y = y * (1.0 + w)
    else:
        y = y.to(h.dtype).to(tl.float32) * w
    return y.to(h.dtype)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    rows_b, stride_xa, stride_xb, stride_ra, stride_rb,
    n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        wait_for_prior()
    row = tl.program_id(0).to(tl.int64)
    a = row // rows_b
    b = row % rows_b
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    x = tl.load(x_ptr + a * stride_xa + b * stride_xb + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + a * stride_ra + b * stride_rb + cols, mask=mask, other=0.0)
        x = add_residual(x, r)
        tl.store(res_out_ptr + row * n_cols + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = inv_rms(tl.sum(h * h, axis=0), n_cols, eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = normed(x, rstd, w, GEMMA)
    tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """A 3-D view ``[A, B, N]`` of ``x`` with a unit last stride (no copy when possible)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 1:
        return x.view(1, 1, -1)
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3:
        return x
    return x.reshape(-1, 1, x.shape[-1])


def _launch(x, weight, eps, gemma, residual):
    n = x.shape[-1]
    assert weight.shape == (n,) and weight.is_contiguous(), (weight.shape, n)
    x3 = _as_rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    r3 = _as_rows(residual) if residual is not None else x3
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype, (residual.shape, x.shape)
        if r3.shape != x3.shape:
            r3 = r3.reshape(x3.shape)
    rows = x3.shape[0] * x3.shape[1]
    if rows:
        block = triton.next_power_of_2(n)
        warps = min(max(block * x.element_size() // 1024, 1), 16)
        pdl = use_pdl(x)
        _rms_norm_kernel[(rows,)](
            x3, r3, weight, out, res_out,
            x3.shape[1], x3.stride(0), x3.stride(1), r3.stride(0), r3.stride(1),
            n, eps,
            HAS_RESIDUAL=residual is not None, GEMMA=gemma, BLOCK_N=block, PDL=pdl, num_warps=warps,
            launch_pdl=pdl,
        )
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False) -> torch.Tensor:
    """RMSNorm over the last dimension of ``x`` (any leading shape and strides)."""
    return _launch(x, weight, eps, gemma, None)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual``; returns ``(rms_norm(h), h)``."""
    return _launch(x, weight, eps, gemma, residual)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        return (h * (1.0 + weight.float())).to(dtype)
    return (weight * h.to(dtype)).to(dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x + residual
    return rms_norm_ref(h, weight, eps, gemma), h
