// The device code of decode_layer.cu: a whole batch-1 Qwen3-0.6B decode layer as one persistent
// launch (the header of decode_layer.cu says what it computes and how the variants differ).
// NVRTC compiles it as it is (kernels.nvrtc: cuda_bf16.h from Triton's headers, cluster operations
// as inline PTX in device.cuh), so the engine can take it over unchanged; nvcc builds the probe.
#pragma once

#include <cuda_bf16.h>

#include "device.cuh"

using bf16 = __nv_bfloat16;

constexpr int H = 1024, NQ = 16, NKV = 8, D = 128, GROUP = NQ / NKV, I = 3072;
constexpr int QROWS = NQ * D, KVROWS = NKV * D, QKV = QROWS + 2 * KVROWS;  // 2048, 1024, 4096
constexpr int HEAD_ROWS = (GROUP + 2) * D;                                 // one KV head's qkv rows: 512
constexpr float EPS = 1e-6f;
constexpr int kMaxSplits = 32;
constexpr int kMaxCluster = 16;
constexpr int kWarps = kThreads / 32;
constexpr int PART = D + 2;  // a partial: acc[D], m, l
#define kNegInf __int_as_float(0xff800000)

struct Layer {
  const bf16 *qkv, *o, *gu, *down, *norm1, *norm2, *q_norm, *k_norm;
  bf16 *k_cache, *v_cache;  // [pos + 1][NKV][D]
};

struct Params {
  Layer w;
  const bf16 *x, *res;
  bf16 *x_out, *res_out;
  const float* rope;  // cos[D / 2], sin[D / 2] of position pos
  int pos, splits;    // the new token's position (keys 0..pos); the grid variant's splits per KV head
  unsigned poll_ns;   // the grid barriers' sleep before each poll
  float *qkv, *partials, *attn, *r, *r2, *act;  // scratch: [QKV], [splits][NQ][PART], [QROWS], [H], [H], [I]
  unsigned* sync;     // [0]: the launches' epoch, [1..5]: barrier counters (never reset)
  unsigned* errors;   // [0]: barrier time-outs
};

// --- the smem layout (floats)
constexpr int SM_XS = 0;                                       // [I] a GEMV stage's input
constexpr int SM_ACC = SM_XS + I;                              // [256] row sums
constexpr int SM_RED = SM_ACC + 256;                           // [32] reductions
constexpr int SM_HEAD = SM_RED + 32;                           // [HEAD_ROWS] q (GROUP x D), k, v of one KV head
constexpr int SM_PART = SM_HEAD + HEAD_ROWS;                   // [GROUP][PART] this CTA's attention partial
constexpr int SM_WARP = SM_PART + GROUP * PART;                // [kWarps][GROUP][PART] per-warp partials
constexpr int SM_MERGE = SM_WARP + kWarps * GROUP * PART;      // [kMaxCluster][GROUP][PART] pushed partials
constexpr int SM_KV = SM_MERGE + kMaxCluster * GROUP * PART;   // bf16 [2][KV_CAP][D]: the split's keys, values
constexpr int KV_CAP = 64;                                      // keys per split prefetched into shared memory
constexpr int SM_FLOATS = SM_KV + KV_CAP * D;
static_assert(SM_KV % 4 == 0, "cp.async copies 16-byte pieces into kv[]");

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

// The first kInFlight loads per thread of rows [row0, row0 + rows) of W [*, K], issued ahead.
__device__ __forceinline__ void request(const bf16* W, int K, int row0, int rows, uint4 (&regs)[kInFlight]) {
  request_rows(reinterpret_cast<const uint4*>(W + static_cast<size_t>(row0) * K), rows * (K / 8), regs);
}

// acc[i] += W[row0 + i] . xs for i < rows (K / 8 a multiple of 32: a warp's 32 vectors are one
// row's); with `loaded` the first loads are in regs already. Ends with a CTA barrier.
__device__ void gemv(const bf16* W, int K, int row0, int rows, const float* xs, float* acc, uint4 (&regs)[kInFlight],
                     bool loaded) {
  stream_rows(reinterpret_cast<const uint4*>(W + static_cast<size_t>(row0) * K), rows * (K / 8), K / 8, xs, acc, regs,
              loaded);
  __syncthreads();
}

