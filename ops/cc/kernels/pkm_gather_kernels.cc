// CPU kernels (and GPU kernel registration) of the fused PKM sparse gather + weighted sum.
//
// out[r, :] = sum_t w[r, t] * values[idx[r, t], :]; rows are split over TF's intra-op
// thread pool, the inner loop over the value width is left to the compiler to vectorise.
#define EIGEN_USE_THREADS

#include "pkm_gather_kernels.h"

#include <algorithm>
#include <cstring>
#include <optional>

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

template <typename T, typename Index>
struct PkmGatherSum<CPUDevice, T, Index> {
  void operator()(const CPUDevice& d, const PkmShape& s, const T* values, const Index* indices,
                  const T* weights, T* out) {
    const int64_t k = s.k, dim = s.dim;
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
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

template <typename Device, typename T, typename Index, bool kResource>
class PkmSparseGatherSumOp : public OpKernel {
 public:
  explicit PkmSparseGatherSumOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* c) override {
    ValuesInput<kResource> input(c);
    OP_REQUIRES_OK(c, input.status());
    const Tensor& values = input.tensor();
    const Tensor& indices = c->input(1);
    const Tensor& weights = c->input(2);
    functor::PkmShape s;
    OP_REQUIRES_OK(c, CheckInputs(values, indices, weights, &s));
    if (kIsCpu<Device>) OP_REQUIRES_OK(c, CheckRange<Index>(indices, s.slots));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({s.rows, s.dim}), &out));
    if (s.rows == 0 || s.dim == 0) return;
    if (s.k == 0) {
      OP_REQUIRES(c, kIsCpu<Device>, errors::Unimplemented("k = 0 on GPU"));
      std::memset(out->flat<T>().data(), 0, out->NumElements() * sizeof(T));
      return;
    }
    functor::PkmGatherSum<Device, T, Index>()(
        c->eigen_device<Device>(), s, values.flat<T>().data(), indices.flat<Index>().data(),
        weights.flat<T>().data(), out->flat<T>().data());
  }
};

template <typename Device, typename T, typename Index, bool kResource>
class PkmSparseGatherSumGradOp : public OpKernel {
 public:
  explicit PkmSparseGatherSumGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* c) override {
    ValuesInput<kResource> input(c);
    OP_REQUIRES_OK(c, input.status());
    const Tensor& values = input.tensor();
    const Tensor& indices = c->input(1);
    const Tensor& weights = c->input(2);
    const Tensor& grad = c->input(3);
    functor::PkmShape s;
    OP_REQUIRES_OK(c, CheckInputs(values, indices, weights, &s));
    OP_REQUIRES(c, grad.shape() == TensorShape({s.rows, s.dim}),
                errors::InvalidArgument("grad must be [rows, dim] = [", s.rows, ", ", s.dim,
                                        "], got ", grad.shape().DebugString()));
    if (kIsCpu<Device>) OP_REQUIRES_OK(c, CheckRange<Index>(indices, s.slots));
    Tensor* grad_weights = nullptr;
    Tensor* grad_rows = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({s.rows, s.k}), &grad_weights));
    OP_REQUIRES_OK(c, c->allocate_output(1, TensorShape({s.rows * s.k, s.dim}), &grad_rows));
    if (s.rows == 0 || s.k == 0) return;
    if (s.dim == 0) {
      OP_REQUIRES(c, kIsCpu<Device>, errors::Unimplemented("dim = 0 on GPU"));
      std::memset(grad_weights->flat<T>().data(), 0, grad_weights->NumElements() * sizeof(T));
      return;
    }
    functor::PkmGatherSumGrad<Device, T, Index>()(
        c->eigen_device<Device>(), s, values.flat<T>().data(), indices.flat<Index>().data(),
        weights.flat<T>().data(), grad.flat<T>().data(), grad_weights->flat<T>().data(),
        grad_rows->flat<T>().data());
  }
};

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
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, float, int32_t)
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, float, int64_t)
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, double, int32_t)
SSR_TF_REGISTER_PKM(DEVICE_GPU, GPUDevice, double, int64_t)
#endif  // GOOGLE_CUDA

}  // namespace ssr_tf
