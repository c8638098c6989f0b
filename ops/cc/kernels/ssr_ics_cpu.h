// Per-row-view CPU routines of ICS, written with GCC/Clang vector extensions (8 floats with
// AVX, 4 with the portable SSE2 baseline), so they vectorize at -O3 without -ffast-math.
// Each pass over a row-view ends in a reduction the next pass needs, so a single row-view is
// latency bound; the Tile* routines interleave K row-views so their chains overlap.
//
// Forward:  x0 = relu(z);  mu_t = mean(x_t);  x_{t+1} = relu(x_t - alpha_t * mu_t);  y = gamma x_T.
// Backward: u = g_{t+1} * [x_{t+1} > 0], s = sum(u);  g_T = dy gamma;  g_t = u - alpha_t s / D;
//           dalpha_t += -mu_t s;  dgamma += dy x_T;  dz = g_0 * [z > 0].
#ifndef SSR_TF_OPS_CC_KERNELS_SSR_ICS_CPU_H_
#define SSR_TF_OPS_CC_KERNELS_SSR_ICS_CPU_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace ssr_tf {
namespace cpu {

#if defined(__AVX__)
constexpr int kW = 8;
#else
constexpr int kW = 4;
#endif
typedef float F8 __attribute__((vector_size(kW * sizeof(float))));
typedef int32_t I8 __attribute__((vector_size(kW * sizeof(int32_t))));

// a where mask lanes are set (all ones), else 0.
inline F8 Select(I8 mask, F8 a) { return reinterpret_cast<F8>(reinterpret_cast<I8>(a) & mask); }

inline F8 Load(const float* p) {
  F8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, F8 v) { std::memcpy(p, &v, sizeof(v)); }
inline F8 Splat(float x) { return x - F8{}; }
inline float Reduce(F8 v) {
  float lanes[kW];
  std::memcpy(lanes, &v, sizeof(v));
  for (int w = kW / 2; w > 0; w /= 2) {
    for (int k = 0; k < w; ++k) lanes[k] += lanes[k + w];
  }
  return lanes[0];
}

// For i in [0, n): dst[i] = f(i-th inputs); returns sum of dst. Four accumulators of 8 lanes
// keep the add chains short. `vec(i)` computes 8 lanes at i, `one(i)` a single tail element.
template <typename Vec, typename One>
inline float StoreSum(float* dst, int n, Vec vec, One one) {
  F8 a0 = Splat(0.f), a1 = a0, a2 = a0, a3 = a0;
  int i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    const F8 v0 = vec(i), v1 = vec(i + kW), v2 = vec(i + 2 * kW), v3 = vec(i + 3 * kW);
    Store(dst + i, v0);
    Store(dst + i + kW, v1);
    Store(dst + i + 2 * kW, v2);
    Store(dst + i + 3 * kW, v3);
    a0 += v0;
    a1 += v1;
    a2 += v2;
    a3 += v3;
  }
  for (; i + kW <= n; i += kW) {
    const F8 v = vec(i);
    Store(dst + i, v);
    a0 += v;
  }
  float tail = 0.f;
  for (; i < n; ++i) {
    const float v = one(i);
    dst[i] = v;
    tail += v;
  }
  return Reduce((a0 + a1) + (a2 + a3)) + tail;
}

// dst = relu(src - thr) (dst may equal src); returns sum(dst).
inline float ShrinkSum(const float* src, float* dst, float thr, int n) {
  const F8 t = Splat(thr), zero = Splat(0.f);
  return StoreSum(
      dst, n,
      [=](int i) {
        const F8 v = Load(src + i) - t;
        return v > zero ? v : zero;
      },
      [=](int i) { return std::max(src[i] - thr, 0.f); });
}

// g = (g - c) * [next > 0]; returns sum(g).
inline float MaskSum(float* g, const float* next, float c, int n) {
  const F8 zero = Splat(0.f), cv = Splat(c);
  return StoreSum(
      g, n, [=](int i) { return Select(Load(next + i) > zero, Load(g + i) - cv); },
      [=](int i) { return next[i] > 0.f ? g[i] - c : 0.f; });
}

// Row-views handled together by the Tile* routines (forward, backward).
constexpr int kTile = 4;
constexpr int kBackTile = 1;

// Forward of K row-views: y[k] = ICS(z[k]) with alpha[k] [T], gamma[k] [D].
template <int K>
inline void TileForward(const float* const* z, const float* const* alpha,
                        const float* const* gamma, float* const* y, int dim, int iters) {
  float sum[K];
  for (int k = 0; k < K; ++k) sum[k] = ShrinkSum(z[k], y[k], 0.f, dim);
  for (int t = 0; t < iters; ++t) {
    for (int k = 0; k < K; ++k) {
      const float mu = sum[k] / static_cast<float>(dim);
      sum[k] = ShrinkSum(y[k], y[k], alpha[k][t] * mu, dim);
    }
  }
  for (int k = 0; k < K; ++k) {
    float* yk = y[k];
    const float* gk = gamma[k];
    for (int i = 0; i < dim; ++i) yk[i] = gk[i] * yk[i];
  }
}

// Floats of work TileBackward<K> needs.
inline int64_t TileWorkFloats(int k, int dim, int iters) {
  return static_cast<int64_t>(k) * ((iters + 2) * static_cast<int64_t>(dim) + iters);
}

