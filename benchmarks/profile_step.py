"""Where one engine step's time goes, per phase, at several decode batch sizes (CPU or GPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py --label after

Builds an ``LLMEngine`` on a random checkpoint (a real model's shape with few layers and,
by default, a narrower width so the model's own compute stays small next to the host work),
admits ``B`` requests with short prompts, runs them until every one is decoding, then times
``--steps`` decode steps. Each phase is timed around the engine's
own methods (the phases are methods of the scheduler, runner and engine, wrapped on the
instance here; nothing else changes). The clock is the thread's CPU time by default
(``--clock thread``: time the process spends descheduled on a shared machine does not count;
with ``OMP_NUM_THREADS=1`` all the work is on this thread) or wall time (``--clock wall``):

- ``schedule``: ``Scheduler.schedule``
- ``prepare_inputs``: the runner's flat batch and attention metadata
- ``forward``: the model over the flat batch (eager steps); ``replay``: a decode step's CUDA
  graph (the forward of graph steps); ``logits``: ``compute_logits`` at sampled rows
- ``sampling_metadata``: the sampler's per-row parameters
- ``sampler``: the sampler's kernels (on CUDA: their launch); ``sync``: the step's one
  device-to-host copy of the sampled ids (on CUDA: the wait for the step)
- ``runner_output``: the runner's bookkeeping of sampled tokens and logprobs
- ``update``: ``Scheduler.update_from_output``
- ``outputs``: detokenization, stop rules, ``RequestOutput`` building
- ``deferred_outputs``: the same for requests whose finish was decided from their ids, done
  while the next step runs on the device (``LLMEngine._process_deferred``)
- ``host``: everything but ``forward`` and ``logits``
- ``graph_device`` (``--device-time``, CUDA): the device time of the batch's decode graph
  replayed alone, back to back; with ``--pipelined`` (no sync after each step, as an engine
  serving runs) ``step_ms`` against it tells whether a step waits for the device or the host

On CUDA, ``forward`` only measures the launches (kernels are asynchronous): the figure to read
there is the total. Writes ``profile.json`` and ``summary.md`` into
``benchmarks/reports/profile-step-<date>-<device>[-<label>]/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import inspect
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from infer_core.bench.checkpoints import write_random_checkpoint
from infer_core.config import EngineConfig
from infer_core.engine.llm_engine import LLMEngine
from infer_core.request import SamplingParams

PHASES = [
    ("schedule", "scheduler", "schedule"),
    ("prepare_inputs", "runner", "_prepare_inputs"),
    ("forward", "model", "forward"),
    ("replay", "graphs", "replay"),
    ("logits", "model", "compute_logits"),
    ("sampling_metadata", "runner", "_sampling_metadata"),
    ("sampler", "runner", "sampler"),
    ("sync", "runner", "_sample_lists"),
    ("runner_output", "runner", "_runner_output"),
    ("update", "scheduler", "update_from_output"),
    ("outputs", "engine", "_process_outputs"),
    ("deferred_outputs", "engine", "_process_deferred"),
]


CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


class PhaseTimer:
    """Wraps named methods of live engine objects and accumulates their time on ``clock``."""

    def __init__(self, engine: LLMEngine, clock) -> None:
        self.clock = clock
        self.totals: dict[str, float] = {}
        self.enabled = False
        owners = {"scheduler": engine.scheduler, "runner": engine.runner,
                  "model": engine.runner.model, "engine": engine,
                  "graphs": getattr(engine.runner, "graphs", None)}
        for phase, owner, method in PHASES:
            if owners[owner] is not None:
                self._wrap(phase, owners[owner], method)

    def _wrap(self, phase: str, owner: object, method: str) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            if not self.enabled:
                return original(*args, **kwargs)
            start = self.clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[phase] = self.totals.get(phase, 0.0) + self.clock() - start

        setattr(owner, method, timed)

    def reset(self) -> None:
        self.totals = {}


def extra_steps(args: argparse.Namespace) -> int:
    """Decode steps after the warm-up: the timed ones, cProfile's, the torch.profiler step, the device trace's."""
    return args.steps * (2 if args.cprofile else 1) + 1 + (args.device_trace + 1 if args.device_trace else 0)


def make_engine(checkpoint: Path, batch: int, args: argparse.Namespace) -> LLMEngine:
    max_len = args.prompt_len + args.warmup + extra_steps(args) + 8
    config = EngineConfig(
        model={"path": str(checkpoint), "device": args.device, "dtype": args.dtype, "max_model_len": max_len,
               **({"enforce_eager": True} if args.enforce_eager else {}),
               **({"small_m_prologues": args.prologues} if args.prologues else {}),
               **({"persistent_decode": True} if args.persistent_decode else {})},
        cache={"backend": args.cache, "block_size": 16, "num_blocks": batch * (-(-max_len // 16)) + 8},
        scheduler={"max_num_seqs": batch, "max_num_batched_tokens": max(batch * args.prompt_len, 512),
                   "async_scheduling": args.async_scheduling},
    )
    return LLMEngine(config)


def profile_batch(checkpoint: Path, batch: int, args: argparse.Namespace) -> dict:
    engine = make_engine(checkpoint, batch, args)
    clock = CLOCKS[args.clock]
    timer = PhaseTimer(engine, clock)
    gen = torch.Generator().manual_seed(batch)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.warmup + extra_steps(args) + 4,
                            ignore_eos=True, seed=None)
    for _ in range(batch):
        ids = torch.randint(0, min(engine.vocab_size, 10_000), (args.prompt_len,), generator=gen).tolist()
        engine.add_request(engine.make_request(ids, params))
    step = engine.step
    if args.outputs == "finished" and "finished_only" in inspect.signature(engine.step).parameters:  # what LLM.generate asks for (older engines: streaming only)
        step = functools.partial(engine.step, finished_only=True)
    for _ in range(args.warmup):  # the prefill and a few decodes
        step()
    assert all(r.num_computed_tokens == r.num_tokens - 1 for r in engine.scheduler.running)
    assert len(engine.scheduler.running) == batch
    if args.gc_freeze:  # what an engine would do after start-up: older objects never rescanned
        gc.collect()
        gc.freeze()
    cuda = engine.layout.device.type == "cuda"
    timer.enabled = True
    step_times = []
    if args.pipelined:  # steps back to back as a serving engine runs them: one clock over all
        start = clock()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        step_times = [(clock() - start) / args.steps] * args.steps
    else:
        for _ in range(args.steps):
            start = clock()
            step()
            if cuda:
                torch.cuda.synchronize()
            step_times.append(clock() - start)
    timer.enabled = False
    graph_ms = device_graph_ms(engine, batch) if cuda and args.device_time else None
    host_functions = python_profile(step, args.steps, args.cprofile, cuda) if args.cprofile else []
    if args.gc_freeze:
        gc.unfreeze()
    top_ops = torch_profile(engine, args.torch_profile_ops) if args.torch_profile_ops else []
    trace = device_trace(engine, step, args.device_trace) if cuda and args.device_trace else None
    ms = {phase: 1e3 * total / args.steps for phase, total in timer.totals.items()}
    total = 1e3 * statistics.fmean(step_times)
    ms["host"] = total - ms.get("forward", 0.0) - ms.get("replay", 0.0) - ms.get("logits", 0.0)
    ms["other"] = total - sum(ms.get(p, 0.0) for p, _, _ in PHASES)
    if graph_ms is not None:
        ms["graph_device"] = graph_ms
    return {"batch": batch, "step_ms": total, "step_ms_median": 1e3 * statistics.median(step_times),
            "phases_ms": ms, "host_us_per_request": 1e3 * ms["host"] / batch, "top_ops": top_ops,
            "host_functions": host_functions, **({"device_trace": trace} if trace else {})}


def python_profile(step, steps: int, n: int, cuda: bool) -> list[dict]:
    """``steps`` more steps under cProfile: the ``n`` functions with the most own time, in µs
    per step (cProfile's own overhead inflates small functions; read the ranking)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [{"function": f"{Path(f).name}:{line}({name})", "calls_per_step": nc / steps,
             "own_us_per_step": round(1e6 * tt / steps, 1), "cum_us_per_step": round(1e6 * ct / steps, 1)}
            for (f, line, name), (_, nc, tt, ct, _) in rows]


