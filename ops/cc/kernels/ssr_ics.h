// Device-templated functors of the ssr_tf ICS ops, and the per-row-view CPU routines.
//
// ICS on one row-view p of length D (Algorithm 1 of the SSR paper):
//   x0 = relu(z);  mu_t = mean(x_t);  x_{t+1} = relu(x_t - alpha_t * mu_t);  y = gamma * x_T.
// Backward (u = g * [x_{t+1} > 0], s = sum(u)):
//   g_T = dy * gamma;  g_t = u - alpha_t * s / D;  dalpha_t += -mu_t * s;  dz = g_0 * [z > 0].
#ifndef SSR_TF_OPS_CC_KERNELS_SSR_ICS_H_
#define SSR_TF_OPS_CC_KERNELS_SSR_ICS_H_

#include <algorithm>
#include <cstdint>

namespace ssr_tf {
namespace functor {

// y[B, V, D] = ICS(z) with alpha [V, T], gamma [V, D].
template <typename Device>
struct IcsForward {
  void operator()(const Device& d, const float* z, const float* alpha, const float* gamma,
                  float* y, int64_t rows, int views, int dim, int iters) const;
};

// dz [B, V, D], dalpha [V, T], dgamma [V, D] from dy. `scratch` holds
// IcsBackwardScratchFloats(...) floats (per-block partial sums of dalpha and dgamma).
template <typename Device>
struct IcsBackward {
  void operator()(const Device& d, const float* z, const float* alpha, const float* gamma,
                  const float* dy, float* dz, float* dalpha, float* dgamma, float* scratch,
                  int64_t rows, int views, int dim, int iters, int blocks) const;
};

}  // namespace functor

namespace cpu {

// Sum of p[0..n) with 8 independent lanes, so -O3 vectorizes it without -ffast-math and
// the order (hence the result) is the same on every machine.
inline float LaneSum(const float* p, int n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += p[i + k];
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += p[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// x = relu(x - thr) in place, returning sum(x).
inline float ShrinkSum(float* x, float thr, int n) {
  for (int i = 0; i < n; ++i) x[i] = std::max(x[i] - thr, 0.f);
  return LaneSum(x, n);
}

// States of one row-view: writes x_1..x_T into xs[(t-1)*D ..] (x_0 = relu(z) into x0) and
// mu_0..mu_{T-1} into mu. xs may alias nothing else.
inline void IcsStates(const float* z, const float* alpha, float* x0, float* xs, float* mu,
                      int dim, int iters) {
  for (int i = 0; i < dim; ++i) x0[i] = std::max(z[i], 0.f);
  float sum = LaneSum(x0, dim);
  const float* prev = x0;
  for (int t = 0; t < iters; ++t) {
    mu[t] = sum / static_cast<float>(dim);
    const float thr = alpha[t] * mu[t];
    float* cur = xs + static_cast<int64_t>(t) * dim;
    for (int i = 0; i < dim; ++i) cur[i] = std::max(prev[i] - thr, 0.f);
    sum = LaneSum(cur, dim);
    prev = cur;
  }
}

// Forward of one row-view, y may alias nothing; x is a D-float work buffer (may be y).
inline void IcsRowForward(const float* z, const float* alpha, const float* gamma, float* y,
                          int dim, int iters) {
  for (int i = 0; i < dim; ++i) y[i] = std::max(z[i], 0.f);
  float sum = LaneSum(y, dim);
  for (int t = 0; t < iters; ++t) {
    const float thr = alpha[t] * (sum / static_cast<float>(dim));
    sum = ShrinkSum(y, thr, dim);
  }
  for (int i = 0; i < dim; ++i) y[i] = gamma[i] * y[i];
}

// Backward of one row-view. work: (T + 2) * D + T floats. Accumulates into dalpha [T]
// and dgamma [D] (partials owned by the caller's block).
inline void IcsRowBackward(const float* z, const float* alpha, const float* gamma,
                           const float* dy, float* dz, float* dalpha, float* dgamma,
                           float* work, int dim, int iters) {
  float* g = work;                                   // [D] running gradient
  float* x0 = g + dim;                               // [D]
  float* xs = x0 + dim;                              // [T, D]
  float* mu = xs + static_cast<int64_t>(iters) * dim;  // [T]
  IcsStates(z, alpha, x0, xs, mu, dim, iters);
  const float* xt = iters > 0 ? xs + static_cast<int64_t>(iters - 1) * dim : x0;
  for (int i = 0; i < dim; ++i) {
    dgamma[i] += dy[i] * xt[i];
    g[i] = dy[i] * gamma[i];
  }
  for (int t = iters - 1; t >= 0; --t) {
    const float* next = xs + static_cast<int64_t>(t) * dim;   // x_{t+1}
    for (int i = 0; i < dim; ++i) g[i] = next[i] > 0.f ? g[i] : 0.f;
    const float s = LaneSum(g, dim);
    dalpha[t] -= mu[t] * s;
    const float c = alpha[t] * s / static_cast<float>(dim);
    for (int i = 0; i < dim; ++i) g[i] -= c;
  }
  for (int i = 0; i < dim; ++i) dz[i] = z[i] > 0.f ? g[i] : 0.f;
}

}  // namespace cpu
}  // namespace ssr_tf

#endif  // SSR_TF_OPS_CC_KERNELS_SSR_ICS_H_
