// A whole Llama / Qwen 3 decoder layer of a batch-1 decode step as one persistent CUDA launch
// (kernels.decode_layer_cuda compiles it with NVRTC per shape; benchmarks/hopper/decode_layer.cu
// builds it with nvcc as a probe). The shape comes from macros (defaults: Qwen3-0.6B):
// DL_HIDDEN, DL_INTER, DL_HEADS, DL_KV_HEADS, DL_HEAD_DIM, DL_QK_NORM.
//
// Two variants (extern "C" kernels at the end):
//   decode_layer_grid     six stages separated by five grid barriers (qkv | attention splits |
//                         merge | o_proj | gate/up | down), each GEMV stage's first 16 loads per
//                         thread requested before the barrier in front of it, each attention
//                         split's older keys and values copied into shared memory (cp.async)
//                         while qkv runs.
//   decode_layer_cluster  qkv, attention and the merge of one KV head inside one thread-block
//                         cluster: the cluster computes its head's qkv rows and pushes them into
//                         every CTA's shared memory, each CTA attends over one split of the keys
//                         and pushes its partials to the CTAs that merge them (distributed shared
//                         memory, cluster barriers); o_proj, gate/up and down stay grid-wide.
//
// Numerics are the unfused path's (decode_layer_ref): every intermediate the separate kernels
// store is rounded to bf16 where they round it (the residual sum, the norms' outputs, qkv, q
// and k after the norm and after RoPE, attention's output, each projection, the activation);
// attention keeps its probabilities and values in float32 and rounds its output once.
//
// Every CTA must be resident at once (the grid barriers); the counters are never reset: launch
// e (sync[0], read after the PDL wait) waits at barrier b for sync[b] to reach (e + 1) x CTAs,
// and CTA 0 adds 1 to the epoch after the last barrier. A poll that gives up counts in errors[0].
#pragma once

#include <cuda_bf16.h>

#include "device.cuh"

using bf16 = __nv_bfloat16;

#ifndef DL_HIDDEN
#define DL_HIDDEN 1024
#define DL_INTER 3072
#define DL_HEADS 16
#define DL_KV_HEADS 8
#define DL_HEAD_DIM 128
#define DL_QK_NORM 1
#endif

// Variants the Hopper probe compares (benchmarks/hopper/decode_layer.cu builds each with -D; the
// engine compiles the defaults, the best measured: benchmarks/reports/hopper-2026-12-04-h200):
//   DL_REDUCE 1     a stage's per-vector products go to shared memory and each warp sums whole
//                   rows from there (a warp reduction per row, no atomics; the default);
//             0     each 16-byte vector's products reduced across the warp and added into its row
//                   with a shared-memory atomic (a compare-and-swap loop on sm_90).
//   DL_KEEP_RES 1   o_proj reads its residual with its input, and keeps the new residual in a
//                   register for down's store (the default; 0: each reloads it from L2 after its
//                   products).
//   DL_MERGE 1      the grid variant's merge reads every split's max and sum at once (a thread
//                   each), then a dim's partials with all loads in flight (the default; 0: split
//                   by split, two dependent L2 loads per split).
//   DL_EARLY 1      the step's metadata, the first keys' cp.async and the first norm's weight
//                   before the PDL wait, the second norm's weight with gate/up's first loads (as
//                   the Triton layer: all were written before the previous launch began); 0 (the
//                   default until measured): after the wait, the weights after each norm's
//                   reduction (a dependent L2 round trip each).
// (Loads walking along rows and all of a stage's pieces in one pass, DL_ROWS 1-3 of commit
// fbfafd4, measured slower in every combination and were removed.)
#ifndef DL_REDUCE
#define DL_REDUCE 1
#endif
#ifndef DL_KEEP_RES
#define DL_KEEP_RES 1
#endif
#ifndef DL_MERGE
#define DL_MERGE 1
#endif
#ifndef DL_EARLY
#define DL_EARLY 0
#endif

