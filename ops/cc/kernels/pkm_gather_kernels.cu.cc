// CUDA kernels of the fused PKM sparse gather + weighted sum (compiled by nvcc with
// -DGOOGLE_CUDA=1; see pkm_gather_kernels.h for the math).
//
// Forward: one thread per output element (r, j); consecutive threads read consecutive j of
// the same value row, so every row read is coalesced; idx / w of row r are broadcast loads.
// Backward: grad_rows is element-wise (coalesced); grad_weights[r, t] is one warp per (r, t)
// reducing <grad[r, :], V[idx[r, t], :]> with shuffles. Out-of-range ids contribute zero.
// Sub-key top-k: one block per (row, table); the n scores go to shared memory, then k rounds
// of a block-wide argmax (ties to the lower index), each winner masked with -inf.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <algorithm>
#include <cmath>
#include <climits>

#include <cuda_runtime.h>

#include "pkm_gather_kernels.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace ssr_tf {
namespace functor {
namespace {

using GPUDevice = Eigen::GpuDevice;

// Grid for a grid-stride loop over `count` work items: the block size that maximises
// occupancy for `kernel`, and no more blocks than the device can keep resident.
template <typename Kernel>
void LaunchDims(const GPUDevice& d, Kernel kernel, int64_t count, int* grid, int* block) {
  int min_grid = 0, best_block = 256;
  if (cudaOccupancyMaxPotentialBlockSize(&min_grid, &best_block, kernel, 0, 0) != cudaSuccess) {
    best_block = 256;
  }
  const int64_t resident = static_cast<int64_t>(d.getNumGpuMultiProcessors()) *
                           d.maxGpuThreadsPerMultiProcessor() / best_block;
  const int64_t needed = (count + best_block - 1) / best_block;
  *block = best_block;
  *grid = static_cast<int>(std::max<int64_t>(1, std::min(needed, std::max<int64_t>(resident, 1))));
}

template <typename T, typename Index>
__global__ void GatherSumKernel(PkmShape s, const T* __restrict__ values,
                                const Index* __restrict__ indices, const T* __restrict__ weights,
                                T* __restrict__ out) {
  const int64_t total = s.rows * s.dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = i / s.dim, j = i - r * s.dim;
    T acc = T(0);
    for (int64_t t = 0; t < s.k; ++t) {
      const int64_t slot = static_cast<int64_t>(__ldg(indices + r * s.k + t));
      if (slot >= 0 && slot < s.slots) acc += __ldg(weights + r * s.k + t) * __ldg(values + slot * s.dim + j);
    }
    out[i] = acc;
  }
}

template <typename T, typename Index>
__global__ void GradRowsKernel(PkmShape s, const T* __restrict__ weights,
                               const T* __restrict__ grad, T* __restrict__ grad_rows) {
  const int64_t total = s.rows * s.k * s.dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t rt = i / s.dim, j = i - rt * s.dim, r = rt / s.k;
    grad_rows[i] = __ldg(weights + rt) * __ldg(grad + r * s.dim + j);
  }
}

template <typename T, typename Index>
__global__ void GradWeightsKernel(PkmShape s, const T* __restrict__ values,
                                  const Index* __restrict__ indices, const T* __restrict__ grad,
                                  T* __restrict__ grad_weights) {
  constexpr int kWarp = 32;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = s.rows * s.k;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x / kWarp;
  for (int64_t w = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
       w < warps; w += stride) {
    const int64_t r = w / s.k;
    const int64_t slot = static_cast<int64_t>(__ldg(indices + w));
    T dot = T(0);
    if (slot >= 0 && slot < s.slots) {
      for (int64_t j = lane; j < s.dim; j += kWarp) {
        dot += __ldg(grad + r * s.dim + j) * __ldg(values + slot * s.dim + j);
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      dot += __shfl_down_sync(0xffffffffu, dot, offset);
    }
    if (lane == 0) grad_weights[w] = dot;
  }
}

template <typename T>
__device__ inline void ArgMaxStep(T* v, int* i, T ov, int oi) {
  if (ov > *v || (ov == *v && oi < *i)) {
    *v = ov;
    *i = oi;
  }
}

template <typename T>
__global__ void SubKeyTopKKernel(PkmTopKShape s, const T* __restrict__ queries,
                                 const T* __restrict__ keys, T* __restrict__ values,
                                 int32_t* __restrict__ indices) {
  extern __shared__ unsigned char shared_raw[];
  T* scores = reinterpret_cast<T*>(shared_raw);          // [n]
  __shared__ T warp_v[32];
  __shared__ int warp_i[32];
  constexpr int kWarp = 32;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  const T neg_inf = static_cast<T>(-INFINITY);
  for (int64_t rg = blockIdx.x; rg < s.rows * s.groups; rg += gridDim.x) {
    const T* q = queries + rg * s.dim;
    const T* table = keys + (rg % s.groups) * s.n * s.dim;
    for (int64_t i = threadIdx.x; i < s.n; i += blockDim.x) {
      T acc = T(0);
      for (int64_t j = 0; j < s.dim; ++j) acc += __ldg(q + j) * __ldg(table + i * s.dim + j);
      scores[i] = acc;
    }
    __syncthreads();
    for (int64_t t = 0; t < s.k; ++t) {
      T best = neg_inf;
      int best_i = INT_MAX;
      for (int64_t i = threadIdx.x; i < s.n; i += blockDim.x) {
        ArgMaxStep(&best, &best_i, scores[i], static_cast<int>(i));
      }
      for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        ArgMaxStep(&best, &best_i, __shfl_down_sync(0xffffffffu, best, offset),
                   __shfl_down_sync(0xffffffffu, best_i, offset));
      }
      if (lane == 0) {
        warp_v[warp] = best;
        warp_i[warp] = best_i;
      }
      __syncthreads();
      if (warp == 0) {
        best = lane < warps ? warp_v[lane] : neg_inf;
        best_i = lane < warps ? warp_i[lane] : INT_MAX;
        for (int offset = kWarp / 2; offset > 0; offset /= 2) {
          ArgMaxStep(&best, &best_i, __shfl_down_sync(0xffffffffu, best, offset),
                     __shfl_down_sync(0xffffffffu, best_i, offset));
        }
        if (lane == 0) {
          values[rg * s.k + t] = best;
          indices[rg * s.k + t] = best_i;
          if (best_i >= 0 && best_i < s.n) scores[best_i] = neg_inf;   // taken
        }
      }
      __syncthreads();
    }
  }
}

}  // namespace

