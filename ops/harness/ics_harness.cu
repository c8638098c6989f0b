// Standalone CUDA harness of the ICS kernels (no TensorFlow): checks forward and backward
// against a scalar C++ reference, then times them and prints GB/s against the device's peak
// (theoretical DRAM bandwidth and a same-run device-to-device cudaMemcpy).
//
//   nvcc -O3 -std=c++17 -arch=native -I ops/cc/kernels ops/harness/ics_harness.cu -o ics_harness
//   ./ics_harness [batch=4096] [views=8] [dim=128] [iters=5]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "ssr_ics_gpu.cu.h"

#define CHECK_CUDA(x)                                                               \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                 \
    }                                                                               \
  } while (0)

namespace {

// Scalar reference of one row-view: forward y, and backward dz plus dalpha/dgamma partials.
void ReferenceRow(const float* z, const float* a, const float* gam, const float* dy, int dim,
                  int iters, float* y, float* dz, float* dalpha, float* dgamma) {
  std::vector<std::vector<float>> xs(iters + 1, std::vector<float>(dim));
  std::vector<float> mu(iters);
  for (int i = 0; i < dim; ++i) xs[0][i] = std::max(z[i], 0.f);
  for (int t = 0; t < iters; ++t) {
    double s = 0;
    for (int i = 0; i < dim; ++i) s += xs[t][i];
    mu[t] = static_cast<float>(s / dim);
    for (int i = 0; i < dim; ++i) xs[t + 1][i] = std::max(xs[t][i] - a[t] * mu[t], 0.f);
  }
  std::vector<float> g(dim);
  for (int i = 0; i < dim; ++i) {
    y[i] = gam[i] * xs[iters][i];
    dgamma[i] += dy[i] * xs[iters][i];
    g[i] = dy[i] * gam[i];
  }
  for (int t = iters - 1; t >= 0; --t) {
    double s = 0;
    for (int i = 0; i < dim; ++i) {
      g[i] = xs[t + 1][i] > 0.f ? g[i] : 0.f;
      s += g[i];
    }
    dalpha[t] -= mu[t] * static_cast<float>(s);
    for (int i = 0; i < dim; ++i) g[i] -= a[t] * static_cast<float>(s) / dim;
  }
  for (int i = 0; i < dim; ++i) dz[i] = z[i] > 0.f ? g[i] : 0.f;
}

float MaxRelErr(const std::vector<float>& got, const std::vector<float>& want) {
  float scale = 1e-6f, err = 0.f;
  for (float w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::fabs(got[i] - want[i]));
  return err / scale;
}

template <typename F>
float TimeMs(F&& f, int reps) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  f();
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaEventRecord(a));
  for (int r = 0; r < reps; ++r) f();
  CHECK_CUDA(cudaEventRecord(b));
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0.f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  return ms / reps;
}

}  // namespace

