"""Micro-benchmark of the small-M GEMM (decode projections): Triton kernel against cuBLAS.

``infer_core.kernels.small_m_gemm`` (its ``choose_config``) and ``torch.nn.functional.linear``
on the projections of Llama-3.2-1B and Qwen3-0.6B (q/k/v fused, o, gate/up fused, down) in
bf16 at M = 1, 4 and 16 rows; for the down projections also SiLU-and-mul folded into the
kernel's prologue against the ``act_and_mul`` kernel followed by ``F.linear`` (and by the
Triton GEMM); for the q/k/v and gate/up projections also RMSNorm with the residual add folded
into the prologue (``norm=NormPrologue(...)``, "rmsnorm+gemm (fused)": one launch) against
``fused_add_rms_norm`` followed by the Triton GEMM and by ``F.linear`` (two launches). The
models take the GEMM through model.small_m_gemm (on by default on CUDA, one-row inputs) but
none of the prologues yet: this is the measurement that decides.

Timing, the device's copy-bandwidth ceiling and the environment record are those of
``benchmarks/kernels.py`` (CUDA-graph replays from a cold L2, see ``kernels.timed``). The bytes
charged are the weight, ``x`` (``[M, 2K]`` when fused) and ``y``, each moved once (with the
norm also the residual, the norm weight and the new residual); GB/s are reported against the
measured copy bandwidth. ``--sweep`` times a grid of launch configs per shape (tile shapes
first, then warps, stages and split-K around the three fastest tiles; the fused down
projection and the fused norm with the five fastest) and reports the best per shape. Writes
``kernels_small_m_gemm.json`` and ``kernels_small_m_gemm.md`` into ``--out``.

    python benchmarks/kernels_small_m_gemm.py --out benchmarks/reports/small-m-gemm-<date>-<device> [--sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from infer_core.kernels.act_and_mul import silu_and_mul
from infer_core.kernels.rms_norm import fused_add_rms_norm
from infer_core.kernels.small_m_gemm import (
    LaunchConfig,
    NormPrologue,
    choose_config,
    small_m_gemm,
    split_k_for,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/kernels.py, run as a script or not
from kernels import Recorder, environment, measure_ceilings, run_cases, save, timed

BF16 = torch.bfloat16
MS = (1, 4, 16)
EPS = 1e-6
NORMED = ("qkv", "gate_up")  # the projections right after an RMSNorm in every decoder layer
# (N, K) per projection: y[M, N] = x[M, K] @ W[N, K].T
MODELS = {
    "llama-3.2-1b": {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192)},
    "qwen3-0.6b": {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024), "down": (1024, 3072)},
}


def gemm_bytes(m: int, n: int, k: int, fused: bool = False) -> int:
    return 2 * (n * k + m * k * (2 if fused else 1) + m * n)


def norm_gemm_bytes(m: int, n: int, k: int) -> int:
    """Weight, x, residual, norm weight, y and the new residual, each once."""
    return 2 * (n * k + 3 * m * k + k + m * n)


def cfg_dict(cfg: LaunchConfig) -> dict:
    return dataclasses.asdict(cfg)


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)


def act_then_linear(gu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(silu_and_mul(gu), w)


def act_then_triton(gu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return small_m_gemm(silu_and_mul(gu), w)


def fused(gu: torch.Tensor, w: torch.Tensor, config: LaunchConfig | None = None) -> torch.Tensor:
    return small_m_gemm(gu, w, act_and_mul="silu", config=config)


def add_norm_then_linear(x, r, nw, w):
    xn, h = fused_add_rms_norm(x, r, nw, EPS)
    return F.linear(xn, w), h


def add_norm_then_triton(x, r, nw, w):
    xn, h = fused_add_rms_norm(x, r, nw, EPS)
    return small_m_gemm(xn, w), h


def norm_fused(x, r, nw, w, config: LaunchConfig | None = None):
    return small_m_gemm(x, w, norm=NormPrologue(nw, EPS, False, r), config=config)


def agree(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    rel = ((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
    assert rel < 1e-2, f"{what}: relative error {rel:.3g} against the torch result"


def tile_grid(m: int, k: int) -> list[tuple[int, int, bool]]:
    """(block_n, block_k, use_dot) of the sweep's first pass: broadcast tiles holding 2k-16k
    products per step, MMA tiles 16-64 x 64-256."""
    bm = min(triton.next_power_of_2(m), 16)
    tiles = [(bn, bk, False) for bn in (2, 4, 8, 16, 32) for bk in (128, 256, 512, 1024, 2048)
             if bk <= k and 2048 <= bm * bn * bk <= 16384]
    tiles += [(bn, bk, True) for bn in (16, 32, 64) for bk in (64, 128, 256)]
    return tiles


def sweep_configs(m: int, n: int, k: int, num_sms: int) -> list[LaunchConfig]:
    def base(bn: int, bk: int, dot: bool) -> LaunchConfig:
        bm = 16 if dot else min(triton.next_power_of_2(m), 16)
        split = split_k_for(triton.cdiv(n, bn) * triton.cdiv(m, bm), triton.cdiv(k, bk), num_sms)
        warps = 4 if dot or bm * bn * bk < 8192 else 8
        return LaunchConfig(bn, bk, split, num_warps=warps, num_stages=3, use_dot=dot)

    return [base(*t) for t in tile_grid(m, k)]


def refine(cfg: LaunchConfig, m: int, n: int, k: int, num_sms: int) -> list[LaunchConfig]:
    """Warps, stages and split-K around one tile."""
    bm = cfg.block_m(m)
    auto = split_k_for(triton.cdiv(n, cfg.block_n) * triton.cdiv(m, bm), triton.cdiv(k, cfg.block_k), num_sms)
    splits = sorted({1, auto, min(2 * max(auto, 1), 8)})
    return [dataclasses.replace(cfg, num_warps=w, num_stages=s, split_k=sk)
            for w in (4, 8) for s in (2, 3, 4) for sk in splits if triton.cdiv(k, cfg.block_k) >= sk]


def bench(rec: Recorder, model: str, proj: str, m: int, sweep: bool, num_sms: int) -> None:
    n, k = MODELS[model][proj]
    shape = f"{proj} M={m} [{n} x {k}]"
    x = torch.randn(m, k, device="cuda", dtype=BF16)
    w = (torch.randn(n, k, device="cuda") / k**0.5).to(BF16)
    chosen = choose_config(m, n, k, BF16, num_sms)
    agree(small_m_gemm(x, w), linear(x, w), f"{model} {shape}")
    nbytes = gemm_bytes(m, n, k)
    rec.add("triton small_m_gemm", model, shape, timed(small_m_gemm, x, w), bytes_=nbytes, config=cfg_dict(chosen))
    rec.add("cuBLAS F.linear", model, shape, timed(linear, x, w), bytes_=nbytes, group="reference")
    ranked: list[tuple[float, LaunchConfig]] = []
    if sweep:
        seen = {chosen}
        first = []
        for cfg in sweep_configs(m, n, k, num_sms):
            if cfg not in seen:
                seen.add(cfg)
                first.append((timed(small_m_gemm, x, w, config=cfg), cfg))
        first.sort(key=lambda t: t[0])
        second = []
        for _, best in first[:3]:
            for cfg in refine(best, m, n, k, num_sms):
                if cfg not in seen:
                    seen.add(cfg)
                    second.append((timed(small_m_gemm, x, w, config=cfg), cfg))
        ranked = sorted(first + second, key=lambda t: t[0])
        for ms, cfg in ranked:
            rec.add("sweep small_m_gemm", model, shape, ms, bytes_=nbytes, config=cfg_dict(cfg), group="sweep")
        ms, cfg = ranked[0]
        agree(small_m_gemm(x, w, config=cfg), linear(x, w), f"{model} {shape} {cfg}")
        rec.add("best small_m_gemm", model, shape, ms, bytes_=nbytes, config=cfg_dict(cfg), group="best")
    if proj == "down":
        bench_act(rec, model, m, n, k, w, ranked, sweep, num_sms)
    if proj in NORMED:
        bench_norm(rec, model, proj, m, n, k, w, ranked, sweep, num_sms)


def bench_act(rec: Recorder, model: str, m: int, n: int, k: int, w: torch.Tensor,
              ranked: list[tuple[float, LaunchConfig]], sweep: bool, num_sms: int) -> None:
    gu = torch.randn(m, 2 * k, device="cuda", dtype=BF16)
    shape = f"silu+down M={m} [{n} x {k}]"
    agree(fused(gu, w), act_then_linear(gu, w), f"{model} {shape}")
    fbytes = gemm_bytes(m, n, k, fused=True)
    rec.add("triton act+gemm (fused)", model, shape, timed(fused, gu, w), bytes_=fbytes,
            config=cfg_dict(choose_config(m, n, k, BF16, num_sms, act=True)))
    rec.add("act_and_mul + triton gemm", model, shape, timed(act_then_triton, gu, w), bytes_=fbytes)
    rec.add("act_and_mul + F.linear", model, shape, timed(act_then_linear, gu, w), bytes_=fbytes, group="reference")
    if sweep:
        times = []
        for _, cfg in ranked[:5]:
            times.append((timed(fused, gu, w, config=cfg), cfg))
            rec.add("sweep fused", model, shape, times[-1][0], bytes_=fbytes, config=cfg_dict(cfg), group="sweep")
        ms, cfg = min(times, key=lambda t: t[0])
        rec.add("best fused", model, shape, ms, bytes_=fbytes, config=cfg_dict(cfg), group="best")


def bench_norm(rec: Recorder, model: str, proj: str, m: int, n: int, k: int, w: torch.Tensor,
               ranked: list[tuple[float, LaunchConfig]], sweep: bool, num_sms: int) -> None:
    """The decoder layer's ``fused_add_rms_norm`` then ``proj``, fused into one launch or not."""
    x = torch.randn(m, k, device="cuda", dtype=BF16)
    r = torch.randn(m, k, device="cuda", dtype=BF16)
    nw = (1 + 0.1 * torch.randn(k, device="cuda")).to(BF16)
    shape = f"rmsnorm+{proj} M={m} [{n} x {k}]"
    (y, h), (y_ref, h_ref) = norm_fused(x, r, nw, w), add_norm_then_linear(x, r, nw, w)
    agree(y, y_ref, f"{model} {shape}")
    assert torch.equal(h, h_ref), f"{model} {shape}: the new residual differs from fused_add_rms_norm's"
    nbytes = norm_gemm_bytes(m, n, k)
    rec.add("triton rmsnorm+gemm (fused)", model, shape, timed(norm_fused, x, r, nw, w), bytes_=nbytes,
            config=cfg_dict(choose_config(m, n, k, BF16, num_sms, norm=True)))
    rec.add("fused_add_rms_norm + triton gemm", model, shape, timed(add_norm_then_triton, x, r, nw, w),
            bytes_=nbytes)
    rec.add("fused_add_rms_norm + F.linear", model, shape, timed(add_norm_then_linear, x, r, nw, w),
            bytes_=nbytes, group="reference")
    if sweep:
        times = []
        for _, cfg in ranked[:5]:
            times.append((timed(norm_fused, x, r, nw, w, config=cfg), cfg))
            rec.add("sweep rmsnorm fused", model, shape, times[-1][0], bytes_=nbytes, config=cfg_dict(cfg),
                    group="sweep")
        ms, cfg = min(times, key=lambda t: t[0])
        agree(norm_fused(x, r, nw, w, config=cfg)[0], y_ref, f"{model} {shape} {cfg}")
        rec.add("best rmsnorm fused", model, shape, ms, bytes_=nbytes, config=cfg_dict(cfg), group="best")


