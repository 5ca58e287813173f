"""Compile the persistent decode-layer kernel for an sm_90 GPU on a machine without one, and
print what the residency check would see (registers per thread, shared memory, spills) and,
with ``--sass``, the disassembly (Triton's bundled ``cuobjdump`` / ``nvdisasm``).

    python benchmarks/offline_compile.py --shape qwen3-0.6b [--timeline] [--sass out.sass]
    python benchmarks/offline_compile.py --kernel lm_head --lm-head-norm 1     (or --kernel gather_rows --gather-fill 1)

A tool for kernel work between device calls: register pressure and instruction order can be
read here; timing still needs the GPU. ``--last-stage k`` compiles the launch cut after stage
``k`` (which stage sets the peak). Shared memory is Triton's dynamic allocation, which
``cuobjdump`` does not count (the launch's check reads it from the compiled metadata).

The counts match the device's only with the device's Triton (3.6 on the lent H200; put its
wheel's ``triton`` package first on ``PYTHONPATH``) and with the launch's specialization:
pointers, strides and the program count are marked divisible by 16, as the real launch sees
them. Without those marks every K/V element got its own address register (255 registers
offline against 128 on the device for the fifth session's kernel; with them: 128, and 150
with the timeline against 146-149 measured).
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from infer_core.bench.checkpoints import shape_config
from infer_core.kernels import decode_layer as dl
from infer_core.kernels.decode_layer.kernel import _decode_layer_kernel
from infer_core.loader.hf_config import head_dim_of

POINTERS = {"x_ptr", "res_ptr", "out_ptr", "res_out_ptr", "w_qkv_ptr", "w_o_ptr", "w_gu_ptr", "w_down_ptr",
            "ln1_ptr", "ln2_ptr", "qn_ptr", "kn_ptr", "cos_ptr", "sin_ptr", "cache_ptr", "qkv_ptr", "attn_ptr",
            "o_ptr", "act_ptr"}
FLOAT32 = {"part_acc_ptr", "part_max_ptr", "part_sum_ptr"}
INT32 = {"counters_ptr", "error_ptr", "table_ptr", "seq_lens_ptr"}
INT64_PTR = {"pos_ptr", "slot_ptr", "timeline_ptr"}
FLOATS = {"eps", "qk_scale"}


def constexprs(shape: str, programs_per_sm: int, num_sms: int, poll_sleep: int, timeline: bool,
               arrive_first: bool | None = None, kv_early: int | None = None,
               balanced_elements: int | None = None, last_stage: int = 6, num_warps: int = 4,
               pairs: tuple[bool, bool, bool, bool] | None = None,
               norm_once: bool | None = None, rope_early: int | None = None,
               splits: int | None = None, group_sync: int | None = None,
               kv_ahead: bool | None = None, stage: int = -1,
               min_splits: int | None = None) -> tuple[dict, dict]:
    """The launch's constexpr values as decode_layer would pass them (bf16, Qwen-style QK-norm
    when the shape has it, a residual, PDL on, 16-token cache blocks), and the config
    (``arrive_first`` / ``kv_early``: the config's default when ``None``). ``stage`` 1-6: that
    stage's own launch (stage by stage), -1 the one launch."""
    cfg = shape_config(shape)
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hq, hkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    balanced = dl.default_balanced_elements() if balanced_elements is None else balanced_elements
    conf = dl.choose_config(hidden, inter, hq, hkv, d, num_sms, torch.bfloat16, programs_per_sm=programs_per_sm,
                            balanced_elements=balanced, num_warps=num_warps)
    conf = replace(conf, **{k: v for k, v in (("arrive_first", arrive_first), ("kv_early", kv_early),
                                              ("pairs", pairs), ("norm_once", norm_once),
                                              ("rope_early", rope_early), ("splits", splits),
                                              ("group_sync", group_sync),
                                              ("kv_ahead", kv_ahead), ("min_splits", min_splits))
                          if v is not None})
    ks = (hidden, hq * d, hidden, inter)
    values = dict(
        HIDDEN=hidden, INTER=inter, HQ=hq, HKV=hkv, HEAD_DIM=d, SPLITS=conf.splits,
        BLOCK_M=max(16, triton.next_power_of_2(hq // hkv)), TILE=conf.tile, BLOCK_SIZE=16,
        QK_NORM="qwen3" in shape, HAS_RESIDUAL=True,
        ROWS_QKV=conf.rows[0], BK_QKV=conf.bk[0], ROWS_O=conf.rows[1], BK_O=conf.bk[1],
        ROWS_GU=conf.rows[2], BK_GU=conf.bk[2], ROWS_DOWN=conf.rows[3], BK_DOWN=conf.bk[3],
        STAGE=stage, LAST=last_stage, PREFETCH=conf.prefetch, PIPE=conf.pipeline, PRECISION="tf32", PDL=True,
        BAL_QKV=conf.balanced[0], BAL_O=conf.balanced[1], BAL_GU=conf.balanced[2], BAL_DOWN=conf.balanced[3],
        **{f"SUB_{name}": dl.pair_sub(conf.rows[i], conf.bk[i], ks[i], conf.num_warps) if conf.pairs[i] else 0
           for i, name in enumerate(("QKV", "O", "GU", "DOWN"))},
        POLL_SLEEP=poll_sleep, TIMELINE=timeline, ARRIVE_FIRST=conf.arrive_first, KV_EARLY=conf.kv_early,
        NORM_ONCE=conf.norm_once, ROPE_EARLY=conf.rope_early, GROUP_SYNC=conf.group_sync,
        KV_AHEAD=conf.kv_ahead, MIN_SPLITS=conf.min_splits,
    )
    return values, conf.__dict__


def compile_sm90(fn, values: dict, kind_of, divisible, options: dict):
    """``fn`` (a ``@triton.jit`` kernel) compiled for sm_90: ``values`` its constexprs, ``kind_of(name)``
    each other argument's type, ``divisible(name, kind)`` whether the launch's specialization sees
    it as a multiple of 16 (aligned pointers, strides, program counts)."""
    names = list(inspect.signature(fn.fn).parameters)
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in values:
            signature[name] = "constexpr"
            continue
        signature[name] = kind_of(name)
        if divisible(name, signature[name]):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, signature, {(names.index(k),): v for k, v in values.items()}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def compile_kernel(values: dict, num_warps: int, maxnreg: int = 0):
    def kind_of(name: str) -> str:
        return ("*bf16" if name in POINTERS else "*fp32" if name in FLOAT32 else "*i32" if name in INT32
                else "*i64" if name in INT64_PTR else "fp32" if name in FLOATS else "i32")

    def divisible(name: str, kind: str) -> bool:
        # what the launch's specialization sees: aligned pointers, strides and program counts
        # that are multiples of 16 (the cache / rotary strides of real shapes, 132 SMs x 4)
        return kind.startswith("*") or name.startswith("stride_") or name == "num_programs"

    options = {"num_warps": num_warps, "num_stages": 1}
    if maxnreg:
        options["maxnreg"] = maxnreg
    return compile_sm90(_decode_layer_kernel, values, kind_of, divisible, options)


def compile_other(kernel: str, shape: str, early: bool, norm: bool, fill: bool):
    """The LM head (``kernels.lm_head``, at the shape's vocabulary and width, the launch's own
    configuration with ``early`` / ``norm``) or the row gather (``kernels.gather_rows``, a
    block table's int32 rows with ``fill``) compiled for sm_90, pointers marked as the launch's
    specialization sees them. Returns ``(compiled kernel, description)``."""
    from infer_core.kernels import gather_rows, lm_head

    if kernel == "lm_head":
        cfg = shape_config(shape)
        hidden = cfg["hidden_size"]
        conf = lm_head.choose_config(cfg["vocab_size"], hidden)
        fn = lm_head._lm_head_argmax_kernel
        types = {"x_ptr": "*bf16", "w_ptr": "*bf16", "logits_ptr": "*bf16", "part_val_ptr": "*fp32",
                 "part_idx_ptr": "*i32", "ticket_ptr": "*i32", "ids_ptr": "*i64", "res_ptr": "*bf16",
                 "norm_w_ptr": "*bf16", "eps": "fp32"}
        values = dict(K=hidden, BLOCK_N=conf.block_n, BLOCK_K=triton.next_power_of_2(hidden), BLOCK_C=conf.block_c,
                      NUM_STAGES=conf.num_stages, PDL=True, EARLY=early, NORM=norm)
        warps, stages, what = conf.num_warps, conf.num_stages, f"{conf}, norm {norm}"
    else:
        fn = gather_rows._gather_rows_kernel
        types = {"out_ptr": "*i32", "src_ptr": "*i32", "index_ptr": "*i64", "ids_ptr": "*i64", "fill_src_ptr": "*i32",
                 "sampled_ptr": "*i64"}
        values, warps, stages, what = dict(BLOCK=256, PDL=True, FILL=fill), 1, 1, f"block-table rows, fill {fill}"
    compiled = compile_sm90(fn, values, lambda name: types.get(name, "i32"), lambda name, kind: kind.startswith("*"),
                            {"num_warps": warps, "num_stages": stages})
    return compiled, f"{kernel} ({shape}): {what}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--poll-sleep", type=int, default=dl.DecodeLayerConfig.poll_sleep)
    parser.add_argument("--timeline", action="store_true")
    parser.add_argument("--arrive-first", type=int, choices=(0, 1), help="default: the config's")
    parser.add_argument("--kv-early", type=int, choices=(0, 1, 2), help="default: the config's")
    parser.add_argument("--pairs", help="bf16 pair tiles per GEMM stage, four digits 0 / 1 (qkv, o, gate/up, "
                        "down; default: the config's)")
    parser.add_argument("--norm-once", type=int, choices=(0, 1), help="default: the config's")
    parser.add_argument("--rope-early", type=int, choices=(0, 1, 2), help="default: the config's")
    parser.add_argument("--group-sync", type=int, choices=(0, 1, 2), help="default: the config's")
    parser.add_argument("--kv-ahead", type=int, choices=(0, 1), help="the splits' later key tiles into L2 "
                        "(default: the config's)")
    parser.add_argument("--min-splits", type=int, help="the fewest key splits a step uses (0: always --splits; "
                        "default: the config's)")
    parser.add_argument("--stage", type=int, default=-1, choices=(-1, *range(1, 7)),
                        help="one stage's own launch (stage by stage; -1: the one launch)")
    parser.add_argument("--splits", type=int, help="key splits per KV head (default: the config's)")
    parser.add_argument("--balanced-elements", type=int, help="default: the launch's own (default_balanced_elements)")
    parser.add_argument("--last-stage", type=int, default=6, choices=range(1, 7),
                        help="compile the launch cut after this stage: which stage sets the register peak")
    parser.add_argument("--programs-per-sm", type=int, default=4)
    parser.add_argument("--num-sms", type=int, default=132)
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--maxnreg", type=int, default=0, help="cap the registers per thread (0: ptxas' choice)")
    parser.add_argument("--sass", type=Path, help="write the disassembly here")
    parser.add_argument("--kernel", default="decode_layer", choices=("decode_layer", "lm_head", "gather_rows"),
                        help="the LM head or the row gather instead of the persistent layer")
    parser.add_argument("--lm-head-early", type=int, choices=(0, 1), default=1)
    parser.add_argument("--lm-head-norm", type=int, choices=(0, 1), default=0, help="the final norm folded in")
    parser.add_argument("--gather-fill", type=int, choices=(0, 1), default=0, help="the placeholder fill with it")
    return parser


def compile_args(args: argparse.Namespace):
    """The kernel ``args`` (parsed by :func:`build_parser`) names, compiled for sm_90, and a line
    describing its configuration."""
    if args.kernel != "decode_layer":
        return compile_other(args.kernel, args.shape, bool(args.lm_head_early), bool(args.lm_head_norm),
                             bool(args.gather_fill))
    values, conf = constexprs(args.shape, args.programs_per_sm, args.num_sms, args.poll_sleep, args.timeline,
                              None if args.arrive_first is None else bool(args.arrive_first),
                              args.kv_early, args.balanced_elements,
                              args.last_stage, args.num_warps,
                              None if args.pairs is None else tuple(c == "1" for c in args.pairs),
                              None if args.norm_once is None else bool(args.norm_once),
                              args.rope_early, args.splits, args.group_sync,
                              None if args.kv_ahead is None else bool(args.kv_ahead), args.stage, args.min_splits)
    compiled = compile_kernel(values, conf["num_warps"], args.maxnreg)
    what = (f"{args.shape}: {conf['num_programs']} programs of {conf['num_warps']} warps, rows {conf['rows']}, "
            f"bk {conf['bk']}, poll sleep {args.poll_sleep} ns, timeline {args.timeline}, arrive first "
            f"{conf['arrive_first']}, kv early {conf['kv_early']}, balanced {conf['balanced']}, pairs {conf['pairs']}, "
            f"group sync {conf['group_sync']}, kv ahead {conf['kv_ahead']}, "
            f"splits {conf['splits']} (min {conf['min_splits']}), stage {args.stage}")
    return compiled, what


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    compiled, what = compile_args(args)
    print(what)
    return report(compiled, args.sass)


def inspect_cubin(compiled, sass: bool = False) -> tuple[str, str | None]:
    """The compiled kernel's resource usage line (``REG:... STACK:... SHARED:...``, as
    ``cuobjdump`` reads it) and, with ``sass``, its disassembly (Triton's bundled tools)."""
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(bin_dir / "cuobjdump"), "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True).stdout
        text = None
        if sass:
            text = subprocess.run([str(bin_dir / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True).stdout
    return " ".join(line.strip() for line in usage.splitlines() if "REG" in line), text


def report(compiled, sass_path: Path | None) -> int:
    """Print the compiled kernel's resource usage (registers, stack, spills) as ``cuobjdump``
    reads it; with ``sass_path``, write the disassembly there."""
    usage, sass = inspect_cubin(compiled, sass_path is not None)
    print(usage)
    if sass_path:
        sass_path.write_text(sass)
        print(f"{sass_path}: {sass.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "0")
    raise SystemExit(main())
