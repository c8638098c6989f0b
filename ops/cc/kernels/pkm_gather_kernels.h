// Fused sparse gather + weighted sum for Product-Key Memory (PKM).
//
// Forward:  out[r, :] = sum_{t<K} w[r, t] * values[idx[r, t], :]
// Backward: grad_w[r, t] = <grad[r, :], values[idx[r, t], :]>;
//           grad_rows[r * K + t, :] = w[r, t] * grad[r, :]   (IndexedSlices rows for `values`)
//
// Device-templated functors (custom-op layout): CPU in pkm_gather_kernels.cc, CUDA in
// pkm_gather_kernels.cu.cc. Indices are validated on the CPU; on the GPU an out-of-range
// index contributes zero (as tf.gather on GPU does).
#ifndef SSR_TF_OPS_CC_KERNELS_PKM_GATHER_KERNELS_H_
#define SSR_TF_OPS_CC_KERNELS_PKM_GATHER_KERNELS_H_

#include <cstdint>

namespace ssr_tf {
namespace functor {

// Shapes of one call: `rows` = N query rows, `k` = K slots read per row, `dim` = D value
// width, `slots` = M rows of the value table.
struct PkmShape {
  int64_t rows;
  int64_t k;
  int64_t dim;
  int64_t slots;
};

template <typename Device, typename T, typename Index>
struct PkmGatherSum {
  // values [M, D], indices [N, K], weights [N, K] -> out [N, D].
  void operator()(const Device& d, const PkmShape& s, const T* values, const Index* indices,
                  const T* weights, T* out);
};

template <typename Device, typename T, typename Index>
struct PkmGatherSumGrad {
  // grad [N, D] -> grad_weights [N, K], grad_rows [N * K, D].
  void operator()(const Device& d, const PkmShape& s, const T* values, const Index* indices,
                  const T* weights, const T* grad, T* grad_weights, T* grad_rows);
};

// Sub-key scoring fused with its top-k (the first PKM stage), never materialising the
// [rows, groups, n] score matrix: for every row r and key table g,
//   (values, indices)[r, g, :] = topk_i <queries[r, g, :], keys[g, i, :]>,  i < n,
// sorted descending, ties to the lower index (as tf.math.top_k).
struct PkmTopKShape {
  int64_t rows;    // R
  int64_t groups;  // G = heads * 2 sub-key tables
  int64_t n;       // sub-keys per table
  int64_t dim;     // D = key_dim / 2
  int64_t k;       // kept per (row, table)
};

template <typename Device, typename T>
struct PkmSubKeyTopK {
  void operator()(const Device& d, const PkmTopKShape& s, const T* queries, const T* keys,
                  T* values, int32_t* indices);
};

// Largest n the GPU kernel takes (scores of one row live in shared memory).
constexpr int64_t kPkmTopKMaxGpuKeys = 8192;

}  // namespace functor
}  // namespace ssr_tf

#endif  // SSR_TF_OPS_CC_KERNELS_PKM_GATHER_KERNELS_H_
