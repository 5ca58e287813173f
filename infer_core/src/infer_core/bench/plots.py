"""PNG plots of a report (matplotlib, imported only here and only when plotting; without it
the report is written without plots and says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _label(run: dict[str, Any]) -> str:
    parts = [run["model"], run["workload"], run["source"]]
    if run.get("config_name") not in (None, "default"):
        parts.append(run["config_name"])
    return " · ".join(parts)


def write_plots(report: dict[str, Any], directory: Path) -> tuple[list[Path], str | None]:
    """The plots that the report has data for; ``(files, note)``, the note saying why none
    were drawn when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install 'infer-core[bench]')"
    runs = report["runs"]
    files = []
    for name, draw in (("throughput_vs_concurrency.png", _concurrency), ("ttft_itl.png", _distributions),
                       ("matrix.png", _matrix), ("hf_side_by_side.png", _hf)):
        fig = draw(plt, runs)
        if fig is None:
            continue
        path = directory / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(path)
    return files, None


def _concurrency(plt, runs):
    w3 = [r for r in runs if r["family"] == "W3" and r["workload_info"].get("max_concurrency")]
    if not w3:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    def line(r):  # one line per model, source and configuration (e.g. the server's settings)
        return r["model"], r["source"], r.get("config_name") or ""

    for key in sorted({line(r) for r in w3}):
        pts = sorted(((r["workload_info"]["max_concurrency"], r) for r in w3 if line(r) == key),
                     key=lambda point: point[0])
        xs = [c for c, _ in pts]
        name = " · ".join(k for k in key if k)
        ax1.plot(xs, [r["metrics"]["output_throughput"] for _, r in pts], marker="o", label=name)
        ax2.plot(xs, [r["metrics"]["ttft_ms"]["p50"] or 0 for _, r in pts], marker="o", label=f"{name}: TTFT p50")
        ax2.plot(xs, [r["metrics"]["itl_ms"]["p99"] or 0 for _, r in pts], marker="s", label=f"{name}: ITL p99")
    for ax, title, unit in ((ax1, "output throughput", "tokens/s"), (ax2, "latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(unit)
        ax.set_title(f"W3: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _distributions(plt, runs):
    main = [r for r in runs if r["source"] in ("offline", "serve", "hf") and r.get("samples")]
    if not main:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in main:
        ttft = sorted(r["samples"]["ttft_ms"])
        if ttft:
            ax1.step(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))], where="post", label=_label(r))
        itl = r["samples"]["itl_ms_percentiles"]
        if itl:
            ax2.plot(itl, [q / 100 for q in range(len(itl))], label=_label(r))
    for ax, title in ((ax1, "TTFT"), (ax2, "inter-token latency (pooled)")):
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of samples ≤ x")
        ax.set_title(f"{title}: cumulative distribution")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return fig


def _bars(ax, labels, values, title, unit, *, show_labels=True):
    ax.barh(range(len(values)), values)
    ax.set_yticks(range(len(values)), labels if show_labels else [""] * len(values), fontsize=7)
    if show_labels:
        ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(unit)
    ax.grid(axis="x", alpha=0.3)


def _matrix(plt, runs):
    sweep = [r for r in runs if r["source"] in ("matrix", "policy")]
    if not sweep:
        return None
    labels = [f"{r['workload']} · {r['config_name']}" for r in sweep]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(sweep) + 1.5), sharey=True)
    _bars(axes[0], labels, [r["metrics"]["output_throughput"] for r in sweep], "output throughput", "tokens/s")
    _bars(axes[1], labels, [r["metrics"]["ttft_ms"]["p99"] or 0 for r in sweep], "TTFT p99", "ms",
          show_labels=False)
    _bars(axes[2], labels, [r["metrics"]["itl_ms"]["p99"] or 0 for r in sweep], "ITL p99", "ms",
          show_labels=False)
    return fig


def _hf(plt, runs):
    hf = [r for r in runs if r["source"] == "hf"]
    ours = {(r["model"], r["workload"]): r for r in runs if r["source"] == "offline"}
    pairs = [(h, ours[(h["model"], h["workload"])]) for h in hf if (h["model"], h["workload"]) in ours]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(pairs) + 1.5))
    labels, ratios = [], []
    for h, o in pairs:
        if h.get("ms_per_output_token") and o.get("ms_per_output_token"):
            ratios.append(h["ms_per_output_token"] / o["ms_per_output_token"])
        elif h["metrics"]["output_throughput"]:
            ratios.append(o["metrics"]["output_throughput"] / h["metrics"]["output_throughput"])
        else:
            continue
        labels.append(f"{h['model']} · {h['workload']}")
    _bars(ax, labels, ratios, "infer speed-up over transformers (same device, same run)", "×")
    ax.axvline(1.0, color="black", linewidth=0.8)
    return fig
