"""``infer-bench``: the standard workloads, an OpenAI-protocol load generator, the offline and
Hugging Face side-by-side runs, the configuration matrix and the reports.

Modules, one job each: :mod:`.metrics` (metric arithmetic over per-request records),
:mod:`.workloads` (W1..W6), :mod:`.text` (text of an exact token count), :mod:`.client`
(streaming HTTP client), :mod:`.offline` (``LLM.generate`` in-process), :mod:`.hf`
(transformers side by side), :mod:`.matrix` (configurations and policies), :mod:`.roofline`,
:mod:`.report` and :mod:`.plots` (reports), :mod:`.checkpoints` (random weights at real
shapes), :mod:`.cli`. Nothing here is imported by the engine.
"""
