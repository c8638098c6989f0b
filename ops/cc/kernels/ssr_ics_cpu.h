// Per-row-view CPU routines of ICS, written with GCC/Clang vector extensions (8 floats with
// AVX, 4 with the portable SSE2 baseline), so they vectorize at -O3 without -ffast-math.
//
// Forward:  x0 = relu(z);  mu_t = mean(x_t);  x_{t+1} = relu(x_t - alpha_t mu_t);  y = gamma x_T.
// Backward: u = g_{t+1} [x_{t+1} > 0], s = sum(u);  g_T = dy gamma;  g_t = u - alpha_t s / D;
//           dalpha_t -= mu_t s;  dgamma += dy x_T;  dz = g_0 [z > 0].
//
// Fast path (every alpha_t >= 0, so every threshold theta_t = alpha_t mu_t >= 0): then
// relu(relu(a) - theta) = relu(a - theta), hence x_t = relu(z - Theta_t) with the cumulative
// Theta_t = theta_0 + ... + theta_{t-1}. The forward is T read-only sum passes over z (in L1)
// plus one write of y, and saves mu [T] per row-view; the backward rebuilds every survival
// mask as [z - Theta_{t+1} > 0] from z and mu, with no state recomputation. Negative alphas
// take the general path (sequential states, recomputed in the backward).
// Each pass ends in a reduction the next pass needs, so one row-view is latency bound; the
// fast routines interleave K row-views so their dependency chains overlap.
#ifndef SSR_TF_OPS_CC_KERNELS_SSR_ICS_CPU_H_
#define SSR_TF_OPS_CC_KERNELS_SSR_ICS_CPU_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace ssr_tf {
namespace cpu {

#if defined(__AVX__)
constexpr int kW = 8;
#else
constexpr int kW = 4;
#endif
typedef float FV __attribute__((vector_size(kW * sizeof(float))));
typedef int32_t IV __attribute__((vector_size(kW * sizeof(int32_t))));

inline FV Load(const float* p) {
  FV v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, FV v) { std::memcpy(p, &v, sizeof(v)); }
inline FV Splat(float x) { return x - FV{}; }
// max(v, 0): one vmaxps/maxps where available (the generic form is a compare + and).
inline FV Max0(FV v) {
#if defined(__AVX__)
  return reinterpret_cast<FV>(_mm256_max_ps(reinterpret_cast<__m256>(v), _mm256_setzero_ps()));
#elif defined(__SSE__)
  return reinterpret_cast<FV>(_mm_max_ps(reinterpret_cast<__m128>(v), _mm_setzero_ps()));
#else
  return v > FV{} ? v : FV{};
#endif
}
// a where the mask lanes are set (all ones), else 0.
inline FV Select(IV mask, FV a) { return reinterpret_cast<FV>(reinterpret_cast<IV>(a) & mask); }
typedef float F4 __attribute__((vector_size(4 * sizeof(float))));
// Horizontal sum with shuffles (a fixed tree: (0+4, 1+5, 2+6, 3+7), then pairs).
inline float Reduce(FV v) {
#if defined(__AVX__)
  const F4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
  const F4 a = v;
#endif
  const F4 b = a + __builtin_shufflevector(a, a, 2, 3, 0, 1);
  return b[0] + b[1];
}

// sum_i f(i) over [0, n) with four vector accumulators (short add chains, fixed order);
// `vec(i)` gives kW lanes at i and may store them, `one(i)` a single tail element.
template <typename Vec, typename One>
inline float SumOf(int n, Vec vec, One one) {
  FV a0{}, a1{}, a2{}, a3{};
  int i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    a0 += vec(i);
    a1 += vec(i + kW);
    a2 += vec(i + 2 * kW);
    a3 += vec(i + 3 * kW);
  }
  for (; i + kW <= n; i += kW) a0 += vec(i);
  float tail = 0.f;
  for (; i < n; ++i) tail += one(i);
  return Reduce((a0 + a1) + (a2 + a3)) + tail;
}

