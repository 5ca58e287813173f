"""A fixed set of the persistent decode layer's launches compiled for sm_90 without a GPU, with
each one's registers, stack and a hash of its disassembly: the check that a refactor of the
kernel leaves the code the device runs as it was (or shows which launches it changed).

    PYTHONPATH=/tmp/t36x python benchmarks/offline_sass_set.py --out DIR [--against OLD/sass.json] [--keep-sass]

The set: Qwen3-0.6B's one launch at 2 programs per SM (the engine's: group_sync 2) and its
variants (group_sync 0 / 1, the timeline, kv_ahead, min_splits, kv_early / rope_early, bf16 tiles
without pairs or balance, 4 programs per SM), Llama-3.2-1B's one launch, and every stage-by-stage
launch of both shapes at 4, 1, 1, 4, 4, 4 programs per SM. Compile with the device's Triton (3.6 on
the lent H200: its wheel's ``triton`` first on ``PYTHONPATH``) for the device's code; another
Triton gives its own. Writes ``sass.json`` and ``sass.md`` under ``--out``; with ``--against``,
the launches whose hash or registers differ, and exit status 1 when any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_compile import build_parser, compile_args, inspect_cubin

QWEN = ["--shape", "qwen3-0.6b", "--programs-per-sm", "2"]
STAGE_PROGRAMS = (4, 1, 1, 4, 4, 4)
SET = {
    "qwen3-0.6b": [*QWEN, "--group-sync", "2"],
    "qwen3-0.6b-groupsync0": [*QWEN, "--group-sync", "0"],
    "qwen3-0.6b-groupsync1": [*QWEN, "--group-sync", "1"],
    "qwen3-0.6b-timeline": [*QWEN, "--group-sync", "2", "--timeline"],
    "qwen3-0.6b-kvahead": [*QWEN, "--group-sync", "2", "--kv-ahead", "1"],
    "qwen3-0.6b-minsplits8": [*QWEN, "--group-sync", "2", "--min-splits", "8"],
    "qwen3-0.6b-splits32-minsplits8-kvahead": [*QWEN, "--group-sync", "2", "--splits", "32", "--min-splits", "8",
                                               "--kv-ahead", "1"],
    "qwen3-0.6b-kvlate-ropelate": [*QWEN, "--group-sync", "2", "--kv-early", "0", "--rope-early", "0"],
    "qwen3-0.6b-kvbarrier-ropeearly2": [*QWEN, "--group-sync", "2", "--kv-early", "1", "--rope-early", "2"],
    "qwen3-0.6b-plain-tiles": [*QWEN, "--pairs", "0000", "--balanced-elements", "0", "--norm-once", "0"],
    "qwen3-0.6b-s4": ["--shape", "qwen3-0.6b", "--programs-per-sm", "4"],
    "llama-3.2-1b": ["--shape", "llama-3.2-1b", "--programs-per-sm", "2", "--group-sync", "2"],
    **{f"{shape}-stage{stage}": ["--shape", shape, "--stage", str(stage), "--programs-per-sm", str(per_sm),
                                 "--norm-once", "0"]
       for shape in ("qwen3-0.6b", "llama-3.2-1b") for stage, per_sm in enumerate(STAGE_PROGRAMS, 1)},
}


def compile_set(names: list[str], keep: Path | None) -> dict:
    """``name: {args, usage, registers, stack, sha256, lines}`` for each launch of :data:`SET`."""
    out = {}
    for name in names:
        args = SET[name]
        compiled, what = compile_args(build_parser().parse_args(args))
        usage, sass = inspect_cubin(compiled, sass=True)
        fields = dict(part.split(":", 1) for part in usage.split() if ":" in part)
        out[name] = {"args": " ".join(args), "config": what, "usage": usage, "registers": int(fields.get("REG", -1)),
                     "stack": int(fields.get("STACK", -1)), "lines": sass.count("\n"),
                     "sha256": hashlib.sha256(sass.encode()).hexdigest()}
        if keep is not None:
            (keep / f"{name}.sass").write_text(sass)
        print(f"{name}: {usage.split(' SHARED')[0]} {out[name]['sha256'][:12]}", flush=True)
    return out


def commit() -> str:
    """The working tree's commit (``-dirty`` with uncommitted changes), or ``unknown``."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent)
    return done.stdout.strip() or "unknown"


def compare(new: dict, old: dict) -> list[str]:
    """The launches of both sets whose disassembly or registers differ, one line each."""
    lines = []
    for name in sorted(set(new) & set(old)):
        a, b = old[name], new[name]
        if a["sha256"] != b["sha256"] or a["registers"] != b["registers"]:
            lines.append(f"{name}: registers {a['registers']} -> {b['registers']}, stack {a['stack']} -> {b['stack']}, "
                         f"{a['lines']} -> {b['lines']} lines of SASS")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--against", type=Path, help="an earlier sass.json to compare with")
    parser.add_argument("--only", help="comma-separated names of the set (default: all)")
    parser.add_argument("--keep-sass", action="store_true", help="write each launch's disassembly too")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SET)
    unknown = sorted(set(names) - set(SET))
    if unknown:
        parser.error(f"unknown launches {unknown}; of {sorted(SET)}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"triton": triton.__version__, "target": "sm_90", "commit": commit(), "launches": compile_set(
        names, args.out if args.keep_sass else None)}
    (args.out / "sass.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = [f"| {n} | {r['registers']} | {r['stack']} | {r['lines']} | `{r['sha256'][:12]}` |"
            for n, r in result["launches"].items()]
    (args.out / "sass.md").write_text(
        f"Persistent decode layer, sm_90 (Triton {triton.__version__}, offline, commit {result['commit']})\n\n"
        "| launch | registers | stack | SASS lines | sha256 |\n|---|---:|---:|---:|---|\n" + "\n".join(rows) + "\n")
    if args.against is None:
        return 0
    diff = compare(result["launches"], json.loads(args.against.read_text())["launches"])
    print("\n".join(diff) if diff else f"every launch's SASS as in {args.against}")
    return 1 if diff else 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "0")
    raise SystemExit(main())