def device_graph_ms(engine: LLMEngine, batch: int, replays: int = 50) -> float | None:
    """The device time of the decode graph this batch replays, alone: ``replays`` replays back
    to back between two CUDA events (no host work in between), in ms per replay."""
    graphs = engine.runner.graphs
    size = graphs.size_for(batch) if graphs is not None else None
    if size is None or size not in graphs.captured:
        return None
    graphs.replay(size)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    for _ in range(replays):
        graphs.replay(size)
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / replays


def median_row(runs: list[dict]) -> dict:
    """Per phase, the median over repeated runs (each on a fresh engine)."""
    phases = {k: statistics.median(r["phases_ms"][k] for r in runs) for k in runs[0]["phases_ms"]}
    return {**runs[0], "step_ms": statistics.median(r["step_ms"] for r in runs), "phases_ms": phases,
            "host_us_per_request": 1e3 * phases["host"] / runs[0]["batch"], "repeats": len(runs)}


def torch_profile(engine: LLMEngine, n: int) -> list[dict]:
    """One more decode step under torch.profiler: the ``n`` ops with the most self CPU time
    (calls per step, total µs) — on the CPU this is also the per-op dispatch count. On CUDA
    the ops are ranked by device time (kernels, also those a CUDA graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.layout.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        engine.step()
        if cuda:
            torch.cuda.synchronize()

    def device_us(e) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    events = sorted(prof.key_averages(), key=device_us if cuda else (lambda e: e.self_cpu_time_total), reverse=True)
    return [{"op": e.key, "calls": e.count, "self_cpu_us": round(e.self_cpu_time_total, 1),
             **({"self_device_us": round(device_us(e), 1)} if cuda else {})} for e in events[:n]]


def device_trace(engine: LLMEngine, step, steps: int) -> dict:
    """``steps`` more steps back to back under torch.profiler (CUDA activity): the device's
    period, busy and idle time per step and each op's duration and the idle time before it
    (``infer_core.bench.device_trace``)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    from infer_core.bench.device_trace import load_intervals, summarize

    step()  # the first step's launch under the profiler would start the window early
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        return summarize(load_intervals(path), steps)


