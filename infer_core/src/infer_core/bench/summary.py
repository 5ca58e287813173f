"""``summary.md``: the report's figures as markdown tables (runs against the roofline, the HF
side by side, the configuration matrix and policy sweep, what was skipped).

An entry of repeated runs (``--repeats``) holds the medians in its ``metrics`` (see
``infer_core.bench.repeats``): every table quotes them, and the runs table and the side by side
say how many runs each figure is the median of, with the spread of the main figure."""

from __future__ import annotations

from typing import Any

from infer_core.bench.repeats import runs_text, spread_text


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _size(n: float) -> str:
    """``1.24 G``, ``213.63 k``, ``256 ``: a number with its SI prefix, for a unit to follow."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}"
    return f"{n:.0f} "


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _runs_table(runs: list[dict]) -> list[str]:
    rows = []
    for r in runs:
        m = r["metrics"]
        roof = r.get("roofline") or {}
        bound = (f"{roof['bound_ms_per_token']:.2f} ms/tok" if "bound_ms_per_token" in roof
                 else f"{roof['bound_output_tokens_per_s']:,.0f} tok/s" if roof else "–")
        rows.append([
            r["model"], r["workload"], r["source"], r.get("config_name") or "–",
            _f(m["request_throughput"], 2), _f(m["output_throughput"], 0),
            f"{_f(m['ttft_ms']['p50'])} / {_f(m['ttft_ms']['p99'])}",
            _f(m["tpot_ms"]["mean"], 2),
            f"{_f(m['itl_ms']['p50'], 2)} / {_f(m['itl_ms']['p99'], 2)}",
            _f(r.get("ms_per_output_token"), 2), bound, _pct(roof.get("fraction_of_roofline")),
            str(m["failed"]), runs_text(r), spread_text(r),
        ])
    return _table(["model", "workload", "source", "config", "req/s", "out tok/s",
                   "TTFT p50 / p99 ms", "TPOT ms", "ITL p50 / p99 ms", "ms/token (W1)",
                   "roofline", "of roofline", "failed", "runs", "spread"], rows)


def _tag_table(runs: list[dict]) -> list[str]:
    rows = []
    for r in runs:
        for tag, m in (r.get("by_tag") or {}).items():
            rows.append([r["model"], r["workload"], r["source"], r.get("config_name") or "–", tag,
                         str(m["completed"]), f"{_f(m['ttft_ms']['p50'])} / {_f(m['ttft_ms']['p99'])}",
                         f"{_f(m['itl_ms']['p50'], 2)} / {_f(m['itl_ms']['p99'], 2)}",
                         _f(m["tpot_ms"]["mean"], 2)])
    return _table(["model", "workload", "source", "config", "kind", "requests", "TTFT p50 / p99 ms",
                   "ITL p50 / p99 ms", "TPOT ms"], rows)


def _server_table(runs: list[dict]) -> list[str]:
    """Serve runs whose server reported its own histograms: TTFT as the client saw it against
    the server's (engine arrival to first token), means over the same requests."""
    rows = []
    for r in runs:
        view = r.get("server") or {}
        if "ttft_mean_ms" not in view:
            continue
        client = r["metrics"]["ttft_ms"]["mean"]
        rows.append([r["model"], r["workload"], r.get("config_name") or "–", _f(client), _f(view["ttft_mean_ms"]),
                     _f(view.get("queue_mean_ms")), _f(client - view["ttft_mean_ms"] if client is not None else None)])
    if not rows:
        return []
    return _table(["model", "workload", "config", "client TTFT mean ms", "server TTFT mean ms",
                   "server queue mean ms", "HTTP side ms (client − server)"], rows)


def _hf_table(runs: list[dict]) -> list[str]:
    """infer (offline) against transformers, each side's median over its runs."""
    ours: dict[tuple[str, str], dict] = {}
    for r in runs:  # the default configuration's entry where there are several (A/B runs)
        key = (r["model"], r["workload"])
        if r["source"] == "offline" and (key not in ours or r.get("config_name") in (None, "default")):
            ours[key] = r
    rows = []
    for hf in (r for r in runs if r["source"] == "hf"):
        mine = ours.get((hf["model"], hf["workload"]))
        n = f"{runs_text(mine) if mine else '–'} / {runs_text(hf)}"
        if hf.get("ms_per_output_token") is not None:
            a, b = (mine or {}).get("ms_per_output_token"), hf["ms_per_output_token"]
            ratio = b / a if a and b else None
            rows.append([hf["model"], hf["workload"], f"{_f(a, 2)} ms/tok", f"{_f(b, 2)} ms/tok",
                         _f(ratio, 2) + "×" if ratio else "–", n, hf.get("method", "")])
        else:
            a = (mine or {}).get("metrics", {}).get("output_throughput")
            b = hf["metrics"]["output_throughput"]
            ratio = a / b if a and b else None
            rows.append([hf["model"], hf["workload"], f"{_f(a, 0)} tok/s", f"{_f(b, 0)} tok/s",
                         _f(ratio, 2) + "×" if ratio else "–", n, hf.get("method", "")])
    return _table(["model", "workload", "infer", "transformers", "infer speed-up", "runs (infer / HF)",
                   "HF method"], rows)


