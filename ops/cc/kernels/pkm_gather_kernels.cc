// CPU kernels (and GPU kernel registration) of the fused PKM sparse gather + weighted sum.
//
// out[r, :] = sum_t w[r, t] * values[idx[r, t], :]; rows are split over TF's intra-op
// thread pool, the inner loop over the value width is left to the compiler to vectorise.
#define EIGEN_USE_THREADS

#include "pkm_gather_kernels.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"

namespace ssr_tf {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
namespace errors = ::tensorflow::errors;

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace functor {

// Rows of a large table are random DRAM reads; prefetching the k rows of a later query row
// overlaps their latency with the current row's arithmetic.
constexpr int64_t kPrefetchRows = 2;

template <typename T, typename Index>
inline void PrefetchRows(const T* values, const Index* ids, int64_t k, int64_t dim) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t t = 0; t < k; ++t) {
    const T* row = values + static_cast<int64_t>(ids[t]) * dim;
    for (int64_t j = 0; j < dim; j += kLine) __builtin_prefetch(row + j);
  }
}

template <typename T, typename Index>
struct PkmGatherSum<CPUDevice, T, Index> {
  void operator()(const CPUDevice& d, const PkmShape& s, const T* values, const Index* indices,
                  const T* weights, T* out) {
    const int64_t k = s.k, dim = s.dim;
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (r + kPrefetchRows < end) PrefetchRows(values, indices + (r + kPrefetchRows) * k, k, dim);
        T* o = out + r * dim;
        std::fill(o, o + dim, T(0));
        for (int64_t t = 0; t < k; ++t) {
          const T w = weights[r * k + t];
          const T* v = values + static_cast<int64_t>(indices[r * k + t]) * dim;
          for (int64_t j = 0; j < dim; ++j) o[j] += w * v[j];
        }
      }
    };
    // Cost per row: K rows of D multiply-adds, plus loads.
    d.parallelFor(s.rows, Eigen::TensorOpCost(2.0 * k * dim * sizeof(T), dim * sizeof(T),
                                              2.0 * k * dim),
                  work);
  }
};

template <typename T, typename Index>
struct PkmGatherSumGrad<CPUDevice, T, Index> {
  void operator()(const CPUDevice& d, const PkmShape& s, const T* values, const Index* indices,
                  const T* weights, const T* grad, T* grad_weights, T* grad_rows) {
    const int64_t k = s.k, dim = s.dim;
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (r + kPrefetchRows < end) PrefetchRows(values, indices + (r + kPrefetchRows) * k, k, dim);
        const T* g = grad + r * dim;
        for (int64_t t = 0; t < k; ++t) {
          const T w = weights[r * k + t];
          const T* v = values + static_cast<int64_t>(indices[r * k + t]) * dim;
          T* gr = grad_rows + (r * k + t) * dim;
          T dot = T(0);
          for (int64_t j = 0; j < dim; ++j) {
            dot += g[j] * v[j];
            gr[j] = w * g[j];
          }
          grad_weights[r * k + t] = dot;
        }
      }
    };
    d.parallelFor(s.rows, Eigen::TensorOpCost(2.0 * k * dim * sizeof(T), k * dim * sizeof(T),
                                              3.0 * k * dim),
                  work);
  }
};

// Scores are computed key-major: with the table transposed to [G, D, n] once per call,
// scores[0..n) += q[j] * keys_t[g, j, 0..n) runs contiguous over keys (vectorised), then a
// scan keeps the running top-k, skipping whole chunks whose maximum cannot enter it.
template <typename T>
struct PkmSubKeyTopK<CPUDevice, T> {
  void operator()(const CPUDevice& d, const PkmTopKShape& s, const T* queries, const T* keys,
                  T* values, int32_t* indices) {
    const int64_t groups = s.groups, n = s.n, dim = s.dim, k = s.k;
    std::vector<T> keys_t(groups * dim * n);                 // [G, D, n]
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < dim; ++j) {
          keys_t[(g * dim + j) * n + i] = keys[(g * n + i) * dim + j];
        }
      }
    }
    auto work = [&](int64_t begin, int64_t end) {
      constexpr int64_t kChunk = 16;
      std::vector<T> scores(n);
      for (int64_t rg = begin; rg < end; ++rg) {
        const int64_t g = rg % groups;
        const T* q = queries + rg * dim;
        const T* table = keys_t.data() + g * dim * n;
        T* sc = scores.data();
        {
          const T q0 = q[0];
          for (int64_t i = 0; i < n; ++i) sc[i] = q0 * table[i];
        }
        for (int64_t j = 1; j < dim; ++j) {
          const T qj = q[j];
          const T* row = table + j * n;
          for (int64_t i = 0; i < n; ++i) sc[i] += qj * row[i];
        }
        T* best_v = values + rg * k;
        int32_t* best_i = indices + rg * k;
        int64_t filled = 0;
        for (int64_t base = 0; base < n; base += kChunk) {
          const int64_t len = std::min(kChunk, n - base);
          if (filled == k) {
            T chunk_max = sc[base];
            for (int64_t i = 1; i < len; ++i) chunk_max = std::max(chunk_max, sc[base + i]);
            if (!(chunk_max > best_v[k - 1])) continue;   // nothing here enters the top-k
          }
          for (int64_t i = base; i < base + len; ++i) {   // sorted insert
            const T v = sc[i];
            int64_t pos;
            if (filled < k) {
              pos = filled++;
            } else if (v > best_v[k - 1]) {
              pos = k - 1;
            } else {
              continue;
            }
            while (pos > 0 && best_v[pos - 1] < v) {   // equal scores keep the lower index first
              best_v[pos] = best_v[pos - 1];
              best_i[pos] = best_i[pos - 1];
              --pos;
            }
            best_v[pos] = v;
            best_i[pos] = static_cast<int32_t>(i);
          }
        }
      }
    };
    d.parallelFor(s.rows * groups,
                  Eigen::TensorOpCost(n * dim * sizeof(T), k * (sizeof(T) + 4), 2.0 * n * dim + n),
                  work);
  }
};

}  // namespace functor

