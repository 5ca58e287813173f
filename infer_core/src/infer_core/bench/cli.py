"""``infer-bench``: run the standard workloads and write reports.

    infer-bench serve --base-url http://127.0.0.1:8000 --workload W3 --tokenizer MODEL_DIR
    infer-bench offline --config engine.toml --workload W1,W2 [--repeats 3] [--section.key value ...]
    infer-bench hf --model MODEL_DIR --workload W1,W2,W4 [--repeats 3]
    infer-bench matrix --config engine.toml [--configs static,paged] [--policies all]
    infer-bench checkpoint llama-3.2-1b --out DIR          # random weights at real shapes
    infer-bench report DIR                                 # re-draw summary.md and plots
    infer-bench soak --model DIR [--burst] [--duration 60] # reliability (docs/reliability.md)

Every run command merges its figures into ``<out>/report.json`` (default
``benchmarks/reports/<date>-<device>/``) and rewrites ``summary.md`` and the plots there.
With ``--repeats N`` (serve, offline, hf) each workload runs N times and its entry quotes the
medians (``infer_core.bench.repeats``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from infer_core.bench import report as rpt
from infer_core.bench import soak_cli
from infer_core.bench.repeats import combine_runs, runs_text, spread_text
from infer_core.bench.workloads import WorkloadOptions, make_workloads, parse_workloads
from infer_core.errors import InferError

EXIT_USER_ERROR = 2


def log(message: str) -> None:
    print(f"[infer-bench] {message}", file=sys.stderr, flush=True)


def _workload_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--workload", default=default, help=f"W1..W6, variants (W3-c8, W5-shared) or 'all' (default {default})")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default 0: W2 is nano-vllm's)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every prompt/output length (quick runs)")
    p.add_argument("--num-prompts", type=int, default=None, help="at most this many requests per workload")
    p.add_argument("--concurrency", default="1,8,32,128", help="W3's concurrency levels")
    p.add_argument("--out", type=Path, default=None, help="report directory (default benchmarks/reports/<date>-<device>/)")
    p.add_argument("--label", default=None, help="model label in the report (default: the model directory's name)")
    p.add_argument("--no-plots", action="store_true", help="write JSON and markdown only")


def _repeats_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--repeats", type=int, default=1,
                   help=f"run each workload N times ({what}; warm-up once) and quote the medians (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infer-bench", description="infer's benchmarks (docs/benchmarks.md).")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="load-test an OpenAI-compatible server over HTTP")
    serve.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    serve.add_argument("--model", default=None, help="model name to request (default: the first of /v1/models)")
    serve.add_argument("--tokenizer", default=None, help="the served model's directory (vocabulary; W5's text)")
    serve.add_argument("--model-dir", default=None, help="the served checkpoint, for the roofline (optional)")
    serve.add_argument("--dtype", default="bfloat16", help="served dtype, for the roofline (default bfloat16)")
    serve.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson (default inf: all at once)")
    serve.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    serve.add_argument("--num-warmups", type=int, default=1, help="warm-up requests, not counted (default 1)")
    serve.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default $OPENAI_API_KEY)")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    serve.add_argument("--no-progress", action="store_true", help="no progress bar")
    serve.add_argument("--name", default=None, help="configuration name in the report (the server's settings)")
    _repeats_arg(serve, "same server, same requests")
    _workload_args(serve, "W3")

    offline = commands.add_parser("offline", help="the workloads through LLM.generate in-process")
    offline.add_argument("--config", default=None, help="engine TOML (default $INFER_CONFIG)")
    offline.add_argument("--model", default=None, help="model directory (overrides model.path)")
    offline.add_argument("--name", default="default", help="configuration name in the report")
    _repeats_arg(offline, "same engine, prefix cache reset before each run")
    _workload_args(offline, "W1,W2")

    hf = commands.add_parser("hf", help="the same workloads through Hugging Face transformers")
    hf.add_argument("--model", required=True, help="model directory")
    hf.add_argument("--device", default="auto", help="auto, cpu or cuda")
    hf.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16")
    _repeats_arg(hf, "same model, same requests")
    _workload_args(hf, "W1,W2,W4")

    matrix = commands.add_parser("matrix", help="the configuration matrix and the policy sweep, offline")
    matrix.add_argument("--config", default=None, help="base engine TOML")
    matrix.add_argument("--model", default=None, help="model directory (overrides model.path)")
    matrix.add_argument("--configs", default="all", help="matrix entries by name, 'all' or 'none'")
    matrix.add_argument("--policies", default="all", help="policies to sweep, 'all' (installed) or 'none'")
    _workload_args(matrix, "")

    ckpt = commands.add_parser("checkpoint", help="write a random-weight checkpoint at a real shape")
    ckpt.add_argument("shape", help="llama-3.2-1b, qwen3-0.6b, qwen3-1.7b, qwen3-4b or gemma-3-1b")
    ckpt.add_argument("--out", type=Path, required=True, help="directory to write")
    ckpt.add_argument("--tokenizer", default=None, help="copy this tokenizer (default: a synthetic one)")
    ckpt.add_argument("--seed", type=int, default=0)

    soak_cli.add_parser(commands)

    rep = commands.add_parser("report", help="re-draw summary.md and the plots of a report directory")
    rep.add_argument("dir", type=Path)
    rep.add_argument("--add", type=Path, nargs="*", default=[],
                     help="merge these report directories (or report.json files) into DIR first")
    rep.add_argument("--no-plots", action="store_true", help="write JSON and markdown only")
    return parser


# -- helpers -----------------------------------------------------------------------------------


def workload_options(args, vocab_size: int, tokenizer=None, names: Sequence[str] = ()) -> WorkloadOptions:
    text_maker = None
    if tokenizer is not None and any(n.startswith("W5") for n in names):
        from infer_core.bench.text import TextMaker

        text_maker = TextMaker(tokenizer)
    levels = tuple(int(c) for c in args.concurrency.split(",") if c.strip())
    return WorkloadOptions(seed=args.seed, vocab_size=vocab_size, text_maker=text_maker,
                           scale=args.scale, num_prompts=args.num_prompts, concurrency=levels)


def print_run(entry: dict[str, Any], what: str = "") -> None:
    """One line per run; ``what``: ``run 2/3`` for one of several, else the entry (with
    ``--repeats``: the medians, their number and spread)."""
    m = entry["metrics"]
    line = (f"{entry['source']:>7} {entry['model']} {entry['workload']:<10} {entry.get('config_name') or '':<14} "
            f"{m['completed']} ok / {m['failed']} failed, {m['output_throughput']:,.1f} out tok/s, "
            f"TTFT p50 {_ms(m['ttft_ms']['p50'])}, TPOT {_ms(m['tpot_ms']['mean'])}, "
            f"ITL p50/p99 {_ms(m['itl_ms']['p50'])}/{_ms(m['itl_ms']['p99'])}")
    view = entry.get("server") or {}
    if "ttft_mean_ms" in view:
        line += f", server TTFT mean {_ms(view['ttft_mean_ms'])} (client {_ms(m['ttft_ms']['mean'])})"
    if what:
        line += f" [{what}]"
    elif len(entry.get("runs") or ()) > 1:
        line += f" [median of {runs_text(entry)} runs, spread {spread_text(entry)}]"
    print(line, flush=True)
    for error in m["errors"][:5]:
        print(f"        failed: {error}", flush=True)


def check_repeats(args) -> int:
    if args.repeats < 1:
        raise InferError(f"--repeats must be >= 1, got {args.repeats}")
    return args.repeats


class Repeats:
    """The runs of one workload so far: each new run re-writes the workload's entry (medians of
    the runs done), so a run stopped by a time limit keeps the repeats it finished."""

    def __init__(self, writer: ReportWriter, repeats: int) -> None:
        self.writer, self.repeats, self.entries = writer, repeats, []

    def add(self, entry: dict[str, Any], **parts: Any) -> dict[str, Any]:
        self.entries.append(entry)
        if self.repeats > 1:
            print_run(entry, f"run {len(self.entries)}/{self.repeats}")
        combined = combine_runs(self.entries, self.repeats)
        self.writer.add(runs=[combined], **parts)
        return combined


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} ms"


class ReportWriter:
    """Merges each result into the report as soon as it exists (a run killed by a time limit
    keeps what it finished); ``close()`` draws the plots."""

    def __init__(self, out: Path | None, device: str, plots: bool = True) -> None:
        self.directory = out or rpt.default_report_dir(rpt.device_name(device))
        self.device = device
        self.plots = plots

    def add(self, **parts: Any) -> None:
        report = rpt.load_report(self.directory, self.device)
        rpt.merge(report, **parts)
        rpt.write_report(self.directory, report, plots=False)

    def close(self) -> Path:
        report = rpt.load_report(self.directory, self.device)
        for path in rpt.write_report(self.directory, report, plots=self.plots):
            log(f"wrote {path}")
        return self.directory


def model_info(model_dir: str, dtype: str) -> dict[str, Any]:
    from infer_core.bench.roofline import model_bytes
    from infer_core.loader.hf_config import architecture_of, read_hf_config

    return {"path": str(model_dir), "architecture": architecture_of(read_hf_config(model_dir)),
            "bytes": model_bytes(model_dir, dtype).to_dict()}


# -- commands ----------------------------------------------------------------------------------


def cmd_serve(args) -> int:
    from infer_core.bench.client import ServeOptions, run_workload

    names = parse_workloads(args.workload)
    tokenizer = None
    if args.tokenizer:
        from infer_core.loader.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(args.tokenizer)
    vocab = tokenizer.vocab_size if tokenizer is not None else WorkloadOptions().vocab_size
    workloads = make_workloads(names, workload_options(args, vocab, tokenizer, names))
    opts = ServeOptions(base_url=args.base_url, model=args.model, api_key=args.api_key,
                        request_rate=args.request_rate, max_concurrency=args.max_concurrency,
                        seed=args.seed, num_warmups=args.num_warmups, timeout_s=args.timeout,
                        progress=not args.no_progress)
    repeats = check_repeats(args)
    writer = ReportWriter(args.out, "auto", plots=not args.no_plots)
    runs, label = [], args.label
    for workload in workloads:
        done = Repeats(writer, repeats)
        for i in range(repeats):
            # the same server throughout: warm-up before the first run only; the server's prefix
            # cache cannot be reset from here, so later runs of W5 find their prefixes cached
            run = run_workload(workload, opts if i == 0 else replace(opts, num_warmups=0))
            label = label or run.model
            entry = rpt.run_entry("serve", workload, run.records, run.duration_s, model=label, config_name=args.name,
                                  base_url=args.base_url, request_rate=str(args.request_rate),
                                  server=run.server)
            models = {label: model_info(args.model_dir, args.dtype)} if args.model_dir else None
            entry = done.add(entry, models=models, new_models_only=True)
        runs.append(entry)
        print_run(entry)
    writer.close()
    return 0 if all(r["metrics"]["failed"] == 0 for r in runs) else 1


def _offline_llm(args, extra: Sequence[str]):
    from infer_core import LLM
    from infer_core.config import load_config, parse_cli_overrides

    overrides = parse_cli_overrides(list(extra))
    if args.model:
        overrides.setdefault("model", {})["path"] = args.model
    config = load_config(args.config, overrides=overrides)
    return LLM(config=config), config, overrides


def _dtype_name(llm) -> str:
    return str(llm.engine.layout.dtype).removeprefix("torch.")


def cmd_offline(args, extra: Sequence[str]) -> int:
    from infer_core.bench.offline import run_offline
    from infer_core.bench.roofline import measure_copy_bandwidth
    from infer_core.config import config_to_dict

    names = parse_workloads(args.workload)
    repeats = check_repeats(args)
    llm, config, _ = _offline_llm(args, extra)
    label = args.label or Path(config.model.path).name
    workloads = make_workloads(names, workload_options(args, llm.engine.vocab_size, llm.tokenizer, names))
    device = llm.engine.layout.device.type
    writer = ReportWriter(args.out, device, plots=not args.no_plots)
    writer.add(bandwidth=measure_copy_bandwidth(device),
               models={label: model_info(config.model.path, _dtype_name(llm))},
               configs={args.name: config_to_dict(config)})
    runs = []
    for workload in workloads:
        if workload.http_only:
            writer.add(skipped=[{"source": "offline", "what": workload.name,
                                 "reason": "concurrency levels need a client: run it with infer-bench serve"}])
            continue
        log(f"offline {label}: {workload.name} ({len(workload.requests)} requests"
            f"{f', {repeats} runs' if repeats > 1 else ''})")
        done = Repeats(writer, repeats)
        for i in range(repeats):  # one engine; warm-up before the first run, a cold prefix cache for each
            run = run_offline(llm, workload, warmup=i == 0, reset_prefix_cache=True)
            entry = done.add(rpt.run_entry("offline", workload, run.records, run.duration_s, model=label,
                                           config_name=args.name, engine=run.engine))
        runs.append(entry)
        print_run(entry)
    writer.close()
    return 0 if all(r["metrics"]["failed"] == 0 for r in runs) else 1


def cmd_hf(args) -> int:
    import torch

    from infer_core.bench import hf
    from infer_core.loader.tokenizer import Tokenizer

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = ("bfloat16" if device == "cuda" else "float32") if args.dtype == "auto" else args.dtype
    names = parse_workloads(args.workload)
    repeats = check_repeats(args)
    label = args.label or Path(args.model).name
    vocab = Tokenizer.from_dir(args.model).vocab_size
    workloads = make_workloads([n for n in names if not n.startswith("W5")], workload_options(args, vocab))
    model = hf.load_model(args.model, device, dtype)
    writer = ReportWriter(args.out, device, plots=not args.no_plots)
    for workload in workloads:
        log(f"hf {label}: {workload.name} ({len(workload.requests)} requests"
            f"{f', {repeats} runs' if repeats > 1 else ''})")
        done = Repeats(writer, repeats)
        for i in range(repeats):
            try:
                run = hf.run_hf(model, workload, warmup=i == 0)
            except Exception as exc:  # transformers' own failures are a finding, not a crash
                reason = str(exc) if isinstance(exc, hf.HFUnavailable) else f"{type(exc).__name__}: {exc}"
                if i:
                    reason = f"run {i + 1} of {repeats}: {reason}"
                writer.add(skipped=[{"source": "hf", "what": f"{label} {workload.name}", "reason": reason[:500]}])
                log(f"skip {workload.name}: {reason[:500]}")
                break
            entry = done.add(rpt.run_entry("hf", workload, run.records, run.duration_s, model=label,
                                           method=run.method))
        if done.entries:
            print_run(entry)
    writer.close()
    return 0


def cmd_matrix(args, extra: Sequence[str]) -> int:
    from infer_core import LLM
    from infer_core.bench.matrix import matrix_entries, policy_entries, run_matrix
    from infer_core.config import load_config, parse_cli_overrides
    from infer_core.plugins import make_plugin_manager

    overrides = parse_cli_overrides(list(extra))
    if args.model:
        overrides.setdefault("model", {})["path"] = args.model
    base = load_config(args.config, overrides=overrides)
    entries = [] if args.configs == "none" else matrix_entries(base)
    if args.configs not in ("all", "none"):
        wanted = [c.strip() for c in args.configs.split(",")]
        unknown = sorted(set(wanted) - {e.name for e in entries})
        if unknown:
            raise InferError(f"no matrix entry named {', '.join(unknown)}; entries: "
                             f"{', '.join(e.name for e in entries)}.")
        entries = [e for e in entries if e.name in wanted]
    pm = make_plugin_manager()
    if args.policies != "none":
        policies = pm.scheduler_policies.names() if args.policies == "all" else args.policies.split(",")
        entries += policy_entries(policies, "prefix" in pm.cache_backends)
    if args.workload:
        keep = set(parse_workloads(args.workload))
        entries = [e for e in entries if keep & {w.upper() for w in e.workloads} or
                   keep & {w.split("-")[0].upper() for w in e.workloads}]
    label = args.label or Path(base.model.path).name

    def workloads(llm, names):
        return make_workloads(names, workload_options(args, llm.engine.vocab_size, llm.tokenizer, names))

    writer = ReportWriter(args.out, base.model.device, plots=not args.no_plots)
    result = run_matrix(args.config, overrides, entries, workloads, model_label=label,
                        make_llm=lambda cfg: LLM(config=cfg), log=log, on_result=writer.add)
    for entry in result.runs:
        print_run(entry)
    writer.close()
    return 0


def cmd_checkpoint(args) -> int:
    from infer_core.bench.checkpoints import write_random_checkpoint

    start = time.monotonic()
    out = write_random_checkpoint(args.shape, args.out, tokenizer_dir=args.tokenizer, seed=args.seed)
    log(f"wrote {args.shape} to {out} in {time.monotonic() - start:.1f} s")
    print(out)
    return 0


def cmd_report(args) -> int:
    report = rpt.load_report(args.dir)
    for other in args.add:
        path = other / rpt.REPORT_FILE if other.is_dir() else other
        if not path.is_file():
            raise InferError(f"'{path}' is not a report; give a report directory or its report.json.")
        data = json.loads(path.read_text(encoding="utf-8"))
        rpt.merge(report, runs=data["runs"], skipped=data["skipped"], models=data["models"],
                  configs=data["configs"], bandwidth=data.get("bandwidth"), notes=data["notes"],
                  environment=data.get("environment"))
    for path in rpt.write_report(args.dir, report, plots=not args.no_plots):
        log(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("offline", "matrix", "soak"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "offline":
            return cmd_offline(args, extra)
        if args.command == "hf":
            return cmd_hf(args)
        if args.command == "matrix":
            return cmd_matrix(args, extra)
        if args.command == "checkpoint":
            return cmd_checkpoint(args)
        if args.command == "soak":
            return soak_cli.cmd_soak(args, extra, log)
        return cmd_report(args)
    except InferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

