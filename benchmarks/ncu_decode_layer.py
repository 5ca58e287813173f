"""A program for Nsight Compute to profile: the batch-1 chain of persistent decode-layer
launches (``--shape``, every layer, distinct random weights, context ``--context``), run
eagerly ``--runs`` times. ``scripts/gpu_decode_layer.sh ncu`` runs it under ``ncu`` with one
layer's launch selected (``-k regex:_decode_layer_kernel --launch-skip N --launch-count 1``)
and exports the warp-stall samples per SASS instruction; ``benchmarks/ncu_stalls.py``
then sums them per stage of the layer.

    ncu --clock-control none -k regex:_decode_layer_kernel --launch-skip 40 --launch-count 1 \\
        --set full --import-source yes -o layer python3 benchmarks/ncu_decode_layer.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_chain import SYNC_VARIANTS, add_layer_args, model_layers, persistent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_args(parser)
    parser.add_argument("--variant", default="default", choices=sorted(SYNC_VARIANTS),
                        help="the launch configuration: its own (default) or a decode_chain variant")
    parser.add_argument("--programs-per-sm", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="chain runs (ncu picks one launch of them)")
    args = parser.parse_args(argv)
    layers = model_layers(args)
    own = args.variant == "default"  # the launch's own configuration, as a model runs it
    run = persistent(layers, programs_per_sm=args.programs_per_sm, default=own,
                     sync=None if own else SYNC_VARIANTS[args.variant])
    for _ in range(args.runs):
        run()
    torch.cuda.synchronize()
    print(f"{args.runs} runs of {len(layers)} layers ({args.shape}, context {args.context}, {args.variant})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