constexpr int H = DL_HIDDEN, I = DL_INTER, NQ = DL_HEADS, NKV = DL_KV_HEADS, D = DL_HEAD_DIM;
constexpr bool QK_NORM = DL_QK_NORM;
constexpr int GROUP = NQ / NKV, DPL = D / 32;  // query heads per KV head; head dims per lane
constexpr int QROWS = NQ * D, KVROWS = NKV * D, QKV = QROWS + 2 * KVROWS;
constexpr int HEAD_ROWS = (GROUP + 2) * D;  // one KV head's qkv rows (its queries, k, v)
constexpr int kMaxSplits = 32;  // (the host's MAX_SPLITS: the partials' scratch)
constexpr int kMaxCluster = 16;
constexpr int kWarps = kThreads / 32;
constexpr int PART = D + 2;  // an attention partial: acc[D], max, sum
constexpr int KV_CAP = 64;   // keys per split prefetched into shared memory
constexpr int XS_LEN = I > QROWS ? (I > H ? I : H) : (QROWS > H ? QROWS : H);
#define kNegInf __int_as_float(0xff800000)

// DL_TIMELINE (the probe's timeline build only): thread 0 of every CTA stamps its SM clock at the
// stage boundaries into dl_stamps[CTA][i] (each launch overwrites them: the last one stays).
#ifdef DL_TIMELINE
constexpr int kStamps = 15;
__device__ long long dl_stamps[1024][kStamps];
#define STAMP(i)                                                      \
  do {                                                                \
    if (threadIdx.x == 0 && blockIdx.x < 1024) dl_stamps[blockIdx.x][i] = clock64(); \
  } while (0)
#else
#define STAMP(i) \
  do {           \
  } while (0)
#endif

static_assert(NQ % NKV == 0 && GROUP + 1 <= kWarps, "a KV head's queries and its key: one warp each");
static_assert(D % 32 == 0 && DPL % 2 == 0 && D <= 256, "head dims: pairs per lane, rotate-half across lanes l, l + 16");
static_assert(H % kThreads == 0 && H % 256 == 0 && I % 256 == 0 && QROWS % 256 == 0,
              "GEMV inputs: a warp's 32 16-byte loads within one row");

struct Params {
  const bf16 *w_qkv, *w_o, *w_gu, *w_down, *norm1, *norm2, *q_norm, *k_norm;
  bf16 *k_cache, *v_cache;     // [blocks x block_size][NKV][D] each
  const int* block_table;      // the sequence's row of block ids
  const void *positions, *slot_mapping;  // [1] each, int32 or int64 (pos64 / slot64)
  const int* seq_lens;         // [1]: keys after this step (the new one last)
  const float *cos, *sin;      // [positions][D / 2]
  const bf16 *x, *res;         // [H]; res null on the first layer
  bf16 *x_out, *res_out;       // [H]
  float *qkv, *partials, *attn, *r, *r2, *act;  // scratch [QKV], [splits][NQ][PART], [QROWS], [H], [H], [I]
  unsigned *sync, *errors;     // [0]: the epoch, [1..5]: barrier counters; [0]: barrier time-outs
  float eps;
  int block_size, splits, pos64, slot64;
  unsigned poll_ns;
};

// --- shared memory (floats)
constexpr int SM_XS = 0;                                   // [XS_LEN] a GEMV stage's input
constexpr int SM_ACC = SM_XS + XS_LEN;                     // [256] row sums
constexpr int SM_RED = SM_ACC + 256;                       // [32] reductions
constexpr int SM_HEAD = SM_RED + 32;                       // [HEAD_ROWS] q (GROUP x D), k, v of one KV head
constexpr int SM_PART = SM_HEAD + HEAD_ROWS;               // [GROUP][PART] this CTA's attention partial
constexpr int SM_WARP = SM_PART + GROUP * PART;            // [kWarps][GROUP][PART] per-warp partials
constexpr int SM_MERGE = SM_WARP + kWarps * GROUP * PART;  // [kMaxCluster][GROUP][PART] pushed partials
constexpr int SM_KV = (SM_MERGE + kMaxCluster * GROUP * PART + 3) / 4 * 4;  // bf16 [2][KV_CAP][D]
constexpr int SM_SCRATCH = SM_KV + KV_CAP * D;                // [kInFlight x kThreads] products (DL_REDUCE)
constexpr int SM_FLOATS = SM_SCRATCH + (DL_REDUCE ? kInFlight * kThreads : 0);
constexpr int SMEM_BYTES = SM_FLOATS * 4;

