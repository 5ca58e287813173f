"""Warp-stall samples per SASS instruction of one profiled kernel, out of an Nsight Compute
report (``ncu --set full --import-source yes -o REPORT``), summed per region of the kernel.

Two steps, because the report's reader (``ncu_report``, shipped with Nsight Compute) is on the
GPU machine only:

    python benchmarks/ncu_stalls.py extract REPORT.ncu-rep OUT.json   # there: per-PC samples + SASS
    python benchmarks/ncu_stalls.py summarize OUT.json [--top 40]     # anywhere: per-region table
    python benchmarks/ncu_stalls.py summarize SOURCE.csv              # the same from the SASS page export
                                              # (ncu -i REPORT --page source --csv --print-source sass)

``extract`` writes, per instruction address, its SASS text and every ``smsp__pcsamp_*`` sample
count (all samples, and per stall reason). ``summarize`` cuts the kernel into regions at the
grid barriers' arrivals (the ``ATOMG.E.ADD`` instructions of the persistent decode layer: the
stages in order) and prints per region the samples by reason, then the hottest instructions.
Samples are proportional to warp-time spent at an instruction: a region's share of all samples
is its share of the warps' time (the programs waiting at a barrier's poll count as its region).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path


def _import_ncu_report():
    roots = [os.environ.get("NCU_PYTHON", "")]
    roots += glob.glob("/opt/nvidia/nsight-compute/*/extras/python") + glob.glob("/usr/local/cuda*/nsight-compute*/extras/python")
    roots += glob.glob("/opt/nvidia/nsight-compute*/extras/python")
    for root in roots:
        if root and Path(root, "ncu_report.py").exists():
            sys.path.insert(0, root)
            break
    import ncu_report  # only on the GPU machine
    return ncu_report


def extract(report: Path, out: Path) -> int:
    ncu_report = _import_ncu_report()
    ctx = ncu_report.load_report(str(report))
    rng = ctx.range_by_idx(0)
    action = rng.action_by_idx(0)
    per_pc: dict[int, dict] = defaultdict(dict)
    names = [n for n in action.metric_names() if n.startswith("smsp__pcsamp") or n.startswith("inst_executed")
             or n.startswith("sass__inst_executed") or n.startswith("smsp__sass")]
    for name in names:
        metric = action.metric_by_name(name)
        try:
            n = metric.num_instances()
        except Exception:  # a metric with no instances
            continue
        if not n:
            continue
        ids = metric.correlation_ids()
        for i in range(n):
            pc = ids.as_uint64(i)
            per_pc[pc][name] = metric.as_uint64(i)
    for pc in per_pc:
        with contextlib.suppress(Exception):
            per_pc[pc]["sass"] = action.sass_by_pc(pc)
    summary = {}
    for name in action.metric_names():
        if name.startswith(("gpu__time_duration", "sm__cycles_elapsed.avg", "smsp__warps_active", "launch__",
                            "sm__throughput", "dram__throughput", "smsp__inst_executed.sum", "smsp__cycles_active")):
            with contextlib.suppress(Exception):
                summary[name] = action.metric_by_name(name).as_double()
    out.write_text(json.dumps({"kernel": action.name(), "summary": summary,
                               "per_pc": {str(pc): v for pc, v in sorted(per_pc.items())}}, indent=0))
    print(f"{action.name()}: {len(per_pc)} instructions with samples, {len(names)} metrics -> {out}")
    return 0


def regions(per_pc: dict[int, dict]) -> list[tuple[str, int, int]]:
    """(name, first pc, last pc) cut after each global atomic add (``ATOMG.E.ADD``): the grid
    barriers' arrivals (adding 1) and their polls (adding ``RZ``, 0), so a stage is the region
    that follows its barrier's last poll. Each name carries the atomic that ends it."""
    cuts = [pc for pc, v in sorted(per_pc.items()) if re.search(r"ATOMG\.E\.ADD", v.get("sass", ""))]
    bounds, start = [], 0
    for i, cut in enumerate(cuts):
        kind = "poll" if re.search(r",\s*RZ\b", per_pc[cut].get("sass", "")) else "arrival"
        bounds.append((f"region {i} (to the {kind} at {cut:#x})", start, cut))
        start = cut + 1
    bounds.append(("after the last atomic", start, 1 << 62))
    return bounds


