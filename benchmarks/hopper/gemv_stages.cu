// How fast one batch-1 projection stage of a persistent decode layer can stream its weights when
// it is written for Hopper by hand: y = W x (W [n, k] bf16, x [k] bf16, y float32), one stage per
// round, rounds separated by the layer's grid barrier, as in the Triton persistent layer, whose
// stages take (H200 timeline, Qwen3-0.6B) qkv 2.2, o 1.6, gate/up 4.2 and down 1.9 µs.
//
// All SMs x ctas_per_sm CTAs stay resident; CTA c owns rows [c r, (c + 1) r) (r = ceil(n / CTAs)),
// whose weights are one contiguous range. A round: (weights requested early), the grid barrier,
// x read from L2 into shared memory, the products, y stored. Round i reads weight copy i % copies
// (copies x n x k x 2 bytes > 2 x L2: every round streams from DRAM). Per stage:
// (t(rounds) - t(1)) / (rounds - 1) minus the barrier alone (the same launch with no rows), CUDA
// events, medians of the launches. The last round's y is checked against the host's sums.
//
// --ctas runs the stage on that many CTAs instead (fewer than the SMs: what a grid of clusters that
// leaves some SMs out streams).
//
// Variants:
//   ldg        16-byte ld.global.nc.L1::no_allocate loads into registers, 16 per thread in flight,
//              issued after the barrier.
//   ldg-early  the same, the first 16 per thread issued before the barrier (the Triton layer's
//              default: a stage's weights never depend on the step).
//   bulk       cp.async.bulk (the TMA's 1-D copies) of `chunk`-byte pieces into a ring of `stages`
//              shared-memory slots, each with an mbarrier; the first `stages` pieces issued before
//              the barrier, the next one as soon as a slot is read.
//   cluster    clusters of `--clusters` CTAs (as many as are resident) each own a slice of the rows;
//              16-byte loads issued before a cluster barrier (instead of the grid's), the row sums
//              pushed into every peer's shared memory (the cluster layer's handoff). Its barrier
//              column is the cluster barrier alone.
//
// Build (-I: device.cuh): nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I../../infer_core/src/infer_core/kernels/cuda gemv_stages.cu -o gemv_stages
// (benchmarks/hopper_programs.py builds, runs and reports). Output: one JSON object per line.

#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "common.cuh"

namespace cg = cooperative_groups;


enum Variant { kLdg = 0, kLdgEarly = 1, kBulk = 2 };
static const char* kVariantNames[] = {"ldg", "ldg-early", "bulk"};

__host__ __device__ inline float x_value(unsigned col) { return hashed(7919u, 104729u, col); }

__global__ void init(__nv_bfloat16* w, __nv_bfloat16* x, int copies, int n, int k) {
  const long long total = static_cast<long long>(copies) * n * k;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long per_copy = static_cast<long long>(n) * k;
    const unsigned c = static_cast<unsigned>(i / per_copy), r = static_cast<unsigned>(i % per_copy / k),
                   col = static_cast<unsigned>(i % k);
    w[i] = __float2bfloat16(hashed(c, r, col));
    if (i < k) x[i] = __float2bfloat16(x_value(static_cast<unsigned>(i)));
  }
}

__device__ __forceinline__ void bulk_load(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}

