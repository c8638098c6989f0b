// CPU kernels (and GPU registrations under GOOGLE_CUDA) of SsrIcs, SsrIcsGrad and
// SsrDynamicView. Rows are sharded over TF's intra-op thread pool; each row-view of ICS
// runs in L1 (T + 1 passes over D floats), so memory traffic is one read and one write.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif
#include <algorithm>
#include <vector>

#include "ssr_cpu_kernel.h"
#include "ssr_ics.h"
#include "ssr_ics_cpu.h"

namespace ssr_tf {

#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;
#endif

namespace {

// Shapes a device's kernels support: any on CPU.
template <typename Device>
tensorflow::Status CheckDeviceLimits(int64_t /*dim*/, int64_t /*iters*/) {
  return tensorflow::OkStatus();
}

#if GOOGLE_CUDA
// The CUDA kernels keep a row-view in registers (dim <= 512) and the masks as bits (T <= 32).
template <>
tensorflow::Status CheckDeviceLimits<GPUDevice>(int64_t dim, int64_t iters) {
  if (dim > 512 || iters > 32) {
    return InvalidArgument("GPU SsrIcs supports dim <= 512 and T <= 32, got dim=", dim,
                           ", T=", iters);
  }
  return tensorflow::OkStatus();
}
#endif

// Number of partial-sum blocks of the backward: depends on rows only, so the result does
// not depend on the thread count.
int IcsBlocks(int64_t rows) {
  return static_cast<int>(std::clamp<int64_t>((rows + 63) / 64, 1, 64));
}

}  // namespace

namespace functor {

template <>
void IcsForward<CPUDevice>::operator()(const CPUDevice& d, const float* z, const float* alpha,
                                       const float* gamma, float* y, float* mu, int64_t rows,
                                       int views, int dim, int iters) const {
  const int64_t n = rows * views;
  const Eigen::TensorOpCost cost(8.0 * dim, 4.0 * dim, 3.0 * dim * (iters + 2));
  d.parallelFor(n, cost, [=](Eigen::Index first, Eigen::Index last) {
    cpu::ForwardRange(z, alpha, gamma, y, mu, first, last, views, dim, iters);
  });
}

template <>
void IcsBackward<CPUDevice>::operator()(const CPUDevice& d, const float* z, const float* alpha,
                                        const float* gamma, const float* mu, const float* dy,
                                        float* dz, float* dalpha, float* dgamma, float* scratch,
                                        int64_t rows, int views, int dim, int iters,
                                        int blocks) const {
  const int64_t part = static_cast<int64_t>(views) * (dim + iters);  // per-block partials
  std::fill(scratch, scratch + blocks * part, 0.f);
  const int64_t rows_per_block = (rows + blocks - 1) / blocks;
  const double per_block = static_cast<double>(rows_per_block) * views * dim;
  const Eigen::TensorOpCost cost(12.0 * per_block, 4.0 * per_block, 8.0 * per_block * (iters + 2));
  d.parallelFor(blocks, cost, [=](Eigen::Index first, Eigen::Index last) {
    std::vector<float> work(cpu::RangeWorkFloats(dim, iters));
    for (Eigen::Index blk = first; blk < last; ++blk) {
      const int64_t r0 = blk * rows_per_block, r1 = std::min(rows, r0 + rows_per_block);
      cpu::BackwardRange(z, alpha, gamma, mu, dy, dz, scratch + blk * part, work.data(),
                         r0 * views, r1 * views, views, dim, iters);
    }
  });
  for (int v = 0; v < views; ++v) {
    float* da = dalpha + v * iters;
    float* dg = dgamma + static_cast<int64_t>(v) * dim;
    std::fill(da, da + iters, 0.f);
    std::fill(dg, dg + dim, 0.f);
    for (int blk = 0; blk < blocks; ++blk) {
      const float* pv = scratch + blk * part + static_cast<int64_t>(v) * (dim + iters);
      for (int i = 0; i < dim; ++i) dg[i] += pv[i];
      for (int t = 0; t < iters; ++t) da[t] += pv[dim + t];
    }
  }
}

}  // namespace functor

namespace {

// Validates alpha [V, T] and gamma [V, D] against the views and dim of the data.
tensorflow::Status CheckAlphaGamma(const Tensor& alpha, const Tensor& gamma, int64_t views,
                                   int64_t dim) {
  if (alpha.dims() != 2 || alpha.dim_size(0) != views) {
    return InvalidArgument("alpha must be [views=", views, ", T], got ",
                           alpha.shape().DebugString());
  }
  if (gamma.dims() != 2 || gamma.dim_size(0) != views || gamma.dim_size(1) != dim) {
    return InvalidArgument("gamma must be [views=", views, ", dim=", dim, "], got ",
                           gamma.shape().DebugString());
  }
  if (dim <= 0) return InvalidArgument("ICS needs dim > 0, got ", dim);
  return tensorflow::OkStatus();
}

}  // namespace

template <typename Device>
class SsrIcsOp : public OpKernel {
 public:
  explicit SsrIcsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& z = ctx->input(0);
    const Tensor& alpha = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    OP_REQUIRES(ctx, z.dims() == 3,
                InvalidArgument("z must be [batch, views, dim], got ", z.shape().DebugString()));
    OP_REQUIRES_OK(ctx, CheckAlphaGamma(alpha, gamma, z.dim_size(1), z.dim_size(2)));
    OP_REQUIRES_OK(ctx, CheckDeviceLimits<Device>(z.dim_size(2), alpha.dim_size(1)));
    Tensor *y = nullptr, *mu = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            1, TensorShape({z.dim_size(0), z.dim_size(1), alpha.dim_size(1)}),
                            &mu));
    if (z.NumElements() == 0) return;
    functor::IcsForward<Device>()(ctx->eigen_device<Device>(), z.flat<float>().data(),
                                  alpha.flat<float>().data(), gamma.flat<float>().data(),
                                  y->flat<float>().data(), mu->flat<float>().data(),
                                  z.dim_size(0),
                                  static_cast<int>(z.dim_size(1)),
                                  static_cast<int>(z.dim_size(2)),
                                  static_cast<int>(alpha.dim_size(1)));
  }
};

