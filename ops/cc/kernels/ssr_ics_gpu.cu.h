// CUDA kernels of ICS, plain CUDA (no TensorFlow), shared by ssr_ics_kernels.cu.cc and the
// standalone harness ops/harness/ics_harness.cu.
//
// One warp per row-view: lane l holds elements l, l + 32, ... in registers (coalesced loads),
// the T means are warp-shuffle reductions, so z is read once and y written once.
// Forward:  x0 = relu(z); x_{t+1} = relu(x_t - alpha_t mean(x_t)); y = gamma x_T (+ the means).
// Backward: u = g * [x_{t+1} > 0]; g_t = u - alpha_t sum(u) / D; dalpha_t -= mu_t sum(u);
//           dgamma += dy x_T; dz = g_0 [z > 0]. The backward recomputes the states in
//           registers (cheaper than reading the saved means on a GPU) and keeps the survival
//           masks as bits.
#ifndef SSR_TF_OPS_CC_KERNELS_SSR_ICS_GPU_CU_H_
#define SSR_TF_OPS_CC_KERNELS_SSR_ICS_GPU_CU_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace ssr_tf {
namespace gpu {

constexpr int kWarp = 32;
constexpr int kMaxIters = 32;       // survival masks are bits of one uint32 per element
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// kPer elements per lane: D <= 32 * kPer.
template <int kPer>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
    IcsForwardKernel(const float* __restrict__ z, const float* __restrict__ alpha,
                     const float* __restrict__ gamma, float* __restrict__ y,
                     float* __restrict__ mu, int64_t n_rv, int views, int dim, int iters) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t rv = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       rv < n_rv; rv += warps) {
    const int v = static_cast<int>(rv % views);
    const float* zr = z + rv * dim;
    float x[kPer];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int d = lane + j * kWarp;
      x[j] = d < dim ? fmaxf(__ldg(zr + d), 0.f) : 0.f;
      s += x[j];
    }
    s = WarpSum(s);
    for (int t = 0; t < iters; ++t) {
      const float m = s / dim;
      if (lane == 0) mu[rv * iters + t] = m;
      const float thr = __ldg(alpha + v * iters + t) * m;
      s = 0.f;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        x[j] = lane + j * kWarp < dim ? fmaxf(x[j] - thr, 0.f) : 0.f;  // padding stays 0
        s += x[j];
      }
      s = WarpSum(s);
    }
    float* yr = y + rv * dim;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int d = lane + j * kWarp;
      if (d < dim) yr[d] = __ldg(gamma + static_cast<int64_t>(v) * dim + d) * x[j];
    }
  }
}

// Grid: (row groups, views). Each warp walks rows of view blockIdx.y, keeps its dgamma and
// dalpha partials in registers and adds them to the (zeroed) outputs once at the end.
template <int kPer>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
    IcsBackwardKernel(const float* __restrict__ z, const float* __restrict__ alpha,
                      const float* __restrict__ gamma, const float* __restrict__ dy,
                      float* __restrict__ dz, float* __restrict__ dalpha,
                      float* __restrict__ dgamma, int64_t rows, int views, int dim, int iters) {
  const int lane = threadIdx.x % kWarp;
  const int v = blockIdx.y;
  const float* av = alpha + v * iters;
  const float* gv = gamma + static_cast<int64_t>(v) * dim;
  float gam[kPer], dg[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int d = lane + j * kWarp;
    gam[j] = d < dim ? __ldg(gv + d) : 0.f;
    dg[j] = 0.f;
  }
  float da = 0.f;  // lane t accumulates dalpha_t (iters <= 32)
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       b < rows; b += warps) {
    const int64_t off = (b * views + v) * dim;
    float x[kPer], zr[kPer];
    uint32_t alive[kPer];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int d = lane + j * kWarp;
      zr[j] = d < dim ? __ldg(z + off + d) : 0.f;
      x[j] = fmaxf(zr[j], 0.f);
      alive[j] = 0u;
      s += x[j];
    }
    s = WarpSum(s);
    float mu_lane = 0.f;  // lane t keeps mu_t
    for (int t = 0; t < iters; ++t) {
      const float mu = s / dim;
      if (lane == t) mu_lane = mu;
      const float thr = __ldg(av + t) * mu;
      s = 0.f;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        x[j] = lane + j * kWarp < dim ? fmaxf(x[j] - thr, 0.f) : 0.f;
        alive[j] |= (x[j] > 0.f ? 1u : 0u) << t;
        s += x[j];
      }
      s = WarpSum(s);
    }
    float g[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int d = lane + j * kWarp;
      const float dyj = d < dim ? __ldg(dy + off + d) : 0.f;
      dg[j] += dyj * x[j];
      g[j] = dyj * gam[j];
    }
    for (int t = iters - 1; t >= 0; --t) {
      float u = 0.f;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        g[j] = (alive[j] >> t) & 1u ? g[j] : 0.f;
        u += g[j];
      }
      u = WarpSum(u);
      const float mu_t = __shfl_sync(0xffffffffu, mu_lane, t);
      if (lane == t) da -= mu_t * u;
      const float c = __ldg(av + t) * u / dim;