__device__ __forceinline__ float rnd(float v) { return __bfloat162float(__float2bfloat16(v)); }

__device__ __forceinline__ int load_index(const void* p, int is64) {
  return is64 ? static_cast<int>(*static_cast<const long long*>(p)) : *static_cast<const int*>(p);
}

__device__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  __syncthreads();  // (red is reused)
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) s += red[w];
  return s;
}

__device__ __forceinline__ void split_rows(int n, int parts, int part, int& row0, int& rows) {
  const int per = (n + parts - 1) / parts;
  row0 = min(n, part * per);
  rows = min(n, row0 + per) - row0;
}

// Rows [row0, row0 + rows) of W [*, K] as one piece.
__device__ __forceinline__ Pieces rows_of(const bf16* W, int K, int row0, int rows) {
  return one_piece(reinterpret_cast<const uint4*>(W + static_cast<size_t>(row0) * K), rows * (K / 8));
}

__device__ __forceinline__ void stream_pieces(const Pieces& s, int row_vectors, const float* xs, float* acc,
                                              uint4 (&regs)[kInFlight], bool loaded) {
  extern __shared__ __align__(16) float smem[];
  if (DL_REDUCE) stream_scratch(s, row_vectors, xs, acc, regs, loaded, smem + SM_SCRATCH);
  else stream_vectors(s, row_vectors, xs, acc, regs, loaded);
}

// acc[i] += W[row i of the pieces] . xs, its pieces one after another (a CTA barrier after each),
// the first loads of the first piece in regs already (request_stage). Ends with a CTA barrier.
__device__ void gemv(const Pieces& s, int K, const float* xs, float* acc, uint4 (&regs)[kInFlight]) {
  const int row_vectors = K / 8;
  int before = 0;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const int n = s.end[k] - before;
    if (n > 0) {
      stream_pieces(one_piece(s.base[k], n), row_vectors, xs, acc + before / row_vectors, regs, k == 0);
      __syncthreads();
    }
    before = s.end[k];
  }
  if (s.end[2] == 0) __syncthreads();
}

// A stage's first loads, issued ahead (its weights never depend on the step): its first piece's.
__device__ __forceinline__ void request_stage(const Pieces& s, uint4 (&regs)[kInFlight]) {
  request_vectors(one_piece(s.base[0], s.end[0]), regs);
}

constexpr int NORM_PER_THREAD = H / kThreads;

// A norm's weight, this thread's elements of norm_input (DL_EARLY: requested ahead).
__device__ __forceinline__ void load_norm(const bf16* w, float (&wv)[NORM_PER_THREAD]) {
#pragma unroll
  for (int j = 0; j < NORM_PER_THREAD; ++j) wv[j] = __bfloat162float(w[threadIdx.x + j * kThreads]);
}

// xs = rmsnorm(v) * w (bf16 roundings of rms_norm_ref) with v = a + b (a, b bf16; b may be null) or
// v = f (float, already rounded); `store` gets v. The weight: wv (load_norm) with DL_EARLY, else w.
__device__ __forceinline__ void norm_input(const bf16* a, const bf16* b, const float* f, const bf16* w,
                                           const float (&wv)[NORM_PER_THREAD], float eps, float* xs, float* red,
                                           float* store) {
  float v[H / kThreads], sq = 0;
#pragma unroll
  for (int j = 0; j < H / kThreads; ++j) {
    const int i = threadIdx.x + j * kThreads;
    v[j] = f ? __ldcg(f + i) : rnd(__bfloat162float(a[i]) + (b ? __bfloat162float(b[i]) : 0.0f));
    sq += v[j] * v[j];
  }
  const float rstd = rsqrtf(block_sum(sq, red) / H + eps);
#pragma unroll
  for (int j = 0; j < H / kThreads; ++j) {
    const int i = threadIdx.x + j * kThreads;
    xs[i] = rnd((DL_EARLY ? wv[j] : __bfloat162float(w[i])) * rnd(v[j] * rstd));
    if (store) store[i] = v[j];
  }
  __syncthreads();
}