int main(int argc, char** argv) {
  const long long batch = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int views = argc > 2 ? std::atoi(argv[2]) : 8;
  const int dim = argc > 3 ? std::atoi(argv[3]) : 128;
  const int iters = argc > 4 ? std::atoi(argv[4]) : 5;
  const size_t n = static_cast<size_t>(batch) * views * dim;

  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uni(0.05f, 0.5f);
  std::vector<float> z(n), dy(n), alpha(views * iters), gamma(static_cast<size_t>(views) * dim);
  for (auto& v : z) v = normal(rng);
  for (auto& v : dy) v = normal(rng);
  for (auto& v : alpha) v = uni(rng);
  for (auto& v : gamma) v = 1.f + 0.5f * normal(rng);

  // Reference on a prefix of rows (all of them when small) to keep the CPU part quick.
  const long long ref_rows = std::min<long long>(batch, 512);
  std::vector<float> y_ref(ref_rows * views * dim), dz_ref(y_ref.size());
  std::vector<float> da_ref(alpha.size(), 0.f), dg_ref(gamma.size(), 0.f);
  for (long long r = 0; r < ref_rows * views; ++r) {
    const int v = static_cast<int>(r % views);
    ReferenceRow(&z[r * dim], &alpha[v * iters], &gamma[static_cast<size_t>(v) * dim],
                 &dy[r * dim], dim, iters, &y_ref[r * dim], &dz_ref[r * dim],
                 &da_ref[v * iters], &dg_ref[static_cast<size_t>(v) * dim]);
  }

  float *dz_, *dy_, *dzo, *y_, *mu_, *a_, *g_, *da_, *dg_;
  CHECK_CUDA(cudaMalloc(&dz_, n * 4));
  CHECK_CUDA(cudaMalloc(&dy_, n * 4));
  CHECK_CUDA(cudaMalloc(&dzo, n * 4));
  CHECK_CUDA(cudaMalloc(&y_, n * 4));
  CHECK_CUDA(cudaMalloc(&mu_, static_cast<size_t>(batch) * views * iters * 4));
  CHECK_CUDA(cudaMalloc(&a_, alpha.size() * 4));
  CHECK_CUDA(cudaMalloc(&g_, gamma.size() * 4));
  CHECK_CUDA(cudaMalloc(&da_, alpha.size() * 4));
  CHECK_CUDA(cudaMalloc(&dg_, gamma.size() * 4));
  CHECK_CUDA(cudaMemcpy(dz_, z.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy_, dy.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(a_, alpha.data(), alpha.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(g_, gamma.data(), gamma.size() * 4, cudaMemcpyHostToDevice));

  // Correctness: forward + backward over the reference rows only.
  using ssr_tf::gpu::LaunchIcsBackward;
  using ssr_tf::gpu::LaunchIcsForward;
  CHECK_CUDA(LaunchIcsForward(0, dz_, a_, g_, y_, mu_, ref_rows, views, dim, iters));
  CHECK_CUDA(LaunchIcsBackward(0, dz_, a_, g_, dy_, dzo, da_, dg_, ref_rows, views, dim, iters));
  std::vector<float> y_got(y_ref.size()), dz_got(y_ref.size()), da_got(alpha.size()),
      dg_got(gamma.size());
  CHECK_CUDA(cudaMemcpy(y_got.data(), y_, y_got.size() * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(dz_got.data(), dzo, dz_got.size() * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(da_got.data(), da_, da_got.size() * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(dg_got.data(), dg_, dg_got.size() * 4, cudaMemcpyDeviceToHost));
  const float e_y = MaxRelErr(y_got, y_ref), e_dz = MaxRelErr(dz_got, dz_ref);
  const float e_da = MaxRelErr(da_got, da_ref), e_dg = MaxRelErr(dg_got, dg_ref);
  const bool ok = e_y < 1e-5f && e_dz < 1e-4f && e_da < 1e-4f && e_dg < 1e-4f;
  std::printf("check (%lld rows): max rel err y %.2e dz %.2e dalpha %.2e dgamma %.2e -> %s\n",
              ref_rows, e_y, e_dz, e_da, e_dg, ok ? "OK" : "FAIL");

  // Bandwidth.
  int dev = 0, clock_khz = 0, bus_bits = 0;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev);
  const double peak = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // DDR: 2 transfers/clock
  const int reps = 50;
  const float fwd_ms = TimeMs([&] { LaunchIcsForward(0, dz_, a_, g_, y_, mu_, batch, views, dim, iters); }, reps);
  const float bwd_ms = TimeMs([&] {
    LaunchIcsBackward(0, dz_, a_, g_, dy_, dzo, da_, dg_, batch, views, dim, iters);
  }, reps);
  const float cpy_ms = TimeMs([&] { cudaMemcpyAsync(y_, dz_, n * 4, cudaMemcpyDeviceToDevice); }, reps);
  // Bytes that must move: forward reads z, writes y (+ the T means); backward reads z, dy,
  // writes dz.
  const double fwd_bytes = 2.0 * n * 4 + 4.0 * batch * views * iters;
  const double fwd_gbps = fwd_bytes / (fwd_ms * 1e6), bwd_gbps = 3.0 * n * 4 / (bwd_ms * 1e6);
  const double cpy_gbps = 2.0 * n * 4 / (cpy_ms * 1e6);
  std::printf("device: %s, theoretical peak %.0f GB/s, memcpy D2D %.0f GB/s\n", prop.name, peak,
              cpy_gbps);
  std::printf("shape B=%lld V=%d D=%d T=%d\n", batch, views, dim, iters);
  std::printf("forward : %.4f ms  %.0f GB/s  %.0f%% of peak  %.0f%% of memcpy\n", fwd_ms, fwd_gbps,
              100 * fwd_gbps / peak, 100 * fwd_gbps / cpy_gbps);
  std::printf("backward: %.4f ms  %.0f GB/s  %.0f%% of peak  %.0f%% of memcpy\n", bwd_ms, bwd_gbps,
              100 * bwd_gbps / peak, 100 * bwd_gbps / cpy_gbps);
  return ok ? 0 : 1;
}
