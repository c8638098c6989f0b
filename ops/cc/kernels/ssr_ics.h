// Device-templated functors of the ssr_tf ICS ops (CPU: ssr_ics_kernels.cc, CUDA:
// ssr_ics_kernels.cu.cc); the per-row-view CPU routines are in ssr_ics_cpu.h.
//
// ICS on one row-view p of length D (Algorithm 1 of the SSR paper):
//   x0 = relu(z);  mu_t = mean(x_t);  x_{t+1} = relu(x_t - alpha_t * mu_t);  y = gamma * x_T.
// Backward (u = g * [x_{t+1} > 0], s = sum(u)):
//   g_T = dy * gamma;  g_t = u - alpha_t * s / D;  dalpha_t += -mu_t * s;  dz = g_0 * [z > 0].
#ifndef SSR_TF_OPS_CC_KERNELS_SSR_ICS_H_
#define SSR_TF_OPS_CC_KERNELS_SSR_ICS_H_

#include <cstdint>

namespace ssr_tf {
namespace functor {

// y [B, V, D] = ICS(z) with alpha [V, T], gamma [V, D]; mu [B, V, T] = the T means.
template <typename Device>
struct IcsForward {
  void operator()(const Device& d, const float* z, const float* alpha, const float* gamma,
                  float* y, float* mu, int64_t rows, int views, int dim, int iters) const;
};

// dz [B, V, D], dalpha [V, T], dgamma [V, D] from dy and the forward's mu. `scratch` holds
// blocks * views * (dim + iters) floats (CPU: per-block partial sums of dgamma and dalpha).
template <typename Device>
struct IcsBackward {
  void operator()(const Device& d, const float* z, const float* alpha, const float* gamma,
                  const float* mu, const float* dy, float* dz, float* dalpha, float* dgamma,
                  float* scratch, int64_t rows, int views, int dim, int iters, int blocks) const;
};

}  // namespace functor

}  // namespace ssr_tf

#endif  // SSR_TF_OPS_CC_KERNELS_SSR_ICS_H_