// For i in [0, n): `vec(i)` handles kW lanes at i, `one(i)` a single tail element. Explicit
// vectors keep masked loops branch free (a scalar `z > 0 ? g : 0` mispredicts half the time).
template <typename Vec, typename One>
inline void ForEach(int n, Vec vec, One one) {
  int i = 0;
  for (; i + kW <= n; i += kW) vec(i);
  for (; i < n; ++i) one(i);
}

// dz = (g - c) [z > 0].
inline void MaskedOut(const float* z, const float* g, float c, float* dz, int n) {
  const FV cv = Splat(c);
  ForEach(
      n, [=](int i) { Store(dz + i, Select(Load(z + i) > FV{}, Load(g + i) - cv)); },
      [=](int i) { dz[i] = z[i] > 0.f ? g[i] - c : 0.f; });
}

// sum_i relu(z_i - theta), read only.
inline float ShiftedSum(const float* z, float theta, int n) {
  const FV t = Splat(theta);
  return SumOf(n, [=](int i) { return Max0(Load(z + i) - t); },
               [=](int i) { return std::max(z[i] - theta, 0.f); });
}

// dst = relu(src - theta) (dst may be src); returns sum(dst).
inline float ShrinkSum(const float* src, float* dst, float theta, int n) {
  const FV t = Splat(theta);
  return SumOf(
      n,
      [=](int i) {
        const FV v = Max0(Load(src + i) - t);
        Store(dst + i, v);
        return v;
      },
      [=](int i) { return dst[i] = std::max(src[i] - theta, 0.f); });
}

// g = (g - c) [alive], alive = [z - theta > 0]; returns sum(g).
inline float MaskSumZ(float* g, const float* z, float theta, float c, int n) {
  const FV t = Splat(theta), cv = Splat(c);
  return SumOf(
      n,
      [=](int i) {
        const FV v = Select(Load(z + i) - t > FV{}, Load(g + i) - cv);
        Store(g + i, v);
        return v;
      },
      [=](int i) { return g[i] = z[i] - theta > 0.f ? g[i] - c : 0.f; });
}

// g = (g - c) [next > 0]; returns sum(g).
inline float MaskSum(float* g, const float* next, float c, int n) {
  const FV cv = Splat(c);
  return SumOf(
      n,
      [=](int i) {
        const FV v = Select(Load(next + i) > FV{}, Load(g + i) - cv);
        Store(g + i, v);
        return v;
      },
      [=](int i) { return g[i] = next[i] > 0.f ? g[i] - c : 0.f; });
}

inline bool NonNegative(const float* alpha, int iters) {
  for (int t = 0; t < iters; ++t) {
    if (!(alpha[t] >= 0.f)) return false;
  }
  return true;
}

// ---- general path (any alpha), one row-view ----------------------------------------------

// y = ICS(z), mu [T] = the means, with the sequential states.
inline void SeqForward(const float* z, const float* alpha, const float* gamma, float* y,
                       float* mu, int dim, int iters) {
  float sum = ShrinkSum(z, y, 0.f, dim);
  for (int t = 0; t < iters; ++t) {
    mu[t] = sum / static_cast<float>(dim);
    sum = ShrinkSum(y, y, alpha[t] * mu[t], dim);
  }
  ForEach(
      dim, [=](int i) { Store(y + i, Load(gamma + i) * Load(y + i)); },
      [=](int i) { y[i] = gamma[i] * y[i]; });
}

// Floats of work the backward needs per row-view.
inline int64_t WorkFloats(int dim, int iters) {
  return (iters + 2) * static_cast<int64_t>(dim) + iters;
}

