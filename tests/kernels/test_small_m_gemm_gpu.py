"""The small-M GEMM kernel on a CUDA device at the projections of Llama-3.2-1B and Qwen3-0.6B,
M = 1, 2, 4, 8, 16, bf16, against ``small_m_gemm_ref`` (float32 product, rounded once); the
down projection also with SiLU-and-mul fused in, against the ``act_and_mul`` kernel followed
by the reference product (same activation arithmetic) and against the torch reference; both
inner products and split-K forced; bitwise determinism; capture in a CUDA graph. Run with
``pytest -m gpu``.

Tolerance: ``|got - ref| <= 3 u |ref| + 16 sqrt(K) u32 (|x'| @ |w|.T)`` (``u`` the output
dtype's unit roundoff; both round to nearest once, and sum float32 products in different
orders), plus ``2 u (|x'| @ |w|.T)`` against the torch activation, whose float32 ``silu`` /
``gelu`` may round ``x'`` to a neighbouring bf16 value now and then.

The qkv and gate/up projections also with RMSNorm and the residual add in the prologue
(``norm=NormPrologue(...)``), M = 1, 2, 4, against ``fused_add_rms_norm`` then
``small_m_gemm`` (same config) and then the reference product, plus ``4 u (|x'| @ |w|.T)``:
the norm's ``rstd`` is summed over K tiles in the prologue, in one block in ``rms_norm``, so
a normalized element may round to a neighbouring value now and then; the new residual bit
for bit; under CUDA-graph capture too.

The gate/up projections with the gated activation in the epilogue (``gated="silu"`` /
``"gelu_tanh"``, weight ``[2I, K]``, output ``[M, I]``), M = 1, 2, 4, 16, alone and after the
norm prologue: against the unfused kernels with the same config (``small_m_gemm`` then
``silu_and_mul`` / ``gelu_tanh_and_mul``; the same sums, so within the bound and in practice
equal) and against the torch references, both through ``small_m.assert_gated_within``
(the small-M bound carried through the activation); the new residual bit for bit the non-gated
norm path's; forced configs (a ``split_k`` the epilogue ignores); under CUDA-graph capture.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernels import small_m

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = "cuda"
BF16 = torch.bfloat16
MS = [1, 2, 4, 8, 16]
# (N, K) of each projection; "down" also runs with act_and_mul (x is [M, 2K] = [gate | up])
SHAPES = {
    "llama-3.2-1b qkv": (3072, 2048), "llama-3.2-1b o": (2048, 2048),
    "llama-3.2-1b gate_up": (16384, 2048), "llama-3.2-1b down": (2048, 8192),
    "qwen3-0.6b qkv": (4096, 1024), "qwen3-0.6b o": (1024, 2048),
    "qwen3-0.6b gate_up": (6144, 1024), "qwen3-0.6b down": (1024, 3072),
}


def make(m: int, n: int, k: int, dtype: torch.dtype, act: str | None, seed: int):
    gen = torch.Generator(CUDA).manual_seed(seed)
    x = torch.randn(m, 2 * k if act else k, device=CUDA, generator=gen).to(dtype)
    w = (torch.randn(n, k, device=CUDA, generator=gen) / math.sqrt(k)).to(dtype)
    return x, w


def assert_within(got, expected, xp, w, *, act_slack: bool = False) -> None:
    small_m.assert_within(got, expected, xp, w, rel=3, sums=16, slack=2 if act_slack else 0)


def check(x, w, act=None, config=None):
    from infer_core.kernels import act_and_mul
    from infer_core.kernels.small_m_gemm import small_m_gemm, small_m_gemm_ref

    got = small_m_gemm(x, w, act_and_mul=act, config=config)
    if act is None:
        assert_within(got, small_m_gemm_ref(x, w), x, w)
    else:
        xp = {"silu": act_and_mul.silu_and_mul, "gelu_tanh": act_and_mul.gelu_tanh_and_mul}[act](x)
        assert_within(got, small_m_gemm_ref(xp, w), xp, w)
        xp_ref = {"silu": act_and_mul.silu_and_mul_ref, "gelu_tanh": act_and_mul.gelu_tanh_and_mul_ref}[act](x)
        assert_within(got, small_m_gemm_ref(x, w, act), xp_ref, w, act_slack=True)
    return got


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("shape", list(SHAPES), ids=lambda s: s.replace(" ", "-"))
def test_real_shapes_bf16(shape, m):
    n, k = SHAPES[shape]
    x, w = make(m, n, k, BF16, None, seed=m + n + k)
    check(x, w)
    if shape.endswith("down"):
        x, w = make(m, n, k, BF16, "silu", seed=m + n + k + 1)
        check(x, w, "silu")


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_dtypes(dtype, m):
    n, k = SHAPES["llama-3.2-1b down"]
    x, w = make(m, n, k, dtype, None, seed=1)
    check(x, w)
    x, w = make(m, n, k, dtype, "gelu_tanh", seed=2)
    check(x, w, "gelu_tanh")


def forced_configs():
    from infer_core.kernels.small_m_gemm import LaunchConfig

    return [
        LaunchConfig(4, 1024, num_warps=4),
        LaunchConfig(8, 512, split_k=4, num_warps=8),
        LaunchConfig(16, 256, use_dot=True),
        LaunchConfig(32, 128, split_k=2, use_dot=True, num_stages=4),
        LaunchConfig(64, 64, split_k=8, use_dot=True),
    ]


@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("act", [None, "silu"])
def test_forced_configs(m, act):
    n, k = 1000, 3000  # neither a multiple of the blocks
    x, w = make(m, n, k, BF16, act, seed=m)
    for cfg in forced_configs():
        check(x, w, act, cfg)


@pytest.mark.parametrize("m", [1, 16])
def test_bitwise_deterministic(m):
    from infer_core.kernels.small_m_gemm import small_m_gemm

    n, k = SHAPES["llama-3.2-1b down"]
    x, w = make(m, n, k, BF16, "silu", seed=3)
    for cfg in [None, *forced_configs()]:
        first = small_m_gemm(x, w, act_and_mul="silu", config=cfg)
        for _ in range(3):
            assert torch.equal(small_m_gemm(x, w, act_and_mul="silu", config=cfg), first), cfg


def captured(fn):
    """``fn`` run once (compiles), once on a side stream (warms up), then captured in a CUDA
    graph: ``(graph, fn's output inside the graph)``."""
    fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize("act", [None, "silu"])
def test_capturable_in_a_cuda_graph(m, act):
    from infer_core.kernels.small_m_gemm import small_m_gemm

    n, k = SHAPES["llama-3.2-1b down"]
    x, w = make(m, n, k, BF16, act, seed=4)
    for cfg in [None, forced_configs()[1], forced_configs()[3]]:  # chosen, split broadcast, split dot
        graph, out = captured(lambda: small_m_gemm(x, w, act_and_mul=act, config=cfg))  # noqa: B023
        for seed in range(3):
            x.copy_(torch.randn(x.shape, device=CUDA, generator=torch.Generator(CUDA).manual_seed(seed)))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, small_m_gemm(x, w, act_and_mul=act, config=cfg)), (cfg, seed)
        check(x, w, act, cfg)


