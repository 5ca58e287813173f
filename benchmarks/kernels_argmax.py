"""Micro-benchmark of the greedy sampler's argmax: Triton kernel against torch.argmax.

The two-stage kernel of ``infer_core.kernels.argmax`` and ``torch.argmax`` over bf16 logits
of Llama 3's and Qwen's vocabularies (128,256 and 151,936) at batch 1, 64 and 256.

Timing, the device's copy-bandwidth ceiling and the environment record are those of
``benchmarks/kernels.py`` (CUDA-graph replays from a cold L2, see ``kernels.timed``). The bytes
charged are the logits read once, ``B * V * 2``; GB/s are reported against the measured copy
bandwidth. ``--sweep`` also times every chunk width the kernel allows. Writes
``kernels_argmax.json`` and ``kernels_argmax.md`` into ``--out``.

    python benchmarks/kernels_argmax.py --out benchmarks/reports/argmax-<date>-<device>
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import triton

from infer_core.kernels.argmax import MAX_BLOCK, MIN_BLOCK, argmax, block_for

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/kernels.py, run as a script or not
from kernels import Recorder, environment, measure_ceilings, run_cases, save, timed

BATCHES = (1, 64, 256)
VOCABS = {"llama-3 (128256)": 128_256, "qwen (151936)": 151_936}


def torch_argmax(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(dim=-1)


def bench(rec: Recorder, label: str, vocab: int, batch: int, sweep: bool) -> None:
    x = torch.randn(batch, vocab, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(argmax(x), torch_argmax(x)), "the kernel disagrees with torch.argmax"
    nbytes = batch * vocab * x.element_size()
    shape = f"[{batch}, {vocab}] bf16"
    block = block_for(batch, vocab)
    rec.add("triton argmax", label, shape, timed(argmax, x), bytes_=nbytes,
            config={"block": block, "chunks": triton.cdiv(vocab, block)})
    rec.add("torch.argmax", label, shape, timed(torch_argmax, x), bytes_=nbytes, group="reference")
    if sweep:
        b = MIN_BLOCK // 4
        while b <= MAX_BLOCK * 2:
            if b != block:
                rec.add("triton argmax sweep", label, shape, timed(argmax, x, block=b), bytes_=nbytes,
                        config={"block": b, "chunks": triton.cdiv(vocab, b)}, group="sweep")
            b *= 2


def markdown(env: dict, ceilings: dict, rows: list[dict]) -> str:
    lines = [
        f"# Greedy argmax — {env['device']}", "",
        f"{env['date']}, commit `{env['commit']}`; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}; {env['multiprocessors']} SMs. Timing: {env['config']['timing']}.", "",
        f"Copy ceiling measured here: **{ceilings['copy_gbps']:.0f} GB/s** (read + write). Bytes: the "
        "logits read once (B x V x 2).", "",
        "| shape | vocabulary | triton (µs) | GB/s | % copy | torch.argmax (µs) | GB/s | speed-up | block x chunks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    ref = {(r["model"], r["shape"]): r for r in rows if r["group"] == "reference"}
    for r in rows:
        if r["group"] != "kernels":
            continue
        t = ref.get((r["model"], r["shape"]))
        cfg = f"{r['config']['block']} x {r['config']['chunks']}"
        torch_cols = (f"{t['time_us']:.1f} | {t['gbps']:.0f} | {t['time_us'] / r['time_us']:.1f}x"
                      if t else "– | – | –")
        lines.append(f"| {r['shape']} | {r['model']} | {r['time_us']:.1f} | {r['gbps']:.0f} | "
                     f"{r['pct_copy']:.1f} | {torch_cols} | {cfg} |")
    sweep = [r for r in rows if r["group"] == "sweep"]
    if sweep:
        lines += ["", "## Chunk-width sweep", "", "| shape | vocabulary | block | chunks | µs | % copy |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['shape']} | {r['model']} | {r['config']['block']} | {r['config']['chunks']} | "
                  f"{r['time_us']:.1f} | {r['pct_copy']:.1f} |" for r in sweep]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels_argmax.json and .md")
    parser.add_argument("--batches", type=int, nargs="*", default=list(BATCHES))
    parser.add_argument("--sweep", action="store_true", help="also time every chunk width")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels_argmax.py needs a CUDA device.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    env = environment()
    env["config"] = {"dtype": "bfloat16", "batches": args.batches, "vocabs": list(VOCABS.values()),
                     "timing": env["config"]["timing"]}
    ceilings = measure_ceilings()
    print(f"copy {ceilings['copy_gbps']:.0f} GB/s", flush=True)
    rec = Recorder(ceilings)
    failures = run_cases(functools.partial(bench, rec, label, vocab, batch, args.sweep)
                         for label, vocab in VOCABS.items() for batch in args.batches)
    save(args.out, "kernels_argmax", env, ceilings, rec.rows, markdown(env, ceilings, rec.rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
