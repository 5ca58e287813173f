// What the Hopper probes' host code shares: error checks, medians, option lists, the shared memory
// that fixes the CTAs per SM, the device line (and device.cuh: the grid barrier, cluster operations).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "device.cuh"

#define CHECK(call)                                                                          \
  do {                                                                                       \
    cudaError_t err_ = (call);                                                               \
    if (err_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                     \
                   cudaGetErrorString(err_));                                                \
      std::exit(2);                                                                          \
    }                                                                                        \
  } while (0)

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size();
  return m % 2 ? v[m / 2] : 0.5 * (v[m / 2 - 1] + v[m / 2]);
}

static std::vector<int> ints(const char* text) {
  std::vector<int> out;
  for (const char* p = text; *p;) {
    out.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return out;
}

// A CTA's shared memory that leaves room for `ctas_per_sm` CTAs on one SM (and no more).
static int smem_for(const cudaDeviceProp& prop, int ctas_per_sm) {
  const int per_sm = static_cast<int>(prop.sharedMemPerMultiprocessor);
  const int reserved = static_cast<int>(prop.reservedSharedMemPerBlock);
  const int fit = per_sm / ctas_per_sm - reserved;
  const int exclude = per_sm / (ctas_per_sm + 1) - reserved + 1024;  // one more would not fit
  return std::min(std::max(exclude, 0), fit) / 1024 * 1024;
}

// Prints the device line (the first JSON line of a probe's output) and returns the device's
// properties; exits with status 3 on a device older than Hopper (`needs`: what needs it).
static cudaDeviceProp describe_device(const char* needs) {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("{\"device\": \"%s\", \"sms\": %d, \"cc\": \"%d.%d\", \"l2_bytes\": %d, \"smem_per_sm\": %zu}\n",
              prop.name, prop.multiProcessorCount, prop.major, prop.minor, prop.l2CacheSize,
              prop.sharedMemPerMultiprocessor);
  if (prop.major < 9) {
    std::fprintf(stderr, "%s need compute capability 9.0 or newer (this device: %d.%d)\n", needs, prop.major,
                 prop.minor);
    std::exit(3);
  }
  return prop;
}

// The probes' deterministic test values: a hash of (tensor, row, col) mapped to k / 128 for k in
// [-128, 128), exact in bf16, so the host recomputes any weight without copying it back.
__host__ __device__ inline float hashed(unsigned tensor, unsigned row, unsigned col) {
  unsigned h = tensor * 0x9E3779B1u ^ row * 0x85EBCA77u ^ col * 0xC2B2AE3Du;
  h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12;
  return static_cast<float>(static_cast<int>(h & 255u) - 128) / 128.0f;
}
