"""Prefill throughput of the engine on a GPU, against the device's matmul ceiling.

    python benchmarks/prefill_step.py --shape llama-3.2-1b --prompts 32 --prompt-len 1024

W3 at concurrency 32 releases 32 prompts of 1,024 tokens at once: the last one's time to first
token is the time to prefill all 32k tokens (in ``max_num_batched_tokens`` chunks), so its
p99 is bound by prefill throughput. This builds an engine on a random checkpoint at a real
shape, prefills ``--prompts`` random prompts (one output token each, after a warm-up round)
``--repeats`` times, and reports tokens/s and the achieved TFLOP/s (linear layers: 2 x their
parameters per token; attention: ``2 L^2 H D`` per causal sequence and layer; the LM head at
one row per prompt) against a bf16 matmul measured here, plus torch.profiler's top kernels of
one full step. Writes ``profile.json`` and ``summary.md`` into
``benchmarks/reports/prefill-step-<date>-<device>-<shape>/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from infer_core import LLM, SamplingParams
from infer_core.bench.checkpoints import write_random_checkpoint
from infer_core.layers.attention import Attention
from infer_core.layers.linear import Linear

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/kernels.py, run as a script or not
from kernels import measure_ceilings


def step_flops(llm: LLM, prompts: int, prompt_len: int) -> float:
    model = llm.engine.model
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear))
    layers = [m.layer for m in model.modules() if isinstance(m, Attention)]
    attention = sum(2 * prompt_len**2 * layer.num_heads * layer.head_dim for layer in layers)
    vocab, hidden = model.lm_head.weight.shape
    return prompts * (2 * linear * prompt_len + attention + 2 * vocab * hidden)


def top_kernels(llm: LLM, prompts: list[list[int]], n: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate(prompts, params)
        torch.cuda.synchronize()

    def device_us(e) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    events = sorted(prof.key_averages(), key=device_us, reverse=True)
    total = sum(device_us(e) for e in events)
    return [{"op": e.key, "calls": e.count, "device_us": round(device_us(e), 1),
             "share": round(device_us(e) / total, 3) if total else 0.0} for e in events[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-3.2-1b")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-ops", type=int, default=16)
    parser.add_argument("--checkpoint-dir", default="/tmp/infer-prefill-step")
    parser.add_argument("--out", default="benchmarks/reports")
    args = parser.parse_args()
    device = torch.device("cuda")

    checkpoint = Path(args.checkpoint_dir) / args.shape
    if not (checkpoint / "model.safetensors").exists():
        write_random_checkpoint(args.shape, checkpoint, device="cpu")
    llm = LLM(model=str(checkpoint), device="cuda", dtype="bfloat16", max_model_len=args.prompt_len + 16,
              max_num_seqs=max(args.prompts, 1), max_num_batched_tokens=args.max_num_batched_tokens,
              cache={"backend": "paged", "block_size": 16})
    gen = torch.Generator().manual_seed(0)
    vocab = llm.engine.vocab_size

    def batch() -> list[list[int]]:
        return [torch.randint(0, vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(args.prompts)]

    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.generate(batch(), params)  # warm-up: every prefill variant compiled
    seconds = []
    for _ in range(args.repeats):
        prompts = batch()  # fresh ids: no prefix-cache hits
        torch.cuda.synchronize()
        start = time.perf_counter()
        llm.generate(prompts, params)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    flops = step_flops(llm, args.prompts, args.prompt_len)
    ceiling = measure_ceilings()["matmul_bf16_tflops"]  # the kernel benchmarks' own ceiling
    median = statistics.median(seconds)
    tokens = args.prompts * args.prompt_len
    result = {
        "date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(device),
        "commit": os.environ.get("INFER_BENCH_COMMIT", "")[:12] or os.popen("git rev-parse --short=12 HEAD").read().strip(),
        "torch": torch.__version__, "shape": args.shape, "prompts": args.prompts, "prompt_len": args.prompt_len,
        "max_num_batched_tokens": args.max_num_batched_tokens, "seconds": seconds, "median_s": median,
        "tokens_per_s": tokens / median, "tflops": flops / median / 1e12, "matmul_tflops": ceiling,
        "steps": -(-tokens // args.max_num_batched_tokens),
        "top_kernels": top_kernels(llm, batch(), args.profile_ops) if args.profile_ops else [],
    }
    lines = [f"# Prefill throughput — {result['device']} ({args.shape})", "",
             f"{result['date']}; commit {result['commit']}; torch {result['torch']}; "
             f"{args.prompts} prompts x {args.prompt_len} tokens, max_num_batched_tokens "
             f"{args.max_num_batched_tokens} ({result['steps']} steps); median of {args.repeats}.", "",
             f"- all prompts prefilled in **{1e3 * median:.1f} ms** (runs: "
             + ", ".join(f"{1e3 * s:.1f}" for s in seconds) + " ms)",
             f"- {result['tokens_per_s']:,.0f} prompt tokens/s; **{result['tflops']:.0f} TFLOP/s** against "
             f"{ceiling:.0f} TFLOP/s measured for an 8192^3 bf16 matmul ({100 * result['tflops'] / ceiling:.0f} %)", ""]
    if result["top_kernels"]:
        lines += ["Top kernels of one more round (torch.profiler, self device time):", "",
                  "| op | calls | device µs | share |", "|---|---|---|---|"]
        lines += [f"| `{k['op'][:80]}` | {k['calls']} | {k['device_us']:.0f} | {100 * k['share']:.1f} % |"
                  for k in result["top_kernels"]]
    out = Path(args.out) / f"prefill-step-{result['date']}-cuda-{args.shape}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