// Backward recomputing the sequential states (x_1..x_T) with SeqForward's arithmetic.
inline void SeqBackward(const float* z, const float* alpha, const float* gamma, const float* dy,
                        float* dz, float* dalpha, float* dgamma, float* work, int dim,
                        int iters) {
  float* g = work;                                     // [D]
  float* x0 = g + dim;                                 // [D]
  float* xs = x0 + dim;                                // [T, D]: x_1..x_T
  float* mu = xs + static_cast<int64_t>(iters) * dim;  // [T]
  float sum = ShrinkSum(z, x0, 0.f, dim);
  for (int t = 0; t < iters; ++t) {
    mu[t] = sum / static_cast<float>(dim);
    const float* prev = t == 0 ? x0 : xs + static_cast<int64_t>(t - 1) * dim;
    sum = ShrinkSum(prev, xs + static_cast<int64_t>(t) * dim, alpha[t] * mu[t], dim);
  }
  const float* xt = iters > 0 ? xs + static_cast<int64_t>(iters - 1) * dim : x0;
  ForEach(
      dim,
      [=](int i) {
        const FV d = Load(dy + i);
        Store(dgamma + i, Load(dgamma + i) + d * Load(xt + i));
        Store(g + i, d * Load(gamma + i));
      },
      [=](int i) {
        dgamma[i] += dy[i] * xt[i];
        g[i] = dy[i] * gamma[i];
      });
  float c = 0.f;  // g_t = u - c: the subtraction is folded into the next pass
  for (int t = iters - 1; t >= 0; --t) {
    const float s = MaskSum(g, xs + static_cast<int64_t>(t) * dim, c, dim);
    dalpha[t] -= mu[t] * s;
    c = alpha[t] * s / static_cast<float>(dim);
  }
  MaskedOut(z, g, c, dz, dim);
}

// ---- fast path (alpha >= 0), K row-views interleaved -------------------------------------

template <int K>
inline void FastForward(const float* const* z, const float* const* alpha,
                        const float* const* gamma, float* const* y, float* const* mu, int dim,
                        int iters) {
  float theta[K];
  for (int k = 0; k < K; ++k) theta[k] = 0.f;
  for (int t = 0; t < iters; ++t) {
    for (int k = 0; k < K; ++k) {
      mu[k][t] = ShiftedSum(z[k], theta[k], dim) / static_cast<float>(dim);
      theta[k] += alpha[k][t] * mu[k][t];
    }
  }
  for (int k = 0; k < K; ++k) {
    const float* zk = z[k];
    const float* gk = gamma[k];
    float* yk = y[k];
    const float th = theta[k];
    const FV tv = Splat(th);
    ForEach(
        dim, [=](int i) { Store(yk + i, Load(gk + i) * Max0(Load(zk + i) - tv)); },
        [=](int i) { yk[i] = gk[i] * std::max(zk[i] - th, 0.f); });
  }
}

// dalpha[k] [T], dgamma[k] [D] are accumulated (partials owned by the caller); work: K * D.
template <int K>
inline void FastBackward(const float* const* z, const float* const* alpha,
                         const float* const* gamma, const float* const* mu,
                         const float* const* dy, float* const* dz, float* const* dalpha,
                         float* const* dgamma, float* work, int dim, int iters) {
  constexpr int kMaxT = 64;  // callers use SeqBackward beyond this
  float theta[K][kMaxT + 1], c[K];
  for (int k = 0; k < K; ++k) {
    theta[k][0] = 0.f;
    for (int t = 0; t < iters; ++t) theta[k][t + 1] = theta[k][t] + alpha[k][t] * mu[k][t];
    const float *zk = z[k], *dyk = dy[k], *gam = gamma[k];
    float *g = work + static_cast<int64_t>(k) * dim, *dg = dgamma[k];
    const float th = theta[k][iters];
    const FV tv = Splat(th);
    ForEach(
        dim,
        [=](int i) {
          const FV d = Load(dyk + i);
          Store(dg + i, Load(dg + i) + d * Max0(Load(zk + i) - tv));
          Store(g + i, d * Load(gam + i));
        },
        [=](int i) {
          dg[i] += dyk[i] * std::max(zk[i] - th, 0.f);
          g[i] = dyk[i] * gam[i];
        });
    c[k] = 0.f;
  }
  for (int t = iters - 1; t >= 0; --t) {
    for (int k = 0; k < K; ++k) {
      const float s = MaskSumZ(work + static_cast<int64_t>(k) * dim, z[k], theta[k][t + 1],
                               c[k], dim);
      dalpha[k][t] -= mu[k][t] * s;
      c[k] = alpha[k][t] * s / static_cast<float>(dim);
    }
  }
  for (int k = 0; k < K; ++k) MaskedOut(z[k], work + static_cast<int64_t>(k) * dim, c[k], dz[k], dim);
}

