// A whole batch-1 decode layer of Qwen3-0.6B (hidden 1,024, 16 query / 8 KV heads of 128,
// intermediate 3,072) written for Hopper in CUDA, as one persistent launch per layer, in two
// variants, to measure against the Triton persistent layer (20.5-20.7 µs per layer in a 28-layer
// chain at context 384 on an H200):
//
//   grid     the Triton layer's structure: six stages separated by five grid barriers
//            (qkv | attention splits | merge | o_proj | gate/up | down), each GEMV stage's first
//            16 loads per thread requested before the barrier in front of it, the attention
//            split's older keys and values copied into shared memory at the launch's start.
//   cluster  qkv, attention and the merge of one KV head inside one thread-block cluster: the
//            cluster computes its head's 512 qkv rows and pushes them into every CTA's shared
//            memory, each CTA attends over one split of the keys and pushes its partials to the
//            CTAs that merge them (distributed shared memory, cluster barriers): barriers 0 and 1
//            and their L2 reloads become cluster handoffs. o_proj, gate/up and down stay grid-wide.
//
// The kernel is the engine's (infer_core/kernels/cuda/decode_layer.cuh, kernels.decode_layer_cuda):
// this program gives it a paged cache of 16-slot blocks with the identity block table.
//
// Semantics (the engine's layer; the kernel rounds to bf16 where the unfused path does, the host
// reference here does not): r = x + res; h = rmsnorm(r) * w1;
// q, k, v = W_qkv h; q, k = rmsnorm_head(q, k) * (q_norm, k_norm), rotated (rotate-half, the
// cos/sin of position `pos`); k, v stored at `pos` of the layer's KV cache; attention of each
// query head over keys 0..pos of its KV head; r2 = W_o attn + r; h2 = rmsnorm(r2) * w2;
// act = silu(W_gate h2) * (W_up h2); x_out = W_down act; res_out = r2.
//
// `--poll-ns` runs each variant with these sleeps before each poll of a grid barrier (0 and 100
// by default; the Triton layer is faster with 100).
//
// The program checks one launch of layer 0 (both outputs and the cache row written) against the
// host's double-precision layer, then times chains of `--layers` layers of distinct weights
// (captured in one CUDA graph, PDL between the launches, medians of `--repeats` replays):
// µs per layer. Barrier time-outs and a mismatch are counted: a row with either is a bug.
//
// `--cooperative 0,1` launches each variant with and without the cooperative attribute: with it the
// driver refuses a grid it cannot keep resident at once (a row with "refused") instead of
// launching one whose grid barriers spin to their limit (clusters of 4 or 8 at 2 CTAs per SM did).
//
// -DDL_TIMELINE also prints each variant's stage intervals (the last launch, min / median / max over
// the CTAs; not through benchmarks/hopper_programs.py).
//
// Build: nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I../../infer_core/src/infer_core/kernels/cuda
//   decode_layer.cu -o decode_layer
// (benchmarks/hopper_programs.py builds, runs and reports). Output: one JSON object per line.

#include <cmath>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "decode_layer.cuh"

constexpr float EPS = 1e-6f;

// ------------------------------------------------------------------------------------ host

// tensor t of layer l: values hashed(l * 16 + t, row, col) * scale + offset
__global__ void fill(bf16* out, size_t n, int cols, unsigned tensor, float scale, float offset) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(hashed(tensor, static_cast<unsigned>(i / cols), static_cast<unsigned>(i % cols)) * scale + offset);
}

enum Tensor { T_QKV, T_O, T_GU, T_DOWN, T_N1, T_N2, T_QN, T_KN, T_KC, T_VC, T_X, T_RES };
struct Spec { int rows, cols; float scale, offset; };
static Spec spec(int t, int ctx) {
  switch (t) {
    case T_QKV: return {QKV, H, 1.0f / 32, 0};
    case T_O: return {H, QROWS, 1.0f / 45, 0};
    case T_GU: return {2 * I, H, 1.0f / 32, 0};
    case T_DOWN: return {H, I, 1.0f / 55, 0};
    case T_N1: case T_N2: case T_QN: case T_KN: return {1, t == T_QN || t == T_KN ? D : H, 0.25f, 1.0f};
    case T_KC: case T_VC: return {ctx * NKV, D, 1.0f, 0};
    default: return {1, H, 1.0f, 0};  // x, res
  }
}
static unsigned tensor_id(int layer, int t) { return static_cast<unsigned>(layer * 16 + t); }
static float host_value(int layer, int t, int ctx, int row, int col) {
  const Spec s = spec(t, ctx);
  return __bfloat162float(__float2bfloat16(hashed(tensor_id(layer, t), row, col) * s.scale + s.offset));
}