namespace {

// Checks ranks and shapes shared by the forward and backward ops; fills `shape`.
::tensorflow::Status CheckInputs(const Tensor& values, const Tensor& indices,
                                 const Tensor& weights, functor::PkmShape* shape) {
  if (!TensorShapeUtils::IsMatrix(values.shape())) {
    return errors::InvalidArgument("values must be [slots, dim], got ",
                                   values.shape().DebugString());
  }
  if (!TensorShapeUtils::IsMatrix(indices.shape())) {
    return errors::InvalidArgument("indices must be [rows, k], got ",
                                   indices.shape().DebugString());
  }
  if (indices.shape() != weights.shape()) {
    return errors::InvalidArgument("weights shape ", weights.shape().DebugString(),
                                   " must equal indices shape ", indices.shape().DebugString());
  }
  shape->rows = indices.dim_size(0);
  shape->k = indices.dim_size(1);
  shape->slots = values.dim_size(0);
  shape->dim = values.dim_size(1);
  return ::tensorflow::Status();
}

// On the CPU every index must lie in [0, slots), like tf.gather.
template <typename Index>
::tensorflow::Status CheckRange(const Tensor& indices, int64_t slots) {
  const Index* idx = indices.flat<Index>().data();
  const int64_t n = indices.NumElements(), k = std::max<int64_t>(indices.dim_size(1), 1);
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || static_cast<int64_t>(idx[i]) >= slots) {
      return errors::InvalidArgument("indices[", i / k, ",", i % k, "] = ",
                                     static_cast<int64_t>(idx[i]), " is not in [0, ", slots,
                                     ")");
    }
  }
  return ::tensorflow::Status();
}

template <typename Device>
constexpr bool kIsCpu = std::is_same<Device, CPUDevice>::value;

}  // namespace

// The value table: input 0 as a tensor, or (kResource) the tensor of the resource variable
// behind input 0, read under its shared lock for the whole Compute (no copy).
template <bool kResource>
class ValuesInput {
 public:
  explicit ValuesInput(OpKernelContext* c) {
    if (!kResource) {
      tensor_ = &c->input(0);
      return;
    }
    status_ = ::tensorflow::LookupResource(c, ::tensorflow::HandleFromInput(c, 0), &var_);
    if (!status_.ok()) return;
    lock_.emplace(*var_->mu());
    if (!var_->tensor()->IsInitialized()) {
      status_ = errors::FailedPrecondition("the PKM value variable is not initialized");
      return;
    }
    tensor_ = var_->tensor();
  }
  const ::tensorflow::Status& status() const { return status_; }
  const Tensor& tensor() const { return *tensor_; }

 private:
  ::tensorflow::Status status_;
  ::tensorflow::core::RefCountPtr<::tensorflow::Var> var_;
  std::optional<::tensorflow::tf_shared_lock> lock_;
  const Tensor* tensor_ = nullptr;
};

// Inputs 0..2 of the forward and backward ops: the value table (held as ValuesInput holds it,
// for the whole Compute), indices and weights; shape() and the data once Check() has passed.
template <typename Device, typename T, typename Index, bool kResource>
class GatherInputs {
 public:
  explicit GatherInputs(OpKernelContext* c)
      : table_(c), indices_(c->input(1)), weights_(c->input(2)) {}

