"""An FP8 KV cache needs a backend that reads one: with the torch backend (the CPU path) the
engine refuses it at start-up with a sentence that says what to change."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM
from infer_core.attention.kv_tensors import check_fp8_kv
from infer_core.attention.torch import TorchAttentionBackend
from infer_core.errors import ConfigError
from infer_core.testing.fixtures import tiny_checkpoint


def test_torch_backend_rejects_fp8_kv():
    with pytest.raises(ConfigError, match=r"cache.kv_dtype 'fp8' needs an attention backend that reads "
                                          r"FP8 caches, and 'torch' does not; set attention.backend to "
                                          r"'triton' \(on CUDA\) or kv_dtype to 'auto'."):
        check_fp8_kv(TorchAttentionBackend(), "torch", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' resolves to CUDA and triton here")
def test_engine_on_cpu_refuses_fp8_kv():
    pytest.importorskip("transformers")
    checkpoint = tiny_checkpoint("llama", tokenizer=True, vocab_size=512)
    with pytest.raises(ConfigError, match="'torch' does not"):
        LLM(model=str(checkpoint), device="auto", max_model_len=64, cache={"kv_dtype": "fp8"})