def _matrix_table(runs: list[dict]) -> list[str]:
    rows = []
    for r in runs:
        m = r["metrics"]
        rows.append([
            r["source"], r.get("config_name") or "–", r["workload"], _f(m["output_throughput"], 0),
            f"{_f(m['ttft_ms']['p50'])} / {_f(m['ttft_ms']['p99'])}",
            f"{_f(m['itl_ms']['p50'], 2)} / {_f(m['itl_ms']['p99'], 2)}",
            _f(m["max_queue_ms"]), str(m["num_preemptions"]),
            _pct((r.get("engine") or {}).get("prefix_cache_hit_rate")),
        ])
    return _table(["sweep", "config", "workload", "out tok/s", "TTFT p50 / p99 ms",
                   "ITL p50 / p99 ms", "max queue ms", "preemptions", "prefix hits"], rows)


def summary_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    v = env.get("versions", {})
    commit = env.get("commit") or {}
    lines = [
        f"# Benchmark report — {env.get('device')}",
        "",
        f"Updated {report.get('updated')}; commit {commit.get('sha', 'unknown')[:12]}"
        f"{' (dirty)' if commit.get('dirty') else ''}; infer-core {v.get('infer-core')}, "
        f"torch {v.get('torch')}, triton {v.get('triton')}, transformers {v.get('transformers')}.",
        "",
    ]
    bw = report.get("bandwidth")
    if bw:
        lines += [f"Measured copy bandwidth: {bw['bytes_per_s'] / 1e9:,.0f} GB/s ({bw['method']}).", ""]
    for label, model in report.get("models", {}).items():
        b = model.get("bytes")
        if b:
            lines.append(f"- `{label}`: {_size(b['num_params']).rstrip()} parameters, "
                         f"{_size(b['weights_bytes'])}B read per decode step ({b['dtype']}), "
                         f"KV {_size(b['kv_bytes_per_token'])}B per token.")
    lines.append("")
    main = [r for r in report["runs"] if r["source"] in ("offline", "serve")]
    if main:
        lines += ["## Runs", "", "Each figure is the median over the entry's runs (`runs`); `spread` is the "
                  "lowest and highest of the main figure (ms/token for W1, output tokens/s otherwise).", "",
                  *_runs_table(main)]
    tagged = _tag_table([r for r in report["runs"] if r.get("by_tag")])
    if tagged:
        lines += ["## By request kind (W6: `short` requests decode while `long` prompts arrive)", "", *tagged]
    served = _server_table([r for r in report["runs"] if r["source"] == "serve"])
    if served:
        lines += ["## The server's view (serve runs, from its /metrics)", "",
                  "The server's TTFT runs from the request's arrival in the engine (tokenized) to the "
                  "first token's sampling; the client's from sending the request to reading the token's "
                  "chunk. The difference is the HTTP side: parsing, tokenization, waiting for the engine "
                  "thread, delivering the chunk.", "", *served]
    if any(r["source"] == "hf" for r in report["runs"]):
        lines += ["## Side by side with Hugging Face transformers", "",
                  *_hf_table(report["runs"])]
    sweep = [r for r in report["runs"] if r["source"] in ("matrix", "policy")]
    if sweep:
        lines += ["## Configuration matrix and policy sweep", "", *_matrix_table(sweep)]
    if report.get("skipped"):
        lines += ["## Skipped", ""]
        lines += [f"- {s['source']}: {s['what']} — {s['reason']}" for s in report["skipped"]]
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in report["notes"]), ""]
    if report.get("plots"):
        lines += ["## Plots", "", *(f"![{p}]({p})" for p in report["plots"]), ""]
    lines.append("Metric definitions: docs/benchmarks.md.")
    return "\n".join(lines) + "\n"
