// Shared by the CPU kernels that run Eigen GEMMs on TF's intra-op thread pool
// (ssr_ics_kernels.cc, ssr_block_fusion_kernels.cc): the TF names they use, the pool's Eigen
// device, the row-major matrix type, and an OpKernel base that readies Eigen for GEMMs run
// from several threads at once. Include it after `#define EIGEN_USE_THREADS`.
#ifndef SSR_TF_OPS_CC_KERNELS_SSR_CPU_KERNEL_H_
#define SSR_TF_OPS_CC_KERNELS_SSR_CPU_KERNEL_H_

#ifndef EIGEN_USE_THREADS
#error "ssr_cpu_kernel.h needs EIGEN_USE_THREADS defined before any include"
#endif

#include "Eigen/Core"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace ssr_tf {

using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using CPUDevice = Eigen::ThreadPoolDevice;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// An op kernel whose Compute runs Eigen GEMMs inside the intra-op pool's parallelFor:
// Eigen::initParallel() must have run before GEMMs are called from several threads.
class EigenGemmOpKernel : public OpKernel {
 public:
  explicit EigenGemmOpKernel(OpKernelConstruction* ctx) : OpKernel(ctx) { Eigen::initParallel(); }
};

}  // namespace ssr_tf

#endif  // SSR_TF_OPS_CC_KERNELS_SSR_CPU_KERNEL_H_