struct Reference { std::vector<double> x_out, res_out, k, v; };

// Layer 0 in double precision from the same hashed values (the cache rows 0..pos-1 as stored).
static Reference reference(int pos, const std::vector<float>& rope) {
  const int ctx = pos + 1;
  auto W = [&](int t, int r, int cc) { return static_cast<double>(host_value(0, t, ctx, r, cc)); };
  auto rmsnorm = [&](std::vector<double> v, int t, int off) {
    double sq = 0;
    for (double x : v) sq += x * x;
    const double rstd = 1.0 / std::sqrt(sq / v.size() + EPS);
    for (size_t i = 0; i < v.size(); ++i) v[i] *= rstd * W(t, 0, off + static_cast<int>(i));
    return v;
  };
  std::vector<double> r(H);
  for (int i = 0; i < H; ++i) r[i] = W(T_X, 0, i) + W(T_RES, 0, i);
  const std::vector<double> h = rmsnorm(r, T_N1, 0);
  std::vector<double> qkv(QKV, 0.0);
  for (int row = 0; row < QKV; ++row)
    for (int col = 0; col < H; ++col) qkv[row] += W(T_QKV, row, col) * h[col];
  auto head_of = [&](int base, int t) {
    std::vector<double> v(qkv.begin() + base, qkv.begin() + base + D);
    double sq = 0;
    for (double x : v) sq += x * x;
    const double rstd = 1.0 / std::sqrt(sq / D + EPS);
    for (int d = 0; d < D; ++d) v[d] *= rstd * W(t, 0, d);
    std::vector<double> out(D);
    for (int d = 0; d < D / 2; ++d) {
      out[d] = v[d] * rope[d] - v[d + D / 2] * rope[D / 2 + d];
      out[d + D / 2] = v[d + D / 2] * rope[d] + v[d] * rope[D / 2 + d];
    }
    return out;
  };
  Reference ref;
  std::vector<double> attn(QROWS);
  for (int kv = 0; kv < NKV; ++kv) {
    const std::vector<double> k_new = head_of(QROWS + kv * D, T_KN);
    const std::vector<double> v_new(qkv.begin() + QROWS + KVROWS + kv * D, qkv.begin() + QROWS + KVROWS + (kv + 1) * D);
    for (int d = 0; d < D; ++d) ref.k.push_back(k_new[d]), ref.v.push_back(v_new[d]);
    for (int g = 0; g < GROUP; ++g) {
      const std::vector<double> q = head_of((kv * GROUP + g) * D, T_QN);
      std::vector<double> scores(ctx);
      double big = -1e300;
      for (int j = 0; j < ctx; ++j) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += q[d] * (j == pos ? k_new[d] : W(T_KC, j * NKV + kv, d));
        scores[j] = s / std::sqrt(static_cast<double>(D));
        big = std::max(big, scores[j]);
      }
      double sum = 0;
      for (int j = 0; j < ctx; ++j) sum += (scores[j] = std::exp(scores[j] - big));
      for (int d = 0; d < D; ++d) {
        double o = 0;
        for (int j = 0; j < ctx; ++j) o += scores[j] * (j == pos ? v_new[d] : W(T_VC, j * NKV + kv, d));
        attn[(kv * GROUP + g) * D + d] = o / sum;
      }
    }
  }
  std::vector<double> r2(H);
  for (int row = 0; row < H; ++row) {
    double s = 0;
    for (int col = 0; col < QROWS; ++col) s += W(T_O, row, col) * attn[col];
    r2[row] = s + r[row];
  }
  const std::vector<double> h2 = rmsnorm(r2, T_N2, 0);
  std::vector<double> act(I);
  for (int i = 0; i < I; ++i) {
    double g = 0, u = 0;
    for (int col = 0; col < H; ++col) g += W(T_GU, i, col) * h2[col], u += W(T_GU, I + i, col) * h2[col];
    act[i] = g / (1 + std::exp(-g)) * u;
  }
  ref.x_out.resize(H);
  for (int row = 0; row < H; ++row) {
    double s = 0;
    for (int col = 0; col < I; ++col) s += W(T_DOWN, row, col) * act[col];
    ref.x_out[row] = s;
  }
  ref.res_out = r2;
  return ref;
}