def markdown(result: dict) -> str:
    graphs = any("graph_device" in row["phases_ms"] for row in result["rows"])
    cols = ["step_ms", *[p for p, _, _ in PHASES], "other", "host", "host µs/req", *(["graph_device"] if graphs else [])]
    lines = [f"# Engine step profile — {result['device']} ({result['label']})", "",
             f"{result['date']}; commit {result['commit']}; torch {result['torch']}; "
             f"OMP/torch threads {result['threads']}; {result['command']}", "",
             f"Model: {result['model']}; {result['steps']} decode steps per batch size after "
             f"{result['warmup']} warm-up steps; temperature {result['temperature']}. "
             f"Outputs: {result['outputs']}. Milliseconds per step: the mean over the steps of a run, "
             f"the median of {result['repeats']} runs; clock: {result['clock']}.", "",
             "| batch | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in result["rows"]:
        p = row["phases_ms"]
        cells = [f"{row['step_ms']:.2f}", *[f"{p.get(c, 0.0):.2f}" for c, _, _ in PHASES],
                 f"{p['other']:.2f}", f"{p['host']:.2f}", f"{row['host_us_per_request']:.0f}",
                 *([f"{p['graph_device']:.3f}" if "graph_device" in p else "–"] if graphs else [])]
        lines.append(f"| {row['batch']} | " + " | ".join(cells) + " |")
    for row in result["rows"]:
        if row["top_ops"] and "self_device_us" in row["top_ops"][0]:
            lines += ["", f"Top ops of one step at batch {row['batch']} (torch.profiler, self device time):", "",
                      "| op | calls | self device µs | self CPU µs |", "|---|---|---|---|"]
            lines += [f"| `{o['op'][:80]}` | {o['calls']} | {o['self_device_us']:.0f} | {o['self_cpu_us']:.0f} |"
                      for o in row["top_ops"]]
        elif row["top_ops"]:
            lines += ["", f"Top ops of one step at batch {row['batch']} (torch.profiler, self CPU time):", "",
                      "| op | calls | self µs |", "|---|---|---|"]
            lines += [f"| `{o['op']}` | {o['calls']} | {o['self_cpu_us']:.0f} |" for o in row["top_ops"]]
    for row in result["rows"]:
        if row.get("device_trace"):
            from infer_core.bench.device_trace import markdown as trace_markdown

            lines += ["", f"Batch {row['batch']}:", "", *trace_markdown(row["device_trace"])]
    for row in result["rows"]:
        if row.get("host_functions"):
            lines += ["", f"Host functions at batch {row['batch']} (cProfile, own time per step):", "",
                      "| function | calls/step | own µs | cumulative µs |", "|---|---|---|---|"]
            lines += [f"| `{f['function']}` | {f['calls_per_step']:.1f} | {f['own_us_per_step']:.0f} | "
                      f"{f['cum_us_per_step']:.0f} |" for f in row["host_functions"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-3.2-1b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256, help="0 keeps the shape's width")
    parser.add_argument("--vocab", type=int, default=32768, help="0 keeps the shape's vocabulary")
    parser.add_argument("--batch-sizes", default="1,8,64,256")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch size; the median is kept")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="thread")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cache", default="paged")
    parser.add_argument("--torch-profile-ops", type=int, default=12, help="top ops of one step (0: off)")
    parser.add_argument("--outputs", choices=["finished", "stream"], default="finished",
                        help="build outputs of finished requests only (LLM.generate) or every step's (streaming)")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() before the timed steps")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (model.enforce_eager)")
    parser.add_argument("--async-scheduling", action="store_true", help="scheduler.async_scheduling")
    parser.add_argument("--prologues", choices=["none", "act", "norm", "all"], default=None,
                        help="model.small_m_prologues (default: the engine's)")
    parser.add_argument("--persistent-decode", action="store_true",
                        help="model.persistent_decode (batch-1 decode steps: one launch per layer)")
    parser.add_argument("--pipelined", action="store_true",
                        help="no device sync after each step: the step time is the wall time of all steps over their count")
    parser.add_argument("--device-time", action="store_true",
                        help="on CUDA, also the device time of the batch's decode graph replayed alone (graph_device)")
    parser.add_argument("--device-trace", type=int, default=0,
                        help="CUDA: this many steps under torch.profiler, summarized per step (device busy, idle, "
                             "each op's duration and the idle time before it)")
    parser.add_argument("--cprofile", type=int, default=0,
                        help="also the N Python functions with the most own time over the steps (cProfile)")
    parser.add_argument("--label", default="")
    parser.add_argument("--checkpoint-dir", default="/tmp/infer-profile-step")
    parser.add_argument("--out", default="benchmarks/reports")
    args = parser.parse_args()

    overrides = {"num_hidden_layers": args.layers}
    if args.hidden:
        heads = max(1, args.hidden // 64)
        overrides.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), head_dim=64)
    if args.vocab:
        overrides.update(vocab_size=args.vocab)
    name = "-".join([args.shape, *(f"{k}{v}" for k, v in sorted(overrides.items()))])
    checkpoint = Path(args.checkpoint_dir) / name
    if not (checkpoint / "model.safetensors").exists():
        write_random_checkpoint(args.shape, checkpoint, device="cpu", **overrides)

    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        row = median_row([profile_batch(checkpoint, batch, args) for _ in range(args.repeats)])
        print(f"batch {batch:4d}: step {row['step_ms']:.2f} ms, host {row['phases_ms']['host']:.2f} ms "
              + " ".join(f"{k}={v:.2f}" for k, v in row["phases_ms"].items()), flush=True)
        rows.append(row)
    commit = (os.environ.get("INFER_BENCH_COMMIT", "")[:12]  # a copied tree's .git may be stale
              or os.popen("git rev-parse --short=12 HEAD 2>/dev/null").read().strip() or "unknown")
    device = args.device if args.device != "cpu" else f"cpu-{platform.machine()}"
    result = {
        "date": dt.date.today().isoformat(), "commit": commit, "torch": torch.__version__,
        "threads": f"{os.environ.get('OMP_NUM_THREADS', 'unset')}/{torch.get_num_threads()}",
        "device": device, "label": args.label or "-", "model": name, "steps": args.steps,
        "warmup": args.warmup, "temperature": args.temperature, "clock": args.clock,
        "outputs": args.outputs, "repeats": args.repeats, "gc_freeze": args.gc_freeze,
        "enforce_eager": args.enforce_eager, "async_scheduling": args.async_scheduling,
        "small_m_prologues": args.prologues, "pdl": os.environ.get("INFER_PDL", "1"),
        "pipelined": args.pipelined, "persistent_decode": args.persistent_decode,
        "command": "benchmarks/profile_step.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items() if v not in ("", None, False)),
        "rows": rows,
    }
    suffix = f"-{args.label}" if args.label else ""
    out = Path(args.out) / f"profile-step-{result['date']}-cpu{suffix}"
    if args.device != "cpu":
        out = Path(args.out) / f"profile-step-{result['date']}-{args.device}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
