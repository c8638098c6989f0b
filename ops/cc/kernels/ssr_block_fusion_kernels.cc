// CPU kernels of SsrBlockFusion / SsrBlockFusionGrad: the block-diagonal fusion projection
//   out[b, v] = h[b, v] @ kernel[v] + bias[v]      (h [B, V, E], kernel [V, E, O])
// as one Eigen GEMM per (row block, view) on strided views of h and out, so no transposes
// of [B, V, E] are materialised (an einsum lowers to transpose + batch matmul + transpose).
#define EIGEN_USE_THREADS
#include <algorithm>

#include "ssr_cpu_kernel.h"

namespace ssr_tf {

using RowVec = Eigen::Matrix<float, 1, Eigen::Dynamic, Eigen::RowMajor>;
using Strided = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
using ConstStrided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;

namespace {

tensorflow::Status CheckShapes(const Tensor& h, const Tensor& kernel) {
  if (h.dims() != 3) {
    return InvalidArgument("h must be [batch, views, e], got ", h.shape().DebugString());
  }
  if (kernel.dims() != 3 || kernel.dim_size(0) != h.dim_size(1) ||
      kernel.dim_size(1) != h.dim_size(2)) {
    return InvalidArgument("kernel must be [views=", h.dim_size(1), ", e=", h.dim_size(2),
                           ", o], got ", kernel.shape().DebugString());
  }
  return tensorflow::OkStatus();
}

// out = h @ kernel + bias, per view (SsrBlockFusion).
void Forward(OpKernelContext* ctx, const Tensor& h, const Tensor& kernel, const Tensor& bias,
             const int64_t rows, const int64_t views, const int64_t e, const int64_t o) {
  OP_REQUIRES(ctx, bias.dims() == 2 && bias.dim_size(0) == views && bias.dim_size(1) == o,
              InvalidArgument("bias must be [views=", views, ", o=", o, "], got ",
                              bias.shape().DebugString()));
  Tensor* out = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, views, o}), &out));
  if (out->NumElements() == 0) return;
  const float* hp = h.flat<float>().data();
  const float* kp = kernel.flat<float>().data();
  const float* bp = bias.flat<float>().data();
  float* op = out->flat<float>().data();
  const int64_t rb = 256, blocks = (rows + rb - 1) / rb;
  const double per = static_cast<double>(std::min(rows, rb));
  const Eigen::TensorOpCost cost(4.0 * per * e, 4.0 * per * o, 2.0 * per * e * o);
  ctx->eigen_device<CPUDevice>().parallelFor(
      blocks * views, cost, [=](Eigen::Index first, Eigen::Index last) {
        for (Eigen::Index i = first; i < last; ++i) {
          const int64_t blk = i / views, v = i % views;
          const int64_t r0 = blk * rb, n = std::min(rows, r0 + rb) - r0;
          Strided om(op + (r0 * views + v) * o, n, o, Eigen::OuterStride<>(views * o));
          Eigen::Map<const RowVec> bv(bp + v * o, o);
          if (e == 0) {
            om.rowwise() = bv;
            continue;
          }
          ConstStrided hm(hp + (r0 * views + v) * e, n, e, Eigen::OuterStride<>(views * e));
          Eigen::Map<const RowMat> km(kp + v * e * o, e, o);
          om.noalias() = hm * km;
          om.rowwise() += bv;
        }
      });
}

