"""Triton kernels, one per module, each beside a torch reference of the same function.

Every module holds one ``@triton.jit`` kernel (plus its small ``@triton.jit`` helpers), a
checked wrapper that launches it, and ``<name>_ref``: the same function in plain PyTorch,
which is the test oracle (and, where a layer needs it, the CPU path).

- :mod:`~infer_core.kernels.rms_norm` — RMSNorm, fused residual-add + RMSNorm, Gemma ``(1+w)``
- :mod:`~infer_core.kernels.rotary` — RoPE in place on q and k from a positions vector
- :mod:`~infer_core.kernels.qk_norm_rope` — QK-norm (either RMSNorm) + RoPE in one launch, in place
- :mod:`~infer_core.kernels.act_and_mul` — SiLU-and-mul, GELU(tanh)-and-mul
- :mod:`~infer_core.kernels.kv_cache_write` — K/V scatter through the slot mapping (incl. FP8)
- :mod:`~infer_core.kernels.paged_attention` — unified paged attention over the flat batch,
  with its split-KV reduction in :mod:`~infer_core.kernels.attention_reduce`
- :mod:`~infer_core.kernels.gather_rows` — row gather as a PDL launch (embedding lookup,
  block-table rows; ``INFER_GATHER_ROWS=0`` turns it off)
- :mod:`~infer_core.kernels.argmax` — two-stage argmax over the vocabulary (the greedy sampler)
- :mod:`~infer_core.kernels.small_m_gemm` — decode-sized (M <= 16) GEMM, optional fused act-and-mul or (residual add +) RMSNorm prologue, gated act-and-mul epilogue (model.small_m_gemm)
- :mod:`~infer_core.kernels.decode_layer` — a whole Llama / Qwen 3 decoder layer of a batch-1
  decode step as one persistent launch (model.persistent_decode); a package, one file per job
  (barriers, GEMM stages, attention, clock stamps, the kernel, configurations, the launch, the
  reference)

:mod:`~infer_core.kernels.device` and :mod:`~infer_core.kernels.pdl` hold what the launches share.
:mod:`~infer_core.kernels.nvrtc` and :mod:`~infer_core.kernels.cuda_launch` compile CUDA C++
sources at run time and launch them through the driver (thread-block clusters, PDL, large
shared memory): for kernels Triton cannot express. :mod:`~infer_core.kernels.decode_layer_cuda`
(``kernels/cuda/decode_layer.cuh``) is the persistent decode layer in CUDA C++, opt-in
(``INFER_DECODE_CUDA``), its torch reference that of :mod:`~infer_core.kernels.decode_layer`.

Importing this package imports nothing heavy; each kernel module imports Triton.
"""