// xs = rmsnorm(a + b) * w over H (b may be float or bf16: one of b_f / b_h); `store` gets a + b.
__device__ void norm_input(const bf16* a, const float* b_f, const bf16* b_h, const bf16* w, float* xs, float* red,
                           float* store) {
  float v[H / kThreads], sq = 0;
#pragma unroll
  for (int j = 0; j < H / kThreads; ++j) {
    const int i = threadIdx.x + j * kThreads;
    const float x = a ? __bfloat162float(a[i]) : 0.0f;
    v[j] = x + (b_f ? __ldcg(b_f + i) : __bfloat162float(b_h[i]));
    sq += v[j] * v[j];
  }
  const float rstd = rsqrtf(block_sum(sq, red) / H + EPS);
#pragma unroll
  for (int j = 0; j < H / kThreads; ++j) {
    const int i = threadIdx.x + j * kThreads;
    xs[i] = v[j] * rstd * __bfloat162float(w[i]);
    if (store) store[i] = v[j];
  }
  __syncthreads();
}

// The keys [key0, key1) of KV head h older than the step (all but `pos`), their first KV_CAP, copied
// into kv[] (K rows, then V rows) by cp.async at the launch's start: earlier steps wrote them, so
// their DRAM round trip overlaps qkv instead of following barrier 1 (the Triton layer's kv_early).
__device__ void prefetch_keys(const Params& p, int h, int key0, int key1, bf16* kv) {
  const int n = max(0, min(min(key1, p.pos), key0 + KV_CAP) - key0), chunks = D / 8;
  for (int i = threadIdx.x; i < n * 2 * chunks; i += kThreads) {
    const int key = i / (2 * chunks), which = i / chunks % 2, chunk = i % chunks;
    const bf16* src = (which ? p.w.v_cache : p.w.k_cache) + (static_cast<size_t>(key0 + key) * NKV + h) * D + chunk * 8;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(kv + (which * KV_CAP + key) * D + chunk * 8)),
                 "l"(src)
                 : "memory");
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

__device__ __forceinline__ void grid_sync(const Params& p, int index, unsigned epoch) {
  grid_barrier(p.sync + index, (epoch + 1) * gridDim.x, p.errors, p.poll_ns);
}

// One KV head's attention over keys [key0, key1) (key `pos` is the new one, in head[]):
// head[] holds q (GROUP x D), k, v of the head after qkv; the first warps norm and rotate q and k
// in place, `writer` stores the new k, v into the cache, then every warp takes keys in turn with
// an online softmax; part[g] gets the unnormalized output, its max and its sum. Ends with a CTA barrier.
__device__ void attend(const Params& p, int h, int key0, int key1, bool writer, float* head, float* part,
                       float* warp_part, const bf16* kv) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  asm volatile("cp.async.wait_all;" ::: "memory");  // this thread's share of prefetch_keys (the CTA barrier below: all)
  if (warp <= GROUP) {  // warps 0..GROUP-1: the query heads, warp GROUP: k
    float* vec = head + warp * D;
    const bf16* w = warp < GROUP ? p.w.q_norm : p.w.k_norm;
    float x[4], sq = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = vec[lane * 4 + i], sq += x[i] * x[i];
    const float rstd = rsqrtf(warp_sum(sq) / D + EPS);
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] *= rstd * __bfloat162float(w[lane * 4 + i]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // rotate-half: dims d and d + D/2 sit in lanes l and l + 16
      const float other = __shfl_xor_sync(0xffffffffu, x[i], 16);
      const int d = (lane & 15) * 4 + i;
      const float c = p.rope[d], s = p.rope[D / 2 + d];
      x[i] = lane < 16 ? x[i] * c - other * s : x[i] * c + other * s;
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 4; ++i) vec[lane * 4 + i] = x[i];
  }
  __syncthreads();
  const float* k_new = head + GROUP * D;
  const float* v_new = k_new + D;
  if (writer) {
    const size_t row = (static_cast<size_t>(p.pos) * NKV + h) * D;
    if (threadIdx.x < D) p.w.k_cache[row + threadIdx.x] = __float2bfloat16(k_new[threadIdx.x]);
    else if (threadIdx.x < 2 * D) p.w.v_cache[row + threadIdx.x - D] = __float2bfloat16(v_new[threadIdx.x - D]);
  }
  const float scale = rsqrtf(static_cast<float>(D));
  float q[GROUP][4], m[GROUP], l[GROUP], acc[GROUP][4];