# -- RMSNorm (+ residual add) in the prologue ------------------------------------------------

NORM_SHAPES = {k: v for k, v in SHAPES.items() if k.endswith(("qkv", "gate_up"))}


def make_norm(m: int, k: int, gemma: bool, seed: int):
    gen = torch.Generator(CUDA).manual_seed(seed)
    x = (3 * torch.randn(m, k, device=CUDA, generator=gen)).to(BF16)
    r = torch.randn(m, k, device=CUDA, generator=gen).to(BF16)
    nw = (0.5 * torch.randn(k, device=CUDA, generator=gen) + (0.0 if gemma else 1.0)).to(BF16)
    return x, r, nw


def check_norm(x, r, nw, w, gemma: bool, config=None):
    from infer_core.kernels.rms_norm import fused_add_rms_norm, fused_add_rms_norm_ref
    from infer_core.kernels.small_m_gemm import NormPrologue, small_m_gemm, small_m_gemm_ref

    y, h = small_m_gemm(x, w, norm=NormPrologue(nw, 1e-6, gemma, r), config=config)
    xn, h_unfused = fused_add_rms_norm(x, r, nw, 1e-6, gemma)
    assert torch.equal(h, h_unfused)  # the new residual, bit for bit
    assert torch.equal(h, x + r)  # eager bf16 add: rounded to nearest
    small_m.assert_within(y, small_m_gemm(xn, w, config=config), xn, w, rel=3, sums=16, slack=4)
    small_m.assert_within(y, small_m_gemm_ref(xn, w), xn, w, rel=3, sums=16, slack=4)
    xn_ref, _ = fused_add_rms_norm_ref(x, r, nw, 1e-6, gemma)
    small_m.assert_within(y, small_m_gemm_ref(xn_ref, w), xn_ref, w, rel=3, sums=16, slack=8)
    return y, h


@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("shape", list(NORM_SHAPES), ids=lambda s: s.replace(" ", "-"))
def test_norm_prologue_real_shapes_bf16(shape, m, gemma):
    n, k = NORM_SHAPES[shape]
    x, r, nw = make_norm(m, k, gemma, seed=m + n)
    w = make(m, n, k, BF16, None, seed=m + n + 1)[1]
    check_norm(x, r, nw, w, gemma)
    for cfg in forced_configs():
        check_norm(x, r, nw, w, gemma, cfg)


@pytest.mark.parametrize("m", [1, 4])
def test_norm_prologue_capturable_in_a_cuda_graph(m):
    from infer_core.kernels.small_m_gemm import NormPrologue, small_m_gemm

    n, k = NORM_SHAPES["qwen3-0.6b gate_up"]
    x, r, nw = make_norm(m, k, False, seed=5)
    w = make(m, n, k, BF16, None, seed=6)[1]
    norm = NormPrologue(nw, 1e-6, False, r)
    for cfg in [None, forced_configs()[1], forced_configs()[3]]:  # chosen, split broadcast, split dot
        graph, (y, h) = captured(lambda: small_m_gemm(x, w, norm=norm, config=cfg))  # noqa: B023
        for seed in range(3):
            gen = torch.Generator(CUDA).manual_seed(seed)
            x.copy_(torch.randn(x.shape, device=CUDA, generator=gen))
            r.copy_(torch.randn(r.shape, device=CUDA, generator=gen))
            graph.replay()
            torch.cuda.synchronize()
            y_eager, h_eager = small_m_gemm(x, w, norm=norm, config=cfg)
            assert torch.equal(y, y_eager) and torch.equal(h, h_eager), (cfg, seed)
        check_norm(x, r, nw, w, False, cfg)