__device__ __forceinline__ void wait_parity(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n .reg .pred done;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT_%=;\n}" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// errors[1]: barrier time-outs
__global__ void gemv_rounds(int variant, int rounds, int copies, int n, int k, int stages, int chunk,
                            const __nv_bfloat16* w, const __nv_bfloat16* x, float* y, unsigned* counter,
                            unsigned* errors) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem);  // [stages] (bulk)
  float* acc = reinterpret_cast<float*>(smem + 128);   // [rows of this CTA], at most 256
  float* xs = acc + 256;                               // [k]
  unsigned char* ring = reinterpret_cast<unsigned char*>(xs + k);  // [stages][chunk] (bulk), 128-aligned
  ring += (128 - smem_addr(ring) % 128) % 128;

  const int programs = gridDim.x;
  const int per_cta = n ? (n + programs - 1) / programs : 0;
  const int row0 = min(n, blockIdx.x * per_cta), rows = min(n, row0 + per_cta) - row0;
  const int row_vectors = k / 8;
  const int vectors = rows * row_vectors;  // this CTA's 16-byte weight vectors (contiguous)
  const int chunk_vectors = chunk / 16;
  const int chunks = (vectors + chunk_vectors - 1) / chunk_vectors;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) acc[i] = 0;
  if (variant == kBulk && threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bars + s)) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  long long issued = 0, consumed = 0;  // bulk: pieces issued / read over the launch (ring position)
  auto issue = [&](const uint4* base, int piece) {  // thread 0
    const int slot = static_cast<int>(issued % stages);
    const int first = piece * chunk_vectors, count = min(chunk_vectors, vectors - first);
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    bulk_load(ring + static_cast<size_t>(slot) * chunk, base + first, 16u * count, bars + slot);
    ++issued;
  };
  uint4 regs[kInFlight];
  for (int r = 0; r < rounds; ++r) {
    const uint4* base = reinterpret_cast<const uint4*>(w + (static_cast<size_t>(r % copies) * n + row0) * k);
    const int early_pieces = min(stages, chunks);
    if (variant == kLdgEarly) {
      request_rows(base, vectors, regs);
    } else if (variant == kBulk && threadIdx.x == 0) {
      for (int p = 0; p < early_pieces; ++p) issue(base, p);
    }
    grid_barrier(counter, static_cast<unsigned>(r + 1) * programs, errors + 1);
    for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = __bfloat162float(__ldcg(x + i));
    __syncthreads();
    if (variant == kBulk) {
      for (int p = 0; p < chunks; ++p) {
        const int slot = static_cast<int>(consumed % stages);
        wait_parity(bars + slot, static_cast<unsigned>((consumed / stages) & 1));
        const uint4* piece = reinterpret_cast<const uint4*>(ring + static_cast<size_t>(slot) * chunk);
        const int first = p * chunk_vectors, count = min(chunk_vectors, vectors - first);
        for (int i = threadIdx.x; i < count; i += kThreads) {
          const int v = first + i;
          add_to_row(acc, v / row_vectors, dot8(piece[i], xs + (v % row_vectors) * 8));
        }
        ++consumed;
        __syncthreads();  // the slot is read: refill it
        if (threadIdx.x == 0 && p + stages < chunks) issue(base, p + stages);
      }
    } else {
      stream_rows(base, vectors, row_vectors, xs, acc, regs, variant == kLdgEarly);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
      y[row0 + i] = acc[i];
      acc[i] = 0;
    }
  }
}

// The cluster variant: clusters of `size` CTAs each own a contiguous slice of the rows (`slice`
// per cluster); every CTA pushes its row sums into every peer's shared memory (the cluster's
// vector, double-buffered by the round's parity) and the rounds are separated by a cluster
// barrier instead of the grid's. x is read once into shared memory: in a cluster layer the
// stage's input is already there, pushed by the stage before. After the last round rank 0
// stores the cluster's vector (every peer's pushes) as y.
__global__ void gemv_rounds_cluster(int rounds, int copies, int n, int k, int slice, const __nv_bfloat16* w,
                                    const __nv_bfloat16* x, float* y) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* acc = reinterpret_cast<float*>(smem);  // [256]
  float* xs = acc + 256;                         // [k]
  float* vec = xs + k;                           // [2][slice]
  cg::cluster_group cluster = cg::this_cluster();
  const int size = static_cast<int>(cluster.num_blocks()), rank = static_cast<int>(cluster.block_rank());
  const int slice_row0 = min(n, static_cast<int>(blockIdx.x) / size * slice);
  const int slice_rows = min(n, slice_row0 + slice) - slice_row0;
  const int per_cta = (slice_rows + size - 1) / size;
  const int local0 = min(slice_rows, rank * per_cta), rows = min(slice_rows, local0 + per_cta) - local0;
  const int row_vectors = k / 8, vectors = rows * row_vectors;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) acc[i] = 0;
  for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = __bfloat162float(x[i]);
  __syncthreads();
  uint4 regs[kInFlight];
  for (int r = 0; r < rounds; ++r) {
    const uint4* base =
        reinterpret_cast<const uint4*>(w + (static_cast<size_t>(r % copies) * n + slice_row0 + local0) * k);
    request_rows(base, vectors, regs);
    cluster.sync();  // the handoff: the last round's pushes landed
    stream_rows(base, vectors, row_vectors, xs, acc, regs, true);
    __syncthreads();
    float* out = vec + (r & 1) * slice;
    for (int i = threadIdx.x; i < rows * size; i += blockDim.x)
      cluster.map_shared_rank(out, i % size)[local0 + i / size] = acc[i / size];
    __syncthreads();
    for (int i = threadIdx.x; i < rows; i += blockDim.x) acc[i] = 0;
  }
  cluster.sync();
  if (rank == 0)
    for (int i = threadIdx.x; i < slice_rows; i += blockDim.x) y[slice_row0 + i] = vec[((rounds - 1) & 1) * slice + i];
}

