"""Tensor parallelism over ``torch.distributed`` (docs/parallel.md): the rank's group
(:mod:`~infer_core.parallel.group`) and the worker processes that run ranks 1..N-1
(:mod:`~infer_core.parallel.workers`)."""
