"""CUDA C++ kernels compiled at run time (``kernels.nvrtc``) and launched through the driver
(``kernels.cuda_launch``): a header-free source with cluster PTX compiles for sm_90a on a
machine without a GPU and is cached, compile errors and missing libraries say what to do, bad
launch arguments are refused before the driver is touched; on a GPU, clusters, large shared
memory, PDL and CUDA-graph capture work."""

from __future__ import annotations

import pytest
import torch

from infer_core.errors import CudaSourceError
from infer_core.kernels import nvrtc
from infer_core.kernels.cuda_launch import CudaKernel, LaunchConfig

HAS_NVRTC = nvrtc.find_nvrtc() is not None
needs_nvrtc = pytest.mark.skipif(not HAS_NVRTC, reason="needs NVRTC (the nvidia-cuda-nvrtc wheel)")

# Each CTA writes (cluster rank, cluster size, a value its peer 0 put in its shared memory):
# cluster PTX, distributed shared memory and dynamic shared memory, no headers.
SOURCE = r"""
extern "C" __global__ void cluster_probe(int* out, int base) {
  extern __shared__ int smem[];
  unsigned rank, size;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if (threadIdx.x == 0) smem[0] = -1;
  asm volatile("barrier.cluster.arrive.release.aligned;\n barrier.cluster.wait.acquire.aligned;" ::: "memory");
  if (rank == 0 && threadIdx.x < size) {  // peer 0 writes into every peer's smem[0]
    unsigned local = static_cast<unsigned>(__cvta_generic_to_shared(smem)), remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(threadIdx.x));
    asm volatile("st.shared::cluster.u32 [%0], %1;" :: "r"(remote), "r"(base + static_cast<int>(threadIdx.x)) : "memory");
  }
  asm volatile("barrier.cluster.arrive.release.aligned;\n barrier.cluster.wait.acquire.aligned;" ::: "memory");
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x] = static_cast<int>(rank);
    out[3 * blockIdx.x + 1] = static_cast<int>(size);
    out[3 * blockIdx.x + 2] = smem[0];
  }
}
"""


class CountingNvrtc(nvrtc.Nvrtc):
    compiles = 0

    def compile(self, *args, **kwargs):
        CountingNvrtc.compiles += 1
        return super().compile(*args, **kwargs)


@needs_nvrtc
def test_cluster_source_compiles_for_hopper_without_a_gpu_and_is_cached(tmp_path):
    counting = CountingNvrtc()
    first = nvrtc.compile_cubin(SOURCE, "cluster_probe", "sm_90a", nvrtc=counting, cache=tmp_path)
    assert first[:4] == b"\x7fELF" and counting.compiles == 1
    again = nvrtc.compile_cubin(SOURCE, "cluster_probe", "sm_90a", nvrtc=counting, cache=tmp_path)
    assert again == first and counting.compiles == 1  # from the cache
    nvrtc.compile_cubin(SOURCE, "cluster_probe", "sm_90a", ["-lineinfo"], nvrtc=counting, cache=tmp_path)
    assert counting.compiles == 2  # other options: another cubin
    assert len(list(tmp_path.glob("cluster_probe-sm_90a-*.cubin"))) == 2


@needs_nvrtc
def test_compile_error_names_the_kernel_and_quotes_the_compiler(tmp_path):
    with pytest.raises(CudaSourceError, match=r"kernel source 'broken' did not compile for sm_90a:\n.*undefined"):
        nvrtc.compile_cubin('extern "C" __global__ void broken() { undefined_name(); }', "broken", "sm_90a",
                            cache=tmp_path)
    with pytest.raises(CudaSourceError, match="not cooperative_groups: write cluster operations as inline PTX"):
        nvrtc.compile_cubin('#include <cooperative_groups.h>\nextern "C" __global__ void k() {}', "k", "sm_90a",
                            cache=tmp_path)
    assert not list(tmp_path.glob("*.cubin"))