constexpr int kTile = 4;

// Forward of row-views [first, last) of contiguous z, y [rows * views, dim], mu [.., T].
inline void ForwardRange(const float* z, const float* alpha, const float* gamma, float* y,
                         float* mu, int64_t first, int64_t last, int views, int dim, int iters) {
  const float *zp[kTile], *ap[kTile], *gp[kTile];
  float *yp[kTile], *mp[kTile];
  auto set = [&](int k, int64_t r) {
    const int v = static_cast<int>(r % views);
    zp[k] = z + r * dim;
    ap[k] = alpha + static_cast<int64_t>(v) * iters;
    gp[k] = gamma + static_cast<int64_t>(v) * dim;
    yp[k] = y + r * dim;
    mp[k] = mu + r * iters;
  };
  int64_t i = first;
  for (; i + kTile <= last; i += kTile) {
    bool fast = true;
    for (int k = 0; k < kTile; ++k) {
      set(k, i + k);
      fast = fast && NonNegative(ap[k], iters);
    }
    if (fast) {
      FastForward<kTile>(zp, ap, gp, yp, mp, dim, iters);
    } else {
      for (int k = 0; k < kTile; ++k) SeqForward(zp[k], ap[k], gp[k], yp[k], mp[k], dim, iters);
    }
  }
  for (; i < last; ++i) {
    set(0, i);
    if (NonNegative(ap[0], iters)) {
      FastForward<1>(zp, ap, gp, yp, mp, dim, iters);
    } else {
      SeqForward(zp[0], ap[0], gp[0], yp[0], mp[0], dim, iters);
    }
  }
}

// Floats of work BackwardRange needs.
inline int64_t RangeWorkFloats(int dim, int iters) {
  return std::max<int64_t>(kTile * static_cast<int64_t>(dim), WorkFloats(dim, iters));
}

// Backward of row-views [first, last); the partials of view v are dgamma at part + v*(D+T) and
// dalpha right after it (row-views of a tile may share a view: they update it in turn).
inline void BackwardRange(const float* z, const float* alpha, const float* gamma,
                          const float* mu, const float* dy, float* dz, float* part, float* work,
                          int64_t first, int64_t last, int views, int dim, int iters) {
  const float *zp[kTile], *ap[kTile], *gp[kTile], *mp[kTile], *dyp[kTile];
  float *dzp[kTile], *dap[kTile], *dgp[kTile];
  auto set = [&](int k, int64_t r) {
    const int v = static_cast<int>(r % views);
    zp[k] = z + r * dim;
    ap[k] = alpha + static_cast<int64_t>(v) * iters;
    gp[k] = gamma + static_cast<int64_t>(v) * dim;
    mp[k] = mu + r * iters;
    dyp[k] = dy + r * dim;
    dzp[k] = dz + r * dim;
    dgp[k] = part + static_cast<int64_t>(v) * (dim + iters);
    dap[k] = dgp[k] + dim;
  };
  const bool short_t = iters <= 64;
  auto one = [&](int k) {
    if (short_t && NonNegative(ap[k], iters)) {
      FastBackward<1>(zp + k, ap + k, gp + k, mp + k, dyp + k, dzp + k, dap + k, dgp + k, work,
                      dim, iters);
    } else {
      SeqBackward(zp[k], ap[k], gp[k], dyp[k], dzp[k], dap[k], dgp[k], work, dim, iters);
    }
  };
  int64_t i = first;
  for (; i + kTile <= last; i += kTile) {
    bool fast = short_t;
    for (int k = 0; k < kTile; ++k) {
      set(k, i + k);
      fast = fast && NonNegative(ap[k], iters);
    }
    if (fast) {
      FastBackward<kTile>(zp, ap, gp, mp, dyp, dzp, dap, dgp, work, dim, iters);
    } else {
      for (int k = 0; k < kTile; ++k) one(k);
    }
  }
  for (; i < last; ++i) {
    set(0, i);
    one(0);
  }
}

}  // namespace cpu
}  // namespace ssr_tf

#endif  // SSR_TF_OPS_CC_KERNELS_SSR_ICS_CPU_H_