struct Shape {
  const char* name;
  int n, k;
};

static const Shape kShapes[] = {
    {"qwen3-0.6b.qkv", 4096, 1024},      {"qwen3-0.6b.o", 1024, 2048},
    {"qwen3-0.6b.gate_up", 6144, 1024},  {"qwen3-0.6b.down", 1024, 3072},
    {"llama-3.2-1b.qkv", 3072, 2048},    {"llama-3.2-1b.o", 2048, 2048},
    {"llama-3.2-1b.gate_up", 16384, 2048}, {"llama-3.2-1b.down", 2048, 8192},
};

struct Bench {
  int rounds, repeats;
  cudaEvent_t start, stop;
  unsigned *counter, *errors;

  // median µs of one launch(rnds), the counter reset before each (untimed); the first launch warms up
  template <class Launch>
  double launch_us(int rnds, Launch&& launch) {
    std::vector<double> t;
    for (int i = 0; i < repeats + 1; ++i) {
      CHECK(cudaMemset(counter, 0, sizeof(unsigned)));
      CHECK(cudaEventRecord(start));
      launch(rnds);
      CHECK(cudaGetLastError());
      CHECK(cudaEventRecord(stop));
      CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (i) t.push_back(1000.0 * ms);
    }
    return median(t);
  }

  template <class Launch>
  double round_us(Launch&& launch) {
    const double one = launch_us(1, launch);
    return (launch_us(rounds, launch) - one) / (rounds - 1);
  }
};

// Whether `ctas` CTAs of `kernel` with `smem` bytes of shared memory are all resident at once.
static bool resident(const cudaDeviceProp& prop, const void* kernel, int ctas, int smem) {
  int per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  return per_sm * prop.multiProcessorCount >= ctas;
}

struct Row {
  const Shape* shape;
  const char* variant;
  int stages = 0, chunk = 0, cluster = 0, ctas = 0, ctas_per_sm = 0, copies = 0;
  double us = 0, barrier = 0;
};