# -- the gated activation in the epilogue ----------------------------------------------------

GATE_UP_SHAPES = {k: v for k, v in SHAPES.items() if k.endswith("gate_up")}  # (2I, K)


def check_gated(x, w, act: str, norm=None, config=None):
    """The fused launch against the unfused kernels (same config, never split) and the torch
    references; with ``norm`` also the new residual against the non-gated norm path's."""
    from infer_core.kernels import act_and_mul
    from infer_core.kernels.rms_norm import fused_add_rms_norm_ref
    from infer_core.kernels.small_m_gemm import LaunchConfig, small_m_gemm, small_m_gemm_ref

    act_kernel = {"silu": act_and_mul.silu_and_mul, "gelu_tanh": act_and_mul.gelu_tanh_and_mul}[act]
    plain = None if config is None else LaunchConfig(config.block_n, config.block_k, 1, config.num_warps,
                                                      config.num_stages, config.use_dot)
    if norm is None:
        got, gate_up, xp = small_m_gemm(x, w, gated=act, config=config), small_m_gemm(x, w, config=plain), x
    else:
        (got, h), (gate_up, h_plain) = (small_m_gemm(x, w, gated=act, norm=norm, config=config),
                                        small_m_gemm(x, w, norm=norm, config=plain))
        assert torch.equal(h, h_plain)  # the new residual, bit for bit
        xp = fused_add_rms_norm_ref(x, norm.residual, norm.weight, norm.eps, norm.gemma)[0]
    assert got.shape == (x.shape[0], w.shape[0] // 2), got.shape
    small_m.assert_gated_within(got, act_kernel(gate_up), gate_up, xp, w, rel=3, sums=16)  # the unfused kernels
    small_m.assert_gated_within(got, small_m_gemm_ref(xp, w, gated=act), small_m_gemm_ref(xp, w), xp, w,
                                rel=3, sums=16, slack=0 if norm is None else 8)  # the torch references
    return got


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("with_norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("m", [1, 2, 4, 16])
@pytest.mark.parametrize("shape", list(GATE_UP_SHAPES), ids=lambda s: s.replace(" ", "-"))
def test_gated_epilogue_real_shapes_bf16(shape, m, with_norm, act):
    from infer_core.kernels.small_m_gemm import NormPrologue

    n, k = GATE_UP_SHAPES[shape]
    x, r, nw = make_norm(m, k, act == "gelu_tanh", seed=m + n + 2)
    w = make(m, n, k, BF16, None, seed=m + n + 3)[1]
    norm = NormPrologue(nw, 1e-6, act == "gelu_tanh", r) if with_norm else None
    check_gated(x, w, act, norm)
    for cfg in forced_configs():
        check_gated(x, w, act, norm, cfg)


@pytest.mark.parametrize("m", [1, 5])
def test_gated_epilogue_ragged_shapes(m):
    """I and K neither a multiple of the blocks, fp16 and fp32 (bf16: the real shapes above)."""
    for dtype in (torch.float16, torch.float32):
        x, w = make(m, 2 * 500, 3000, dtype, None, seed=m + 7)
        for cfg in [None, *forced_configs()]:
            check_gated(x, w, "silu", config=cfg)


@pytest.mark.parametrize("m", [1, 4])
def test_gated_epilogue_capturable_in_a_cuda_graph(m):
    from infer_core.kernels.small_m_gemm import NormPrologue, small_m_gemm

    n, k = GATE_UP_SHAPES["qwen3-0.6b gate_up"]
    x, r, nw = make_norm(m, k, False, seed=8)
    w = make(m, n, k, BF16, None, seed=9)[1]
    norm = NormPrologue(nw, 1e-6, False, r)
    for cfg in [None, forced_configs()[0], forced_configs()[2]]:  # chosen, broadcast, dot
        graph, (y, h) = captured(lambda: small_m_gemm(x, w, gated="silu", norm=norm, config=cfg))  # noqa: B023
        for seed in range(3):
            gen = torch.Generator(CUDA).manual_seed(seed)
            x.copy_(torch.randn(x.shape, device=CUDA, generator=gen))
            r.copy_(torch.randn(r.shape, device=CUDA, generator=gen))
            graph.replay()
            torch.cuda.synchronize()
            y_eager, h_eager = small_m_gemm(x, w, gated="silu", norm=norm, config=cfg)
            assert torch.equal(y, y_eager) and torch.equal(h, h_eager), (cfg, seed)
        check_gated(x, w, "silu", norm, cfg)