template <typename Device>
class SsrIcsGradOp : public OpKernel {
 public:
  explicit SsrIcsGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& z = ctx->input(0);
    const Tensor& alpha = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    const Tensor& mu = ctx->input(3);
    const Tensor& dy = ctx->input(4);
    OP_REQUIRES(ctx, z.dims() == 3,
                InvalidArgument("z must be [batch, views, dim], got ", z.shape().DebugString()));
    OP_REQUIRES(ctx, dy.shape() == z.shape(),
                InvalidArgument("dy ", dy.shape().DebugString(), " must match z ",
                                z.shape().DebugString()));
    OP_REQUIRES_OK(ctx, CheckAlphaGamma(alpha, gamma, z.dim_size(1), z.dim_size(2)));
    OP_REQUIRES(ctx, mu.shape() == TensorShape({z.dim_size(0), z.dim_size(1), alpha.dim_size(1)}),
                InvalidArgument("mu must be [batch, views, T], got ", mu.shape().DebugString()));
    OP_REQUIRES_OK(ctx, CheckDeviceLimits<Device>(z.dim_size(2), alpha.dim_size(1)));
    Tensor *dz = nullptr, *dalpha = nullptr, *dgamma = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, alpha.shape(), &dalpha));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, gamma.shape(), &dgamma));
    const int64_t rows = z.dim_size(0);
    const int views = static_cast<int>(z.dim_size(1));
    const int dim = static_cast<int>(z.dim_size(2));
    const int iters = static_cast<int>(alpha.dim_size(1));
    const int blocks = IcsBlocks(rows);
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(
                            tensorflow::DT_FLOAT,
                            TensorShape({static_cast<int64_t>(blocks) * views * (dim + iters)}),
                            &scratch));
    functor::IcsBackward<Device>()(
        ctx->eigen_device<Device>(), z.flat<float>().data(), alpha.flat<float>().data(),
        gamma.flat<float>().data(), mu.flat<float>().data(), dy.flat<float>().data(),
        dz->flat<float>().data(),
        dalpha->flat<float>().data(), dgamma->flat<float>().data(),
        scratch.flat<float>().data(), rows, views, dim, iters, blocks);
  }
};

