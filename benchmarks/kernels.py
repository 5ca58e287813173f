"""Micro-benchmarks of the Triton kernels at the real shapes of Llama-3.2-1B, Qwen3-1.7B and
gemma-3-1b, against the device's own measured ceilings.

The script first measures two ceilings on the device it runs on: the bandwidth of a large
device-to-device copy (bytes read + bytes written) and the rate of an 8192^3 bf16 matrix
product on random data. Then, per kernel and model, it times the kernel on the GPU
(CUDA-graph replays from a cold L2, see :func:`timed`) and reports the bytes it
must move at least (each input read once, each output written once) over that time, as GB/s
and as a share of the copy bandwidth; attention prefill is reported in TFLOP/s (causal FLOPs
only) against the matrix-product rate. ``--sweep`` also times alternative launch configs of
the attention kernel. Writes ``kernels.json`` and ``kernels.md`` into ``--out``.
``--benches`` picks groups (``rope_kv_write``: the RoPE kernels with the KV-cache write fused
against RoPE then ``write_kv``, at T = 1, 64 and 4096).

    python benchmarks/kernels.py --out benchmarks/reports/kernels-<date>-<device>
    python benchmarks/kernels.py --out <folder> --benches rope_kv_write --models llama-3.2-1b qwen3-1.7b
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
import triton

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import build_attention_metadata
from infer_core.kernels import act_and_mul, fill_ids, kv_cache_write, qk_norm_rope, rms_norm, rotary
from infer_core.kernels.paged_attention import LaunchConfig, choose_config, paged_attention

# (hidden, intermediate, q heads, kv heads, head dim, sliding window of the local layers)
MODELS = {
    "llama-3.2-1b": (2048, 8192, 32, 8, 64, None),
    "qwen3-1.7b": (2048, 6144, 16, 8, 128, None),
    "gemma-3-1b": (1152, 6912, 4, 1, 256, 512),
}
BF16 = torch.bfloat16
PREFILL_TOKENS = 4096
DECODE_BATCH, DECODE_CONTEXT = 64, 4096
FLUSH_BYTES = 256 << 20
REPS = 30


def timed(fn, *args, **kwargs) -> float:
    """GPU milliseconds of one ``fn(*args, **kwargs)`` starting from a cold L2.

    Two CUDA graphs are replayed alternately, ``[flush L2, fn]`` and ``[flush L2]`` (a 256 MiB
    write, four times the L2), and the difference of their medians is the kernel's time:
    graphs remove the host-side launch gaps that would otherwise dominate small kernels, and
    the flush keeps inputs from being served out of L2 across repetitions."""
    call = functools.partial(fn, *args, **kwargs)
    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    call()  # compile
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = []
    for with_call in (False, True):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            flush.zero_()
            if with_call:
                call()
        graphs.append(graph)
    events = [[], []]
    for _ in range(REPS):
        for i, graph in enumerate(graphs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            events[i].append((start, end))
    torch.cuda.synchronize()
    flush_ms, both_ms = (statistics.median(a.elapsed_time(b) for a, b in pairs) for pairs in events)
    del graphs
    return max(both_ms - flush_ms, 1e-6)


def eager_ms(fn, *args, reps: int = 20) -> float:
    """Median milliseconds of ``fn(*args)`` launched eagerly (for work long enough that launch
    gaps do not matter)."""
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        times.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in times)


def measure_ceilings() -> dict[str, float]:
    """Timed eagerly: inside a CUDA graph a device-to-device copy becomes a memcpy node served
    by the copy engines (about 2.7 TB/s on an H200), not the SM copy kernel (about 4.2 TB/s)."""
    n = 1 << 29  # 1 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=BF16)
    dst = torch.empty_like(src)
    copy_ms = eager_ms(dst.copy_, src)
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=BF16)
    b = torch.randn(8192, 8192, device="cuda", dtype=BF16)
    mm_ms = eager_ms(torch.matmul, a, b)
    return {"copy_gbps": 2 * n * 2 / copy_ms / 1e6, "matmul_bf16_tflops": 2 * 8192**3 / mm_ms / 1e9}


class Recorder:
    def __init__(self, ceilings: dict[str, float]) -> None:
        self.ceilings = ceilings
        self.rows: list[dict] = []

    def add(self, kernel: str, model: str, shape: str, ms: float, *, bytes_: float = 0.0,
            flops: float = 0.0, config: dict | None = None, group: str = "kernels") -> dict:
        row = {"group": group, "kernel": kernel, "model": model, "shape": shape, "time_us": ms * 1e3,
               "bytes": bytes_, "flops": flops, "config": config or {}}
        if bytes_:
            row["gbps"] = bytes_ / ms / 1e6
            row["pct_copy"] = 100 * row["gbps"] / self.ceilings["copy_gbps"]
        if flops:
            row["tflops"] = flops / ms / 1e9
            row["pct_matmul"] = 100 * row["tflops"] / self.ceilings["matmul_bf16_tflops"]
        self.rows.append(row)
        print(fmt_row(row), flush=True)
        return row


def fmt_row(r: dict) -> str:
    bw = f"{r['gbps']:7.0f} GB/s {r['pct_copy']:5.1f}%" if "gbps" in r else " " * 19
    fl = f"{r['tflops']:6.1f} TFLOP/s {r['pct_matmul']:5.1f}%" if "tflops" in r else ""
    return f"{r['kernel']:<24} {r['model']:<13} {r['shape']:<34} {r['time_us']:9.1f} us {bw} {fl}"


# -- elementwise kernels ---------------------------------------------------------------------

def bench_elementwise(rec: Recorder, model: str) -> None:
    hidden, inter, hq, hkv, d, _ = MODELS[model]
    e = 2  # bf16 bytes
    for tokens in (PREFILL_TOKENS, DECODE_BATCH):
        x = torch.randn(tokens, hidden, device="cuda", dtype=BF16)
        r = torch.randn_like(x)
        w = torch.randn(hidden, device="cuda", dtype=BF16)
        rec.add("rms_norm", model, f"[{tokens}, {hidden}]", timed(rms_norm.rms_norm, x, w, 1e-6),
                bytes_=2 * tokens * hidden * e + hidden * e)
        rec.add("fused_add_rms_norm", model, f"[{tokens}, {hidden}]",
                timed(rms_norm.fused_add_rms_norm, x, r, w, 1e-6),
                bytes_=4 * tokens * hidden * e + hidden * e)
        rec.add("rms_norm (gemma)", model, f"[{tokens}, {hidden}]",
                timed(rms_norm.rms_norm, x, w, 1e-6, True), bytes_=2 * tokens * hidden * e + hidden * e)
        qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device="cuda", dtype=BF16)
        q = qkv[:, : hq * d].view(tokens, hq, d)
        k = qkv[:, hq * d: (hq + hkv) * d].view(tokens, hkv, d)
        qn = torch.randn(tokens, hq, d, device="cuda", dtype=BF16)
        rec.add("rms_norm (qk-norm rows)", model, f"[{tokens}, {hq}, {d}]",
                timed(rms_norm.rms_norm, qn, w[:d].contiguous(), 1e-6), bytes_=2 * qn.numel() * e)
        positions = torch.randint(0, 8192, (tokens,), device="cuda")
        cos = torch.randn(8192, d // 2, device="cuda", dtype=BF16)
        sin = torch.randn(8192, d // 2, device="cuda", dtype=BF16)
        rec.add("rotary (q and k)", model, f"T={tokens} q[{hq},{d}] k[{hkv},{d}]",
                timed(rotary.rotary_embedding, positions, q, k, cos, sin),
                bytes_=2 * tokens * (hq + hkv) * d * e + tokens * d * e + tokens * 8)
        gu = torch.randn(tokens, 2 * inter, device="cuda", dtype=BF16)
        for name, fn in (("silu_and_mul", act_and_mul.silu_and_mul),
                         ("gelu_tanh_and_mul", act_and_mul.gelu_tanh_and_mul)):
            rec.add(name, model, f"[{tokens}, 2x{inter}]", timed(fn, gu),
                    bytes_=3 * tokens * inter * e)
        kv = torch.randn(2, tokens, hkv, d, device="cuda", dtype=BF16)
        blocks = triton.cdiv(tokens, 16) * 4
        slots = torch.randperm(blocks * 16, device="cuda")[:tokens]
        for cache_dtype, label in ((BF16, "bf16"), (torch.float8_e4m3fn, "fp8")):
            cache = torch.zeros(2, blocks, 16, hkv, d, device="cuda", dtype=cache_dtype)
            scales = torch.ones(2, device="cuda")
            rec.add(f"kv_cache_write ({label})", model, f"T={tokens} [{hkv},{d}] bs=16",
                    timed(kv_cache_write.write_kv, cache, kv[0], kv[1], slots, scales),
                    bytes_=kv.numel() * e + kv.numel() * cache.element_size() + tokens * 8)


def bench_fill_ids(rec: Recorder, model: str) -> None:
    """The decode graph's placeholder fill (async scheduling) at batch 1 and DECODE_BATCH: every
    row's id from the last step's samples (the most any step fills). Bytes: src and ids read,
    the sampled ids read, ids written. A launch-latency figure: the bytes are a few KB."""
    for rows in (1, DECODE_BATCH):
        ids = torch.zeros(rows, dtype=torch.int32, device="cuda")
        src = torch.randperm(rows, device="cuda").to(torch.int32)
        sampled = torch.randint(0, 150_000, (rows,), device="cuda")
        rec.add("fill_ids", model, f"[{rows}]", timed(fill_ids.fill_ids, ids, src, sampled), bytes_=rows * (4 + 4 + 8 + 4))


# vocabulary of each MODELS entry (the embedding the gather reads)
VOCAB = {"llama-3.2-1b": 128_256, "qwen3-1.7b": 151_936, "gemma-3-1b": 262_144}


def bench_gather_rows(rec: Recorder, model: str) -> None:
    """The embedding lookup as the PDL row gather (kernels.gather_rows) against torch's
    ``F.embedding``, at batch 1, DECODE_BATCH and a prefill's tokens; and a block table's rows
    (int32, DECODE_BATCH rows of 256 blocks). Bytes: the rows read and written."""
    from infer_core.kernels.gather_rows import gather_rows

    hidden = MODELS[model][0]
    weight = torch.randn(VOCAB[model], hidden, device="cuda", dtype=BF16)
    for tokens in (1, DECODE_BATCH, PREFILL_TOKENS):
        ids = torch.randint(0, VOCAB[model], (tokens,), device="cuda")
        nbytes = 2 * tokens * hidden * weight.element_size() + tokens * 8
        rec.add("gather_rows (embedding)", model, f"T={tokens} [{hidden}]", timed(gather_rows, weight, ids),
                bytes_=nbytes)
        rec.add("F.embedding", model, f"T={tokens} [{hidden}]", timed(torch.nn.functional.embedding, ids, weight),
                bytes_=nbytes)
    table = torch.randint(0, 1 << 20, (1024, 512), device="cuda", dtype=torch.int32)
    slots = torch.randperm(1024, device="cuda")[:DECODE_BATCH]
    out = torch.empty(DECODE_BATCH, 256, device="cuda", dtype=torch.int32)
    rec.add("gather_rows (block table)", model, f"[{DECODE_BATCH}, 256]", timed(gather_rows, table, slots, 256, out),
            bytes_=2 * DECODE_BATCH * 256 * 4)
    # a decode graph's placeholder fill and block-table rows: one launch (fill=) against two
    for rows in (1, DECODE_BATCH):
        ids = torch.zeros(rows, dtype=torch.int64, device="cuda")
        src = torch.randperm(rows, device="cuda").to(torch.int32)
        sampled = torch.randint(0, 150_000, (rows,), device="cuda")
        fill = (ids, src, sampled)
        nbytes = 2 * rows * 256 * 4 + rows * (8 + 4 + 8 + 8)

        def both(fill=fill, rows=rows):
            fill_ids.fill_ids(*fill)
            gather_rows(table, slots[:rows], 256, out[:rows])

        rec.add("gather_rows + fill (block table)", model, f"[{rows}, 256]",
                timed(lambda fill=fill, rows=rows: gather_rows(table, slots[:rows], 256, out[:rows], fill=fill)),
                bytes_=nbytes)
        rec.add("fill_ids, then gather_rows", model, f"[{rows}, 256]", timed(both), bytes_=nbytes)


def bench_qk_norm_rope(rec: Recorder, model: str, sweep: bool) -> None:
    """QK-norm + RoPE of one layer (Qwen 3, Gemma 3): the fused kernel against the three
    launches it replaces (rms_norm on q, on k, then rotary), on q and k viewed in the fused qkv
    row, with the model's float32 cos/sin tables; prefill, a decode batch and batch 1. Both
    are charged the fused kernel's bytes (q and k read and written once), so their GB/s
    compare as their times do. ``--sweep`` also times other head blocks per program."""
    _, _, hq, hkv, d, _ = MODELS[model]
    e = 2
    qw = torch.randn(d, device="cuda", dtype=BF16)
    kw = torch.randn(d, device="cuda", dtype=BF16)
    cos = torch.randn(8192, d // 2, device="cuda")
    sin = torch.randn(8192, d // 2, device="cuda")
    for tokens in (PREFILL_TOKENS, DECODE_BATCH, 1):
        block_h = qk_norm_rope.heads_per_program(tokens, hq + hkv, d)
        qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device="cuda", dtype=BF16)
        q = qkv[:, : hq * d].view(tokens, hq, d)
        k = qkv[:, hq * d: (hq + hkv) * d].view(tokens, hkv, d)
        positions = torch.randint(0, 8192, (tokens,), device="cuda")
        nbytes = 2 * tokens * (hq + hkv) * d * e + tokens * d * 4 + tokens * 8 + 2 * d * e
        shape = f"T={tokens} q[{hq},{d}] k[{hkv},{d}]"

        def separate(q=q, k=k, positions=positions):
            qn = rms_norm.rms_norm(q, qw, 1e-6)
            kn = rms_norm.rms_norm(k, kw, 1e-6)
            rotary.rotary_embedding(positions, qn, kn, cos, sin)

        rec.add("qk_norm_rope (fused)", model, shape,
                timed(qk_norm_rope.qk_norm_rope, positions, q, k, qw, kw, cos, sin, 1e-6),
                bytes_=nbytes, config={"block_h": block_h})
        rec.add("qk_norm + rotary (3 launches)", model, shape, timed(separate), bytes_=nbytes)
        if sweep:
            for b in (1, 2, 4, 8, 16, 32, 64):
                if b != block_h and b * d <= 4096:
                    rec.add("qk_norm_rope sweep", model, shape,
                            timed(qk_norm_rope.qk_norm_rope, positions, q, k, qw, kw, cos, sin, 1e-6, block_h=b),
                            bytes_=nbytes, config={"block_h": b}, group="sweep")


QK_NORM_MODELS = {"qwen3-1.7b", "gemma-3-1b"}  # the others rotate with the plain RoPE kernel


def bench_rope_kv_write(rec: Recorder, model: str) -> None:
    """The KV-cache write folded into the layer's RoPE kernel (``rotary_embedding`` for Llama,
    ``qk_norm_rope`` for Qwen 3 / Gemma 3, with a ``KVWrite``) against the RoPE kernel followed
    by ``write_kv``, on q, k, v viewed in the fused qkv row, a bf16 paged cache (block 16,
    scattered slots) and the model's float32 cos/sin tables; batch-1 decode, a decode batch and
    a prefill (qwen3-1.7b's attention shape, 16 + 8 heads of 128, is Qwen3-0.6B's too). Both
    are charged the fused launch's bytes (q and k read and written, v read, K
    and V written to the cache, the tables' rows, positions and slots), so their GB/s compare
    as their times do."""
    _, _, hq, hkv, d, _ = MODELS[model]
    e = 2
    qk_norm = model in QK_NORM_MODELS
    qw = torch.randn(d, device="cuda", dtype=BF16)
    kw = torch.randn(d, device="cuda", dtype=BF16)
    cos = torch.randn(8192, d // 2, device="cuda")
    sin = torch.randn(8192, d // 2, device="cuda")
    for tokens in (1, DECODE_BATCH, PREFILL_TOKENS):
        qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device="cuda", dtype=BF16)
        q = qkv[:, : hq * d].view(tokens, hq, d)
        k = qkv[:, hq * d: (hq + hkv) * d].view(tokens, hkv, d)
        v = qkv[:, (hq + hkv) * d:].view(tokens, hkv, d)
        positions = torch.randint(0, 8192, (tokens,), device="cuda")
        blocks = triton.cdiv(tokens, 16) * 4
        slots = torch.randperm(blocks * 16, device="cuda")[:tokens]
        cache = torch.zeros(2, blocks, 16, hkv, d, device="cuda", dtype=BF16)
        fused = kv_cache_write.KVWrite(v, cache, slots)
        nbytes = (2 * tokens * (hq + hkv) * d * e + tokens * hkv * d * e + 2 * tokens * hkv * d * e
                  + tokens * d * 4 + 2 * tokens * 8 + (2 * d * e if qk_norm else 0))
        shape = f"T={tokens} q[{hq},{d}] kv[{hkv},{d}] bs=16"

        def rope(kv=None, q=q, k=k, positions=positions):
            if qk_norm:
                qk_norm_rope.qk_norm_rope(positions, q, k, qw, kw, cos, sin, 1e-6, kv=kv)
            else:
                rotary.rotary_embedding(positions, q, k, cos, sin, kv=kv)

        def separate(rope=rope, k=k, v=v, cache=cache, slots=slots):
            rope()
            kv_cache_write.write_kv(cache, k, v, slots)

        label = "qk_norm_rope" if qk_norm else "rope"
        rec.add(f"{label} + kv write (fused)", model, shape, timed(rope, fused), bytes_=nbytes)
        rec.add(f"{label}, then write_kv", model, shape, timed(separate), bytes_=nbytes)


# -- attention -------------------------------------------------------------------------------

def attention_setup(model: str, q_lens: list[int], ctx_lens: list[int], block_size: int,
                    fp8: bool = False, window: bool = True):
    _, _, hq, hkv, d, win = MODELS[model]
    seq_lens = [c + q for c, q in zip(ctx_lens, q_lens, strict=True)]
    per = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(per)
    order = torch.randperm(num_blocks).tolist()
    tables, start = [], 0
    for n in per:
        tables.append(order[start:start + n])
        start += n
    md = build_attention_metadata(q_lens, seq_lens, tables, block_size, "cuda")
    cache = torch.randn(2, num_blocks, block_size, hkv, d, device="cuda", dtype=BF16)
    scales = None
    if fp8:
        cache = cache.to(torch.float8_e4m3fn)
        scales = torch.ones(2, device="cuda")
    q = torch.randn(sum(q_lens), hq, d, device="cuda", dtype=BF16)
    layer = AttentionLayer(hq, hkv, d, d**-0.5, win if window else None)
    return layer, q, cache, md, scales


def kv_bytes(layer: AttentionLayer, md, cache: torch.Tensor) -> int:
    """K and V of every visible key, read once (windowed layers read only the window)."""
    per_token = 2 * layer.num_kv_heads * layer.head_dim * cache.element_size()
    total = 0
    for i, s in enumerate(md.seq_lens_cpu):
        q_len = md.query_start_loc_cpu[i + 1] - md.query_start_loc_cpu[i]
        first = max(0, s - q_len - (layer.sliding_window or s) + 1)
        total += (s - first) * per_token
    return total


def causal_flops(layer: AttentionLayer, tokens: int) -> float:
    w = layer.sliding_window or tokens
    pairs = sum(min(i + 1, w) for i in range(tokens))
    return 4.0 * layer.num_heads * layer.head_dim * pairs


DECODE_SWEEP = [(32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 2, 3), (128, 4, 2), (128, 8, 3)]
PREFILL_SWEEP = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (128, 32, 4, 3), (64, 64, 4, 3),
                 (64, 128, 4, 2), (128, 64, 8, 4), (64, 32, 4, 2), (64, 64, 8, 3)]


def bench_attention(rec: Recorder, model: str, sweep: bool) -> None:
    e = 2
    # Decode: batch 64 at context 4k, full attention (the global layers), paged (16) and contiguous.
    for block_size in (16, 2 * DECODE_CONTEXT):
        for fp8 in (False, True):
            layer, q, cache, md, scales = attention_setup(
                model, [1] * DECODE_BATCH, [DECODE_CONTEXT] * DECODE_BATCH, block_size, fp8, window=False)
            cfg = choose_config(layer, md, q.device, q.dtype, cache.dtype)
            nbytes = kv_bytes(layer, md, cache) + 2 * q.numel() * e
            label = "decode attention" + (" (fp8 kv)" if fp8 else "")
            rec.add(label, model, f"B={DECODE_BATCH} ctx={DECODE_CONTEXT} bs={block_size}",
                    timed(paged_attention, layer, q, cache, md, scales, config=cfg),
                    bytes_=nbytes, config=asdict(cfg))
            if sweep and block_size == 16 and not fp8:
                for tile, warps, stages in DECODE_SWEEP:
                    for splits in (1, 2):
                        c = LaunchConfig(cfg.block_m, tile, warps, stages, splits)
                        rec.add("decode attention sweep", model, f"B={DECODE_BATCH} ctx={DECODE_CONTEXT} bs=16",
                                timed(paged_attention, layer, q, cache, md, config=c),
                                bytes_=nbytes, config=asdict(c), group="sweep")
            del cache
    # Small decode batches: the split-KV path.
    for batch in (1, 8):
        layer, q, cache, md, scales = attention_setup(model, [1] * batch, [DECODE_CONTEXT] * batch, 16, window=False)
        cfg = choose_config(layer, md, q.device, q.dtype, cache.dtype)
        nbytes = kv_bytes(layer, md, cache) + 2 * q.numel() * e
        rec.add("decode attention", model, f"B={batch} ctx={DECODE_CONTEXT} bs=16",
                timed(paged_attention, layer, q, cache, md, config=cfg),
                bytes_=nbytes, config=asdict(cfg))
        if sweep:
            for splits in (4, 8, 16, 32):
                c = LaunchConfig(cfg.block_m, cfg.tile, cfg.num_warps, cfg.num_stages, splits)
                rec.add("decode attention sweep", model, f"B={batch} ctx={DECODE_CONTEXT} bs=16",
                        timed(paged_attention, layer, q, cache, md, config=c),
                        bytes_=nbytes, config=asdict(c), group="sweep")
    # Prefill: one 4k-token request, causal (and the model's window where it has one).
    for window in (False, True) if MODELS[model][5] else (False,):
        layer, q, cache, md, _ = attention_setup(model, [PREFILL_TOKENS], [0], 16, window=window)
        cfg = choose_config(layer, md, q.device, q.dtype, cache.dtype)
        flops = causal_flops(layer, PREFILL_TOKENS)
        label = "prefill attention" + (" (window)" if window else "")
        rec.add(label, model, f"T={PREFILL_TOKENS} bs=16",
                timed(paged_attention, layer, q, cache, md, config=cfg), flops=flops, config=asdict(cfg))
        if sweep and not window:
            for block_m, tile, warps, stages in PREFILL_SWEEP:
                c = LaunchConfig(block_m, tile, warps, stages)
                try:
                    ms = timed(paged_attention, layer, q, cache, md, config=c)
                except Exception as exc:  # out of shared memory / registers for this shape
                    print(f"prefill sweep {c}: {type(exc).__name__}: {str(exc)[:120]}")
                    continue
                rec.add("prefill attention sweep", model, f"T={PREFILL_TOKENS} bs=16", ms, flops=flops,
                        config=asdict(c), group="sweep")
    # The dense reference point: torch SDPA (FlashAttention) on contiguous q, k, v.
    _, _, hq, hkv, d, _ = MODELS[model]
    qd = torch.randn(1, hq, PREFILL_TOKENS, d, device="cuda", dtype=BF16)
    kd = torch.randn(1, hq, PREFILL_TOKENS, d, device="cuda", dtype=BF16)
    vd = torch.randn_like(kd)
    layer = AttentionLayer(hq, hkv, d, d**-0.5)
    rec.add("torch sdpa (reference)", model, f"T={PREFILL_TOKENS} dense causal",
            timed(torch.nn.functional.scaled_dot_product_attention, qd, kd, vd, is_causal=True),
            flops=causal_flops(layer, PREFILL_TOKENS), group="reference")


# -- report ----------------------------------------------------------------------------------

def environment() -> dict:
    commit = os.environ.get("INFER_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    props = torch.cuda.get_device_properties(0)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0),
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "commit": commit,
        "config": {"dtype": "bfloat16", "prefill_tokens": PREFILL_TOKENS, "decode_batch": DECODE_BATCH,
                   "decode_context": DECODE_CONTEXT,
                   "timing": f"CUDA-graph replays, median of {REPS}, minus an L2 flush of {FLUSH_BYTES >> 20} MiB"},
    }


def markdown(env: dict, ceilings: dict, rows: list[dict]) -> str:
    lines = [
        f"# Kernel micro-benchmarks — {env['device']}", "",
        f"{env['date']}, commit `{env['commit']}`; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}; {env['multiprocessors']} SMs; bf16. Timing: {env['config']['timing']}.", "",
        f"Ceilings measured here: device-to-device copy **{ceilings['copy_gbps']:.0f} GB/s** (read + write), "
        f"bf16 8192³ matmul **{ceilings['matmul_bf16_tflops']:.0f} TFLOP/s**.", "",
        "Bytes are the least a kernel must move (inputs read once, outputs written once); attention "
        "FLOPs count only the causal (and windowed) pairs.", "",
    ]
    for group, title in (("kernels", "Kernels"), ("reference", "Reference points"), ("sweep", "Launch-config sweeps")):
        part = [r for r in rows if r["group"] == group]
        if not part:
            continue
        lines += [f"## {title}", "", "| kernel | model | shape | time (µs) | GB/s | % copy | TFLOP/s | % matmul | config |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in part:
            cfg = " ".join(f"{k}={v}" for k, v in r["config"].items())
            lines.append(
                f"| {r['kernel']} | {r['model']} | {r['shape']} | {r['time_us']:.1f} | "
                f"{r.get('gbps', float('nan')):.0f} | {r.get('pct_copy', float('nan')):.1f} | "
                f"{r.get('tflops', float('nan')):.1f} | {r.get('pct_matmul', float('nan')):.1f} | {cfg} |"
                .replace("nan", "–"))
        lines.append("")
    return "\n".join(lines)


def run_cases(cases) -> int:
    """Run each zero-argument ``case``; a case that raises is reported (traceback) and the rest
    go on: one failing kernel must not hide the others. Returns how many failed."""
    failures = 0
    for case in cases:
        try:
            case()
        except Exception:
            failures += 1
            traceback.print_exc()
    return failures


def save(out: Path, stem: str, env: dict, ceilings: dict, rows: list[dict], md: str) -> None:
    """``<stem>.json`` (environment, ceilings, every row) and ``<stem>.md`` into ``out``, and the
    rows but the sweeps printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "ceilings": ceilings, "results": rows},
                                                 indent=1))
    (out / f"{stem}.md").write_text(md)
    print("\n" + "\n".join(fmt_row(r) for r in rows if r["group"] != "sweep"))


# name: (function, whether it takes --sweep)
BENCHES = {
    "elementwise": (bench_elementwise, False),
    "qk_norm_rope": (bench_qk_norm_rope, True),
    "rope_kv_write": (bench_rope_kv_write, False),
    "attention": (bench_attention, True),
    "fill_ids": (bench_fill_ids, False),
    "gather_rows": (bench_gather_rows, False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels.json and kernels.md")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sweep", action="store_true", help="also time alternative attention launch configs")
    parser.add_argument("--benches", nargs="*", default=list(BENCHES), choices=list(BENCHES),
                        help="which groups of kernels to time (default: all)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA device.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    env = environment()
    ceilings = measure_ceilings()
    print(f"copy {ceilings['copy_gbps']:.0f} GB/s, bf16 matmul {ceilings['matmul_bf16_tflops']:.0f} TFLOP/s", flush=True)
    rec = Recorder(ceilings)
    failures = 0
    for model in args.models:
        failures += run_cases(
            functools.partial(BENCHES[name][0], rec, model, *([args.sweep] if BENCHES[name][1] else []))
            for name in args.benches)
        torch.cuda.empty_cache()
    save(args.out, "kernels", env, ceilings, rec.rows, markdown(env, ceilings, rec.rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
