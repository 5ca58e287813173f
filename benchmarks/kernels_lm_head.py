"""Micro-benchmark of a batch-1 decode step's head: the LM head and its greedy pick.

Two ways for one row ``x [1, K]`` and the head ``W [V, K]`` (bf16, Qwen3-0.6B's 151,936 x 1,024
and Llama-3.2-1B's 128,256 x 2,048):
- ``cublas``: ``F.linear`` (cuBLAS), the copy into the engine's logits buffer, the two-stage
  argmax (``kernels.argmax``): the decode graph's path before ``kernels.lm_head``;
- ``fused``: ``kernels.lm_head.lm_head_argmax``, one launch.
Each alone and behind the final norm (``fused_add_rms_norm``). ``--sweep`` also times other
configs (block rows, warps, programs per SM, stages).

Timing, the device's copy-bandwidth ceiling and the environment record are those of
``benchmarks/kernels.py`` (CUDA-graph replays from a cold L2). Bytes charged: the weight read
once (V x K x 2); GB/s against the measured copy bandwidth (read + write). Writes
``kernels_lm_head.json`` and ``.md`` into ``--out``.

    python benchmarks/kernels_lm_head.py --out benchmarks/reports/lm-head-<date>-<device> --sweep
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from infer_core.kernels.argmax import argmax
from infer_core.kernels.lm_head import LMHeadConfig, LMHeadWorkspace, choose_config, lm_head_argmax
from infer_core.kernels.rms_norm import fused_add_rms_norm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/kernels.py, run as a script or not
from kernels import Recorder, environment, measure_ceilings, run_cases, save, timed

SHAPES = {"qwen3-0.6b": (151_936, 1024), "llama-3.2-1b": (128_256, 2048)}


def cublas_head(x, w, logits, ids):
    logits.copy_(F.linear(x, w))
    argmax(logits, out=ids)


def with_norm(head, h, res, norm_w, w, logits, ids, **kwargs):
    x, _ = fused_add_rms_norm(h, res, norm_w, 1e-6)
    head(x, w, logits, ids, **kwargs)


def bench(rec: Recorder, model: str, sweep: bool) -> None:
    vocab, hidden = SHAPES[model]
    w = torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16) / hidden**0.5
    x = torch.randn(1, hidden, device="cuda", dtype=torch.bfloat16)
    h, res = x.clone(), torch.randn_like(x)
    norm_w = torch.ones(hidden, device="cuda", dtype=torch.bfloat16)
    logits = torch.empty(1, vocab, device="cuda", dtype=torch.bfloat16)
    ids = torch.empty(1, device="cuda", dtype=torch.int64)
    ws = LMHeadWorkspace()
    lm_head_argmax(x, w, logits, ids, ws)
    assert ids.item() == torch.argmax(logits).item(), "the fused pick is not the argmax of its logits"
    ref = F.linear(x, w)
    torch.testing.assert_close(logits.float(), ref.float(), rtol=2e-2, atol=2e-2)
    nbytes = vocab * hidden * 2
    shape = f"[1, {hidden}] x [{vocab}, {hidden}]"
    cfg = choose_config(vocab, hidden)
    fused = functools.partial(lm_head_argmax, workspace=ws)
    rec.add("cublas+copy+argmax", model, shape, timed(cublas_head, x, w, logits, ids), bytes_=nbytes,
            group="reference")
    rec.add("fused", model, shape, timed(fused, x, w, logits, ids), bytes_=nbytes,
            config={k: v for k, v in vars(cfg).items() if k != "block_c"})
    rec.add("norm+cublas path", model, shape, timed(with_norm, cublas_head, h, res, norm_w, w, logits, ids),
            bytes_=nbytes, group="chain")
    rec.add("norm+fused", model, shape, timed(with_norm, fused, h, res, norm_w, w, logits, ids), bytes_=nbytes,
            group="chain", config={k: v for k, v in vars(cfg).items() if k != "block_c"})
    if sweep:
        configs = [LMHeadConfig(b, w, programs_per_sm=p, num_stages=st) for b in (8, 16, 32) for w in (4, 8)
                   for p in (1, 2, 3, 4) for st in (2, 3, 4)]
        for c in configs:  # (shared memory: the stages of every program on an SM)
            if c == cfg or c.block_n * hidden * 2 * c.num_stages * c.programs_per_sm > 220_000:
                continue
            fused(x, w, logits, ids, config=c)
            assert ids.item() == torch.argmax(logits).item(), f"{c}: the pick is not the argmax of its logits"
            rec.add("fused sweep", model, shape, timed(fused, x, w, logits, ids, config=c), bytes_=nbytes,
                    config={k: v for k, v in vars(c).items() if k != "block_c"}, group="sweep")


def markdown(env: dict, ceilings: dict, rows: list[dict]) -> str:
    lines = [
        f"# LM head + greedy pick at one row — {env['device']}", "",
        f"{env['date']}, commit `{env['commit']}`; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}; {env['multiprocessors']} SMs. Timing: {env['config']['timing']}.", "",
        f"Copy ceiling measured here: **{ceilings['copy_gbps']:.0f} GB/s** (read + write). Bytes: the "
        "head's weight read once (V x K x 2).", "",
        "| case | model | µs | GB/s | % copy | config |", "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        cfg = ", ".join(f"{k} {v}" for k, v in r["config"].items()) or "–"
        lines.append(f"| {r['kernel']} | {r['model']} | {r['time_us']:.1f} | {r['gbps']:.0f} | "
                     f"{r['pct_copy']:.1f} | {cfg} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels_lm_head.json and .md")
    parser.add_argument("--models", nargs="*", default=list(SHAPES))
    parser.add_argument("--sweep", action="store_true", help="also time other block sizes and warps")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels_lm_head.py needs a CUDA device.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    env = environment()
    env["config"] = {"dtype": "bfloat16", "models": args.models, "timing": env["config"]["timing"]}
    ceilings = measure_ceilings()
    print(f"copy {ceilings['copy_gbps']:.0f} GB/s", flush=True)
    rec = Recorder(ceilings)
    failures = run_cases(functools.partial(bench, rec, model, args.sweep) for model in args.models)
    save(args.out, "kernels_lm_head", env, ceilings, rec.rows, markdown(env, ceilings, rec.rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