// dh, dkernel and dbias from dout (SsrBlockFusionGrad).
void Backward(OpKernelContext* ctx, const Tensor& h, const Tensor& kernel, const Tensor& dout,
              const int64_t rows, const int64_t views, const int64_t e, const int64_t o) {
  OP_REQUIRES(ctx, dout.shape() == TensorShape({rows, views, o}),
              InvalidArgument("dout must be [", rows, ", ", views, ", ", o, "], got ",
                              dout.shape().DebugString()));
  Tensor *dh = nullptr, *dk = nullptr, *db = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, h.shape(), &dh));
  OP_REQUIRES_OK(ctx, ctx->allocate_output(1, kernel.shape(), &dk));
  OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({views, o}), &db));
  // Rows split into `chunks`; task (chunk, view) writes dh of its rows and partial
  // dkernel/dbias, summed afterwards in chunk order (deterministic).
  const int64_t chunks = std::clamp<int64_t>((rows + 255) / 256, 1,
                                             std::max<int64_t>(1, 32 / std::max<int64_t>(views, 1)));
  const int64_t part = e * o + o;
  Tensor partial;
  OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT,
                                         TensorShape({chunks * views * part}), &partial));
  const float* hp = h.flat<float>().data();
  const float* kp = kernel.flat<float>().data();
  const float* gp = dout.flat<float>().data();
  float* dhp = dh->flat<float>().data();
  float* pp = partial.flat<float>().data();
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
  const double per = static_cast<double>(per_chunk);
  const Eigen::TensorOpCost cost(4.0 * per * (e + o), 4.0 * per * e, 4.0 * per * e * o);
  ctx->eigen_device<CPUDevice>().parallelFor(
      chunks * views, cost, [=](Eigen::Index first, Eigen::Index last) {
        for (Eigen::Index i = first; i < last; ++i) {
          const int64_t c = i / views, v = i % views;
          const int64_t r0 = std::min(rows, c * per_chunk);
          const int64_t n = std::min(rows, r0 + per_chunk) - r0;
          float* pk = pp + i * part;
          Eigen::Map<RowMat> pkm(pk, e, o);
          Eigen::Map<RowVec> pbm(pk + e * o, o);
          if (n == 0) {
            pkm.setZero();
            pbm.setZero();
            continue;
          }
          ConstStrided hm(hp + (r0 * views + v) * e, n, e, Eigen::OuterStride<>(views * e));
          ConstStrided gm(gp + (r0 * views + v) * o, n, o, Eigen::OuterStride<>(views * o));
          Strided dhm(dhp + (r0 * views + v) * e, n, e, Eigen::OuterStride<>(views * e));
          Eigen::Map<const RowMat> km(kp + v * e * o, e, o);
          dhm.noalias() = gm * km.transpose();
          pkm.noalias() = hm.transpose() * gm;
          pbm = gm.colwise().sum();
        }
      });
  float* dkp = dk->flat<float>().data();
  float* dbp = db->flat<float>().data();
  for (int64_t v = 0; v < views; ++v) {
    Eigen::Map<RowMat> dkm(dkp + v * e * o, e, o);
    Eigen::Map<RowVec> dbm(dbp + v * o, o);
    dkm.setZero();
    dbm.setZero();
    for (int64_t c = 0; c < chunks; ++c) {
      const float* pk = pp + (c * views + v) * part;
      dkm += Eigen::Map<const RowMat>(pk, e, o);
      dbm += Eigen::Map<const RowVec>(pk + e * o, o);
    }
  }
}

}  // namespace

// Both ops: reads h [rows, views, e] and kernel [views, e, o] (inputs 0 and 1), checks that
// they agree, then runs kBody (Forward or Backward) on them, input 2 and their sizes.
template <void (*kBody)(OpKernelContext*, const Tensor&, const Tensor&, const Tensor&, int64_t,
                        int64_t, int64_t, int64_t)>
class SsrBlockFusionOp : public EigenGemmOpKernel {
 public:
  using EigenGemmOpKernel::EigenGemmOpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& h = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckShapes(h, kernel));
    kBody(ctx, h, kernel, ctx->input(2), h.dim_size(0), h.dim_size(1), h.dim_size(2),
          kernel.dim_size(2));
  }
};

REGISTER_KERNEL_BUILDER(Name("SsrBlockFusion").Device(tensorflow::DEVICE_CPU),
                        SsrBlockFusionOp<Forward>);
REGISTER_KERNEL_BUILDER(Name("SsrBlockFusionGrad").Device(tensorflow::DEVICE_CPU),
                        SsrBlockFusionOp<Backward>);

}  // namespace ssr_tf
