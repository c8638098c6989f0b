// Single-thread CPU throughput of the ICS kernels vs memcpy (no TensorFlow), timed with the
// thread's CPU clock so time the thread spends descheduled on a shared machine is not counted.
//
//   g++ -O3 -march=native -std=c++17 -I ops/cc/kernels ops/harness/ics_cpu_bench.cc -o ics_cpu_bench
//   ./ics_cpu_bench [batch=4096] [views=8] [dim=128] [iters=5]
// Bytes that must move: forward reads z, writes y (+ the means); backward reads z, dy, mu and
// writes dz; memcpy copies n floats (read n, write n).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "ssr_ics_cpu.h"

namespace {

double CpuMs() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

template <typename F>
double BestMs(F&& f, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = CpuMs();
    f();
    best = std::min(best, CpuMs() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const long long batch = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int views = argc > 2 ? std::atoi(argv[2]) : 8;
  const int dim = argc > 3 ? std::atoi(argv[3]) : 128;
  const int iters = argc > 4 ? std::atoi(argv[4]) : 5;
  const long long rv = batch * views, n = rv * dim;
  std::vector<float> z(n), dy(n), y(n), dz(n), copy(n), mu(rv * iters);
  std::vector<float> alpha(views * iters, 0.2f), gamma(static_cast<size_t>(views) * dim, 1.f);
  std::vector<float> part(static_cast<size_t>(views) * (dim + iters), 0.f);
  std::vector<float> work(ssr_tf::cpu::RangeWorkFloats(dim, iters));
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (auto& v : z) v = normal(rng);
  for (auto& v : dy) v = normal(rng);
  const int reps = 15;
  const double fwd = BestMs([&] {
    ssr_tf::cpu::ForwardRange(z.data(), alpha.data(), gamma.data(), y.data(), mu.data(), 0, rv,
                              views, dim, iters);
  }, reps);
  const double bwd = BestMs([&] {
    ssr_tf::cpu::BackwardRange(z.data(), alpha.data(), gamma.data(), mu.data(), dy.data(),
                               dz.data(), part.data(), work.data(), 0, rv, views, dim, iters);
  }, reps);
  const double cpy = BestMs([&] { std::memcpy(copy.data(), z.data(), n * 4); }, reps);
  const double mb = 1e-6 * 4.0, mus = rv * iters * 4.0 * 1e-6;
  const double fwd_mb = 2 * n * mb + mus, bwd_mb = 3 * n * mb + mus, cpy_mb = 2 * n * mb;
  std::printf("one thread, B=%lld V=%d D=%d T=%d (CPU time, best of %d)\n", batch, views, dim,
              iters, reps);
  std::printf("memcpy   %8.3f ms  %6.2f GB/s\n", cpy, cpy_mb / cpy);
  std::printf("forward  %8.3f ms  %6.2f GB/s  %4.0f%% of memcpy\n", fwd, fwd_mb / fwd,
              100 * (fwd_mb / fwd) / (cpy_mb / cpy));
  std::printf("backward %8.3f ms  %6.2f GB/s  %4.0f%% of memcpy\n", bwd, bwd_mb / bwd,
              100 * (bwd_mb / bwd) / (cpy_mb / cpy));
  std::printf("fwd+bwd  %8.3f ms  %6.2f GB/s  %4.0f%% of memcpy\n", fwd + bwd,
              (fwd_mb + bwd_mb) / (fwd + bwd), 100 * ((fwd_mb + bwd_mb) / (fwd + bwd)) / (cpy_mb / cpy));
  return 0;
}