template <typename T>
struct PkmSubKeyTopK<GPUDevice, T> {
  void operator()(const GPUDevice& d, const PkmTopKShape& s, const T* queries, const T* keys,
                  T* values, int32_t* indices) {
    constexpr int kBlock = 128;   // 4 warps: the k argmax rounds are latency-bound
    const int64_t rows = s.rows * s.groups;
    const int64_t resident = static_cast<int64_t>(d.getNumGpuMultiProcessors()) *
                             d.maxGpuThreadsPerMultiProcessor() / kBlock;
    const int grid = static_cast<int>(std::max<int64_t>(1, std::min(rows, resident)));
    SubKeyTopKKernel<T><<<grid, kBlock, s.n * sizeof(T), d.stream()>>>(s, queries, keys, values,
                                                                      indices);
  }
};

template struct PkmSubKeyTopK<GPUDevice, float>;
template struct PkmSubKeyTopK<GPUDevice, double>;

template <typename T, typename Index>
struct PkmGatherSum<GPUDevice, T, Index> {
  void operator()(const GPUDevice& d, const PkmShape& s, const T* values, const Index* indices,
                  const T* weights, T* out) {
    int grid = 1, block = 256;
    LaunchDims(d, GatherSumKernel<T, Index>, s.rows * s.dim, &grid, &block);
    GatherSumKernel<T, Index><<<grid, block, 0, d.stream()>>>(s, values, indices, weights, out);
  }
};

template <typename T, typename Index>
struct PkmGatherSumGrad<GPUDevice, T, Index> {
  void operator()(const GPUDevice& d, const PkmShape& s, const T* values, const Index* indices,
                  const T* weights, const T* grad, T* grad_weights, T* grad_rows) {
    int grid = 1, block = 256;
    LaunchDims(d, GradRowsKernel<T, Index>, s.rows * s.k * s.dim, &grid, &block);
    GradRowsKernel<T, Index><<<grid, block, 0, d.stream()>>>(s, weights, grad, grad_rows);
    // Whole warps per block so every (r, t) is reduced by one full warp.
    LaunchDims(d, GradWeightsKernel<T, Index>, s.rows * s.k * 32, &grid, &block);
    block = std::max(32, block / 32 * 32);
    GradWeightsKernel<T, Index><<<grid, block, 0, d.stream()>>>(s, values, indices, grad,
                                                                grad_weights);
  }
};

template struct PkmGatherSum<GPUDevice, float, int32_t>;
template struct PkmGatherSum<GPUDevice, float, int64_t>;
template struct PkmGatherSum<GPUDevice, double, int32_t>;
template struct PkmGatherSum<GPUDevice, double, int64_t>;
template struct PkmGatherSumGrad<GPUDevice, float, int32_t>;
template struct PkmGatherSumGrad<GPUDevice, float, int64_t>;
template struct PkmGatherSumGrad<GPUDevice, double, int32_t>;
template struct PkmGatherSumGrad<GPUDevice, double, int64_t>;

}  // namespace functor
}  // namespace ssr_tf

#endif  // GOOGLE_CUDA
