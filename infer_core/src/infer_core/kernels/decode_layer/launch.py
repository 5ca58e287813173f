"""The persistent decode layer's host side: a layer's tensors, the launches' workspace, the
checked launch (:func:`decode_layer`) and its residency check (every program resident at once,
or the barriers would never open)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.kernels.decode_layer.config import (
    DecodeLayerConfig,
    choose_config,
    launch_config,
    pair_sub,
    splits_for,
    stage_programs_per_sm,
)
from infer_core.kernels.decode_layer.kernel import _decode_layer_kernel
from infer_core.kernels.decode_layer.timeline import TIMELINE_SLOTS
from infer_core.kernels.device import num_sms
from infer_core.kernels.paged_attention import LOG2E
from infer_core.kernels.pdl import use_pdl


@dataclass(frozen=True, eq=False)
class DecodeLayerWeights:
    """One Llama / Qwen 3 decoder layer's tensors, as the models hold them (``nn.Linear``
    layout, q/k/v and gate/up stacked): ``qkv [(Hq + 2 Hkv) D, H]``, ``o [H, Hq D]``,
    ``gate_up [2 I, H]``, ``down [H, I]``, the two RMSNorm weights ``[H]`` and their ``eps``,
    and Qwen 3's QK-norm weights ``[D]`` (same ``eps``) or ``None``."""

    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None


def layer_bytes(weights: DecodeLayerWeights) -> int:
    """The bytes of a layer's four projections (what a decode step reads of it, the norms aside)."""
    return sum(t.numel() * t.element_size() for t in (weights.qkv, weights.o, weights.gate_up, weights.down))


def supports(layer: AttentionLayer, kv_cache: torch.Tensor, dtype: torch.dtype) -> str | None:
    """``None`` when the kernel computes this layer's decode step, else why not."""
    half = layer.head_dim // 2
    if layer.head_dim % 2 or half & (half - 1) or half < 16:
        return f"head_dim {layer.head_dim} (its half must be a power of two, at least 16)"
    if layer.num_heads % layer.num_kv_heads or layer.num_heads // layer.num_kv_heads > 16:
        return f"{layer.num_heads} query heads over {layer.num_kv_heads} KV heads"
    if layer.sliding_window or layer.logit_softcap:
        return "a sliding window or a logit softcap"
    if kv_cache.dtype != dtype:
        return f"a {kv_cache.dtype} KV cache with {dtype} activations"
    return None


