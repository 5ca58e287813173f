// What one handoff between two stages of a batch-1 decode layer costs on Hopper: a grid-wide
// barrier with the vector the next stage reads (what the Triton persistent layer does), against a
// thread-block cluster's barrier with the vector exchanged through distributed shared memory
// (what a Hopper-specific layer kernel would do inside a cluster).
//
// Every launch runs `rounds` exchanges back to back; the cost of one is
// (t(rounds) - t(1)) / (rounds - 1), CUDA events, medians of `--repeats` launches. Each round
// every CTA writes its share of a `words`-word float vector (one vector for the grid, one per
// cluster), synchronizes, and reads the whole vector back, checking every word (round-dependent
// values, double-buffered by the round's parity: one synchronization per round). Mismatches and
// barrier time-outs are counted and printed: a row with either is a bug, never a timing.
//
// Modes:
//   grid          counter barrier: __syncthreads, one red.release.gpu per CTA, thread 0 polls
//                 with ld.acquire.gpu, __syncthreads; the vector in global memory, read with
//                 ld.global.cg (L2) after the barrier.
//   cluster-pull  barrier.cluster arrive.release / wait.acquire; each CTA writes its share into its
//                 own shared memory and reads the others' shares from theirs (ld.shared::cluster).
//   cluster-push  each CTA writes its share into every CTA's shared memory (st.shared::cluster)
//                 before the barrier and reads the whole vector from its own after it.
// words = 0 times the synchronization alone.
//
// Build (-I: device.cuh): nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I../../infer_core/src/infer_core/kernels/cuda handoffs.cu -o handoffs
// (benchmarks/hopper_programs.py builds, runs and reports). Output: one JSON object per line.

#include <cooperative_groups.h>

#include <string>

#include "common.cuh"

namespace cg = cooperative_groups;

__device__ __forceinline__ float expected(int round, int index) {
  return static_cast<float>((round * 131 + index) & 0xffff);  // exact in float32
}

// errors[0]: words read back wrong; errors[1]: barrier polls that gave up
__global__ void grid_exchange(int rounds, int words, float* vec, unsigned* counter, unsigned* errors) {
  const unsigned programs = gridDim.x;
  const int share = (words + programs - 1) / programs;
  unsigned bad = 0;
  for (int r = 0; r < rounds; ++r) {
    float* buf = vec + (r & 1) * words;
    for (int i = threadIdx.x; i < share; i += blockDim.x) {
      const int index = blockIdx.x * share + i;
      if (index < words) buf[index] = expected(r, index);
    }
    grid_barrier(counter, static_cast<unsigned>(r + 1) * programs, errors + 1);
    for (int i = threadIdx.x; i < words; i += blockDim.x) bad += __ldcg(buf + i) != expected(r, i);
  }
  if (bad) atomicAdd(errors, bad);
}

template <bool kPush>
__global__ void cluster_exchange(int rounds, int words, unsigned* errors) {
  extern __shared__ float smem[];  // push: 2 x words (the whole vector); pull: 2 x share
  cg::cluster_group cluster = cg::this_cluster();
  const int size = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int share = words / size;
  unsigned bad = 0;
  for (int r = 0; r < rounds; ++r) {
    const int parity = r & 1;
    if (kPush) {
      float* mine = smem + parity * words;
      for (int i = threadIdx.x; i < share * size; i += blockDim.x) {
        const int peer = i / share, index = rank * share + i % share;
        cluster.map_shared_rank(mine, peer)[index] = expected(r, index);
      }
      cluster.sync();
      for (int i = threadIdx.x; i < words; i += blockDim.x) bad += mine[i] != expected(r, i);
    } else {
      float* mine = smem + parity * share;
      for (int i = threadIdx.x; i < share; i += blockDim.x) mine[i] = expected(r, rank * share + i);
      cluster.sync();
      for (int i = threadIdx.x; i < words; i += blockDim.x) {
        bad += cluster.map_shared_rank(mine, i / share)[i % share] != expected(r, i);
      }
    }
  }
  cluster.sync();  // no CTA leaves while a peer may still touch its shared memory
  if (bad) atomicAdd(errors, bad);
}

struct Row {
  std::string mode;
  int cluster = 0, ctas = 0, ctas_per_sm = 0, words = 0, rounds = 0;
  double us_per_round = 0, launch_us = 0;
  unsigned errors = 0, timeouts = 0;
};

struct Timer {
  cudaEvent_t start, stop;
  Timer() {
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
  }
  ~Timer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  template <class Launch>
  double us(Launch&& launch) {
    CHECK(cudaEventRecord(start));
    launch();
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    return 1000.0 * ms;
  }
};

// Times launch(rounds) for 1 and `rounds` rounds; `reset` runs before each launch, untimed.
template <class Reset, class Launch>
static void time_rounds(Row& row, int rounds, int repeats, Reset&& reset, Launch&& launch) {
  Timer timer;
  std::vector<double> one, many;
  for (int k = 0; k < repeats + 1; ++k) {  // the first pair warms up
    reset();
    const double t1 = timer.us([&] { launch(1); });
    reset();
    const double tk = timer.us([&] { launch(rounds); });
    if (k) one.push_back(t1), many.push_back(tk);
  }
  row.rounds = rounds;
  row.launch_us = median(one);
  row.us_per_round = (median(many) - median(one)) / (rounds - 1);
}