__device__ __forceinline__ size_t cache_row(const Params& p, int key, int h) {
  const int slot = p.block_table[key / p.block_size] * p.block_size + key % p.block_size;
  return (static_cast<size_t>(slot) * NKV + h) * D;
}

// The older keys [key0, min(key1, own)) of KV head h, their first KV_CAP, copied into kv[] (K rows,
// then V rows) by cp.async: their DRAM round trip overlaps qkv instead of following barrier 1.
__device__ void prefetch_keys(const Params& p, int h, int key0, int key1, int own, bf16* kv) {
  const int n = max(0, min(min(key1, own), key0 + KV_CAP) - key0), chunks = D / 8;
  for (int i = threadIdx.x; i < n * 2 * chunks; i += kThreads) {
    const int key = i / (2 * chunks), which = i / chunks % 2, chunk = i % chunks;
    const bf16* src = (which ? p.v_cache : p.k_cache) + cache_row(p, key0 + key, h) + chunk * 8;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(kv + (which * KV_CAP + key) * D + chunk * 8)),
                 "l"(src)
                 : "memory");
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

__device__ __forceinline__ void grid_sync(const Params& p, int index, unsigned epoch) {
  grid_barrier(p.sync + index, (epoch + 1) * gridDim.x, p.errors, p.poll_ns);
}

__device__ __forceinline__ void load_dims(const bf16* src, float (&out)[DPL]) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(src);
#pragma unroll
  for (int i = 0; i < DPL / 2; ++i) {
    const float2 f = __bfloat1622float2(pairs[i]);
    out[2 * i] = f.x, out[2 * i + 1] = f.y;
  }
}

// One KV head's attention over keys [key0, key1); key `own` (the step's) is the new one, in head[]
// with the head's queries: head[] holds q (GROUP x D), k, v after qkv. The first warps norm and
// rotate q and k in place, `writer` stores the new k, v at the step's slot, then every warp takes
// keys in turn with an online softmax; part[g] gets the unnormalized output, its max and its sum.
// Ends with a CTA barrier.
__device__ void attend(const Params& p, int h, int key0, int key1, int own, int pos, int slot, bool writer,
                       float* head, float* part, float* warp_part, const bf16* kv) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  asm volatile("cp.async.wait_all;" ::: "memory");  // this thread's share of prefetch_keys (the barrier below: all)
  if (warp <= GROUP) {  // warps 0..GROUP-1: the query heads, warp GROUP: the key
    float* vec = head + warp * D;
    float x[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) x[i] = vec[lane * DPL + i];
    if (QK_NORM) {
      const bf16* w = warp < GROUP ? p.q_norm : p.k_norm;
      float sq = 0;
#pragma unroll
      for (int i = 0; i < DPL; ++i) sq += x[i] * x[i];
      const float rstd = rsqrtf(warp_sum(sq) / D + p.eps);
#pragma unroll
      for (int i = 0; i < DPL; ++i) x[i] = rnd(__bfloat162float(w[lane * DPL + i]) * rnd(x[i] * rstd));
    }
    const float* cos = p.cos + static_cast<size_t>(pos) * (D / 2);
    const float* sin = p.sin + static_cast<size_t>(pos) * (D / 2);
#pragma unroll
    for (int i = 0; i < DPL; ++i) {  // rotate-half: dims d and d + D/2 sit in lanes l and l + 16
      const float other = __shfl_xor_sync(0xffffffffu, x[i], 16);
      const int d = (lane & 15) * DPL + i;
      x[i] = rnd(lane < 16 ? x[i] * cos[d] - other * sin[d] : x[i] * cos[d] + other * sin[d]);
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < DPL; ++i) vec[lane * DPL + i] = x[i];
  }
  __syncthreads();
  const float* k_new = head + GROUP * D;
  const float* v_new = k_new + D;
  if (writer && slot >= 0) {
    const size_t row = (static_cast<size_t>(slot) * NKV + h) * D;
    for (int i = threadIdx.x; i < 2 * D; i += kThreads) {
      if (i < D) p.k_cache[row + i] = __float2bfloat16(k_new[i]);
      else p.v_cache[row + i - D] = __float2bfloat16(v_new[i - D]);
    }
  }
  const float scale = rsqrtf(static_cast<float>(D));
  float q[GROUP][DPL], m[GROUP], l[GROUP], acc[GROUP][DPL];