@needs_nvrtc
@pytest.mark.skipif(not nvrtc.cuda_include_dirs(), reason="needs Triton's CUDA headers")
def test_bf16_header_is_on_the_include_path(tmp_path):
    source = '#include <cuda_bf16.h>\nextern "C" __global__ void k(__nv_bfloat16* y) { y[0] = __float2bfloat16(1.0f); }'
    assert nvrtc.compile_cubin(source, "k", "sm_90", cache=tmp_path)[:4] == b"\x7fELF"


def test_missing_or_broken_nvrtc_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("INFER_NVRTC", raising=False)
    monkeypatch.setattr(nvrtc, "find_nvrtc", lambda: None)
    with pytest.raises(CudaSourceError, match="install the nvidia-cuda-nvrtc wheel"):
        nvrtc.Nvrtc()
    with pytest.raises(CudaSourceError, match=r"set INFER_NVRTC to a libnvrtc\.so"):
        nvrtc.Nvrtc(str(tmp_path / "libnvrtc.so.99"))


def test_infer_nvrtc_names_the_library(monkeypatch):
    monkeypatch.setenv("INFER_NVRTC", "/opt/cuda/lib64/libnvrtc.so.13")
    assert nvrtc.find_nvrtc() == "/opt/cuda/lib64/libnvrtc.so.13"


def test_bad_signatures_and_arguments_are_refused_before_the_driver():
    with pytest.raises(CudaSourceError, match=r"argument types \['float4'\] that are not among"):
        CudaKernel(b"", "k", ["ptr", "float4"])
    kernel = CudaKernel(b"", "k", ["ptr", "i32"])
    with pytest.raises(CudaSourceError, match=r"kernel 'k' takes 2 arguments \(ptr, i32\), not 1"):
        kernel(LaunchConfig(grid=1, block=32), torch.zeros(1))
    with pytest.raises(CudaSourceError, match="got a tensor on cpu: pass CUDA tensors or pinned host tensors"):
        kernel(LaunchConfig(grid=1, block=32), torch.zeros(1), 3)


@pytest.mark.gpu
@pytest.mark.parametrize("cluster", [2, 4, 16])
def test_clusters_exchange_through_distributed_shared_memory(cluster):
    kernel = CudaKernel.from_source(SOURCE, "cluster_probe", ["ptr", "i32"])
    config = LaunchConfig(grid=4 * cluster, block=128, cluster=cluster, shared_mem=64 << 10)
    assert kernel.max_active_clusters(config) >= 1
    out = torch.full((4 * cluster, 3), -7, dtype=torch.int32, device="cuda")
    kernel(config, out, 100)
    torch.cuda.synchronize()
    ranks = torch.arange(4 * cluster, device="cuda", dtype=torch.int32) % cluster
    assert torch.equal(out[:, 0], ranks)
    assert torch.equal(out[:, 1], torch.full_like(ranks, cluster))
    assert torch.equal(out[:, 2], 100 + ranks)


@pytest.mark.gpu
def test_pdl_launches_and_graph_capture_replay_with_new_inputs():
    kernel = CudaKernel.from_source(SOURCE, "cluster_probe", ["ptr", "i32"])
    out = torch.zeros((8, 3), dtype=torch.int32, device="cuda")
    base = torch.zeros(1, dtype=torch.int32, device="cuda")
    config = LaunchConfig(grid=8, block=64, cluster=2, pdl=True)
    kernel(config, out, 5)
    torch.cuda.synchronize()
    assert out[:, 2].tolist() == [5, 6] * 4
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        base.add_(1)  # a torch kernel before it in the same graph
        kernel(config, out, 40)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert out[:, 2].tolist() == [40, 41] * 4 and base.item() == 1
    with pytest.raises(CudaSourceError, match=r"the grid \(9, 1, 1\) of 'cluster_probe' is not a multiple"):
        kernel(LaunchConfig(grid=9, block=64, cluster=2), out, 1)