def from_source_csv(path: Path) -> dict:
    """The per-PC table out of ``ncu --page source --csv --print-source sass``: the address and
    SASS columns, and every numeric column (the warp-stall sample columns among them) under a
    ``smsp__pcsamp_``-style key so that ``summarize`` reads both sources alike."""
    import csv

    lines = path.read_text(errors="replace").splitlines()
    start = next(i for i, line in enumerate(lines) if "Address" in line and "Source" in line)
    rows = list(csv.reader(lines[start:]))
    header = rows[0]
    addr = next(i for i, h in enumerate(header) if "Address" in h)
    src = next(i for i, h in enumerate(header) if h.strip() == "Source")

    def key(name: str) -> str:
        low = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        if low.startswith("warp_stall_sampling_all"):
            return "smsp__pcsamp_sample_count"
        if low.startswith("warp_stall_sampling_not_issued"):
            return "smsp__pcsamp_sample_count_not_issued"
        if "stall" in low:
            return "smsp__pcsamp_warps_issue_stalled_" + low.removeprefix("stall_")
        return low

    per_pc: dict[str, dict] = {}
    for row in rows[1:]:
        if len(row) <= max(addr, src):
            continue
        try:
            pc = int(row[addr], 16) if row[addr].lower().startswith("0x") else int(row[addr])
        except ValueError:
            continue
        entry: dict = {"sass": row[src]}
        for i, cell in enumerate(row):
            if i in (addr, src):
                continue
            with contextlib.suppress(ValueError):
                entry[key(header[i])] = int(float(cell.replace(",", "")))
        per_pc[str(pc)] = entry
    return {"kernel": path.stem, "summary": {"columns": header}, "per_pc": per_pc}


def summarize(path: Path, top: int) -> int:
    data = from_source_csv(path) if path.suffix == ".csv" else json.loads(path.read_text())
    per_pc = {int(pc): v for pc, v in data["per_pc"].items()}
    total_key = next((k for k in ("smsp__pcsamp_sample_count", "smsp__pcsamp_warps_issue_stalled_all")
                      if any(k in v for v in per_pc.values())), None)
    reasons = sorted({k for v in per_pc.values() for k in v
                      if k.startswith("smsp__pcsamp_warps_issue_stalled_") and not k.endswith("_not_issued")})
    print(f"{data['kernel']}; summary: {data['summary']}")
    grand = sum(v.get(total_key, 0) for v in per_pc.values()) if total_key else 0
    for name, lo, hi in regions(per_pc):
        rows = {pc: v for pc, v in per_pc.items() if lo <= pc <= hi}
        samples = sum(v.get(total_key, 0) for v in rows.values()) if total_key else 0
        by_reason = {r.removeprefix("smsp__pcsamp_warps_issue_stalled_"): sum(v.get(r, 0) for v in rows.values())
                     for r in reasons}
        best = sorted(by_reason.items(), key=lambda kv: -kv[1])[:6]
        share = 100 * samples / grand if grand else 0
        print(f"\n## {name}: {samples} samples ({share:.1f}%), {len(rows)} instructions")
        print("   " + ", ".join(f"{r} {c}" for r, c in best if c))
    print(f"\n## hottest {top} instructions")
    hot = sorted(per_pc.items(), key=lambda kv: -kv[1].get(total_key, 0))[:top]
    for pc, v in hot:
        why = sorted(((r.removeprefix("smsp__pcsamp_warps_issue_stalled_"), v.get(r, 0)) for r in reasons),
                     key=lambda kv: -kv[1])[:3]
        print(f"{pc:#07x} {v.get(total_key, 0):6d}  {v.get('sass', '')[:60]:60s} " + ", ".join(f"{r} {c}" for r, c in why if c))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("report", type=Path)
    e.add_argument("out", type=Path)
    s = sub.add_parser("summarize")
    s.add_argument("data", type=Path)
    s.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    if args.cmd == "extract":
        return extract(args.report, args.out)
    return summarize(args.data, args.top)


if __name__ == "__main__":
    sys.exit(main())