#pragma unroll
  for (int g = 0; g < GROUP; ++g) {
    m[g] = kNegInf, l[g] = 0;
#pragma unroll
    for (int i = 0; i < DPL; ++i) q[g][i] = head[g * D + lane * DPL + i] * scale, acc[g][i] = 0;
  }
  for (int j = key0 + warp; j < key1; j += kWarps) {
    float k[DPL], v[DPL];
    if (j == own) {
#pragma unroll
      for (int i = 0; i < DPL; ++i) k[i] = k_new[lane * DPL + i], v[i] = v_new[lane * DPL + i];
    } else if (j - key0 < KV_CAP) {  // prefetched
      load_dims(kv + (j - key0) * D + lane * DPL, k);
      load_dims(kv + (KV_CAP + j - key0) * D + lane * DPL, v);
    } else {
      const size_t row = cache_row(p, j, h) + lane * DPL;
      load_dims(p.k_cache + row, k);
      load_dims(p.v_cache + row, v);
    }
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
      float s = 0;
#pragma unroll
      for (int i = 0; i < DPL; ++i) s += q[g][i] * k[i];
      s = warp_sum(s);
      const float m_new = fmaxf(m[g], s);
      const float corr = __expf(m[g] - m_new), e = __expf(s - m_new);  // (exp(-inf) = 0 on the first key)
      l[g] = l[g] * corr + e;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[g][i] = acc[g][i] * corr + e * v[i];
      m[g] = m_new;
    }
  }
#pragma unroll
  for (int g = 0; g < GROUP; ++g) {
    float* mine = warp_part + (warp * GROUP + g) * PART;
#pragma unroll
    for (int i = 0; i < DPL; ++i) mine[lane * DPL + i] = acc[g][i];
    if (lane == 0) mine[D] = m[g], mine[D + 1] = l[g];
  }
  __syncthreads();
  for (int t = threadIdx.x; t < GROUP * D; t += kThreads) {  // combine the warps: (g, d) = (t / D, t % D)
    const int g = t / D, d = t % D;
    float big = kNegInf;
    for (int w = 0; w < kWarps; ++w) big = fmaxf(big, warp_part[(w * GROUP + g) * PART + D]);
    float sum = 0, out = 0;
    for (int w = 0; w < kWarps; ++w) {
      const float* wp = warp_part + (w * GROUP + g) * PART;
      const float f = wp[D] == kNegInf ? 0.0f : __expf(wp[D] - big);
      sum += wp[D + 1] * f, out += wp[d] * f;
    }
    part[g * PART + d] = out;
    if (d == 0) part[g * PART + D] = big, part[g * PART + D + 1] = sum;
  }
  __syncthreads();
}

// The merge of `n` partials of one query head (stride floats apart) at dim d, rounded:
// sum_s acc_s[d] e^(m_s - M) / sum_s l_s e^(m_s - M) (0 when no split had a key).
__device__ __forceinline__ float merge_dim(const float* parts, int n, int stride, int d, bool global) {
  float big = kNegInf;
  for (int s = 0; s < n; ++s) big = fmaxf(big, global ? __ldcg(parts + s * stride + D) : parts[s * stride + D]);
  float sum = 0, out = 0;
  for (int s = 0; s < n; ++s) {
    const float* ps = parts + s * stride;
    const float ms = global ? __ldcg(ps + D) : ps[D];
    if (ms == kNegInf) continue;
    const float f = __expf(ms - big);
    sum += (global ? __ldcg(ps + D + 1) : ps[D + 1]) * f;
    out += (global ? __ldcg(ps + d) : ps[d]) * f;
  }
  return sum > 0 ? rnd(out / sum) : 0.0f;
}

