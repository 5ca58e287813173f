"""Builds, runs and reports the CUDA programs under ``benchmarks/hopper/``: what a Hopper-specific
batch-1 decode layer kernel could save, measured before it is written.

- ``handoffs`` (``hopper/handoffs.cu``): one stage handoff, a grid barrier with the vector the next
  stage reads (the persistent Triton layer's, written in CUDA) against a thread-block cluster's
  barrier with the vector exchanged through distributed shared memory (pull or push), for cluster
  sizes 2-16 at 1 or 2 CTAs per SM, as many clusters as are resident at once (the ``ctas`` column
  says how many SMs a cluster size covers).
- ``gemv_stages`` (``hopper/gemv_stages.cu``): one projection stage (y = W x, batch 1, bf16) at
  the layers' shapes between grid barriers, its weights streamed by 16-byte loads (after or
  before the barrier) or by the TMA's 1-D bulk copies into a ring of shared-memory slots, and
  between cluster barriers with the row sums pushed into the peers' shared memory (``cluster``);
  µs per stage beside the Triton layer's stage times and GB/s beside the copy ceiling.
- ``decode_layer`` (``hopper/decode_layer.cu``): a whole Qwen3-0.6B decode layer as one
  persistent CUDA launch, with the Triton layer's five grid barriers (``grid``) or with qkv,
  attention and the merge of each KV head inside a thread-block cluster (``cluster``), in a
  chain of 28 layers: µs per layer against the Triton layer's 20.5-20.7, each variant first
  checked against the host's double-precision layer.

Each program checks every value it reads back (a wrong word or a barrier time-out fails the run
instead of reporting a time) and prints one JSON line per row; this script writes
``<program>.json`` and ``<program>.md`` into ``--out``. Arguments after ``--`` go to the program
(its header lists them).

    python benchmarks/hopper_programs.py handoffs --out benchmarks/reports/hopper-<date>-<device>
    python benchmarks/hopper_programs.py gemv_stages --out benchmarks/reports/hopper-<date>-<device> -- --stages 4
    python benchmarks/hopper_programs.py decode_layer --out benchmarks/reports/hopper-<date>-<device>
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "hopper"
# the device code the engine compiles too (device.cuh, decode_layer.cuh)
KERNELS = Path(__file__).resolve().parents[1] / "infer_core" / "src" / "infer_core" / "kernels" / "cuda"
NVCC_FLAGS = ["-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", f"-I{KERNELS}"]

# program: the markdown table's (heading, row key or a function of the row)
COLUMNS = {
    "handoffs": [
        ("mode", "mode"), ("cluster", lambda r: r["cluster"] or "–"), ("CTAs", "ctas"),
        ("CTAs/SM", "ctas_per_sm"), ("words", "words"), ("µs per exchange", lambda r: f"{r['us_per_round']:.3f}"),
        ("launch µs", lambda r: f"{r['launch_us']:.1f}"),
    ],
    "gemv_stages": [
        ("shape", "shape"), ("n x k", lambda r: f"{r['n']} x {r['k']}"), ("variant", "variant"),
        ("stages", lambda r: r["stages"] if r["variant"] == "bulk" else "–"),
        ("cluster", lambda r: r["cluster"] or "–"), ("CTAs", "ctas"), ("CTAs/SM", "ctas_per_sm"),
        ("µs per round", lambda r: f"{r['us_per_round']:.3f}"), ("µs per stage", lambda r: f"{r['stage_us']:.3f}"),
        ("barrier µs", lambda r: f"{r['barrier_us']:.3f}"), ("GB/s", lambda r: f"{r['gbps']:.0f}"),
    ],
    "decode_layer": [
        ("build", lambda r: r.get("build", "default")), ("variant", "variant"),
        ("cluster", lambda r: r["cluster"] or "–"), ("CTAs", "ctas"), ("CTAs/SM", "ctas_per_sm"),
        ("cooperative", lambda r: "yes" if r.get("cooperative") else "no"),
        ("splits", lambda r: r.get("splits", "–")), ("poll ns", lambda r: r.get("poll_ns", "–")),
        ("context", lambda r: r.get("context", "–")),
        ("µs per layer", lambda r: f"refused: {r['refused']}" if "refused" in r else f"{r['us_per_layer']:.2f}"),
        ("min", lambda r: "–" if "refused" in r else f"{r['us_per_layer_min']:.2f}"),
        ("max rel. error", lambda r: "–" if "refused" in r else f"{r['max_rel_err']:.1e}"),
    ],
}
TITLES = {
    "handoffs": "Stage handoffs: grid barrier against thread-block clusters",
    "gemv_stages": "Projection stages between grid barriers: 16-byte loads against TMA bulk copies",
    "decode_layer": "A Qwen3-0.6B decode layer in CUDA: grid barriers against clusters",
}
NOTES = {
    "handoffs": "µs per exchange: (t(rounds) - t(1)) / (rounds - 1), medians of the launches; `words`: "
                "float32 words per vector (one per grid, one per cluster).",
    "gemv_stages": "µs per round: (t(rounds) - t(1)) / (rounds - 1), medians of the launches: the stage and "
                   "its handoff (compare rounds across variants); µs per stage: minus the same launch with no "
                   "rows (the grid variants: the grid barrier and the read of x from L2; `cluster`: the "
                   "cluster barrier). Every round streams its weights from DRAM (copies over 2 x L2).",
    "decode_layer": "µs per layer: one CUDA graph of the chain's launches (distinct weights per layer, PDL "
                    "between them), median and min over the replays, divided by the layers; the error: one "
                    "launch of layer 0 against the host's double-precision layer, max |got - want| / (1 + |want|) "
                    "over both outputs and the cache row written. Triton's persistent layer: 20.5-20.7 µs "
                    "at context 384 (benchmarks/reports/decode-layer-oheads-gu-early-2026-12-03-h200). "
                    "`cooperative`: launched with the cooperative attribute (`--cooperative 1`): the driver "
                    "refuses a grid it cannot keep resident at once.",
}


class ProgramError(RuntimeError):
    """A program read back a wrong value or a barrier timed out: it has a bug."""


def source(program: str) -> Path:
    if program not in COLUMNS:
        raise ValueError(f"unknown program {program!r}: choose one of {', '.join(COLUMNS)}")
    return HERE / f"{program}.cu"


def find_nvcc() -> str | None:
    """``nvcc`` on PATH, else the CUDA toolkit's default place."""
    found = shutil.which("nvcc")
    if found is None and Path("/usr/local/cuda/bin/nvcc").exists():
        found = "/usr/local/cuda/bin/nvcc"
    return found


