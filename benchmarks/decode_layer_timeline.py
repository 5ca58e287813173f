"""Where the persistent decode layer's time goes, stage by stage: every program stamps its SM
clock at each stage boundary (``decode_layer(..., timeline=...)``), in a CUDA-graph replay of
the whole batch-1 layer chain (``--shape``, all layers, distinct weights, after an L2 flush),
and this prints, per interval, the minimum / median / maximum over the programs (µs, the
median over the layers but the first).

Intervals: ``pdl wait`` (launch to the previous layer's completion), each stage's work, and
each barrier's wait; a barrier's minimum is its own latency (the last program to arrive
waits only for that), its maximum adds the slowest program's lead. ``start skew`` is when
each program started after the layer's first one (global timer), ``gap`` the time from the
previous layer's last program leaving to this layer's first program starting.

    python benchmarks/decode_layer_timeline.py --shape qwen3-0.6b --variants sleep100,arrivefirst --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_chain import SYNC_VARIANTS, Layer, add_layer_args, model_layers, persistent
from kernels import FLUSH_BYTES

from infer_core.bench.report import environment
from infer_core.kernels import decode_layer as dl
from infer_core.kernels.device import num_sms

# the stamps' points (decode_layer.timeline._stamp) and the intervals between them
INTERVALS = [("pdl wait", 0, 1), ("1 norm + qkv", 1, 2), ("barrier 0", 2, 3), ("2 attention", 3, 4),
             ("barrier 1", 4, 5), ("3 merge", 5, 6), ("barrier 2", 6, 7), ("4 o_proj", 7, 8),
             ("barrier 3", 8, 9), ("5 gate/up", 9, 10), ("barrier 4", 10, 11), ("6 down", 11, 12),
             ("leave", 12, 13), ("whole launch", 0, 13)]
# inside the attention stage (programs with an attention item) and the merge (programs with a head)
INNER = [("2a q load + norm + rope", 3, 16), ("2b own K/V: norm, rope, store", 16, 17), ("2c key tiles", 17, 18),
         ("2c1 first tile: table, K/V loads, QK", 17, 21), ("2c2 first tile: softmax, PV", 21, 22),
         ("2d partials stored", 18, 19), ("3a merge of a head", 5, 20), ("3a1 merge: partials loaded", 5, 23),
         ("3a2 merge: arithmetic, store", 23, 20), ("1a input norm (x, residual loaded)", 1, 24),
         ("1b qkv product, store", 24, 2), ("5a input norm (o, x, residual loaded)", 9, 25),
         ("5b gate/up product, store, next tiles requested", 25, 10)]


def stamps(layers: list[Layer], programs_per_sm: int, sync: dict) -> list[torch.Tensor]:
    """The clocks of five graph replays of the chain, each after an L2 flush and each
    ``[layers, programs, TIMELINE_SLOTS]``."""
    programs = num_sms(torch.device("cuda")) * programs_per_sm  # persistent()'s launches
    timelines = [torch.zeros(programs, dl.TIMELINE_SLOTS.value, dtype=torch.int64, device="cuda") for _ in layers]
    run = persistent(layers, programs_per_sm=programs_per_sm, sync=sync, timelines=timelines)
    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        flush.zero_()
        run()
    samples = []
    for _ in range(5):
        graph.replay()
        torch.cuda.synchronize()
        samples.append(torch.stack(timelines).cpu())
    return samples


def summarize(samples: list[torch.Tensor]) -> dict:
    """Per interval: min / median / max over programs, median over layers 1.. and replays (µs)."""
    per_interval: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in INTERVALS}
    skews, gaps = [], []
    for t in samples:
        t = t.double()
        ns_per_clock = ((t[:, :, 15] - t[:, :, 14]) / (t[:, :, 13] - t[:, :, 0])).median()
        for layer in range(1, t.shape[0]):
            clocks = t[layer]
            for name, a, b in INTERVALS:
                d = (clocks[:, b] - clocks[:, a]) * ns_per_clock / 1e3
                per_interval[name].append((d.min().item(), d.median().item(), d.max().item()))
            for name, a, b in INNER:
                rows = clocks[:, b] > 0
                if rows.any():
                    d = (clocks[rows, b] - clocks[rows, a]) * ns_per_clock / 1e3
                    per_interval.setdefault(name, []).append((d.min().item(), d.median().item(), d.max().item()))
            start = t[layer, :, 14]
            skews.append(((start - start.min()) / 1e3).max().item())
            gaps.append(((start.min() - t[layer - 1, :, 15].max()) / 1e3).item())
    result = {name: [torch.tensor([v[i] for v in vals]).median().item() for i in range(3)]
              for name, vals in per_interval.items()}
    result["start skew (max)"] = [0.0, 0.0, torch.tensor(skews).median().item()]
    result["gap after previous layer"] = [0.0, torch.tensor(gaps).median().item(), 0.0]
    result["ns per clock"] = [ns_per_clock.item()] * 3
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_args(parser)
    parser.add_argument("--variants", default="sleep100,arrivefirst",
                        help=f"comma-separated, of {sorted(SYNC_VARIANTS)}, each with -s<programs per SM>")
    parser.add_argument("--programs-per-sm", default="4,2", help="tried in order: the first that fits")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(SYNC_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; of {sorted(SYNC_VARIANTS)}")
    layers = model_layers(args)
    env = environment()
    results = {}
    for variant in args.variants.split(","):
        for sm in (int(s) for s in args.programs_per_sm.split(",")):
            try:
                results[f"{variant}-s{sm}"] = summarize(stamps(layers, sm, SYNC_VARIANTS[variant]))
                break
            except ValueError as e:  # does not fit at this many programs per SM
                print(f"{variant}-s{sm} skipped: {e}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timeline.json").write_text(json.dumps({"environment": env, "shape": args.shape,
                                                        "context": args.context, "results": results}, indent=1))
    names = list(results)
    lines = [f"# Persistent decode layer timeline — {env['device']}, {args.shape}", "",
             f"commit `{env.get('commit')}`; {env.get('versions')}; context {args.context}; "
             "µs per layer, min / median / max over programs, median over layers 1.. and 5 replays.", "",
             "| interval | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    keys = [name for name, _, _ in INTERVALS + INNER] + ["start skew (max)", "gap after previous layer", "ns per clock"]
    for key in keys:
        cells = [" / ".join(f"{v:.2f}" for v in results[n].get(key, [float("nan")] * 3)) for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    (args.out / "timeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
