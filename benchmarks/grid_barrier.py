"""Micro-benchmark of a grid-wide exchange between the persistent decode layer's stages.

One launch of ``P`` programs (``--programs-per-sm`` per SM, 4 warps, all resident) runs ``K``
exchanges back to back; the cost of one is ``(t(K) - t(1)) / (K - 1)`` (CUDA events, median
of ``--repeats`` launches). Modes:

- ``counter``: :func:`infer_core.kernels.decode_layer.sync._arrive` + ``_wait``, the layer's
  barrier (a release atomic add per program, then acquire polls by one thread), with a
  nanosleep of ``poll_sleep`` ns before each poll;
- ``counter+vector``: the same barrier with data: each program stores its share of an
  ``N``-word vector before it and reads the whole vector (``.cg``) after it (what o_proj,
  gate/up and down do with the stage before's output);
- ``flags``: no counter: each program stores the exchange's epoch into its own flag, then
  every thread polls all ``P`` flags (volatile loads) until each holds it (no fence, no
  atomic: the floor of an exchange where every program reads every other's flag).

The result says what a stage boundary costs with the counter barrier (a GPU-scope fence in
each arrival, an atomic round trip, the polls). Measured on an H200 (2 programs per SM):
counter 0.9-1.0 µs, counter+vector of 1,024 words 1.8 µs, flags 3.3 µs
(benchmarks/reports/decode-layer-barriers-2026-12-03-h200).

    python benchmarks/grid_barrier.py --out benchmarks/reports/<dir>
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from infer_core.kernels.decode_layer.sync import _arrive, _wait

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/kernels.py, run as a script or not
from kernels import environment

MODES = {"counter": 0, "counter+vector": 1, "flags": 2}


@triton.jit
def _store_flag(ptr, value):
    tl.inline_asm_elementwise("st.relaxed.gpu.global.b32 [$1], $2;\nmov.b32 $0, 0;", "=r,l,r", [ptr, value],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _bench_kernel(counters_ptr, flags_ptr, words_ptr, sink_ptr, error_ptr, epoch0, num_programs,
                  K: tl.constexpr, MODE: tl.constexpr, POLL_SLEEP: tl.constexpr,
                  N: tl.constexpr, PER: tl.constexpr, PP2: tl.constexpr):
    pid = tl.program_id(0)
    idx = tl.arange(0, N)
    mine = pid * PER + tl.arange(0, PER)
    acc = tl.zeros([N], dtype=tl.int64)
    for k in range(K):
        epoch = epoch0 + k + 1
        if MODE <= 1:
            if MODE == 1:
                tl.store(words_ptr + mine, (mine + k).to(tl.int64), mask=mine < N)
            seen = _arrive(counters_ptr, 0)
            _wait(counters_ptr, 0, seen, (k + 1) * num_programs, error_ptr, POLL_SLEEP)
            if MODE == 1:
                acc += tl.load(words_ptr + idx, cache_modifier=".cg")
        else:
            tl.debug_barrier()
            _store_flag(flags_ptr + pid, epoch)  # (a scalar: every thread stores the same value)
            fi = tl.arange(0, PP2)
            done = 0
            while done == 0:
                f = tl.load(flags_ptr + fi, mask=fi < num_programs, other=epoch, volatile=True)
                done = tl.min((f >= epoch).to(tl.int32), axis=0)
    tl.store(sink_ptr + pid * N + idx, acc)


def run(mode: str, k: int, programs: int, words: int, poll_sleep: int, repeats: int, state: dict) -> float:
    """Median milliseconds of one launch of ``k`` exchanges."""
    dev = torch.device("cuda")
    if "counters" not in state:
        state.update(counters=torch.zeros(8, dtype=torch.int32, device=dev),
                     flags=torch.zeros(programs, dtype=torch.int32, device=dev),
                     words=torch.zeros(words, dtype=torch.int64, device=dev),
                     sink=torch.empty(programs * words, dtype=torch.int64, device=dev),
                     error=torch.zeros(1, dtype=torch.int32, device=dev), epoch=0)
    per = triton.next_power_of_2(triton.cdiv(words, programs))
    times = []
    for _ in range(repeats + 1):
        state["counters"].zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _bench_kernel[(programs,)](state["counters"], state["flags"], state["words"], state["sink"], state["error"],
                                   state["epoch"], programs, K=k, MODE=MODES[mode], POLL_SLEEP=poll_sleep,
                                   N=words, PER=per,
                                   PP2=triton.next_power_of_2(programs), num_warps=4, num_stages=1)
        end.record()
        end.synchronize()
        state["epoch"] += k
        times.append(start.elapsed_time(end))
    if int(state["error"].item()):
        raise RuntimeError(f"{mode}: a barrier timed out")
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs-per-sm", type=int, default=2)
    parser.add_argument("--words", default="1024", help="comma-separated vector lengths (64-bit words)")
    parser.add_argument("--k", type=int, default=401, help="exchanges per launch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", default="counter:100,counter:0,counter:200,counter+vector:100,flags:0",
                        help="mode:poll_sleep, comma-separated")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    programs = torch.cuda.get_device_properties(0).multi_processor_count * args.programs_per_sm
    rows = []
    for words in (int(w) for w in args.words.split(",")):
        state: dict = {}
        for variant in args.variants.split(","):
            mode, sleep = variant.split(":")
            one = run(mode, 1, programs, words, int(sleep), args.repeats, state)
            many = run(mode, args.k, programs, words, int(sleep), args.repeats, state)
            us = (many - one) * 1e3 / (args.k - 1)
            rows.append({"mode": mode, "poll_sleep": int(sleep), "words": words, "programs": programs,
                         "us_per_exchange": round(us, 3)})
            print(f"{mode:>15} sleep {sleep:>4} words {words:>5}: {us:.3f} µs per exchange", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    (args.out / "grid_barrier.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    lines = [f"# Grid exchange micro-benchmark — {env['device']}", "",
             f"{env['date']}, commit `{env['commit']}`; {programs} programs of 4 warps; µs per exchange, "
             f"(t(K={args.k}) - t(1)) / {args.k - 1}, medians of {args.repeats} launches.", "",
             "| mode | poll sleep (ns) | words | µs per exchange |", "|---|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['poll_sleep']} | {r['words']} | {r['us_per_exchange']:.3f} |" for r in rows]
    (args.out / "grid_barrier.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