def build(program: str, out_dir: Path, nvcc: str | None = None, defines: list[str] | None = None,
          name: str = "") -> Path:
    """Compile ``program`` into ``out_dir`` (with ``defines``, e.g. ``-DDL_MERGE=1``); returns the
    executable's path."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError(f"nvcc is not on PATH: install the CUDA toolkit (13.0 or newer) to build {program}")
    binary = out_dir / (f"{program}-{name}" if name else program)
    subprocess.run([nvcc, *NVCC_FLAGS, *(defines or []), str(source(program)), "-o", str(binary)], check=True)
    return binary


def builds(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``--build NAME=FLAGS`` values -> (name, flags; FLAGS split at spaces or commas); ``default``
    (no flags) first unless named."""
    out = []
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise ValueError(f"--build {spec!r}: write NAME=FLAGS, e.g. merge=-DDL_MERGE=1")
        out.append((name, [f for f in re.split(r"[\s,]+", flags) if f]))
    if "default" not in {n for n, _ in out}:
        out.insert(0, ("default", []))
    return out


def parse(lines: list[str]) -> tuple[dict, list[dict]]:
    """A program's output: its first JSON line describes the device, each other one a row."""
    objects = json_lines(lines)
    if not objects or "device" not in objects[0]:
        raise ValueError("the program printed no device line: did it run on a GPU?")
    rows = [o for o in objects[1:] if "timeline" not in o]
    check_rows(rows)
    return objects[0], rows


def json_lines(lines: list[str]) -> list[dict]:
    """The JSON objects a program printed, one per line (other lines are its notes)."""
    return [json.loads(line) for line in lines if line.strip().startswith("{")]


def check_rows(rows: list[dict]) -> None:
    """Raises if a row read back a wrong value or timed out (a launch the driver refused is neither)."""
    broken = [r for r in rows if r.get("errors") or r.get("timeouts")]
    if broken:
        raise ProgramError(f"{len(broken)} rows read back wrong values or timed out, first: {broken[0]}")


