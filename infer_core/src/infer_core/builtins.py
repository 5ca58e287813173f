"""infer-core's own defaults, registered through the same hooks as any third-party plugin."""

from __future__ import annotations

from infer_core import hookimpl

INFER_PLUGIN_API = 1


@hookimpl
def infer_register_cache_backends(registry):
    registry.add(
        "contiguous",
        "infer_core.engine.kv_cache:ContiguousCache",
        description="One block of max_model_len tokens per request (a block pool with one big block).",
    )


@hookimpl
def infer_register_scheduler_policies(registry):
    registry.add(
        "fcfs",
        "infer_core.engine.policy:FCFSPolicy",
        description="First come, first served; preempts the most recently arrived request.",
    )


@hookimpl
def infer_register_attention_backends(registry):
    registry.add(
        "torch",
        "infer_core.attention.torch:TorchAttentionBackend",
        description="Reference attention in plain PyTorch (any device; the CPU path and test oracle).",
    )
    registry.add(
        "triton",
        "infer_core.attention.triton:TritonAttentionBackend",
        options="infer_core.attention.triton:TritonAttentionOptions",
        description="Fused paged attention in Triton (CUDA; the default there): mixed prefill and decode, GQA, windows, FP8 KV.",
    )
