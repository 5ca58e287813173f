"""Launch-config sweep of the paged-attention kernel on decode steps at the shapes of the
speed workloads (W1: batch 1, context 256-512; W2: batch 64-256, context 300-1000), for
Llama-3.2-1B (32 q / 8 kv heads, dim 64) and Qwen3-0.6B (16 / 8, dim 128), paged cache
(block 16), bf16. Prints each config's GPU time (cold L2, CUDA-graph replays: see
``benchmarks/kernels.py:timed``) and achieved KV bandwidth, marks the config
``choose_config`` picks (with max_seq_len = 8192, as a captured CUDA graph sees it), and
writes ``sweep.json`` + ``sweep.md`` into ``--out``.

    python benchmarks/sweep_decode_attention.py --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import attention_setup, kv_bytes, measure_ceilings, timed

from infer_core.kernels.paged_attention import LaunchConfig, choose_config, paged_attention

SHAPES = {"llama-3.2-1b": (2048, 8192, 32, 8, 64, None), "qwen3-0.6b": (1024, 3072, 16, 8, 128, None)}
CASES = [(1, 256), (1, 512), (64, 600), (256, 300), (256, 700)]  # (batch, context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer configs")
    args = parser.parse_args(argv)
    import kernels

    kernels.MODELS.update(SHAPES)
    ceilings = measure_ceilings()
    rows = []
    tiles, warps, stages = ((32, 64, 128), (2, 4), (2, 3)) if args.quick else ((32, 64, 128), (1, 2, 4), (1, 2, 3))
    for model, (batch, ctx) in itertools.product(SHAPES, CASES):
        layer, q, cache, md, _ = attention_setup(model, [1] * batch, [ctx] * batch, 16, window=False)
        nbytes = kv_bytes(layer, md, cache) + 2 * q.numel() * q.element_size()
        picked = choose_config(layer, replace(md, max_seq_len=8192), q.device, q.dtype, cache.dtype)
        split_options = (1, 4, 8, 16) if batch == 1 else (1, 2)
        configs = {picked}
        for t, w, s, sp in itertools.product(tiles, warps, stages, split_options):
            configs.add(LaunchConfig(picked.block_m, t, w, s, sp))
        results = []
        for cfg in sorted(configs, key=lambda c: (c.tile, c.num_warps, c.num_stages, c.num_splits)):
            try:
                ms = timed(paged_attention, layer, q, cache, md, config=cfg)
            except Exception as exc:  # out of resources for this shape
                print(f"{model} B={batch} ctx={ctx} {cfg}: {type(exc).__name__}", flush=True)
                continue
            row = {"model": model, "batch": batch, "context": ctx, "us": ms * 1e3,
                   "gbs": nbytes / ms / 1e6, "config": asdict(cfg), "picked": cfg == picked}
            results.append(row)
        results.sort(key=lambda r: r["us"])
        best = results[0]
        pick = next(r for r in results if r["picked"])
        print(f"{model:13s} B={batch:3d} ctx={ctx:4d}: picked {pick['us']:7.1f} us ({pick['gbs']:6.0f} GB/s) "
              f"{pick['config']} | best {best['us']:7.1f} us ({best['gbs']:6.0f} GB/s) {best['config']}", flush=True)
        rows += results
        del cache
        write(args.out, ceilings, rows)  # after every case: a time cap keeps what finished
    return 0


def write(out: Path, ceilings: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"ceilings": ceilings, "rows": rows}, indent=1))
    lines = [f"# Decode attention sweep\n\nCopy bandwidth {ceilings['copy_gbps']:,.0f} GB/s.\n",
             "| model | batch | context | µs | GB/s | tile | warps | stages | splits | picked |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["config"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['context']} | {r['us']:.1f} | {r['gbs']:.0f} | {c['tile']} | "
                     f"{c['num_warps']} | {c['num_stages']} | {c['num_splits']} | {'yes' if r['picked'] else ''} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
