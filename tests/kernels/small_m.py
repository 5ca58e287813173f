"""Shared by the small-M GEMM tests, under the interpreter and on the GPU: the error bound of
a float32-accumulated product rounded once to the output dtype, and the interpretable config.

``|got - expected| <= rel u |expected| + sums sqrt(K) u32 (|x'| @ |w|.T) + slack u_x (|x'| @ |w|.T)``:
``u`` the output dtype's unit roundoff (``rel``: both round once, the interpreter truncating
float32 -> bf16), ``sums``: the two float32 summation orders, ``slack``: the product's input
``x'`` may differ from the one ``expected`` used in its last bit or two (another activation
or norm implementation, another float32 summation order for the norm's ``rstd``).

The gated epilogue's output ``y = act(gate) * up`` (``assert_gated_within``): with ``E_g``,
``E_u`` the bound above on each of gate and up,
``|dy| <= rel u |y| + 1.2 E_g (|up| + E_u) + (|gate| + 1.2 E_g) E_u + 2 u |gate| |up|``: SiLU's
and GELU(tanh)'s slopes stay below 1.2 and their values below ``|gate|``; the last term is the
activation rounded to the dtype one ulp apart (another ``exp``, or a neighbouring gate)."""

from __future__ import annotations

import dataclasses
import math

import torch

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def assert_within(got: torch.Tensor, expected: torch.Tensor, xp: torch.Tensor, w: torch.Tensor, *,
                  rel: float = 4, sums: float = 8, slack: float = 0) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape, (got.dtype, got.shape, expected.shape)
    k = w.shape[1]
    u = UNIT_ROUNDOFF[got.dtype]
    s = xp.float().abs() @ w.float().abs().T
    bound = rel * u * expected.float().abs() + sums * math.sqrt(k) * UNIT_ROUNDOFF[torch.float32] * s + 1e-30
    if slack:
        bound = bound + slack * UNIT_ROUNDOFF[xp.dtype] * s
    err = (got.float() - expected.float()).abs()
    excess = err / bound
    worst = int(excess.argmax())
    r, c = divmod(worst, got.shape[1])
    assert excess.max().item() <= 1, (
        f"[{r}, {c}]: got {got[r, c].item()}, expected {expected[r, c].item()}, |err| {err[r, c].item():.3g} "
        f"> bound {bound[r, c].item():.3g}; {int((excess > 1).sum())} of {excess.numel()} elements outside"
    )


def assert_gated_within(got: torch.Tensor, expected: torch.Tensor, gate_up: torch.Tensor, xp: torch.Tensor,
                        w: torch.Tensor, *, rel: float = 4, sums: float = 8, slack: float = 0) -> None:
    """``got`` within the gated bound above of ``expected = act(gate) * up``, where ``gate_up =
    [gate | up]`` is the product ``expected`` came from, ``xp`` its input and ``w`` its weight."""
    assert got.dtype == expected.dtype and got.shape == expected.shape, (got.dtype, got.shape, expected.shape)
    u = UNIT_ROUNDOFF[got.dtype]
    s = xp.float().abs() @ w.float().abs().T
    e = rel * u * gate_up.float().abs() + sums * math.sqrt(w.shape[1]) * UNIT_ROUNDOFF[torch.float32] * s
    e = e + slack * UNIT_ROUNDOFF[xp.dtype] * s
    (g, up), (eg, eu) = gate_up.float().abs().chunk(2, dim=-1), e.chunk(2, dim=-1)
    bound = rel * u * expected.float().abs() + 1.2 * eg * (up + eu) + (g + 1.2 * eg) * eu + 2 * u * g * up + 1e-30
    excess = (got.float() - expected.float()).abs() / bound
    assert excess.max().item() <= 1, (
        f"{int((excess > 1).sum())} of {excess.numel()} elements outside the bound, worst {excess.max().item():.3g}x"
    )


def interpretable(cfg, m: int, n: int, k: int, dtype: torch.dtype, **choose):
    """The config to run under the interpreter: ``cfg`` or ``choose_config``'s, with the
    broadcast product for bf16 (``tl.dot`` on bf16 is wrong in the interpreter)."""
    from infer_core.kernels.small_m_gemm import choose_config

    cfg = cfg or choose_config(m, n, k, dtype, num_sms=4, **choose)
    if dtype == torch.bfloat16 and cfg.use_dot:
        cfg = dataclasses.replace(cfg, use_dot=False)
    return cfg
