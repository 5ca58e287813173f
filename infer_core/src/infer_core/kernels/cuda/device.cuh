// Device helpers of the Hopper probes that NVRTC compiles too (no CUDA runtime headers, no
// cooperative groups): the layer's grid barrier, the cluster operations as inline PTX, weight streaming.
#pragma once

#include <cuda_bf16.h>

constexpr int kThreads = 256;
constexpr long long kMaxSpins = 1ll << 24;  // polls of one barrier before giving up (a bug, never a wait)
constexpr int kInFlight = 16;               // 16-byte weight loads in flight per thread

// The persistent layer's counter barrier: every thread's stores, a CTA barrier, one release add
// per CTA, thread 0 polls with acquire loads until the counter reaches `target`, a CTA barrier.
// A poll that gives up counts in *timeouts; `poll_ns` > 0 sleeps that long before each poll (fewer
// reads of the counter's line while the last CTAs arrive: the Triton layer's default is 100 ns).
__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned target, unsigned* timeouts,
                                             unsigned poll_ns = 0) {
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
    unsigned seen = 0;
    long long spins = 0;
    do {
      if (poll_ns) __nanosleep(poll_ns);
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    } while (static_cast<int>(seen - target) < 0 && ++spins < kMaxSpins);
    if (spins >= kMaxSpins) atomicAdd(timeouts, 1u);
  }
  __syncthreads();
}

// A shared-memory pointer as the 32-bit shared-window address PTX takes.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

__device__ __forceinline__ unsigned cluster_size() {
  unsigned size;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
  return size;
}

// Every thread of every CTA of the cluster: its stores (shared memory of any CTA included)
// released before, the others' acquired after.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The address of *p (this CTA's shared memory) in the shared memory of cluster CTA `rank`.
template <class T>
__device__ __forceinline__ T* map_shared(T* p, unsigned rank) {
  T* out;
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(out) : "l"(p), "r"(rank));
  return out;
}

// A 16-byte weight load that streams past L1 (read once per step).
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Eight bf16 weights (one 16-byte load) times eight float inputs.
__device__ __forceinline__ float dot8(uint4 w, const float* x) {
  const __nv_bfloat162* pair = reinterpret_cast<const __nv_bfloat162*>(&w);
  float s = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __bfloat1622float2(pair[j]);
    s = fmaf(f.x, x[2 * j], s);
    s = fmaf(f.y, x[2 * j + 1], s);
  }
  return s;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// A warp's sum into its row of acc: the 32 lanes hold products of one row (k / 8 is a multiple
// of 32 and every group of 32 loads starts at a multiple of 32 vectors). A shared-memory float
// add is a compare-and-swap loop on sm_90 (ATOMS.CAST.SPIN).
__device__ __forceinline__ void add_to_row(float* acc, int row, float s) {
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) atomicAdd(acc + row, s);
}

// The weight vectors (16 bytes) of one stage of a CTA: up to three pieces of whole rows, each
// contiguous in memory, whose rows add into acc's consecutive rows in this order. end[]: the
// vectors up to each piece's end (the last ones repeat when there are fewer pieces).
struct Pieces {
  const uint4* base[3];
  int end[3];
};

__device__ __forceinline__ Pieces one_piece(const uint4* base, int vectors) {
  return {{base, base, base}, {vectors, vectors, vectors}};
}

__device__ __forceinline__ const uint4* piece_vector(const Pieces& s, int v) {
  return v < s.end[0] ? s.base[0] + v : v < s.end[1] ? s.base[1] + (v - s.end[0]) : s.base[2] + (v - s.end[1]);
}

// ---- per-vector reductions: load i of a thread is vector threadIdx.x + i x kThreads of a pass, and
// each vector's products are reduced across the warp into its row

// The loads of one pass from vector `start`: load i of this thread is vector start + threadIdx.x +
// i x kThreads (those before the pieces' end).
__device__ __forceinline__ void load_pass(const Pieces& s, int start, uint4 (&regs)[kInFlight]) {
#pragma unroll
  for (int i = 0; i < kInFlight; ++i) {
    const int v = start + threadIdx.x + i * kThreads;
    if (v < s.end[2]) regs[i] = load_stream(piece_vector(s, v));
  }
}

// The first kInFlight loads per thread of stream_vectors / stream_scratch, issued ahead.
__device__ __forceinline__ void request_vectors(const Pieces& s, uint4 (&regs)[kInFlight]) {
  load_pass(s, 0, regs);
}

// The products of a CTA's weight vectors (the pieces' rows, `row_vectors` vectors each) with xs
// into acc's rows, 16 loads per thread in flight; with `loaded`, the first 16 are in regs already
// (requested early).
__device__ __forceinline__ void stream_vectors(const Pieces& s, int row_vectors, const float* xs, float* acc,
                                               uint4 (&regs)[kInFlight], bool loaded) {
  const int total = s.end[2];
  for (int start = 0; start < total; start += kInFlight * kThreads) {
    if (!loaded || start > 0) load_pass(s, start, regs);
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const int v = start + threadIdx.x + i * kThreads;
      if (v < total) add_to_row(acc, v / row_vectors, dot8(regs[i], xs + (v % row_vectors) * 8));  // (warp-uniform)
    }
  }
}

// One contiguous range of `vectors` weight vectors from `base`.
__device__ __forceinline__ void request_rows(const uint4* base, int vectors, uint4 (&regs)[kInFlight]) {
  request_vectors(one_piece(base, vectors), regs);
}

__device__ __forceinline__ void stream_rows(const uint4* base, int vectors, int row_vectors, const float* xs,
                                            float* acc, uint4 (&regs)[kInFlight], bool loaded) {
  stream_vectors(one_piece(base, vectors), row_vectors, xs, acc, regs, loaded);
}

// ---- per-vector loads, products reduced through shared memory (DL_REDUCE 1 of decode_layer.cuh): thread
// t's product of its load i goes to scratch[i x kThreads + t] (the vector's place in the pass), then each
// warp sums whole rows of the pass, lane-strided, with one warp reduction per row: no atomics, and the
// shuffles are per row, not per vector. scratch: kInFlight x kThreads floats.
__device__ __forceinline__ void stream_scratch(const Pieces& s, int row_vectors, const float* xs, float* acc,
                                               uint4 (&regs)[kInFlight], bool loaded, float* scratch) {
  const int total = s.end[2], lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int start = 0; start < total; start += kInFlight * kThreads) {
    if (!loaded || start > 0) load_pass(s, start, regs);
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const int v = start + threadIdx.x + i * kThreads;
      if (v < total) scratch[i * kThreads + threadIdx.x] = dot8(regs[i], xs + (v % row_vectors) * 8);
    }
    __syncthreads();
    const int n = min(total - start, kInFlight * kThreads);
    const int first = start / row_vectors, last = (start + n - 1) / row_vectors;  // the rows of this pass
    for (int r = first + warp; r <= last; r += kThreads / 32) {
      const int a = max(r * row_vectors, start) - start, b = min((r + 1) * row_vectors, start + n) - start;
      float sum = 0;
      for (int j = a + lane; j < b; j += 32) sum += scratch[j];
      sum = warp_sum(sum);
      if (lane == 0) acc[r] += sum;  // (one warp per row of a pass; passes apart by the barrier below)
    }
    __syncthreads();
  }
}
