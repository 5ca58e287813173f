"""GPU smoke check of async scheduling and the pinned sampled-id copy: a tiny Llama on CUDA
(CUDA graphs on), greedy + seeded requests, async_scheduling on vs off: the same tokens."""
import os
import time

import torch

from infer_core import LLM, SamplingParams
from infer_core.testing.fixtures import tiny_checkpoint

ck = tiny_checkpoint("llama", tokenizer=True, vocab_size=512)
gen = torch.Generator().manual_seed(0)
prompts = [torch.randint(1, 512, (int(k),), generator=gen).tolist() for k in torch.randint(1, 100, (12,), generator=gen)]
params = [SamplingParams(temperature=0, max_tokens=48, ignore_eos=True),
          SamplingParams(temperature=0.8, seed=3, max_tokens=40, ignore_eos=True, logprobs=1)] * 6
results = {}
for mode in (False, True):
    llm = LLM(model=str(ck), device=os.environ.get("SMOKE_DEVICE", "cuda"), dtype="float32", max_model_len=256, max_num_seqs=8,
              cache={"backend": "paged", "num_blocks": 256, "block_size": 16},
              scheduler={"async_scheduling": mode, "max_num_batched_tokens": 256})
    t = time.perf_counter()
    out = llm.generate(prompts, params)
    results[mode] = [o.outputs[0].token_ids for o in out]
    graphs = llm.engine.runner.graphs
    print(f"async={mode}: {time.perf_counter() - t:.2f} s, graphs {sorted(graphs.captured) if graphs else []}, "
          f"free {llm.engine.cache.num_free_blocks}/{llm.engine.cache.num_blocks}", flush=True)
same = sum(a == b for a, b in zip(results[False], results[True], strict=True))
print(f"same outputs: {same}/{len(prompts)}")
assert same == len(prompts)
print("OK")