// Backward of K row-views; accumulates into dalpha[k] [T] and dgamma[k] [D] (partials owned by
// the caller). Recomputes the states with the forward's arithmetic, so the masks agree.
template <int K>
inline void TileBackward(const float* const* z, const float* const* alpha,
                         const float* const* gamma, const float* const* dy, float* const* dz,
                         float* const* dalpha, float* const* dgamma, float* work, int dim,
                         int iters) {
  const int64_t stride = (iters + 2) * static_cast<int64_t>(dim) + iters;
  float *g[K], *x0[K], *xs[K], *mu[K];                 // per row-view: g [D], x0 [D], xs [T, D], mu [T]
  float sum[K];
  for (int k = 0; k < K; ++k) {
    g[k] = work + k * stride;
    x0[k] = g[k] + dim;
    xs[k] = x0[k] + dim;
    mu[k] = xs[k] + static_cast<int64_t>(iters) * dim;
    sum[k] = ShrinkSum(z[k], x0[k], 0.f, dim);
  }
  for (int t = 0; t < iters; ++t) {
    for (int k = 0; k < K; ++k) {
      mu[k][t] = sum[k] / static_cast<float>(dim);
      const float* prev = t == 0 ? x0[k] : xs[k] + static_cast<int64_t>(t - 1) * dim;
      sum[k] = ShrinkSum(prev, xs[k] + static_cast<int64_t>(t) * dim, alpha[k][t] * mu[k][t], dim);
    }
  }
  for (int k = 0; k < K; ++k) {
    const float* xt = iters > 0 ? xs[k] + static_cast<int64_t>(iters - 1) * dim : x0[k];
    const float *dyk = dy[k], *gam = gamma[k];
    float *dg = dgamma[k], *gk = g[k];
    for (int i = 0; i < dim; ++i) {
      dg[i] += dyk[i] * xt[i];
      gk[i] = dyk[i] * gam[i];
    }
  }
  // g_t = u - c_t with c_t = alpha_t s_t / D; the subtraction is folded into the next pass.
  float c[K];
  for (int k = 0; k < K; ++k) c[k] = 0.f;
  for (int t = iters - 1; t >= 0; --t) {
    for (int k = 0; k < K; ++k) {
      const float s = MaskSum(g[k], xs[k] + static_cast<int64_t>(t) * dim, c[k], dim);
      dalpha[k][t] -= mu[k][t] * s;
      c[k] = alpha[k][t] * s / static_cast<float>(dim);
    }
  }
  for (int k = 0; k < K; ++k) {
    const float* zk = z[k];
    const float* gk = g[k];
    const float ck = c[k];
    float* dzk = dz[k];
    for (int i = 0; i < dim; ++i) dzk[i] = zk[i] > 0.f ? gk[i] - ck : 0.f;
  }
}

// Forward of row-views [first, last) of a contiguous [rows * views, dim] tensor.
inline void ForwardRange(const float* z, const float* alpha, const float* gamma, float* y,
                         int64_t first, int64_t last, int views, int dim, int iters) {
  int64_t i = first;
  const float *zp[kTile], *ap[kTile], *gp[kTile];
  float* yp[kTile];
  auto set = [&](int k, int64_t r) {
    const int v = static_cast<int>(r % views);
    zp[k] = z + r * dim;
    ap[k] = alpha + static_cast<int64_t>(v) * iters;
    gp[k] = gamma + static_cast<int64_t>(v) * dim;
    yp[k] = y + r * dim;
  };
  for (; i + kTile <= last; i += kTile) {
    for (int k = 0; k < kTile; ++k) set(k, i + k);
    TileForward<kTile>(zp, ap, gp, yp, dim, iters);
  }
  for (; i < last; ++i) {
    set(0, i);
    TileForward<1>(zp, ap, gp, yp, dim, iters);
  }
}

// Backward of row-views [first, last); partial (per view v) dgamma at part + v * (dim + iters)
// and dalpha right after it. work: TileWorkFloats(kTile, dim, iters) floats.
inline void BackwardRange(const float* z, const float* alpha, const float* gamma,
                          const float* dy, float* dz, float* part, float* work, int64_t first,
                          int64_t last, int views, int dim, int iters) {
  const float *zp[kTile], *ap[kTile], *gp[kTile], *dyp[kTile];
  float *dzp[kTile], *dap[kTile], *dgp[kTile];
  auto set = [&](int k, int64_t r) {
    const int v = static_cast<int>(r % views);
    zp[k] = z + r * dim;
    ap[k] = alpha + static_cast<int64_t>(v) * iters;
    gp[k] = gamma + static_cast<int64_t>(v) * dim;
    dyp[k] = dy + r * dim;
    dzp[k] = dz + r * dim;
    dgp[k] = part + static_cast<int64_t>(v) * (dim + iters);
    dap[k] = dgp[k] + dim;
  };
  // Row-views of a tile may share a view (views < kTile): their partials then alias, which
  // is fine, the tile updates them one after the other.
  int64_t i = first;
  for (; i + kBackTile <= last; i += kBackTile) {
    for (int k = 0; k < kBackTile; ++k) set(k, i + k);
    TileBackward<kBackTile>(zp, ap, gp, dyp, dzp, dap, dgp, work, dim, iters);
  }
  for (; i < last; ++i) {
    set(0, i);
    TileBackward<1>(zp, ap, gp, dyp, dzp, dap, dgp, work, dim, iters);
  }
}

}  // namespace cpu
}  // namespace ssr_tf

#endif  // SSR_TF_OPS_CC_KERNELS_SSR_ICS_CPU_H_