static void print(const Row& row) {
  std::printf(
      "{\"mode\": \"%s\", \"cluster\": %d, \"ctas\": %d, \"ctas_per_sm\": %d, \"words\": %d, "
      "\"rounds\": %d, \"us_per_round\": %.4f, \"launch_us\": %.3f, \"errors\": %u, \"timeouts\": %u}\n",
      row.mode.c_str(), row.cluster, row.ctas, row.ctas_per_sm, row.words, row.rounds, row.us_per_round,
      row.launch_us, row.errors, row.timeouts);
  std::fflush(stdout);
}

static bool run_grid(const cudaDeviceProp& prop, int ctas, int ctas_per_sm, int words, int rounds, int repeats,
                     unsigned* errors, Row& row) {
  int per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, grid_exchange, kThreads, 0));
  if (per_sm * prop.multiProcessorCount < ctas) return false;  // (the barrier would hang)
  float* vec = nullptr;
  unsigned* counter = nullptr;
  CHECK(cudaMalloc(&vec, sizeof(float) * 2 * std::max(words, 1)));
  CHECK(cudaMalloc(&counter, sizeof(unsigned)));
  CHECK(cudaMemset(errors, 0, 2 * sizeof(unsigned)));
  row = Row{"grid", 0, ctas, ctas_per_sm, words};
  time_rounds(
      row, rounds, repeats, [&] { CHECK(cudaMemset(counter, 0, sizeof(unsigned))); },
      [&](int n) {
        grid_exchange<<<ctas, kThreads>>>(n, words, vec, counter, errors);
        CHECK(cudaGetLastError());
      });
  unsigned host[2];
  CHECK(cudaMemcpy(host, errors, sizeof(host), cudaMemcpyDeviceToHost));
  row.errors = host[0], row.timeouts = host[1];
  CHECK(cudaFree(vec));
  CHECK(cudaFree(counter));
  return true;
}

static bool run_cluster(const cudaDeviceProp& prop, bool push, int size, int ctas_per_sm, int words,
                        int rounds, int repeats, unsigned* errors, Row& row) {
  auto kernel = push ? cluster_exchange<true> : cluster_exchange<false>;
  const int smem = smem_for(prop, ctas_per_sm);
  const int need = static_cast<int>(sizeof(float)) * 2 * (push ? words : words / size);
  if (need > smem) return false;
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = size, attribute.val.clusterDim.y = 1, attribute.val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.attrs = &attribute;
  config.numAttrs = 1;
  config.gridDim = dim3(size);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess || clusters == 0) {
    cudaGetLastError();
    return false;
  }
  config.gridDim = dim3(clusters * size);  // as many clusters as are resident at once
  CHECK(cudaMemset(errors, 0, 2 * sizeof(unsigned)));
  row = Row{push ? "cluster-push" : "cluster-pull", size, clusters * size, ctas_per_sm, words};
  time_rounds(
      row, rounds, repeats, [] {},
      [&](int n) { CHECK(cudaLaunchKernelEx(&config, kernel, n, words, errors)); });
  unsigned host[2];
  CHECK(cudaMemcpy(host, errors, sizeof(host), cudaMemcpyDeviceToHost));
  row.errors = host[0], row.timeouts = host[1];
  return true;
}

int main(int argc, char** argv) {
  int rounds = 2001, repeats = 7;
  std::vector<int> words = {0, 512, 1024, 2048}, sizes = {2, 4, 8, 16}, per_sm = {1, 2};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--rounds") rounds = std::atoi(argv[i + 1]);
    else if (key == "--repeats") repeats = std::atoi(argv[i + 1]);
    else if (key == "--words") words = ints(argv[i + 1]);
    else if (key == "--clusters") sizes = ints(argv[i + 1]);
    else if (key == "--ctas-per-sm") per_sm = ints(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s (--rounds N --repeats N --words a,b --clusters a,b --ctas-per-sm a,b)\n",
                   key.c_str());
      return 2;
    }
  }
  if (rounds < 2 || repeats < 1) {
    std::fprintf(stderr, "--rounds must be at least 2 and --repeats at least 1\n");
    return 2;
  }
  const cudaDeviceProp prop = describe_device("thread-block clusters");
  unsigned* errors = nullptr;
  CHECK(cudaMalloc(&errors, 2 * sizeof(unsigned)));
  for (int k : per_sm)
    for (int w : words) {
      Row row;
      if (run_grid(prop, prop.multiProcessorCount * k, k, w, rounds, repeats, errors, row)) print(row);
      else std::fprintf(stderr, "skipped: grid of %d CTAs per SM (not all resident)\n", k);
    }
  for (int push = 0; push < 2; ++push)
    for (int k : per_sm)
      for (int size : sizes)
        for (int w : words) {
          if (w % size) continue;
          if (push && w == 0) continue;  // (the same synchronization as pull's)
          Row row;
          if (run_cluster(prop, push, size, k, w, rounds, repeats, errors, row)) print(row);
          else std::fprintf(stderr, "skipped: cluster %d, %d CTAs per SM, %d words (does not fit)\n", size, k, w);
        }
  CHECK(cudaFree(errors));
  return 0;
}