  // The table's status, then CheckInputs.
  ::tensorflow::Status Check() {
    TF_RETURN_IF_ERROR(table_.status());
    return CheckInputs(table_.tensor(), indices_, weights_, &shape_);
  }
  // On the CPU, that every index lies in [0, slots).
  ::tensorflow::Status CheckIndexRange() const {
    return kIsCpu<Device> ? CheckRange<Index>(indices_, shape_.slots) : ::tensorflow::Status();
  }

  const functor::PkmShape& shape() const { return shape_; }
  const T* values() const { return table_.tensor().template flat<T>().data(); }
  const Index* indices() const { return indices_.flat<Index>().data(); }
  const T* weights() const { return weights_.flat<T>().data(); }

 private:
  ValuesInput<kResource> table_;
  const Tensor& indices_;
  const Tensor& weights_;
  functor::PkmShape shape_;
};

// Zeros `t` where a zero-length sum leaves nothing to add up (CPU only: the GPU kernels do
// not take that case); `what` names the empty axis.
template <typename Device, typename T>
void FillZeros(OpKernelContext* c, Tensor* t, const char* what) {
  OP_REQUIRES(c, kIsCpu<Device>, errors::Unimplemented(what, " = 0 on GPU"));
  std::memset(t->flat<T>().data(), 0, t->NumElements() * sizeof(T));
}

template <typename Device, typename T, typename Index, bool kResource>
class PkmSparseGatherSumOp : public OpKernel {
 public:
  explicit PkmSparseGatherSumOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* c) override {
    GatherInputs<Device, T, Index, kResource> in(c);
    OP_REQUIRES_OK(c, in.Check());
    OP_REQUIRES_OK(c, in.CheckIndexRange());
    const functor::PkmShape& s = in.shape();
    Tensor* out = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({s.rows, s.dim}), &out));
    if (s.rows == 0 || s.dim == 0) return;
    if (s.k == 0) {
      FillZeros<Device, T>(c, out, "k");
      return;
    }
    functor::PkmGatherSum<Device, T, Index>()(c->eigen_device<Device>(), s, in.values(),
                                              in.indices(), in.weights(), out->flat<T>().data());
  }
};

template <typename Device, typename T, typename Index, bool kResource>
class PkmSparseGatherSumGradOp : public OpKernel {
 public:
  explicit PkmSparseGatherSumGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* c) override {
    GatherInputs<Device, T, Index, kResource> in(c);
    OP_REQUIRES_OK(c, in.Check());
    const functor::PkmShape& s = in.shape();
    const Tensor& grad = c->input(3);
    OP_REQUIRES(c, grad.shape() == TensorShape({s.rows, s.dim}),
                errors::InvalidArgument("grad must be [rows, dim] = [", s.rows, ", ", s.dim,
                                        "], got ", grad.shape().DebugString()));
    OP_REQUIRES_OK(c, in.CheckIndexRange());
    Tensor* grad_weights = nullptr;
    Tensor* grad_rows = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({s.rows, s.k}), &grad_weights));
    OP_REQUIRES_OK(c, c->allocate_output(1, TensorShape({s.rows * s.k, s.dim}), &grad_rows));
    if (s.rows == 0 || s.k == 0) return;
    if (s.dim == 0) {
      FillZeros<Device, T>(c, grad_weights, "dim");
      return;
    }
    functor::PkmGatherSumGrad<Device, T, Index>()(
        c->eigen_device<Device>(), s, in.values(), in.indices(), in.weights(),
        grad.flat<T>().data(), grad_weights->flat<T>().data(), grad_rows->flat<T>().data());
  }
};

template <typename Device, typename T>
class PkmSubKeyTopKOp : public OpKernel {
 public:
  explicit PkmSubKeyTopKOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("k", &k_));
  }

  void Compute(OpKernelContext* c) override {
    const Tensor& queries = c->input(0);
    const Tensor& keys = c->input(1);
    OP_REQUIRES(c, queries.dims() == 3,
                errors::InvalidArgument("queries must be [rows, groups, dim], got ",
                                        queries.shape().DebugString()));
    OP_REQUIRES(c, keys.dims() == 3,
                errors::InvalidArgument("keys must be [groups, n, dim], got ",
                                        keys.shape().DebugString()));
    OP_REQUIRES(c, queries.dim_size(1) == keys.dim_size(0) &&
                       queries.dim_size(2) == keys.dim_size(2),
                errors::InvalidArgument("queries ", queries.shape().DebugString(),
                                        " and keys ", keys.shape().DebugString(),
                                        " disagree on groups or dim"));
    functor::PkmTopKShape s{queries.dim_size(0), queries.dim_size(1), keys.dim_size(1),
                            keys.dim_size(2), k_};
    OP_REQUIRES(c, s.k <= s.n,
                errors::InvalidArgument("k = ", s.k, " exceeds the ", s.n, " sub-keys"));
    OP_REQUIRES(c, s.n <= std::numeric_limits<int32_t>::max(),
                errors::InvalidArgument("too many sub-keys: ", s.n));
    OP_REQUIRES(c, kIsCpu<Device> || s.n <= functor::kPkmTopKMaxGpuKeys,
                errors::Unimplemented("PkmSubKeyTopK on GPU takes n <= ",
                                      functor::kPkmTopKMaxGpuKeys, ", got ", s.n));
    Tensor* values = nullptr;
    Tensor* indices = nullptr;
    const TensorShape out_shape({s.rows, s.groups, s.k});
    OP_REQUIRES_OK(c, c->allocate_output(0, out_shape, &values));
    OP_REQUIRES_OK(c, c->allocate_output(1, out_shape, &indices));
    if (s.rows == 0 || s.groups == 0) return;
    functor::PkmSubKeyTopK<Device, T>()(c->eigen_device<Device>(), s, queries.flat<T>().data(),
                                        keys.flat<T>().data(), values->flat<T>().data(),
                                        indices->flat<int32_t>().data());
  }

 private:
  int64_t k_ = 0;
};