// max |got - want| / (1 + |want|)
static double max_err(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < want.size(); ++i) e = std::max(e, std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i])));
  return e;
}

static std::vector<float> fetch(const bf16* src, size_t n) {
  std::vector<bf16> raw(n);
  CHECK(cudaMemcpy(raw.data(), src, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = __bfloat162float(raw[i]);
  return out;
}

int main(int argc, char** argv) {
  int layers = 28, pos = 384, repeats = 30, reference_only = 0;
  std::vector<int> per_sm = {1, 2}, cluster_sizes = {8, 16}, poll_ns = {0, 100}, cooperative = {0};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--layers") layers = std::atoi(argv[i + 1]);
    else if (key == "--context") pos = std::atoi(argv[i + 1]);
    else if (key == "--repeats") repeats = std::atoi(argv[i + 1]);
    else if (key == "--ctas-per-sm") per_sm = ints(argv[i + 1]);
    else if (key == "--clusters") cluster_sizes = ints(argv[i + 1]);
    else if (key == "--reference-only") reference_only = std::atoi(argv[i + 1]);
    else if (key == "--poll-ns") poll_ns = ints(argv[i + 1]);
    else if (key == "--cooperative") cooperative = ints(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s (--layers N --context N --repeats N --ctas-per-sm a,b --clusters a,b "
                   "--poll-ns a,b --cooperative 0,1 --reference-only 1)\n",
                   key.c_str());
      return 2;
    }
  }
  if (layers < 1 || pos < 1 || repeats < 1) {
    std::fprintf(stderr, "--layers, --context and --repeats must be positive\n");
    return 2;
  }
  std::vector<float> rope(D);
  for (int d = 0; d < D / 2; ++d) {
    const double angle = pos * std::pow(1e6, -2.0 * d / D);  // Qwen 3's rope_theta
    rope[d] = static_cast<float>(std::cos(angle)), rope[D / 2 + d] = static_cast<float>(std::sin(angle));
  }
  if (reference_only) {  // the host's layer 0 alone, no GPU (tests check it against torch)
    const Reference ref = reference(pos, rope);
    auto list = [](const char* name, const std::vector<double>& v, const char* end) {
      std::printf("\"%s\": [", name);
      for (size_t i = 0; i < v.size(); ++i) std::printf("%s%.17g", i ? ", " : "", v[i]);
      std::printf("]%s", end);
    };
    std::printf("{");
    list("x_out", ref.x_out, ", ");
    list("res_out", ref.res_out, ", ");
    list("k", ref.k, ", ");
    list("v", ref.v, "}\n");
    return 0;
  }
  const cudaDeviceProp prop = describe_device("griddepcontrol and clusters");
  const int ctx = pos + 1, sms = prop.multiProcessorCount;

  // weights, caches and inputs (hashed values), per layer
  std::vector<std::vector<bf16*>> tensors(layers, std::vector<bf16*>(T_RES + 1, nullptr));
  for (int l = 0; l < layers; ++l)
    for (int t = 0; t <= T_RES; ++t) {
      if (l > 0 && (t == T_X || t == T_RES)) continue;
      const Spec s = spec(t, ctx);
      const size_t n = static_cast<size_t>(s.rows) * s.cols;
      CHECK(cudaMalloc(&tensors[l][t], n * sizeof(bf16)));
      fill<<<4 * sms, 256>>>(tensors[l][t], n, s.cols, tensor_id(l, t), s.scale, s.offset);
      CHECK(cudaGetLastError());
    }
  bf16 *xbuf[2], *rbuf[2];
  for (int j = 0; j < 2; ++j) {
    CHECK(cudaMalloc(&xbuf[j], H * sizeof(bf16)));
    CHECK(cudaMalloc(&rbuf[j], H * sizeof(bf16)));
  }
  std::vector<float> cos_table(static_cast<size_t>(ctx) * (D / 2)), sin_table(cos_table.size());
  for (int t = 0; t < ctx; ++t)
    for (int d = 0; d < D / 2; ++d) {
      const double angle = t * std::pow(1e6, -2.0 * d / D);
      cos_table[static_cast<size_t>(t) * (D / 2) + d] = static_cast<float>(std::cos(angle));
      sin_table[static_cast<size_t>(t) * (D / 2) + d] = static_cast<float>(std::sin(angle));
    }
  float *cos_d, *sin_d, *scratch;
  unsigned *sync, *errors;
  const size_t scratch_floats = QKV + static_cast<size_t>(kMaxSplits) * NQ * PART + QROWS + 2 * H + I;
  CHECK(cudaMalloc(&cos_d, cos_table.size() * sizeof(float)));
  CHECK(cudaMalloc(&sin_d, sin_table.size() * sizeof(float)));
  CHECK(cudaMemcpy(cos_d, cos_table.data(), cos_table.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(sin_d, sin_table.data(), sin_table.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&scratch, scratch_floats * sizeof(float)));
  CHECK(cudaMalloc(&sync, 8 * sizeof(unsigned)));
  CHECK(cudaMalloc(&errors, sizeof(unsigned)));
  CHECK(cudaDeviceSynchronize());
  const Reference ref = reference(pos, rope);

  // the cache in blocks of 16 slots, the block table the identity; the step's metadata on the device
  const int block_size = 16, blocks = (ctx + block_size - 1) / block_size;
  std::vector<int> meta(blocks + 3);
  for (int b = 0; b < blocks; ++b) meta[b] = b;
  meta[blocks] = pos, meta[blocks + 1] = pos, meta[blocks + 2] = ctx;  // position, slot, keys
  int* meta_d;
  CHECK(cudaMalloc(&meta_d, meta.size() * sizeof(int)));
  CHECK(cudaMemcpy(meta_d, meta.data(), meta.size() * sizeof(int), cudaMemcpyHostToDevice));
  auto params = [&](int l, int splits, unsigned poll, const bf16* x, const bf16* res, bf16* x_out, bf16* res_out) {
    Params p{};
    const auto& t = tensors[l];
    p.w_qkv = t[T_QKV], p.w_o = t[T_O], p.w_gu = t[T_GU], p.w_down = t[T_DOWN], p.norm1 = t[T_N1], p.norm2 = t[T_N2];
    p.q_norm = t[T_QN], p.k_norm = t[T_KN], p.k_cache = t[T_KC], p.v_cache = t[T_VC];
    p.block_table = meta_d, p.positions = meta_d + blocks, p.slot_mapping = meta_d + blocks + 1;
    p.seq_lens = meta_d + blocks + 2, p.cos = cos_d, p.sin = sin_d;
    p.x = x, p.res = res, p.x_out = x_out, p.res_out = res_out;
    p.qkv = scratch, p.partials = p.qkv + QKV, p.attn = p.partials + static_cast<size_t>(kMaxSplits) * NQ * PART;
    p.r = p.attn + QROWS, p.r2 = p.r + H, p.act = p.r2 + H;
    p.sync = sync, p.errors = errors;
    p.eps = EPS, p.block_size = block_size, p.splits = splits, p.pos64 = 0, p.slot64 = 0, p.poll_ns = poll;
    return p;
  };

  struct Variant { bool cluster; int size, per_sm, poll_ns, coop; };
  std::vector<Variant> variants;
  for (int co : cooperative)
    for (int ns : poll_ns)
      for (int k : per_sm) variants.push_back({false, 0, k, ns, co});
  for (int co : cooperative)
    for (int ns : poll_ns)
      for (int k : per_sm)
        for (int size : cluster_sizes) variants.push_back({true, size, k, ns, co});
  const int smem_need = SMEM_BYTES;
  for (auto kernel : {decode_layer_grid, decode_layer_cluster}) {
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(prop.sharedMemPerBlockOptin)));
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  }
  CHECK(cudaFuncSetAttribute(decode_layer_cluster, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (const Variant& var : variants) {
    const int smem = std::max(smem_need, smem_for(prop, var.per_sm));
    auto kernel = var.cluster ? decode_layer_cluster : decode_layer_grid;
    // the cluster size (cluster variant), cooperative (--cooperative 1: the driver refuses a grid
    // it cannot keep resident at once instead of launching it), PDL (joins after the occupancy query)
    cudaLaunchAttribute attrs[3];
    int n_attrs = 0;
    if (var.cluster) {
      attrs[n_attrs].id = cudaLaunchAttributeClusterDimension;
      attrs[n_attrs].val.clusterDim.x = var.size, attrs[n_attrs].val.clusterDim.y = 1, attrs[n_attrs].val.clusterDim.z = 1;
      ++n_attrs;
    }
    if (var.coop) {
      attrs[n_attrs].id = cudaLaunchAttributeCooperative;
      attrs[n_attrs].val.cooperative = 1;
      ++n_attrs;
    }
    attrs[n_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n_attrs].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attrs;
    config.numAttrs = n_attrs;
    int ctas = 0;
    if (var.cluster) {
      config.gridDim = dim3(var.size);
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) cudaGetLastError();
      if (clusters < NKV || D % var.size || HEAD_ROWS / var.size > 256 || var.size > kMaxCluster) {
        std::fprintf(stderr, "skipped: clusters of %d at %d CTAs per SM (%d resident, %d needed)\n", var.size,
                     var.per_sm, clusters, NKV);
        continue;
      }
      ctas = clusters * var.size;
    } else {
      int resident = 0;
      CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kThreads, smem));
      ctas = sms * var.per_sm;
      if (resident < var.per_sm) {
        std::fprintf(stderr, "skipped: grid at %d CTAs per SM (%d resident)\n", var.per_sm, resident);
        continue;
      }
    }
    config.gridDim = dim3(ctas);
    config.numAttrs += 1;
    const int splits = std::min(kMaxSplits, ctas / NKV);
    CHECK(cudaMemset(sync, 0, 8 * sizeof(unsigned)));
    CHECK(cudaMemset(errors, 0, sizeof(unsigned)));
    // the check: one launch of layer 0 on the hashed inputs
    const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, params(0, splits, var.poll_ns, tensors[0][T_X],
                                                                            tensors[0][T_RES], xbuf[0], rbuf[0]));
    if (launched != cudaSuccess) {  // (a cooperative grid the driver cannot keep resident: a row saying so)
      cudaGetLastError();
      std::printf("{\"variant\": \"%s\", \"cluster\": %d, \"ctas\": %d, \"ctas_per_sm\": %d, \"cooperative\": %d, "
                  "\"refused\": \"%s\"}\n", var.cluster ? "cluster" : "grid", var.cluster ? var.size : 0, ctas,
                  var.per_sm, var.coop, cudaGetErrorString(launched));
      std::fflush(stdout);
      continue;
    }
    CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> x_out = fetch(xbuf[0], H), res_out = fetch(rbuf[0], H);
    const std::vector<float> k_row = fetch(tensors[0][T_KC] + static_cast<size_t>(pos) * NKV * D, NKV * D);
    const std::vector<float> v_row = fetch(tensors[0][T_VC] + static_cast<size_t>(pos) * NKV * D, NKV * D);
    const double err = std::max({max_err(x_out, ref.x_out), max_err(res_out, ref.res_out), max_err(k_row, ref.k),
                                 max_err(v_row, ref.v)});
    unsigned check_timeouts = 0;
    CHECK(cudaMemcpy(&check_timeouts, errors, sizeof(unsigned), cudaMemcpyDeviceToHost));
    if (check_timeouts || !(err <= 2e-2)) {  // no timing of a wrong layer (nor 33 x layers of time-outs)
      std::printf("{\"variant\": \"%s\", \"cluster\": %d, \"ctas\": %d, \"ctas_per_sm\": %d, \"splits\": %d, "
                  "\"poll_ns\": %d, \"cooperative\": %d, \"context\": %d, \"layers\": 0, \"us_per_layer\": 0, "
                  "\"us_per_layer_min\": 0, \"max_rel_err\": %.2e, \"errors\": 1, \"timeouts\": %u}\n",
                  var.cluster ? "cluster" : "grid", var.cluster ? var.size : 0, ctas, var.per_sm,
                  var.cluster ? var.size : splits, var.poll_ns, var.coop, pos, err, check_timeouts);
      std::fflush(stdout);
      continue;
    }
    // the chain: layers launches (distinct weights, ping-pong activations) in one graph
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int l = 0; l < layers; ++l)
      CHECK(cudaLaunchKernelEx(&config, kernel, params(l, splits, var.poll_ns, xbuf[l % 2], rbuf[l % 2], xbuf[(l + 1) % 2],
                                                       rbuf[(l + 1) % 2])));
    CHECK(cudaStreamEndCapture(stream, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
    std::vector<double> times;
    for (int r = 0; r < repeats + 3; ++r) {
      CHECK(cudaEventRecord(start, stream));
      CHECK(cudaGraphLaunch(exec, stream));
      CHECK(cudaEventRecord(stop, stream));
      CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (r >= 3) times.push_back(1000.0 * ms / layers);
    }
#ifdef DL_TIMELINE
    {  // the last launch's stage intervals (thread 0 of each CTA, its SM clock), over the CTAs
      std::vector<long long> st(static_cast<size_t>(1024) * kStamps);
      CHECK(cudaMemcpyFromSymbol(st.data(), dl_stamps, st.size() * sizeof(long long)));
      int khz = 0;
      CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
      static const char* names[kStamps - 1] = {"prologue, PDL wait", "norm 1", "qkv", "qkv store, barrier 1 / handoff 1",
                                               "attention", "barrier 2 / handoff 2", "merge", "barrier 3", "o_proj",
                                               "barrier 4", "norm 2", "gate/up, act", "barrier 5", "down, store"};
      std::printf("{\"timeline\": \"%s\", \"cluster\": %d, \"ctas\": %d, \"clock_khz\": %d, \"intervals\": [",
                  var.cluster ? "cluster" : "grid", var.cluster ? var.size : 0, ctas, khz);
      for (int k = 0; k + 1 < kStamps; ++k) {
        std::vector<double> us;
        for (int b = 0; b < std::min(ctas, 1024); ++b)
          us.push_back(static_cast<double>(st[b * kStamps + k + 1] - st[b * kStamps + k]) * 1e3 / khz);
        std::sort(us.begin(), us.end());
        std::printf("%s{\"name\": \"%s\", \"min\": %.3f, \"median\": %.3f, \"max\": %.3f}", k ? ", " : "",
                    names[k], us.front(), us[us.size() / 2], us.back());
      }
      std::printf("]}\n");
    }
#endif
    unsigned timeouts = 0;
    CHECK(cudaMemcpy(&timeouts, errors, sizeof(unsigned), cudaMemcpyDeviceToHost));
    std::printf("{\"variant\": \"%s\", \"cluster\": %d, \"ctas\": %d, \"ctas_per_sm\": %d, \"splits\": %d, "
                "\"poll_ns\": %d, \"cooperative\": %d, \"context\": %d, \"layers\": %d, \"us_per_layer\": %.3f, "
                "\"us_per_layer_min\": %.3f, \"max_rel_err\": %.2e, \"errors\": %u, \"timeouts\": %u}\n",
                var.cluster ? "cluster" : "grid", var.cluster ? var.size : 0, ctas, var.per_sm,
                var.cluster ? var.size : splits, var.poll_ns, var.coop, pos, layers, median(times),
                *std::min_element(times.begin(), times.end()), err, 0u, timeouts);
    std::fflush(stdout);
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaEventDestroy(start));
    CHECK(cudaEventDestroy(stop));
  }
  return 0;
}