def timelines(objects: list[dict]) -> list[dict]:
    """The stage intervals a ``-DDL_TIMELINE`` build of decode_layer prints, one object per variant."""
    return [o for o in objects if "timeline" in o]


def timeline_markdown(items: list[dict]) -> str:
    """One column per (build, variant): each interval's median over the CTAs (their max)."""
    if not items:
        return ""
    heads = [f"{t.get('build', 'default')} {t['timeline']}{' ' + str(t['cluster']) if t['cluster'] else ''}"
             for t in items]
    names = [i["name"] for i in items[0]["intervals"]]
    lines = ["", "## Stage intervals (µs: median over the CTAs, their max)", "",
             "| interval | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(items)]
    for k, name in enumerate(names):
        cells = [f"{t['intervals'][k]['median']:.2f} ({t['intervals'][k]['max']:.2f})" for t in items]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sums = [f"{sum(i['median'] for i in t['intervals']):.2f}" for t in items]
    lines.append("| sum of medians | " + " | ".join(sums) + " |")
    return "\n".join(lines) + "\n"


def markdown(program: str, device: dict, env: dict, rows: list[dict]) -> str:
    columns = COLUMNS[program]
    lines = [
        f"# {TITLES[program]} — {device['device']}", "",
        f"{env['date']}, commit `{env['commit']}`, {env['nvcc']}; {device['sms']} SMs, "
        f"{device['smem_per_sm'] // 1024} KB shared memory per SM. {NOTES[program]}", "",
        "| " + " | ".join(h for h, _ in columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    for row in rows:
        cells = [value(row) if callable(value) else row[value] for _, value in columns]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def environment(nvcc: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "nvcc": version[-1] if version else "nvcc", "flags": NVCC_FLAGS}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("program", choices=sorted(COLUMNS))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--build", action="append", default=[], metavar="NAME=FLAGS",
                   help="decode_layer: also build with these flags (e.g. merge=-DDL_MERGE=1; repeat it); "
                        "each row names its build")
    p.add_argument("--timeline", action="store_true",
                   help="decode_layer: build with -DDL_TIMELINE and report each variant's stage intervals")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one build's run may take")
    args = p.parse_args(argv)
    if (args.build or args.timeline) and args.program != "decode_layer":
        p.error("--build and --timeline are decode_layer's")
    nvcc = find_nvcc()
    args.out.mkdir(parents=True, exist_ok=True)
    device, rows, stages, failed = None, [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in builds(args.build):
            defines = [*flags, *(["-DDL_TIMELINE"] if args.timeline else [])]
            binary = build(args.program, Path(tmp), nvcc, defines, name if args.build else "")
            try:
                run = subprocess.run([str(binary), *extra], capture_output=True, text=True, timeout=args.timeout)
                stdout, stderr, code = run.stdout, run.stderr, run.returncode
            except subprocess.TimeoutExpired as e:
                stdout, stderr, code = _text(e.stdout), _text(e.stderr), "timeout"
            sys.stderr.write(stderr)
            suffix = f"-{name}" if args.build else ""
            (args.out / f"{args.program}{suffix}.log").write_text(stdout + stderr)  # kept when a row is wrong
            if code != 0:  # what it printed before it died still counts
                failed.append(f"{name}: exited with {code}")
            try:
                objects = json_lines(stdout.splitlines())
            except json.JSONDecodeError:
                objects = []
            if not objects or "device" not in objects[0]:
                failed.append(f"{name}: no device line")
                continue
            device = objects[0]
            tag = {"build": name, "flags": " ".join(flags)} if args.build else {}
            rows += [{**r, **tag} for r in objects[1:] if "timeline" not in r]
            stages += [{**t, **tag} for t in timelines(objects[1:])]
    if device is None:
        raise SystemExit(f"{args.program}: nothing ran ({'; '.join(failed)})")
    env = environment(nvcc)
    (args.out / f"{args.program}.json").write_text(
        json.dumps({"environment": env, "device": device, "args": extra, "builds": args.build, "rows": rows,
                    "timelines": stages, "failed": failed}, indent=1))
    md = markdown(args.program, device, env, rows) + timeline_markdown(stages)
    if failed:
        md += "\nDid not finish: " + "; ".join(failed) + ".\n"
    (args.out / f"{args.program}.md").write_text(md)
    print(md)
    check_rows(rows)
    return 1 if failed else 0


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


if __name__ == "__main__":
    raise SystemExit(main())