#define SSR_TF_REGISTER_PKM_TOPK(DEV, DEVICE, T)                                            \
  REGISTER_KERNEL_BUILDER(Name("PkmSubKeyTopK").Device(DEV).TypeConstraint<T>("T"),        \
                          PkmSubKeyTopKOp<DEVICE, T>);

SSR_TF_REGISTER_PKM_TOPK(DEVICE_CPU, CPUDevice, float)
SSR_TF_REGISTER_PKM_TOPK(DEVICE_CPU, CPUDevice, double)

#define SSR_TF_REGISTER_PKM(DEV, DEVICE, T, Index)                                          \
  REGISTER_KERNEL_BUILDER(Name("PkmSparseGatherSum")                                      \
                              .Device(DEV)                                                \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<Index>("Tindices"),                         \
                          PkmSparseGatherSumOp<DEVICE, T, Index, false>);                 \
  REGISTER_KERNEL_BUILDER(Name("PkmSparseGatherSumGrad")                                  \
                              .Device(DEV)                                                \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<Index>("Tindices"),                         \
                          PkmSparseGatherSumGradOp<DEVICE, T, Index, false>);             \
  REGISTER_KERNEL_BUILDER(Name("PkmResourceSparseGatherSum")                              \
                              .Device(DEV)                                                \
                              .HostMemory("resource")                                     \
                              .TypeConstraint<T>("dtype")                                 \
                              .TypeConstraint<Index>("Tindices"),                         \
                          PkmSparseGatherSumOp<DEVICE, T, Index, true>);                  \
  REGISTER_KERNEL_BUILDER(Name("PkmResourceSparseGatherSumGrad")                          \
                              .Device(DEV)                                                \
                              .HostMemory("resource")                                     \
                              .TypeConstraint<T>("dtype")                                 \
                              .TypeConstraint<Index>("Tindices"),                         \
                          PkmSparseGatherSumGradOp<DEVICE, T, Index, true>);

SSR_TF_REGISTER_PKM(DEVICE_CPU, CPUDevice, float, int32_t)
SSR_TF_REGISTER_PKM(DEVICE_CPU, CPUDevice, float, int64_t)
SSR_TF_REGISTER_PKM(DEVICE_CPU, CPUDevice, double, int32_t)
SSR_TF_REGISTER_PKM(DEVICE_CPU, CPUDevice, double, int64_t)

#if GOOGLE_CUDA
using ::tensorflow::DEVICE_GPU;
// The functors are explicitly instantiated in pkm_gather_kernels.cu.cc.
#define SSR_TF_DECLARE_PKM_GPU(T, Index)                                                    \
  extern template struct functor::PkmGatherSum<GPUDevice, T, Index>;                      \
  extern template struct functor::PkmGatherSumGrad<GPUDevice, T, Index>;
SSR_TF_DECLARE_PKM_GPU(float, int32_t)
SSR_TF_DECLARE_PKM_GPU(float, int64_t)
SSR_TF_DECLARE_PKM_GPU(double, int32_t)
SSR_TF_DECLARE_PKM_GPU(double, int64_t)
extern template struct functor::PkmSubKeyTopK<GPUDevice, float>;
extern template struct functor::PkmSubKeyTopK<GPUDevice, double>;
SSR_TF_REGISTER_PKM_TOPK(DEVICE_GPU, GPUDevice, float)
SSR_TF_REGISTER_PKM_TOPK(DEVICE_GPU, GPUDevice, double)
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, float, int32_t)
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, float, int64_t)
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, double, int32_t)
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, double, int64_t)
#endif  // GOOGLE_CUDA

}  // namespace ssr_tf