class DecodeWorkspace:
    """The launches' scratch (shared by every layer of a step: the launches are ordered), the
    barrier counters (never reset: see :mod:`~infer_core.kernels.decode_layer.sync`) and the error flag (set if a
    barrier timed out). Every one-launch layer on one workspace must run with the same
    ``group_sync`` (with it, some barriers' counters do not count). ``splits`` must be the
    launches' (:func:`splits_for` the device's SMs by default)."""

    def __init__(self, hidden: int, intermediate: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 splits: int | None, dtype: torch.dtype, device: torch.device | str) -> None:
        if splits is None:
            splits = splits_for(num_kv_heads, num_sms(torch.device(device)))

        def empty(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.empty(*shape, dtype=dt, device=device)

        self.splits = splits
        self.qkv = empty((num_heads + 2 * num_kv_heads) * head_dim)
        self.part_acc = empty(num_heads * splits * head_dim, dt=torch.float32)
        self.part_max = empty(num_heads * splits, dt=torch.float32)
        self.part_sum = empty(num_heads * splits, dt=torch.float32)
        self.attn = empty(num_heads * head_dim)
        self.o = empty(hidden)
        self.act = empty(intermediate)
        # the barriers' (and the epoch's) counters, then two per KV group (group_sync)
        self.counters = torch.zeros(8 + 2 * num_kv_heads, dtype=torch.int32, device=device)
        self.error = torch.zeros(1, dtype=torch.int32, device=device)
        self.kind: int | None = None  # the group_sync the one-launch layers run with, once one ran
        # launch configuration -> (programs that fit at once, registers, shared memory), once compiled
        self.resident: dict = {}
        # a launch's shape -> the configuration decode_layer chose for it (config=None); (shape, "stages") -> the
        # six of stage by stage on CUDA
        self.chosen: dict = {}


def decode_layer(
    x: torch.Tensor, residual: torch.Tensor | None, weights: DecodeLayerWeights, layer: AttentionLayer,
    kv_cache: torch.Tensor, metadata: AttentionMetadata, positions: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, workspace: DecodeWorkspace, *,
    config: DecodeLayerConfig | None = None, stage_by_stage: bool = False, timeline: torch.Tensor | None = None,
    stage_configs: Sequence[DecodeLayerConfig] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of one layer for one token: ``x``, ``residual [1, H]`` (``None`` for
    the first layer) → ``(mlp_out, new_residual)``, the step's K/V stored into ``kv_cache``
    (``[2, blocks, block_size, Hkv, D]``) at ``metadata.slot_mapping[0]``; ``cos``/``sin
    [positions, D/2]``. ``stage_by_stage`` launches each stage on its own (the interpreter; on
    CUDA with PDL between the launches); ``stage_configs`` (six, stage by stage only) gives each
    stage's launch its own configuration (program count, tiles): no grid barrier ties the
    stages to one. Without them, on CUDA, stage by stage takes :func:`stage_programs_per_sm`.
    ``timeline`` (benchmarks, CUDA): an int64 ``[programs, TIMELINE_SLOTS]`` tensor that
    receives each program's clock at the stage boundaries (:func:`~infer_core.kernels.decode_layer.timeline._stamp`)."""
    hidden = x.shape[-1]
    inter = weights.down.shape[1]
    hq, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    assert x.shape == (1, hidden) and weights.qkv.shape == ((hq + 2 * hkv) * d, hidden), (x.shape, weights.qkv.shape)
    assert weights.o.shape == (hidden, hq * d) and weights.gate_up.shape == (2 * inter, hidden)
    reason = supports(layer, kv_cache, x.dtype)
    assert reason is None, reason
    assert kv_cache.is_contiguous() and kv_cache.shape[3:] == (hkv, d), kv_cache.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x)
    qk_norm = weights.q_norm is not None
    pdl = use_pdl(x)  # (stage by stage too: each stage's launch waits for the one before)
    ws = workspace
    has_residual = residual is not None
    r = residual if residual is not None else x  # (unread without a residual)

    ks = (hidden, hq * d, hidden, inter)  # each GEMM stage's K

    def launch_args(cfg: DecodeLayerConfig, stage: int) -> tuple[tuple, dict]:
        pairs = x.dtype == torch.bfloat16
        qn, kn = (weights.q_norm, weights.k_norm) if qk_norm else (weights.input_norm, weights.input_norm)  # (unread)
        args = (
            x, r, out, res_out, weights.qkv, weights.o, weights.gate_up, weights.down, weights.input_norm,
            weights.post_norm, qn, kn, weights.eps,
            cos, sin, positions, kv_cache, metadata.block_tables, metadata.seq_lens, metadata.slot_mapping,
            kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), cos.stride(0), sin.stride(0),
            layer.scale * LOG2E, ws.qkv, ws.part_acc, ws.part_max, ws.part_sum,
            ws.attn, ws.o, ws.act, ws.counters, ws.error,
            timeline if timeline is not None else ws.counters, cfg.num_programs,
        )
        kwargs = dict(
            HIDDEN=hidden, INTER=inter, HQ=hq, HKV=hkv, HEAD_DIM=d, SPLITS=cfg.splits,
            BLOCK_M=max(16, triton.next_power_of_2(hq // hkv)), TILE=cfg.tile, BLOCK_SIZE=metadata.block_size,
            QK_NORM=qk_norm, HAS_RESIDUAL=has_residual,
            ROWS_QKV=cfg.rows[0], BK_QKV=cfg.bk[0], ROWS_O=cfg.rows[1], BK_O=cfg.bk[1],
            ROWS_GU=cfg.rows[2], BK_GU=cfg.bk[2], ROWS_DOWN=cfg.rows[3], BK_DOWN=cfg.bk[3],
            BAL_QKV=cfg.balanced[0], BAL_O=cfg.balanced[1], BAL_GU=cfg.balanced[2], BAL_DOWN=cfg.balanced[3],
            **{f"SUB_{name}": pair_sub(cfg.rows[i], cfg.bk[i], ks[i], cfg.num_warps) if pairs and cfg.pairs[i] else 0
               for i, name in enumerate(("QKV", "O", "GU", "DOWN"))},
            STAGE=stage, LAST=cfg.last_stage, PREFETCH=cfg.prefetch, PIPE=cfg.pipeline,
            PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            PDL=pdl, POLL_SLEEP=cfg.poll_sleep if x.is_cuda else 0, TIMELINE=timeline is not None,
            ARRIVE_FIRST=cfg.arrive_first, KV_EARLY=cfg.kv_early, NORM_ONCE=cfg.norm_once, ROPE_EARLY=cfg.rope_early,
            GROUP_SYNC=cfg.group_sync, KV_AHEAD=cfg.kv_ahead and x.is_cuda, MIN_SPLITS=cfg.min_splits,
            num_warps=cfg.num_warps, num_stages=1, launch_pdl=pdl,
        )
        return args, kwargs

    shape = (hidden, inter, hq, hkv, d, x.dtype, x.device, qk_norm, has_residual, metadata.block_size, pdl)
    if config is not None:
        cfg = config
    elif not x.is_cuda:
        cfg = choose_config(hidden, inter, hq, hkv, d, num_sms(x.device), x.dtype)
    elif stage_by_stage:  # (no grid barrier: the programs need not all be resident at once)
        if stage_configs is None:  # chosen once per launch shape (programs per SM and tiles of each stage)
            if (shape, "stages") not in ws.chosen:
                per_sm = stage_programs_per_sm(layer_bytes(weights)) or (2,) * 6
                ws.chosen[shape, "stages"] = [launch_config(hidden, inter, hq, hkv, d, num_sms(x.device), x.dtype, n,
                                                            stage_by_stage=True)
                                              for n in per_sm]
            stage_configs = ws.chosen[shape, "stages"]
        cfg = stage_configs[0]
    elif shape not in ws.chosen:  # the most programs per SM that fit, found once per launch shape
        for per_sm in (4, 2, 1):
            cfg = launch_config(hidden, inter, hq, hkv, d, num_sms(x.device), x.dtype, per_sm)
            if per_sm == 1 or _fits(ws, cfg, x.device, *launch_args(cfg, -1)):
                break
        ws.chosen[shape] = cfg
    else:
        cfg = ws.chosen[shape]
    if stage_configs is not None and (not stage_by_stage or len(stage_configs) != 6):
        raise ValueError("stage_configs: give six configurations (stages 1-6), with stage_by_stage=True")
    assert all(c.splits == workspace.splits for c in [cfg, *(stage_configs or [])]), workspace.splits
    stamps = (cfg.num_programs, TIMELINE_SLOTS.value)
    if timeline is not None and (not x.is_cuda or timeline.dtype != torch.int64 or timeline.shape != stamps):
        raise ValueError(f"timeline must be an int64 CUDA tensor of shape {list(stamps)} (programs x stamps)")
    for c in [cfg, *(stage_configs or [])]:
        if c.min_splits < 0 or c.min_splits & (c.min_splits - 1):
            raise ValueError(f"DecodeLayerConfig(min_splits={c.min_splits}): give 0 (every step uses all "
                             f"{c.splits} splits) or a power of two")
    if cfg.group_sync and cfg.num_programs > (hq + 2 * hkv) * d:
        raise ValueError(f"DecodeLayerConfig(group_sync=True) needs at most one program per qkv row "
                         f"({(hq + 2 * hkv) * d}), got {cfg.num_programs} programs")
    if not stage_by_stage:  # the counters' meaning differs: one workspace, one kind of launch
        kind = cfg.group_sync if cfg.balanced[0] else 0  # (the group_sync in effect)
        if ws.kind is None:
            ws.kind = kind
        elif ws.kind != kind:
            raise ValueError(f"this decode workspace's launches ran with group_sync {ws.kind}: a launch with "
                             f"{kind} would misread its barrier counters (use another workspace)")
    for stage in (range(1, 7) if stage_by_stage else (-1,)):
        stage_cfg = stage_configs[stage - 1] if stage_configs is not None else cfg
        args, kwargs = launch_args(stage_cfg, stage)
        if stage < 0 and x.is_cuda:
            _check_resident(ws, cfg, x.device, args, kwargs)
        _decode_layer_kernel[(stage_cfg.num_programs,)](*args, **kwargs)
    return out, res_out


def resident_programs(n_regs: int, shared: int, num_warps: int, device: torch.device) -> int:
    """How many programs of a compiled kernel fit on the device at once (threads, registers,
    shared memory per SM)."""
    props = torch.cuda.get_device_properties(device)
    threads = 32 * num_warps
    by_threads = props.max_threads_per_multi_processor // threads
    regs_per_warp = -(-max(n_regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = props.regs_per_multiprocessor // (regs_per_warp * num_warps)
    smem = getattr(props, "shared_memory_per_multiprocessor", 233472)
    by_smem = smem // (shared + 1024) if shared else 32
    return max(min(by_threads, by_regs, by_smem, 32), 0) * props.multi_processor_count


def _residency(workspace: DecodeWorkspace, cfg: DecodeLayerConfig, device: torch.device, args: tuple,
               kwargs: dict) -> tuple[int, int | None, int]:
    """``(programs that fit at once, registers per thread, shared memory)`` of this launch:
    compiled once per configuration, registers / shared memory / threads counted."""
    key = (cfg, tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, (int, bool, str)))))
    if key not in workspace.resident:
        compiled = _decode_layer_kernel.warmup(*args, grid=(cfg.num_programs,), **kwargs)
        init = getattr(compiled, "_init_handles", None)  # Triton loads the binary (and counts) lazily
        if init is not None:
            init()
        regs, shared = getattr(compiled, "n_regs", None), compiled.metadata.shared
        if regs is None:  # a Triton that does not say: only one program per SM is safe
            fits = num_sms(device)
        else:
            fits = resident_programs(regs, shared, cfg.num_warps, device)
        workspace.resident[key] = (fits, regs, shared)
    return workspace.resident[key]


def _fits(workspace: DecodeWorkspace, cfg: DecodeLayerConfig, device: torch.device, args: tuple,
          kwargs: dict) -> bool:
    """Whether every program of this launch can be resident at once (else its barriers would
    never open)."""
    return cfg.num_programs <= _residency(workspace, cfg, device, args, kwargs)[0]


def _check_resident(workspace: DecodeWorkspace, cfg: DecodeLayerConfig, device: torch.device, args: tuple,
                    kwargs: dict) -> None:
    """Refuse a launch whose programs could not all be resident at once."""
    fits, regs, shared = _residency(workspace, cfg, device, args, kwargs)
    if cfg.num_programs > fits:
        raise ValueError(f"the decode-layer launch has {cfg.num_programs} programs but only {fits} fit on "
                         f"{torch.cuda.get_device_name(device)} at once ({regs} registers per thread, "
                         f"{shared} bytes of shared memory): use fewer programs per SM")