// Stage 3 of the grid variant with DL_MERGE: query head q's output from the splits' partials in global memory,
// merge_dim's sums in its order, with every load of a round trip in flight together: thread s
// reads split s's max and sum into sm[s], sm[32 + s] (acc, zero here and zero again after), then
// each thread sums its dim over the splits. Ends with a CTA barrier.
__device__ void merge_head(const Params& p, int q, float* sm) {
  const float* parts = p.partials + q * PART;  // split s at parts + s * NQ * PART
  if (threadIdx.x < p.splits) {
    sm[threadIdx.x] = __ldcg(parts + threadIdx.x * NQ * PART + D);
    sm[kMaxSplits + threadIdx.x] = __ldcg(parts + threadIdx.x * NQ * PART + D + 1);
  }
  __syncthreads();
  float big = kNegInf, sum = 0;
  for (int s = 0; s < p.splits; ++s) big = fmaxf(big, sm[s]);
  for (int s = 0; s < p.splits; ++s)
    if (sm[s] != kNegInf) sum += sm[kMaxSplits + s] * __expf(sm[s] - big);
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float v[kMaxSplits], out = 0;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) v[s] = s < p.splits ? __ldcg(parts + s * NQ * PART + d) : 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s)
      if (s < p.splits && sm[s] != kNegInf) out += v[s] * __expf(sm[s] - big);
    p.attn[q * D + d] = sum > 0 ? rnd(out / sum) : 0.0f;
  }
  __syncthreads();
  if (threadIdx.x < 2 * kMaxSplits) sm[threadIdx.x] = 0;
}

// Where the part (queries, k, v) of a head's local row i ends: its rows are contiguous in W_qkv up to there.
__device__ __forceinline__ int next_part(int i) {
  return i < GROUP * D ? GROUP * D : i < (GROUP + 1) * D ? (GROUP + 1) * D : HEAD_ROWS;
}

// The qkv rows of KV head h, local row i (queries, then k, then v) -> its row of W_qkv.
__device__ __forceinline__ int head_row(int h, int i) {
  return i < GROUP * D ? h * GROUP * D + i
         : i < (GROUP + 1) * D ? QROWS + h * D + (i - GROUP * D)
                               : QROWS + KVROWS + h * D + (i - (GROUP + 1) * D);
}

// KV head h's local qkv rows [local0, local0 + n) of W_qkv: up to three contiguous pieces (they may
// run past its queries or its k).
__device__ __forceinline__ Pieces head_pieces(const bf16* W, int h, int local0, int n) {
  Pieces s;
  int done = 0;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const int local = local0 + done, m = done < n ? min(n - done, next_part(local) - local) : 0;
    s.base[k] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(head_row(h, min(local, HEAD_ROWS - 1))) * H);
    done += m;
    s.end[k] = done * (H / 8);
  }
  return s;
}