#pragma unroll
  for (int g = 0; g < GROUP; ++g) {
    m[g] = kNegInf, l[g] = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) q[g][i] = head[g * D + lane * 4 + i] * scale, acc[g][i] = 0;
  }
  for (int j = key0 + warp; j < key1; j += kWarps) {
    float k[4], v[4];
    if (j == p.pos) {
#pragma unroll
      for (int i = 0; i < 4; ++i) k[i] = k_new[lane * 4 + i], v[i] = v_new[lane * 4 + i];
    } else {
      const bool near = j - key0 < KV_CAP;  // prefetched
      const size_t row = (static_cast<size_t>(j) * NKV + h) * D + lane * 4;
      const uint2 kk = near ? *reinterpret_cast<const uint2*>(kv + (j - key0) * D + lane * 4)
                            : *reinterpret_cast<const uint2*>(p.w.k_cache + row);
      const uint2 vv = near ? *reinterpret_cast<const uint2*>(kv + (KV_CAP + j - key0) * D + lane * 4)
                            : *reinterpret_cast<const uint2*>(p.w.v_cache + row);
      const __nv_bfloat162* kp = reinterpret_cast<const __nv_bfloat162*>(&kk);
      const __nv_bfloat162* vp = reinterpret_cast<const __nv_bfloat162*>(&vv);
      const float2 k0 = __bfloat1622float2(kp[0]), k1 = __bfloat1622float2(kp[1]);
      const float2 v0 = __bfloat1622float2(vp[0]), v1 = __bfloat1622float2(vp[1]);
      k[0] = k0.x, k[1] = k0.y, k[2] = k1.x, k[3] = k1.y, v[0] = v0.x, v[1] = v0.y, v[2] = v1.x, v[3] = v1.y;
    }
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
      const float s = warp_sum(q[g][0] * k[0] + q[g][1] * k[1] + q[g][2] * k[2] + q[g][3] * k[3]);
      const float m_new = fmaxf(m[g], s);
      const float corr = __expf(m[g] - m_new), e = __expf(s - m_new);  // (exp(-inf) = 0 on the first key)
      l[g] = l[g] * corr + e;
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[g][i] = acc[g][i] * corr + e * v[i];
      m[g] = m_new;
    }
  }
#pragma unroll
  for (int g = 0; g < GROUP; ++g) {
    float* mine = warp_part + (warp * GROUP + g) * PART;
#pragma unroll
    for (int i = 0; i < 4; ++i) mine[lane * 4 + i] = acc[g][i];
    if (lane == 0) mine[D] = m[g], mine[D + 1] = l[g];
  }
  __syncthreads();
  {  // combine the warps: thread t takes (g, d) = (t / D, t % D)
    const int g = threadIdx.x / D, d = threadIdx.x % D;
    if (g < GROUP) {
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
  }
  __syncthreads();
}