def cfg_str(c: dict) -> str:
    if not c:
        return ""
    kind = "dot" if c["use_dot"] else "bcast"
    return f"{kind} n{c['block_n']} k{c['block_k']} s{c['split_k']} w{c['num_warps']} st{c['num_stages']}"


TWO_LAUNCHES = ("act_and_mul + triton gemm", "fused_add_rms_norm + triton gemm")


def markdown(env: dict, ceilings: dict, rows: list[dict]) -> str:
    lines = [
        f"# Small-M GEMM — {env['device']}", "",
        f"{env['date']}, commit `{env['commit']}`; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}; {env['multiprocessors']} SMs; bf16. Timing: {env['config']['timing']}.", "",
        f"Copy ceiling measured here: **{ceilings['copy_gbps']:.0f} GB/s** (read + write). Bytes: weight + x "
        "(+ the [M, 2K] gate/up when fused; + residual, norm weight and new residual with the norm) + y, "
        "each once. Config: bcast/dot, block_n, block_k, split_k, warps, stages. On the silu+down and "
        "rmsnorm+ rows the triton column is the fused kernel (one launch) and the cuBLAS column "
        "act_and_mul / fused_add_rms_norm + F.linear (two launches).", "",
        "| model | shape | triton (µs) | GB/s | % copy | cuBLAS (µs) | GB/s | % copy | speed-up | config |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ref = {(r["model"], r["shape"]): r for r in rows if r["group"] == "reference"}
    best = {(r["model"], r["shape"], r["kernel"]): r for r in rows if r["group"] == "best"}
    for r in rows:
        if r["group"] != "kernels" or r["kernel"] in TWO_LAUNCHES:
            continue
        t = ref.get((r["model"], r["shape"]))
        torch_cols = (f"{t['time_us']:.1f} | {t['gbps']:.0f} | {t['pct_copy']:.1f} | {t['time_us'] / r['time_us']:.2f}x"
                      if t else "– | – | – | –")
        lines.append(f"| {r['model']} | {r['shape']} | {r['time_us']:.1f} | {r['gbps']:.0f} | {r['pct_copy']:.1f} | "
                     f"{torch_cols} | {cfg_str(r['config'])} |")
    two = [r for r in rows if r["kernel"] in TWO_LAUNCHES]
    if two:
        lines += ["", "The prologue as its own launch, then the triton gemm (two launches), for comparison:", ""]
        lines += [f"- {r['model']} {r['shape']}, {r['kernel']}: {r['time_us']:.1f} µs ({r['pct_copy']:.1f} % copy)"
                  for r in two]
    if best:
        lines += ["", "## Best config per shape (--sweep)", "",
                  "| model | shape | kernel | best (µs) | % copy | chosen (µs) | cuBLAS (µs) | best config |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        chosen = {(r["model"], r["shape"]): r for r in rows if r["group"] == "kernels"
                  and r["kernel"] in ("triton small_m_gemm", "triton act+gemm (fused)",
                                      "triton rmsnorm+gemm (fused)")}
        for (model, shape, kernel), b in best.items():
            c, t = chosen.get((model, shape)), ref.get((model, shape))
            lines.append(f"| {model} | {shape} | {kernel} | {b['time_us']:.1f} | {b['pct_copy']:.1f} | "
                         f"{c['time_us'] if c else float('nan'):.1f} | {t['time_us'] if t else float('nan'):.1f} | "
                         f"{cfg_str(b['config'])} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels_small_m_gemm.json and .md")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--projections", nargs="*", default=["qkv", "o", "gate_up", "down"],
                        choices=["qkv", "o", "gate_up", "down"])
    parser.add_argument("--ms", type=int, nargs="*", default=list(MS), help="rows (decode batch sizes)")
    parser.add_argument("--sweep", action="store_true", help="also time a grid of launch configs per shape")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels_small_m_gemm.py needs a CUDA device.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    env = environment()
    env["config"] = {"dtype": "bfloat16", "ms": args.ms, "models": {m: MODELS[m] for m in args.models},
                     "projections": args.projections, "sweep": args.sweep, "timing": env["config"]["timing"]}
    ceilings = measure_ceilings()
    print(f"copy {ceilings['copy_gbps']:.0f} GB/s", flush=True)
    num_sms = env["multiprocessors"]
    rec = Recorder(ceilings)
    failures = run_cases(functools.partial(bench, rec, model, proj, m, args.sweep, num_sms)
                         for model in args.models for proj in args.projections for m in args.ms)
    save(args.out, "kernels_small_m_gemm", env, ceilings, rec.rows, markdown(env, ceilings, rec.rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