#pragma unroll
      for (int j = 0; j < kPer; ++j) g[j] -= c;
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int d = lane + j * kWarp;
      if (d < dim) dz[off + d] = zr[j] > 0.f ? g[j] : 0.f;
    }
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int d = lane + j * kWarp;
    if (d < dim) atomicAdd(dgamma + static_cast<int64_t>(v) * dim + d, dg[j]);
  }
  if (lane < iters) atomicAdd(dalpha + v * iters + lane, da);
}

// Elements per lane for dim, or 0 when dim > 32 * 16 (not supported on GPU).
inline int PerLane(int dim) {
  const int per = (dim + kWarp - 1) / kWarp;
  for (int p : {1, 2, 4, 8, 16}) {
    if (per <= p) return p;
  }
  return 0;
}

inline int GridFor(int64_t warps_needed, int max_blocks) {
  const int64_t blocks = (warps_needed + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<int>(blocks < max_blocks ? (blocks > 0 ? blocks : 1) : max_blocks);
}

// Launches the forward on `stream` (y and the means mu [rows, views, iters]); returns cudaErrorInvalidValue for dim > 512 or iters > 32.
inline cudaError_t LaunchIcsForward(cudaStream_t stream, const float* z, const float* alpha,
                                    const float* gamma, float* y, float* mu, int64_t rows,
                                    int views, int dim, int iters) {
  const int64_t n_rv = rows * views;
  if (n_rv == 0) return cudaSuccess;
  const int grid = GridFor(n_rv, 1 << 20);
  const dim3 block(kWarpsPerBlock * kWarp);
  switch (PerLane(dim)) {
    case 1: IcsForwardKernel<1><<<grid, block, 0, stream>>>(z, alpha, gamma, y, mu, n_rv, views, dim, iters); break;
    case 2: IcsForwardKernel<2><<<grid, block, 0, stream>>>(z, alpha, gamma, y, mu, n_rv, views, dim, iters); break;
    case 4: IcsForwardKernel<4><<<grid, block, 0, stream>>>(z, alpha, gamma, y, mu, n_rv, views, dim, iters); break;
    case 8: IcsForwardKernel<8><<<grid, block, 0, stream>>>(z, alpha, gamma, y, mu, n_rv, views, dim, iters); break;
    case 16: IcsForwardKernel<16><<<grid, block, 0, stream>>>(z, alpha, gamma, y, mu, n_rv, views, dim, iters); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// Launches the backward; zeroes dalpha and dgamma first (they are accumulated atomically).
inline cudaError_t LaunchIcsBackward(cudaStream_t stream, const float* z, const float* alpha,
                                     const float* gamma, const float* dy, float* dz,
                                     float* dalpha, float* dgamma, int64_t rows, int views,
                                     int dim, int iters) {
  if (iters > kMaxIters) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(dalpha, 0, sizeof(float) * views * iters, stream);
  if (err == cudaSuccess) {
    err = cudaMemsetAsync(dgamma, 0, sizeof(float) * static_cast<int64_t>(views) * dim, stream);
  }
  if (err != cudaSuccess || rows == 0 || views == 0) return err;
  // ~4 waves of 8-warp blocks over all views, at most 64 row groups per view.
  const dim3 grid(GridFor(rows, 64), views);
  const dim3 block(kWarpsPerBlock * kWarp);
  switch (PerLane(dim)) {
    case 1: IcsBackwardKernel<1><<<grid, block, 0, stream>>>(z, alpha, gamma, dy, dz, dalpha, dgamma, rows, views, dim, iters); break;
    case 2: IcsBackwardKernel<2><<<grid, block, 0, stream>>>(z, alpha, gamma, dy, dz, dalpha, dgamma, rows, views, dim, iters); break;
    case 4: IcsBackwardKernel<4><<<grid, block, 0, stream>>>(z, alpha, gamma, dy, dz, dalpha, dgamma, rows, views, dim, iters); break;
    case 8: IcsBackwardKernel<8><<<grid, block, 0, stream>>>(z, alpha, gamma, dy, dz, dalpha, dgamma, rows, views, dim, iters); break;
    case 16: IcsBackwardKernel<16><<<grid, block, 0, stream>>>(z, alpha, gamma, dy, dz, dalpha, dgamma, rows, views, dim, iters); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace ssr_tf

#endif  // SSR_TF_OPS_CC_KERNELS_SSR_ICS_GPU_CU_H_