// Merges `n` partials (stride `stride` floats between them, each [PART] for one query head) at
// dims [d0, d0 + count): out[d - d0] = sum_s acc_s[d] e^(m_s - M) / sum_s l_s e^(m_s - M).
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
  return out / sum;
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

  // ---- stage 1: qkv (grid: rows over all CTAs; cluster: one KV head's 512 rows per cluster)
  int csize = 1, rank = 0, cid = 0;
  if constexpr (kCluster) {
    csize = static_cast<int>(cluster_size()), rank = static_cast<int>(cluster_rank());
    cid = c / csize;
  }
  const bool attends = kCluster ? cid < NKV : true;
  int row0 = 0, rows = 0;
  if constexpr (kCluster) {
    if (attends) {  // local rows [rank * per, +per) of q (GROUP x D), k, v: one contiguous range of W_qkv
      const int per = HEAD_ROWS / csize, local = rank * per;
      row0 = local < GROUP * D ? cid * GROUP * D + local
             : local < (GROUP + 1) * D ? QROWS + cid * D + (local - GROUP * D)
                                       : QROWS + KVROWS + cid * D + (local - (GROUP + 1) * D);
      rows = per;
    }
  } else {
    split_rows(QKV, P, c, row0, rows);
  }
  request(p.w.qkv, H, row0, rows, regs);  // weights never depend on the step: before the wait
  const int keys = p.pos + 1;
  const int kv_head = kCluster ? cid : c / p.splits, kv_splits = kCluster ? csize : p.splits;
  const int kv_split = kCluster ? rank : c % p.splits, chunk = (keys + kv_splits - 1) / kv_splits;
  const int key0 = min(keys, kv_split * chunk), key1 = min(keys, (kv_split + 1) * chunk);
  if (kv_head < NKV) prefetch_keys(p, kv_head, key0, key1, kv);  // (nor do the older keys)
  asm volatile("griddepcontrol.wait;" ::: "memory");
  const unsigned epoch = *reinterpret_cast<volatile unsigned*>(p.sync);
  norm_input(p.x, nullptr, p.res, p.w.norm1, xs, red, c == 0 ? p.r : nullptr);
  gemv(p.w.qkv, H, row0, rows, xs, acc, regs, true);

  if constexpr (kCluster) {
    if (attends) {  // push this CTA's rows into every peer's head[]
      const int per = rows, local = rank * per;
      for (int i = threadIdx.x; i < per * csize; i += kThreads)
        map_shared(head, i % csize)[local + i / csize] = acc[i / csize];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < rows; i += kThreads) acc[i] = 0;
    cluster_sync();  // handoff 1: the head's q, k, v in every CTA of the cluster
    if (attends) {
      attend(p, cid, key0, key1, rank == 0, head, part, warp_part, kv);
      const int dims = D / csize;  // push (m, l, acc of peer r's dims) to every peer r
      for (int i = threadIdx.x; i < csize * GROUP * (dims + 2); i += kThreads) {
        const int peer = i / (GROUP * (dims + 2)), rest = i % (GROUP * (dims + 2));
        const int g = rest / (dims + 2), j = rest % (dims + 2);
        const int d = j < dims ? peer * dims + j : D + (j - dims);  // dims, then m and l
        map_shared(merge, peer)[(rank * GROUP + g) * PART + d] = part[g * PART + d];
      }
    }
    cluster_sync();  // handoff 2: every split's partial of this CTA's dims here
    if (attends) {
      const int dims = D / csize;
      if (threadIdx.x < GROUP * dims) {
        const int g = threadIdx.x / dims, d = rank * dims + threadIdx.x % dims;
        p.attn[(cid * GROUP + g) * D + d] = merge_dim(merge + g * PART, csize, GROUP * PART, d, false);
      }
    }
  } else {
    for (int i = threadIdx.x; i < rows; i += kThreads) p.qkv[row0 + i] = acc[i], acc[i] = 0;
    grid_sync(p, 1, epoch);
    // ---- stage 2: attention, item (h, s) per CTA
    if (c < NKV * p.splits) {
      const int h = c / p.splits, s = c % p.splits;
      for (int i = threadIdx.x; i < HEAD_ROWS; i += kThreads) {
        const int src = i < GROUP * D ? h * GROUP * D + i
                        : i < (GROUP + 1) * D ? QROWS + h * D + (i - GROUP * D)
                                              : QROWS + KVROWS + h * D + (i - (GROUP + 1) * D);
        head[i] = __ldcg(p.qkv + src);
      }
      __syncthreads();
      attend(p, h, key0, key1, s == 0, head, part, warp_part, kv);
      for (int i = threadIdx.x; i < GROUP * PART; i += kThreads)
        p.partials[(static_cast<size_t>(s) * NQ + h * GROUP) * PART + i] = part[i];
    }
    grid_sync(p, 2, epoch);
    // ---- stage 3: merge, one query head per CTA
    if (c < NQ && threadIdx.x < D)
      p.attn[c * D + threadIdx.x] = merge_dim(p.partials + c * PART, p.splits, NQ * PART, threadIdx.x, true);
  }

  // ---- stage 4: o_proj + the residual
  split_rows(H, P, c, row0, rows);
  request(p.w.o, QROWS, row0, rows, regs);
  grid_sync(p, 3, epoch);
  for (int i = threadIdx.x; i < QROWS; i += kThreads) xs[i] = __ldcg(p.attn + i);
  __syncthreads();
  gemv(p.w.o, QROWS, row0, rows, xs, acc, regs, true);
  for (int i = threadIdx.x; i < rows; i += kThreads) p.r2[row0 + i] = acc[i] + __ldcg(p.r + row0 + i), acc[i] = 0;

  // ---- stage 5: gate/up (gate rows and the matching up rows) + SiLU-and-mul
  split_rows(I, P, c, row0, rows);
  request(p.w.gu, H, row0, rows, regs);
  grid_sync(p, 4, epoch);
  norm_input(nullptr, p.r2, nullptr, p.w.norm2, xs, red, nullptr);
  gemv(p.w.gu, H, row0, rows, xs, acc, regs, true);
  gemv(p.w.gu, H, I + row0, rows, xs, acc + rows, regs, false);
  for (int i = threadIdx.x; i < rows; i += kThreads) {
    const float g = acc[i], u = acc[rows + i];
    p.act[row0 + i] = g / (1.0f + __expf(-g)) * u;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * rows; i += kThreads) acc[i] = 0;

  // ---- stage 6: down
  split_rows(H, P, c, row0, rows);
  request(p.w.down, I, row0, rows, regs);
  grid_sync(p, 5, epoch);
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  for (int i = threadIdx.x; i < I; i += kThreads) xs[i] = __ldcg(p.act + i);
  __syncthreads();
  gemv(p.w.down, I, row0, rows, xs, acc, regs, true);
  for (int i = threadIdx.x; i < rows; i += kThreads) {
    p.x_out[row0 + i] = __float2bfloat16(acc[i]);
    p.res_out[row0 + i] = __float2bfloat16(__ldcg(p.r2 + row0 + i));
  }
  // every CTA read the epoch before barrier 1 and passed barrier 5: the next launch's turn
  if (c == 0 && threadIdx.x == 0) atomicAdd(p.sync, 1u);
}

extern "C" __global__ void __launch_bounds__(kThreads) decode_layer_grid(Params p) { decode_layer<false>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) decode_layer_cluster(Params p) { decode_layer<true>(p); }