template <bool kCluster>
__device__ __forceinline__ void decode_layer(const Params& p) {
  extern __shared__ __align__(16) float smem[];
  float *xs = smem + SM_XS, *acc = smem + SM_ACC, *red = smem + SM_RED, *head = smem + SM_HEAD;
  float *part = smem + SM_PART, *warp_part = smem + SM_WARP, *merge = smem + SM_MERGE;
  bf16* kv = reinterpret_cast<bf16*>(smem + SM_KV);
  const int P = gridDim.x, c = blockIdx.x;
  for (int i = threadIdx.x; i < 256; i += kThreads) acc[i] = 0;
  uint4 regs[kInFlight];
  STAMP(0);

  // ---- stage 1: qkv (grid: rows over all CTAs; cluster: one KV head's rows per cluster)
  int csize = 1, rank = 0, cid = 0;
  if constexpr (kCluster) {
    csize = static_cast<int>(cluster_size()), rank = static_cast<int>(cluster_rank());
    cid = c / csize;
  }
  int row0 = 0, rows = 0, local0 = 0;
  Pieces qkv_rows;
  if constexpr (kCluster) {  // local rows [local0, local0 + rows) of the head
    rows = cid < NKV ? HEAD_ROWS / csize : 0, local0 = rank * rows;
    qkv_rows = head_pieces(p.w_qkv, cid < NKV ? cid : 0, local0, rows);
  } else {
    split_rows(QKV, P, c, row0, rows);
    qkv_rows = rows_of(p.w_qkv, H, row0, rows);
  }
  request_stage(qkv_rows, regs);  // weights never depend on the step: before the wait
  float wv[NORM_PER_THREAD];
  if (DL_EARLY) load_norm(p.norm1, wv);
  const int kv_head = kCluster ? cid : c / p.splits, kv_splits = kCluster ? csize : p.splits;
  const int kv_split = kCluster ? rank : c % p.splits;
  const bool attends = kv_head < NKV;
  int pos = 0, slot = 0, keys = 0, key0 = 0, key1 = 0;
  // the step's metadata and the older keys' cp.async (DL_EARLY: before the wait: they were written
  // before the previous launch began)
  auto step_and_keys = [&]() {
    pos = load_index(p.positions, p.pos64), slot = load_index(p.slot_mapping, p.slot64), keys = p.seq_lens[0];
    const int chunk = (keys + kv_splits - 1) / kv_splits;
    key0 = min(keys, kv_split * chunk), key1 = min(keys, (kv_split + 1) * chunk);
    if (attends) prefetch_keys(p, kv_head, key0, key1, keys - 1, kv);
  };
  if (DL_EARLY) step_and_keys();
  asm volatile("griddepcontrol.wait;" ::: "memory");
  STAMP(1);
  const unsigned epoch = *reinterpret_cast<volatile unsigned*>(p.sync);
  if (!DL_EARLY) step_and_keys();
  const int own = keys - 1;
  norm_input(p.x, p.res, nullptr, p.norm1, wv, p.eps, xs, red, c == 0 ? p.r : nullptr);
  STAMP(2);
  gemv(qkv_rows, H, xs, acc, regs);
  STAMP(3);

  if constexpr (kCluster) {
    if (attends) {  // push this CTA's rows (rounded as the qkv store rounds) into every peer's head[]
      for (int i = threadIdx.x; i < rows * csize; i += kThreads)
        map_shared(head, i % csize)[local0 + i / csize] = rnd(acc[i / csize]);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < rows; i += kThreads) acc[i] = 0;
    cluster_sync();  // handoff 1: the head's q, k, v in every CTA of the cluster
    STAMP(4);
    const int dims = D / csize;
    if (attends) {
      attend(p, kv_head, key0, key1, own, pos, slot, rank == 0, head, part, warp_part, kv);
      for (int i = threadIdx.x; i < csize * GROUP * (dims + 2); i += kThreads) {  // peer r: its dims, max, sum
        const int peer = i / (GROUP * (dims + 2)), rest = i % (GROUP * (dims + 2));
        const int g = rest / (dims + 2), j = rest % (dims + 2);
        const int d = j < dims ? peer * dims + j : D + (j - dims);
        map_shared(merge, peer)[(rank * GROUP + g) * PART + d] = part[g * PART + d];
      }
    }
    STAMP(5);
    cluster_sync();  // handoff 2: every split's partial of this CTA's dims here
    STAMP(6);
    if (attends) {
      for (int t = threadIdx.x; t < GROUP * dims; t += kThreads) {
        const int g = t / dims, d = rank * dims + t % dims;
        p.attn[(kv_head * GROUP + g) * D + d] = merge_dim(merge + g * PART, csize, GROUP * PART, d, false);
      }
    }
    STAMP(7);
  } else {
    for (int i = threadIdx.x; i < rows; i += kThreads) p.qkv[row0 + i] = rnd(acc[i]), acc[i] = 0;
    grid_sync(p, 1, epoch);
    STAMP(4);
    // ---- stage 2: attention, item (KV head, split) per CTA
    if (attends) {
      for (int i = threadIdx.x; i < HEAD_ROWS; i += kThreads) head[i] = __ldcg(p.qkv + head_row(kv_head, i));
      __syncthreads();
      attend(p, kv_head, key0, key1, own, pos, slot, kv_split == 0, head, part, warp_part, kv);
      for (int i = threadIdx.x; i < GROUP * PART; i += kThreads)
        p.partials[(static_cast<size_t>(kv_split) * NQ + kv_head * GROUP) * PART + i] = part[i];
    }
    STAMP(5);
    grid_sync(p, 2, epoch);
    STAMP(6);
    // ---- stage 3: merge, one query head per CTA
    for (int head_q = c; head_q < NQ; head_q += P) {
      if (DL_MERGE) {
        merge_head(p, head_q, acc);
      } else {
        for (int d = threadIdx.x; d < D; d += kThreads)
          p.attn[head_q * D + d] = merge_dim(p.partials + head_q * PART, p.splits, NQ * PART, d, true);
      }
    }
    STAMP(7);
  }

  // ---- stage 4: o_proj + the residual
  split_rows(H, P, c, row0, rows);
  const Pieces o_rows = rows_of(p.w_o, QROWS, row0, rows);
  request_stage(o_rows, regs);
  grid_sync(p, 3, epoch);
  STAMP(8);
  float res = 0, new_res = 0;  // DL_KEEP_RES: thread i's residual row (rows <= kThreads), then r2's
  if (DL_KEEP_RES && threadIdx.x < rows) res = __ldcg(p.r + row0 + threadIdx.x);
  for (int i = threadIdx.x; i < QROWS; i += kThreads) xs[i] = __ldcg(p.attn + i);
  __syncthreads();
  gemv(o_rows, QROWS, xs, acc, regs);
  for (int i = threadIdx.x; i < rows; i += kThreads) {
    new_res = rnd(rnd(acc[i]) + (DL_KEEP_RES ? res : __ldcg(p.r + row0 + i)));
    p.r2[row0 + i] = new_res, acc[i] = 0;
  }
  STAMP(9);

  // ---- stage 5: gate/up (gate rows and the matching up rows) + SiLU-and-mul
  split_rows(I, P, c, row0, rows);
  const Pieces gate = rows_of(p.w_gu, H, row0, rows), up = rows_of(p.w_gu, H, I + row0, rows);
  const Pieces gu_rows = {{gate.base[0], up.base[0], up.base[0]}, {gate.end[0], 2 * gate.end[0], 2 * gate.end[0]}};
  request_stage(gu_rows, regs);  // gate rows into acc[0, rows), the matching up rows into acc[rows, 2 rows)
  if (DL_EARLY) load_norm(p.norm2, wv);
  grid_sync(p, 4, epoch);
  STAMP(10);
  norm_input(nullptr, nullptr, p.r2, p.norm2, wv, p.eps, xs, red, nullptr);
  STAMP(11);
  gemv(gu_rows, H, xs, acc, regs);
  for (int i = threadIdx.x; i < rows; i += kThreads) {
    const float g = rnd(acc[i]), u = rnd(acc[rows + i]);
    p.act[row0 + i] = rnd(rnd(g / (1.0f + __expf(-g))) * u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * rows; i += kThreads) acc[i] = 0;
  STAMP(12);

  // ---- stage 6: down
  split_rows(H, P, c, row0, rows);
  const Pieces down_rows = rows_of(p.w_down, I, row0, rows);  // (o_proj's rows: new_res is this row's r2)
  request_stage(down_rows, regs);
  grid_sync(p, 5, epoch);
  STAMP(13);
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  for (int i = threadIdx.x; i < I; i += kThreads) xs[i] = __ldcg(p.act + i);
  __syncthreads();
  gemv(down_rows, I, xs, acc, regs);
  for (int i = threadIdx.x; i < rows; i += kThreads) {
    p.x_out[row0 + i] = __float2bfloat16(acc[i]);
    p.res_out[row0 + i] = __float2bfloat16(DL_KEEP_RES ? new_res : __ldcg(p.r2 + row0 + i));
  }
  // every CTA read the epoch after the PDL wait and passed barrier 5: the next launch's turn
  STAMP(14);
  if (c == 0 && threadIdx.x == 0) atomicAdd(p.sync, 1u);
}

extern "C" __global__ void __launch_bounds__(kThreads) decode_layer_grid(Params p) { decode_layer<false>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) decode_layer_cluster(Params p) { decode_layer<true>(p); }
extern "C" __global__ void decode_layer_smem_bytes(int* out) { *out = SMEM_BYTES; }
