"""The CUDA C++ decode layer (``kernels.decode_layer_cuda``, ``kernels/cuda/decode_layer.cuh``).

On the CPU: the ctypes ``DecodeParams`` has the kernel's ``Params`` layout (nvcc prints the
offsets), every supported model shape compiles under NVRTC, unsupported shapes and switches say
why. On a GPU (``pytest -m gpu``): both variants against ``decode_layer_ref`` at the real shapes
over contexts from 0 to 1,000 keys, with and without a residual, the cache written at the step's
slot only and no barrier timing out; a chain of layers replayed from a CUDA graph equals its eager
run; an engine with ``INFER_DECODE_CUDA`` gives the Triton layer's greedy tokens."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest
import torch

from infer_core.errors import ConfigError, CudaSourceError
from infer_core.kernels import decode_layer_cuda as dlc
from infer_core.kernels import nvrtc
from infer_core.layers.persistent_decode import PersistentDecode

SHAPES = {  # hidden, intermediate, heads, kv heads, head dim, qk-norm
    "qwen3-0.6b": dlc.LayerShape(1024, 3072, 16, 8, 128, True),
    "qwen3-1.7b": dlc.LayerShape(2048, 6144, 16, 8, 128, True),
    "qwen3-4b": dlc.LayerShape(2560, 9728, 32, 8, 128, True),
    "llama-3.2-1b": dlc.LayerShape(2048, 8192, 32, 8, 64, False),
    "tiny-qwen3": dlc.LayerShape(256, 512, 4, 2, 64, True),  # the engine test's checkpoint
}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs the CUDA toolkit's nvcc")
def test_params_layout_is_the_kernels(tmp_path):
    names = [name for name, _ in dlc.DecodeParams._fields_]
    program = tmp_path / "layout.cu"
    program.write_text('#include <cstddef>\n#include <cstdio>\n#include "decode_layer.cuh"\nint main() {\n'
                       + "".join(f'  std::printf("{n} %zu\\n", offsetof(Params, {n}));\n' for n in names)
                       + '  std::printf("sizeof %zu\\n", sizeof(Params));\n}\n')
    binary = tmp_path / "layout"
    subprocess.run(["nvcc", "-std=c++17", "-gencode=arch=compute_90,code=sm_90", f"-I{dlc.SOURCE_DIR}", str(program),
                    "-o", str(binary)], check=True, timeout=300)
    printed = dict(line.split() for line in subprocess.run([str(binary)], capture_output=True, text=True,
                                                          check=True).stdout.splitlines())
    assert {n: int(printed[n]) for n in names} == {n: getattr(dlc.DecodeParams, n).offset for n in names}
    assert int(printed["sizeof"]) == ctypes.sizeof(dlc.DecodeParams)


@pytest.mark.skipif(nvrtc.find_nvrtc() is None, reason="needs NVRTC (the nvidia-cuda-nvrtc wheel)")
@pytest.mark.parametrize("model", sorted(SHAPES))
def test_every_supported_shape_compiles_under_nvrtc(model, tmp_path):
    shape = SHAPES[model]
    assert dlc.unsupported(shape, torch.bfloat16) is None
    cubin = nvrtc.compile_cubin((dlc.SOURCE_DIR / "decode_layer.cuh").read_text(), "decode_layer", "sm_90",
                                [f"--include-path={dlc.SOURCE_DIR}", *shape.defines()], cache=tmp_path)
    assert all(name in cubin for name in (b"decode_layer_grid", b"decode_layer_cluster", b"decode_layer_smem_bytes"))


def test_unsupported_shapes_and_dtypes_say_why():
    qwen = SHAPES["qwen3-0.6b"]
    assert "bf16 only" in dlc.unsupported(qwen, torch.float16)
    assert "head dim 96" in dlc.unsupported(dlc.LayerShape(1024, 3072, 16, 8, 96, True), torch.bfloat16)
    assert "16 query heads over 1 KV heads" in dlc.unsupported(dlc.LayerShape(1024, 3072, 16, 1, 128, True),
                                                               torch.bfloat16)
    assert "multiples of 256" in dlc.unsupported(dlc.LayerShape(1000, 3072, 16, 8, 128, True), torch.bfloat16)
    with pytest.raises(CudaSourceError, match="cannot take this model: head dim 96"):
        dlc.CudaDecodeLayer(dlc.LayerShape(1024, 3072, 16, 8, 96, True), torch.device("cuda"))
    with pytest.raises(CudaSourceError, match=r"cannot take this model: torch\.float16 activations"):
        dlc.CudaDecodeLayer(qwen, torch.device("cuda"), dtype=torch.float16)


def test_cluster_sizes_that_split_a_head_evenly():
    assert all(dlc._cluster_fits(shape, size) for shape in SHAPES.values() for size in (4, 8, 16))
    assert not dlc._cluster_fits(SHAPES["qwen3-4b"], 2)  # 768 rows per head: 384 per CTA, more than 256
    assert not dlc._cluster_fits(SHAPES["llama-3.2-1b"], 32)  # at most 16 CTAs per cluster


def test_switches_from_the_environment(monkeypatch):
    for value, variant in (("", None), ("0", None), ("1", "grid"), ("grid", "grid"), ("Cluster", "cluster")):
        monkeypatch.setenv("INFER_DECODE_CUDA", value)
        assert dlc.variant_from_env() == variant
    monkeypatch.setenv("INFER_DECODE_CUDA", "triton")
    with pytest.raises(ConfigError, match="use grid, cluster or 0"):
        dlc.variant_from_env()
    monkeypatch.setenv("INFER_DECODE_CLUSTER", "8")
    assert dlc.cluster_from_env() == 8
    monkeypatch.setenv("INFER_DECODE_CLUSTER", "12")
    with pytest.raises(ConfigError, match="use 2, 4, 8 or 16"):
        dlc.cluster_from_env()
    monkeypatch.delenv("INFER_DECODE_CUDA_SWITCHES", raising=False)
    assert dlc.switches_from_env() == ()
    monkeypatch.setenv("INFER_DECODE_CUDA_SWITCHES", " DL_REDUCE=0, DL_KEEP_RES=1,DL_MERGE=01 ")
    assert dlc.switches_from_env() == ("-DDL_REDUCE=0", "-DDL_KEEP_RES=1", "-DDL_MERGE=1")
    for bad in ("DL_REDUCE", "DL_REDUCE=x", "DL_HIDDEN=2048", "-DDL_REDUCE=1", "DL_ROWS=1"):
        monkeypatch.setenv("INFER_DECODE_CUDA_SWITCHES", bad)
        with pytest.raises(ConfigError, match="not a switch of the CUDA decode layer"):
            dlc.switches_from_env()


@pytest.mark.skipif(nvrtc.find_nvrtc() is None, reason="needs NVRTC (the nvidia-cuda-nvrtc wheel)")
@pytest.mark.parametrize("switches", [("-DDL_REDUCE=0", "-DDL_KEEP_RES=0"), ("-DDL_MERGE=0",), ("-DDL_EARLY=1",)])
def test_switches_compile_under_nvrtc(switches, tmp_path):
    """Every switch the environment can set compiles at a real shape (Llama's: four queries per KV
    head, head dim 64), as the engine compiles it."""
    shape = SHAPES["llama-3.2-1b"]
    cubin = nvrtc.compile_cubin((dlc.SOURCE_DIR / "decode_layer.cuh").read_text(), "decode_layer", "sm_90",
                                [f"--include-path={dlc.SOURCE_DIR}", *shape.defines(), *switches], cache=tmp_path)
    assert b"decode_layer_grid" in cubin and b"decode_layer_cluster" in cubin


# --- on a GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _case(model: str, context: int, residual: bool, seed: int = 0):
    from tests.kernels import decode_layer_cases as cases

    s = SHAPES[model]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return cases.LayerCase(s.hidden, s.intermediate, s.kv_heads, s.heads // s.kv_heads, s.head_dim, context, 16,
                           s.qk_norm, residual, sms, 16, 64, 16384, 2048, True, seed)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", ["grid", "cluster"])
@pytest.mark.parametrize("model", ["qwen3-0.6b", "llama-3.2-1b", "tiny-qwen3"])
@pytest.mark.parametrize("context", [0, 1, 12, 63, 300, 1000])
def test_layer_equals_the_reference(variant, model, context):
    _check_layer(variant, model, context)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", ["grid", "cluster"])
@pytest.mark.parametrize("switches", [("-DDL_REDUCE=0", "-DDL_KEEP_RES=0"), ("-DDL_REDUCE=0", "-DDL_MERGE=1"),
                                      ("-DDL_MERGE=0",), ("-DDL_EARLY=1",)])
def test_switched_layer_equals_the_reference(variant, switches):
    """The compile-time variants the probe compares (INFER_DECODE_CUDA_SWITCHES) compute the same layer."""
    for model, context in (("qwen3-0.6b", 300), ("llama-3.2-1b", 63)):
        _check_layer(variant, model, context, switches)


def _check_layer(variant, model, context, switches=()):
    from infer_core.kernels import decode_layer as dl
    from tests.kernels import decode_layer_cases as cases

    case = _case(model, context, residual=context != 1)
    weights, layer, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cuda", torch.bfloat16)
    kernel = dlc.CudaDecodeLayer(SHAPES[model], torch.device("cuda"), variant, switches=switches)
    ref_cache = cache.clone()
    ref_out, ref_res = dl.decode_layer_ref(x, res, weights, layer, ref_cache, md, positions, cos, sin)
    out, new_res = kernel(x, res, weights, cache, md, positions, cos, sin)
    torch.cuda.synchronize()
    tol = cases.LAYER_TOL[torch.bfloat16]
    assert cases.relative_error(new_res, ref_res) <= tol
    assert cases.relative_error(out, ref_out) <= tol, cases.relative_error(out, ref_out)
    slot = md.slot_mapping[0].item()
    flat, ref_flat = cache.view(2, -1, layer.num_kv_heads, layer.head_dim), ref_cache.view(
        2, -1, layer.num_kv_heads, layer.head_dim)
    assert cases.relative_error(flat[:, slot], ref_flat[:, slot]) <= tol  # the step's K/V
    others = torch.ones(flat.shape[1], dtype=torch.bool, device="cuda")
    others[slot] = False
    assert torch.equal(flat[:, others], ref_flat[:, others])  # nothing else written
    assert kernel.errors.item() == 0, "a grid barrier timed out"
    assert kernel.sync[0].item() == 1  # one launch: the epoch advanced once



@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", ["grid", "cluster"])
def test_graph_of_layers_replays_its_eager_run(variant):
    from tests.kernels import decode_layer_cases as cases

    case = _case("qwen3-0.6b", 200, residual=True)
    weights, _, md, cache, cos, sin, positions, x, res = cases.layer_inputs(case, "cuda", torch.bfloat16)
    kernel = dlc.CudaDecodeLayer(SHAPES["qwen3-0.6b"], torch.device("cuda"), variant)

    def chain():
        h, r = x, res
        for _ in range(4):  # (one layer's weights four times: the chain's data flow is what is checked)
            h, r = kernel(h, r, weights, cache, md, positions, cos, sin)
        return h, r

    eager = chain()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain()  # (warm)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = chain()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured[0], eager[0]) and torch.equal(captured[1], eager[1])
    assert kernel.errors.item() == 0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", ["grid", "cluster"])
def test_engine_with_the_cuda_layer_gives_the_triton_layers_tokens(variant, monkeypatch):
    """Greedy tokens equal the Triton layer's up to the first near-tie: both layers round to bf16
    where the unfused path does but sum in other orders, so a random model's two best logits within
    bf16 noise of each other may swap; the first differing token must be the Triton run's runner-up
    within ``TIE`` nats of its best, and it must not come before the first few tokens."""
    from infer_core import SamplingParams
    from infer_core.testing.fixtures import tiny_checkpoint
    from tests.kernels.test_engine_gpu import batch, make_llm

    tie = 0.1
    checkpoint = tiny_checkpoint("qwen3", tokenizer=True, vocab_size=512, hidden_size=256, intermediate_size=512,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=5)
    monkeypatch.delenv("INFER_DECODE_CUDA", raising=False)
    triton_layer = make_llm(checkpoint, dtype="bfloat16")
    monkeypatch.setenv("INFER_DECODE_CUDA", variant)
    monkeypatch.setenv("INFER_DECODE_CLUSTER", "4")
    cuda_layer = make_llm(checkpoint, dtype="bfloat16")
    prompts = batch(512)[:1] + batch(512)[2:3]  # 1 and 150 prompt tokens
    for prompt in prompts:
        got = cuda_layer.generate([prompt], params)[0].outputs[0]
        want = triton_layer.generate([prompt], params)[0].outputs[0]
        assert len(got.token_ids) == len(want.token_ids) == params.max_tokens
        differ = [i for i, (a, b) in enumerate(zip(got.token_ids, want.token_ids, strict=True)) if a != b]
        if differ:
            i = differ[0]
            top = dict(want.logprobs[i].top)
            assert i >= 4 and got.token_ids[i] in top, (i, got.token_ids, want.token_ids)
            assert want.logprobs[i].logprob - top[got.token_ids[i]] <= tie, (i, want.logprobs[i])
    paths = [v for m in cuda_layer.engine.runner.model.modules() for v in vars(m).values()
             if isinstance(v, PersistentDecode)]
    assert paths and all(p._cuda is not None for p in paths)  # the CUDA layer ran, not a fallback
    assert all(p._cuda.variant == variant for p in paths)
    assert cuda_layer.engine.cache.num_free_blocks == cuda_layer.engine.cache.num_blocks
