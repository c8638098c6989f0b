// CUDA functors of SsrIcs / SsrIcsGrad (compiled only in GOOGLE_CUDA builds): thin wrappers
// that launch the kernels of ssr_ics_gpu.cu.h on the op's device stream.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "ssr_ics.h"
#include "ssr_ics_gpu.cu.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace ssr_tf {
namespace functor {

using GPUDevice = Eigen::GpuDevice;

template <>
void IcsForward<GPUDevice>::operator()(const GPUDevice& d, const float* z, const float* alpha,
                                       const float* gamma, float* y, float* mu, int64_t rows,
                                       int views, int dim, int iters) const {
  gpu::LaunchIcsForward(d.stream(), z, alpha, gamma, y, mu, rows, views, dim, iters);
}

template <>
void IcsBackward<GPUDevice>::operator()(const GPUDevice& d, const float* z, const float* alpha,
                                        const float* gamma, const float* /*mu*/,
                                        const float* dy, float* dz, float* dalpha,
                                        float* dgamma, float* /*scratch*/,
                                        int64_t rows, int views, int dim, int iters,
                                        int /*blocks*/) const {
  gpu::LaunchIcsBackward(d.stream(), z, alpha, gamma, dy, dz, dalpha, dgamma, rows, views, dim,
                         iters);
}

template struct IcsForward<GPUDevice>;
template struct IcsBackward<GPUDevice>;

}  // namespace functor
}  // namespace ssr_tf

#endif  // GOOGLE_CUDA