// Checks y (the last round's) against the host's sums and prints the row.
static void report(const Row& row, int rounds, const float* y, const std::vector<double>& ref, unsigned* errors) {
  const Shape& shape = *row.shape;
  std::vector<float> got(shape.n);
  unsigned host_errors[2];
  CHECK(cudaMemcpy(host_errors, errors, sizeof(host_errors), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(got.data(), y, sizeof(float) * shape.n, cudaMemcpyDeviceToHost));
  double max_err = 0;
  for (int r = 0; r < shape.n; ++r) max_err = std::max(max_err, std::fabs(got[r] - ref[r]) / (1.0 + std::fabs(ref[r])));
  const double stage = row.us - row.barrier, bytes = 2.0 * shape.n * shape.k;
  std::printf("{\"shape\": \"%s\", \"n\": %d, \"k\": %d, \"variant\": \"%s\", \"stages\": %d, \"chunk\": %d, "
              "\"cluster\": %d, \"ctas\": %d, \"ctas_per_sm\": %d, \"rounds\": %d, \"copies\": %d, "
              "\"us_per_round\": %.4f, \"barrier_us\": %.4f, \"stage_us\": %.4f, \"gbps\": %.1f, "
              "\"max_rel_err\": %.2e, \"errors\": %u, \"timeouts\": %u}\n",
              shape.name, shape.n, shape.k, row.variant, row.stages, row.chunk, row.cluster, row.ctas, row.ctas_per_sm,
              rounds, row.copies, row.us, row.barrier, stage, bytes / (stage * 1e3), max_err, max_err > 1e-3 ? 1u : 0u,
              host_errors[1]);
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  int rounds = 201, repeats = 7, chunk = 16384;
  std::vector<int> per_sm = {1, 2}, stage_counts = {2, 4, 8}, cta_counts, cluster_sizes = {4, 8, 16};
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--rounds") rounds = std::atoi(argv[i + 1]);
    else if (key == "--repeats") repeats = std::atoi(argv[i + 1]);
    else if (key == "--chunk") chunk = std::atoi(argv[i + 1]);
    else if (key == "--ctas-per-sm") per_sm = ints(argv[i + 1]);
    else if (key == "--ctas") cta_counts = ints(argv[i + 1]);
    else if (key == "--stages") stage_counts = ints(argv[i + 1]);
    else if (key == "--clusters") cluster_sizes = ints(argv[i + 1]);
    else if (key == "--shape") only = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s (--rounds N --repeats N --chunk BYTES --ctas-per-sm a,b "
                   "--ctas a,b --stages a,b --clusters a,b --shape NAME)\n", key.c_str());
      return 2;
    }
  }
  if (rounds < 2 || repeats < 1 || chunk < 16 || chunk % 4096) {
    std::fprintf(stderr, "--rounds >= 2, --repeats >= 1, --chunk a multiple of 4096 bytes\n");
    return 2;
  }
  const cudaDeviceProp prop = describe_device("cp.async.bulk and clusters");
  Bench bench{rounds, repeats};
  CHECK(cudaEventCreate(&bench.start));
  CHECK(cudaEventCreate(&bench.stop));
  CHECK(cudaMalloc(&bench.counter, sizeof(unsigned)));
  CHECK(cudaMalloc(&bench.errors, 2 * sizeof(unsigned)));
  const int max_smem = static_cast<int>(prop.sharedMemPerBlockOptin);
  for (auto kernel : {reinterpret_cast<const void*>(gemv_rounds), reinterpret_cast<const void*>(gemv_rounds_cluster)}) {
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem));
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  }
  CHECK(cudaFuncSetAttribute(gemv_rounds_cluster, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  const size_t target_bytes = 2 * static_cast<size_t>(prop.l2CacheSize) + (64u << 20);
  for (const Shape& shape : kShapes) {
    if (!only.empty() && only != shape.name) continue;
    const size_t bytes = static_cast<size_t>(shape.n) * shape.k * 2;
    const int copies = static_cast<int>((target_bytes + bytes - 1) / bytes);
    __nv_bfloat16 *w = nullptr, *x = nullptr;
    float* y = nullptr;
    CHECK(cudaMalloc(&w, bytes * copies));
    CHECK(cudaMalloc(&x, sizeof(__nv_bfloat16) * shape.k));
    CHECK(cudaMalloc(&y, sizeof(float) * shape.n));
    init<<<4 * prop.multiProcessorCount, 256>>>(w, x, copies, shape.n, shape.k);
    CHECK(cudaGetLastError());
    // the host's sums for the last round's copy (every run checks its final y against them)
    const int last_copy = (rounds - 1) % copies;
    std::vector<double> ref(shape.n);
    for (int r = 0; r < shape.n; ++r) {
      double s = 0;
      for (int c = 0; c < shape.k; ++c) s += static_cast<double>(hashed(last_copy, r, c)) * x_value(c);
      ref[r] = s;
    }
    std::vector<int> grids = cta_counts;  // --ctas (e.g. the SMs a cluster size covers), else --ctas-per-sm
    if (grids.empty())
      for (int k_per_sm : per_sm) grids.push_back(prop.multiProcessorCount * k_per_sm);
    for (int ctas : grids) {
      const int k_per_sm = (ctas + prop.multiProcessorCount - 1) / prop.multiProcessorCount;
      if ((shape.n + ctas - 1) / ctas > 256) continue;  // (the row sums' shared memory holds 256)
      const int base_smem = 128 + 4 * 256 + 4 * shape.k;
      if (!resident(prop, reinterpret_cast<const void*>(gemv_rounds), ctas, base_smem)) {
        std::fprintf(stderr, "skipped: %d CTAs (not all resident: the grid barrier would hang)\n", ctas);
        continue;
      }
      const double barrier = bench.round_us([&](int n_rounds) {
        gemv_rounds<<<ctas, kThreads, base_smem>>>(kLdg, n_rounds, copies, 0, shape.k, 1, chunk, w, x, y,
                                                   bench.counter, bench.errors);
      });
      std::vector<std::pair<int, int>> runs = {{kLdg, 0}, {kLdgEarly, 0}};
      for (int s : stage_counts) runs.push_back({kBulk, s});
      for (const auto& run : runs) {
        const int variant = run.first, stages = run.second;
        const int smem = base_smem + (variant == kBulk ? 128 + stages * chunk : 0);
        if (smem > static_cast<int>(prop.sharedMemPerMultiprocessor / k_per_sm - prop.reservedSharedMemPerBlock) ||
            smem > max_smem) {
          std::fprintf(stderr, "skipped: %s %s %d stages at %d CTAs per SM (shared memory)\n", shape.name,
                       kVariantNames[variant], stages, k_per_sm);
          continue;
        }
        if (!resident(prop, reinterpret_cast<const void*>(gemv_rounds), ctas, smem)) {
          std::fprintf(stderr, "skipped: %s %s at %d CTAs (not all resident: the grid barrier would hang)\n",
                       shape.name, kVariantNames[variant], ctas);
          continue;
        }
        CHECK(cudaMemset(bench.errors, 0, 2 * sizeof(unsigned)));
        CHECK(cudaMemset(y, 0, sizeof(float) * shape.n));
        Row row{&shape, kVariantNames[variant], stages, variant == kBulk ? chunk : 0, 0, ctas, k_per_sm, copies};
        row.barrier = barrier;
        row.us = bench.round_us([&](int n_rounds) {
          gemv_rounds<<<ctas, kThreads, smem>>>(variant, n_rounds, copies, shape.n, shape.k, std::max(stages, 1),
                                                chunk, w, x, y, bench.counter, bench.errors);
        });
        report(row, rounds, y, ref, bench.errors);
      }
    }
    for (int size : cluster_sizes) {
      for (int k_per_sm : per_sm) {
        cudaLaunchAttribute attribute;
        attribute.id = cudaLaunchAttributeClusterDimension;
        attribute.val.clusterDim.x = size, attribute.val.clusterDim.y = 1, attribute.val.clusterDim.z = 1;
        cudaLaunchConfig_t config = {};
        config.blockDim = dim3(kThreads);
        config.attrs = &attribute;
        config.numAttrs = 1;
        config.gridDim = dim3(size);
        config.dynamicSmemBytes = smem_for(prop, k_per_sm);
        int clusters = 0;
        if (cudaOccupancyMaxActiveClusters(&clusters, gemv_rounds_cluster, &config) != cudaSuccess || !clusters) {
          cudaGetLastError();
          std::fprintf(stderr, "skipped: clusters of %d at %d CTAs per SM (none resident)\n", size, k_per_sm);
          continue;
        }
        const int slice = (shape.n + clusters - 1) / clusters;
        const int need = 4 * (256 + shape.k + 2 * slice);
        if (need > static_cast<int>(config.dynamicSmemBytes) || (slice + size - 1) / size > 256) {
          std::fprintf(stderr, "skipped: %s clusters of %d at %d CTAs per SM (shared memory)\n", shape.name, size,
                       k_per_sm);
          continue;
        }
        config.gridDim = dim3(clusters * size);
        const double barrier = bench.round_us([&](int n_rounds) {
          CHECK(cudaLaunchKernelEx(&config, gemv_rounds_cluster, n_rounds, copies, 0, shape.k, 0,
                                   static_cast<const __nv_bfloat16*>(w), static_cast<const __nv_bfloat16*>(x), y));
        });
        CHECK(cudaMemset(bench.errors, 0, 2 * sizeof(unsigned)));
        CHECK(cudaMemset(y, 0, sizeof(float) * shape.n));
        Row row{&shape, "cluster", 0, 0, size, clusters * size, k_per_sm, copies};
        row.barrier = barrier;
        row.us = bench.round_us([&](int n_rounds) {
          CHECK(cudaLaunchKernelEx(&config, gemv_rounds_cluster, n_rounds, copies, shape.n, shape.k, slice,
                                   static_cast<const __nv_bfloat16*>(w), static_cast<const __nv_bfloat16*>(x), y));
        });
        report(row, rounds, y, ref, bench.errors);
      }
    }
    CHECK(cudaFree(w));
    CHECK(cudaFree(x));
    CHECK(cudaFree(y));
  }
  return 0;
}