// y, z, mu = ICS(x @ W), computed in row blocks: an Eigen GEMM writes the block's z, then
// the ICS epilogue reads it back from cache and writes y and the means mu. (ssr_tf.ops
// .dynamic_view uses TF's MatMul + SsrIcs by default: TF's oneDNN sgemm is faster than
// Eigen's GEMM on x86; this one-op kernel is kept for single_op=True.)
class SsrDynamicViewOp : public EigenGemmOpKernel {
 public:
  using EigenGemmOpKernel::EigenGemmOpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& w = ctx->input(1);
    const Tensor& alpha = ctx->input(2);
    const Tensor& gamma = ctx->input(3);
    OP_REQUIRES(ctx, x.dims() == 2,
                InvalidArgument("x must be [batch, d_in], got ", x.shape().DebugString()));
    OP_REQUIRES(ctx, w.dims() == 3 && w.dim_size(0) == x.dim_size(1),
                InvalidArgument("proj_kernel must be [d_in=", x.dim_size(1),
                                ", views, dim], got ", w.shape().DebugString()));
    OP_REQUIRES_OK(ctx, CheckAlphaGamma(alpha, gamma, w.dim_size(1), w.dim_size(2)));
    const int64_t rows = x.dim_size(0), d_in = x.dim_size(1);
    const int views = static_cast<int>(w.dim_size(1));
    const int dim = static_cast<int>(w.dim_size(2));
    const int iters = static_cast<int>(alpha.dim_size(1));
    const int64_t cols = static_cast<int64_t>(views) * dim;
    const TensorShape out_shape({rows, views, dim});
    Tensor *y = nullptr, *z = nullptr, *mu = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, out_shape, &z));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows, views, iters}), &mu));
    if (y->NumElements() == 0) return;
    // Rows per block: Eigen packs all of W for every block, so blocks must be tall enough to
    // amortise that (256 rows: packing is < 1/256 of the multiply-adds); the block's z slab
    // (256 x V*E floats) is then read back by the epilogue from L2/L3.
    const int64_t rb = std::max<int64_t>(1, std::min<int64_t>(256, (rows + 1) / 2));
    const int64_t blocks = (rows + rb - 1) / rb;
    const float* xp = x.flat<float>().data();
    const float* wp = w.flat<float>().data();
    const float* ap = alpha.flat<float>().data();
    const float* gp = gamma.flat<float>().data();
    float* yp = y->flat<float>().data();
    float* zp = z->flat<float>().data();
    float* mp = mu->flat<float>().data();
    const double per_block = static_cast<double>(rb) * cols;
    const Eigen::TensorOpCost cost(4.0 * rb * d_in, 8.0 * per_block,
                                   2.0 * per_block * d_in + 3.0 * per_block * (iters + 2));
    const auto& d = ctx->eigen_device<CPUDevice>();
    d.parallelFor(blocks, cost, [=](Eigen::Index first, Eigen::Index last) {
      Eigen::Map<const RowMat> wm(wp, d_in, cols);
      for (Eigen::Index blk = first; blk < last; ++blk) {
        const int64_t r0 = blk * rb, n = std::min(rows, r0 + rb) - r0;
        Eigen::Map<RowMat> zm(zp + r0 * cols, n, cols);
        if (d_in == 0) {
          zm.setZero();
        } else {
          zm.noalias() = Eigen::Map<const RowMat>(xp + r0 * d_in, n, d_in) * wm;
        }
        cpu::ForwardRange(zp, ap, gp, yp, mp, r0 * views, (r0 + n) * views, views, dim, iters);
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("SsrIcs").Device(tensorflow::DEVICE_CPU), SsrIcsOp<CPUDevice>);
REGISTER_KERNEL_BUILDER(Name("SsrIcsGrad").Device(tensorflow::DEVICE_CPU),
                        SsrIcsGradOp<CPUDevice>);
REGISTER_KERNEL_BUILDER(Name("SsrDynamicView").Device(tensorflow::DEVICE_CPU), SsrDynamicViewOp);

#if GOOGLE_CUDA
// The CUDA functors are defined in ssr_ics_kernels.cu.cc.
namespace functor {
template <>
void IcsForward<GPUDevice>::operator()(const GPUDevice& d, const float* z, const float* alpha,
                                       const float* gamma, float* y, float* mu, int64_t rows,
                                       int views, int dim, int iters) const;
template <>
void IcsBackward<GPUDevice>::operator()(const GPUDevice& d, const float* z, const float* alpha,
                                        const float* gamma, const float* mu, const float* dy,
                                        float* dz, float* dalpha, float* dgamma, float* scratch,
                                        int64_t rows, int views, int dim, int iters,
                                        int blocks) const;
}  // namespace functor
REGISTER_KERNEL_BUILDER(Name("SsrIcs").Device(tensorflow::DEVICE_GPU), SsrIcsOp<GPUDevice>);
REGISTER_KERNEL_BUILDER(Name("SsrIcsGrad").Device(tensorflow::DEVICE_GPU),
                        SsrIcsGradOp<GPUDevice>);
#endif  // GOOGLE_CUDA

}  // namespace ssr_tf
