"""Probe of the persistent decode layer's self-flagged words (``DecodeLayerConfig.ll``) on a
CUDA device (run from the repository root): many launches back to back on one workspace (PDL
chains them as in a model's graph), each output against the torch reference, the error flag
(1: a barrier's poll, 2: attention's words, 3: the merge's words timed out) and the time per
launch of each chain of 20 (CUDA events). For every shape and ``ll`` mode given:

    python scripts/gpu_ll_probe.py --shapes qwen3-0.6b,llama-3.2-1b --modes 0,1,2,3 --launches 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kernels, from the repository root
from infer_core.kernels import decode_layer as dl
from tests.kernels import decode_layer_cases as cases

SHAPES = {  # hidden, intermediate, kv heads, group, head dim, qk-norm (test_decode_layer_gpu's)
    "qwen3-0.6b": (1024, 3072, 8, 2, 128, True),
    "llama-3.2-1b": (2048, 8192, 8, 4, 64, False),
}


def probe(shape: str, ll: int, launches: int, context: int) -> dict:
    hidden, inter, hkv, group, d, qk = SHAPES[shape]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = cases.LayerCase(hidden, inter, hkv, group, d, context, 16, qk, True, 2 * sms, 16, 64, 16384, 2048,
                           True, 0)
    cfg = dl.choose_config(hidden, inter, hkv * group, hkv, d, sms, torch.bfloat16, programs_per_sm=2,
                           balanced_elements=dl.default_balanced_elements())
    cfg = replace(cfg, ll=ll, epoch=True)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cuda", torch.bfloat16)
    ws = dl.DecodeWorkspace(hidden, inter, layer.num_heads, layer.num_kv_heads, layer.head_dim, cfg.splits,
                            torch.bfloat16, "cuda")
    ref_out, _ = dl.decode_layer_ref(x, res, weights, layer, cache.clone(), md, positions, cos, sin)
    outs, times = [], []
    for _ in range(launches // 20):  # chains of 20 launches (no event between them: PDL overlaps them)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            outs.append(dl.decode_layer(x, res, weights, layer, cache, md, positions, cos, sin, ws, config=cfg)[0])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / 20)
    errors = [cases.relative_error(o, ref_out) for o in outs]
    tol = cases.LAYER_TOL[torch.bfloat16]
    return {"shape": shape, "ll": ll, "error_flag": int(ws.error.item()),
            "wrong": sum(e > tol for e in errors), "worst": max(errors),
            "median_us": statistics.median(times), "slow": sum(t > 1000 for t in times), "max_us": max(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="qwen3-0.6b,llama-3.2-1b")
    parser.add_argument("--modes", default="0,1,2,3")
    parser.add_argument("--launches", type=int, default=200)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for shape in args.shapes.split(","):
            for ll in (int(m) for m in args.modes.split(",")):
                r = probe(shape, ll, args.launches, args.context)
                print(f"{r['shape']} ll={r['ll']}: error flag {r['error_flag']}, {r['wrong']} of {args.launches} "
                      f"outputs wrong (worst {r['worst']:.3g}), median {r['median_us']:.1f} µs per launch, "
                      f"{r['slow']} chains over 1 ms per launch (max {r['max_us']:.0f} µs)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
