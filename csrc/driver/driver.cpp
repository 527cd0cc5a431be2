// A small C++ test/driver of the core without Python or torch: random inputs, the ops, float64 CPU references.
// Exit status 0 when every check passes. Also the target of compute-sanitizer (memcheck / racecheck) runs.
//   resefa_driver [P d R]      (defaults 1031 37 5)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "resefa/ops.h"

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e_));                     \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

static int failures = 0;

static void expect(const resefa::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.message.c_str());
    std::exit(3);
  }
}

static void report(const char* name, double err, double tol) {
  const bool ok = err <= tol;  // NaN fails
  failures += ok ? 0 : 1;
  std::printf("%-28s rel err %.2e (tol %.1e) %s\n", name, err, tol, ok ? "ok" : "FAIL");
}

template <typename T>
static T* to_device(const std::vector<T>& host) {
  T* ptr = nullptr;
  CHECK_CUDA(cudaMalloc(&ptr, host.size() * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return ptr;
}

template <typename T>
static std::vector<T> to_host(const T* ptr, size_t n) {
  std::vector<T> host(n);
  CHECK_CUDA(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

static void* plain_alloc(size_t bytes, void*) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, bytes));
  return p;
}
static void plain_free(void* p, void*) { cudaFree(p); }

int main(int argc, char** argv) {
  const int64_t P = argc > 3 ? std::atoll(argv[1]) : 1031, d = argc > 3 ? std::atoll(argv[2]) : 37,
                R = argc > 3 ? std::atoll(argv[3]) : 5;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  std::vector<float> J(P * d), w(R * P);
  for (auto& v : J) v = normal(rng);
  for (auto& v : w) v = uniform(rng) < 0.3f ? 0.f : uniform(rng);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t blas;
  cusolverDnHandle_t solver;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cusolverDnCreate(&solver) != CUSOLVER_STATUS_SUCCESS) return 4;

  // masked Grams, fp32, with a workspace small enough to force several pixel blocks
  float *dJ = to_device(J), *dw = to_device(w), *grams, *traces;
  CHECK_CUDA(cudaMalloc(&grams, R * d * d * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&traces, R * sizeof(float)));
  resefa::MaskedGramParams p;
  p.jacobian = dJ, p.weights = dw, p.grams = grams, p.traces = traces, p.P = P, p.d = d, p.R = R;
  const size_t bytes = resefa::masked_grams_workspace_bytes(p, 300 * d * 4 * R, nullptr, nullptr);
  void* workspace = plain_alloc(bytes, nullptr);
  expect(resefa::masked_grams(p, workspace, bytes, blas, stream), "masked_grams");
  CHECK_CUDA(cudaStreamSynchronize(stream));
  auto G = to_host(grams, R * d * d);
  auto tr = to_host(traces, R);
  double num = 0, den = 0, tnum = 0, tden = 0;
  for (int64_t r = 0; r < R; ++r) {
    double t = 0;
    for (int64_t q = 0; q < P; ++q) {
      double e = 0;
      for (int64_t j = 0; j < d; ++j) e += double(J[q * d + j]) * J[q * d + j];
      t += w[r * P + q] * e;
    }
    tnum += (tr[r] - t) * (tr[r] - t), tden += t * t;
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) {
        double s = 0;
        for (int64_t q = 0; q < P; ++q) s += double(J[q * d + i]) * w[r * P + q] * J[q * d + j];
        num += (G[(r * d + i) * d + j] - s) * (G[(r * d + i) * d + j] - s), den += s * s;
      }
  }
  report("masked_grams fp32", std::sqrt(num / den), 1e-5);
  report("traces", std::sqrt(tnum / tden), 1e-5);

  // gather from boxes on a 3 x 7 x 9 grid, k = d
  const int64_t C = 3, H = 7, W = 9, k = d, nb = 3;
  std::vector<float> jv(C * H * W * k), scale(nb * k);
  for (auto& v : jv) v = normal(rng);
  for (auto& v : scale) v = uniform(rng);
  std::vector<int32_t> boxes = {3, 4, 2, 3, 0, 0, 5, 5, 6, 8, 10, 10};
  resefa::GatherParams g;
  float *djv = to_device(jv), *dscale = to_device(scale), *out;
  int32_t *dboxes = to_device(boxes), *counts;
  CHECK_CUDA(cudaMalloc(&counts, nb * sizeof(int32_t)));
  g.jv = djv, g.scale = dscale, g.boxes = dboxes, g.counts = counts, g.C = C, g.H = H, g.W = W, g.k = k, g.R = nb;
  expect(resefa::region_counts(g, nullptr, stream), "region_counts");
  auto hc = to_host(counts, nb);
  int64_t max_rows = 0;
  for (auto c : hc) max_rows = c > max_rows ? c : max_rows;
  g.max_rows = max_rows;
  CHECK_CUDA(cudaMalloc(&out, nb * max_rows * k * sizeof(float)));
  g.out = out;
  expect(resefa::gather_scaled_rows(g, nullptr, stream), "gather_scaled_rows");
  auto ho = to_host(out, nb * max_rows * k);
  double gerr = 0;
  for (int64_t r = 0; r < nb; ++r) {
    const int64_t cx = boxes[4 * r], cy = boxes[4 * r + 1], h = boxes[4 * r + 2], wd = boxes[4 * r + 3];
    const int64_t r0 = std::max<int64_t>(cx - h / 2, 0), r1 = std::min<int64_t>(cx - h / 2 + h, H);
    const int64_t c0 = std::max<int64_t>(cy - wd / 2, 0), c1 = std::min<int64_t>(cy - wd / 2 + wd, W);
    int64_t i = 0;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t a = r0; a < r1; ++a)
        for (int64_t b = c0; b < c1; ++b, ++i)
          for (int64_t j = 0; j < k; ++j)
            gerr = std::max(gerr, std::fabs(ho[(r * max_rows + i) * k + j] -
                                            double(jv[((c * H + a) * W + b) * k + j]) * scale[r * k + j]));
    if (i != hc[r]) gerr = INFINITY;
    for (; i < max_rows; ++i)
      for (int64_t j = 0; j < k; ++j) gerr = std::max(gerr, double(std::fabs(ho[(r * max_rows + i) * k + j])));
  }
  report("gather boxes (max abs)", gerr, 1e-6);

  // top-k eigenpairs of the first Gram (symmetric positive semi-definite), float32
  const int64_t topk = 3;
  float *values, *vectors;
  CHECK_CUDA(cudaMalloc(&values, topk * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&vectors, topk * d * sizeof(float)));
  resefa::DeviceBuffer alloc{plain_alloc, plain_free, nullptr};
  expect(resefa::syevdx_topk(solver, CUDA_R_32F, grams, d, topk, values, vectors, alloc, stream), "syevdx_topk");
  auto hv = to_host(values, topk), hx = to_host(vectors, topk * d);
  double res = 0;  // ‖G x − λ x‖ / (λ ‖x‖) with the unmodified Gram G (host copy)
  for (int64_t t = 0; t < topk; ++t) {
    double rn = 0, xn = 0;
    for (int64_t i = 0; i < d; ++i) {
      double s = 0;
      for (int64_t j = 0; j < d; ++j) s += G[i * d + j] * hx[t * d + j];
      rn += (s - hv[t] * hx[t * d + i]) * (s - hv[t] * hx[t * d + i]), xn += hx[t * d + i] * hx[t * d + i];
    }
    res = std::max(res, std::sqrt(rn / xn) / hv[t]);
  }
  report("syevdx_topk residual", res, 1e-5);
  std::printf("%s\n", failures ? "FAILED" : "all checks passed");
  return failures ? 1 : 0;
}
