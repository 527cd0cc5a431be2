// Masked Grams G_r = Jᵀ diag(w_r) J for R masks: weighted copies formed by one kernel (J read once per pixel block
// for every mask of the block), the products by cuBLAS strided-batched GEMM with A = J shared (stride 0).
#include <cuda_bf16.h>

#include <algorithm>

#include "resefa/check.h"

namespace resefa {
namespace {

constexpr int kThreads = 256;

// float -> operand type (explicit: torch builds with __CUDA_NO_BFLOAT16_CONVERSIONS__).
template <typename T>
__device__ inline T to_operand(float v);
template <>
__device__ inline float to_operand<float>(float v) { return v; }
template <>
__device__ inline __nv_bfloat16 to_operand<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// out[m, i, j] = weights[m0 + m, p0 + i] · J[p0 + i, j] for the block; J itself copied to `plain` when non-null
// (bf16 operands). One thread per element of the J block, looping over the masks: J is read once.
template <typename T>
__global__ void weighted_copies_kernel(const float* __restrict__ jacobian, const float* __restrict__ weights,
                                       T* __restrict__ out, T* __restrict__ plain, int64_t P, int64_t d,
                                       int64_t p0, int64_t rows, int64_t m0, int64_t masks) {
  const int64_t n = rows * d;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / d;
    const float v = jacobian[(p0 + i) * d + (e - i * d)];
    if (plain != nullptr) plain[e] = to_operand<T>(v);
    for (int64_t m = 0; m < masks; ++m) out[m * n + e] = to_operand<T>(weights[(m0 + m) * P + p0 + i] * v);
  }
}

__global__ void row_energies_kernel(const float* __restrict__ jacobian, float* __restrict__ energies, int64_t P,
                                    int64_t d) {
  // one warp per row
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t p = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; p < P; p += warps) {
    float s = 0.f;
    for (int64_t j = lane; j < d; j += 32) {
      const float v = jacobian[p * d + j];
      s += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) energies[p] = s;
  }
}

// traces[r] = Σ_p weights[r, p] e_p: one block per mask.
__global__ void weighted_sums_kernel(const float* __restrict__ weights, const float* __restrict__ energies,
                                     float* __restrict__ traces, int64_t P) {
  __shared__ float partial[kThreads / 32];
  const int64_t r = blockIdx.x;
  float s = 0.f;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) s += weights[r * P + p] * energies[p];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) traces[r] = s;
  }
}

int grid_for(int64_t n) { return int(std::min<int64_t>(ceil_div(n, kThreads), 132 * 16)); }

size_t element_bytes(Precision p) { return p == Precision::kBf16 ? 2 : 4; }

}  // namespace

Status row_energies(const float* jacobian, float* energies, int64_t P, int64_t d, cudaStream_t stream) {
  RESEFA_REQUIRE(jacobian != nullptr && energies != nullptr, "row_energies: null pointer");
  RESEFA_REQUIRE(P > 0 && d > 0, "row_energies: P and d must be positive; got P=" << P << ", d=" << d);
  row_energies_kernel<<<grid_for(P * 32), kThreads, 0, stream>>>(jacobian, energies, P, d);
  RESEFA_LAUNCHED("row_energies_kernel");
  return Status::Ok();
}

size_t masked_grams_workspace_bytes(const MaskedGramParams& p, size_t budget_bytes, int64_t* pixel_block,
                                    int64_t* mask_block) {
  const size_t es = element_bytes(p.precision);
  const size_t row_bytes = size_t(p.d) * es;
  // All masks in one block if a block of >= 2048 pixels (or all of P) fits in the budget; else fewer masks.
  int64_t masks = p.R;
  int64_t rows = std::min<int64_t>(p.P, int64_t(budget_bytes / std::max<size_t>(1, masks * row_bytes)));
  if (rows < std::min<int64_t>(p.P, 2048)) {
    rows = std::min<int64_t>(p.P, 2048);
    masks = std::max<int64_t>(1, std::min<int64_t>(p.R, int64_t(budget_bytes / (rows * row_bytes))));
  }
  rows = std::max<int64_t>(rows, 1);
  if (pixel_block) *pixel_block = rows;
  if (mask_block) *mask_block = masks;
  size_t bytes = size_t(masks) * rows * row_bytes;             // weighted copies
  if (p.precision == Precision::kBf16) bytes += rows * row_bytes;  // bf16 copy of the J block
  bytes += size_t(p.P) * sizeof(float) + 256;                  // row energies (+ alignment slack)
  return bytes;
}

Status masked_grams(const MaskedGramParams& p, void* workspace, size_t workspace_bytes, cublasHandle_t blas,
                    cudaStream_t stream) {
  RESEFA_REQUIRE(p.jacobian && p.weights && p.grams && p.traces, "masked_grams: null pointer");
  RESEFA_REQUIRE(p.P > 0 && p.d > 0 && p.R > 0,
                 "masked_grams: P, d, R must be positive; got P=" << p.P << ", d=" << p.d << ", R=" << p.R);
  RESEFA_REQUIRE(p.d <= (int64_t(1) << 31) - 1 && p.P <= (int64_t(1) << 31) - 1,
                 "masked_grams: P and d must fit cuBLAS's int dimensions");
  // Recover the block sizes the workspace was sized for.
  int64_t rows = 0, masks = 0;
  size_t needed = 0;
  for (size_t budget = workspace_bytes; budget > 0; budget = budget * 3 / 4) {
    needed = masked_grams_workspace_bytes(p, budget, &rows, &masks);
    if (needed <= workspace_bytes) break;
  }
  RESEFA_REQUIRE(needed <= workspace_bytes && workspace != nullptr,
                 "masked_grams: workspace of " << workspace_bytes << " bytes is too small");
  const size_t es = element_bytes(p.precision);
  char* base = static_cast<char*>(workspace);
  void* copies = base;
  void* plain = p.precision == Precision::kBf16 ? base + size_t(masks) * rows * p.d * es : nullptr;
  size_t offset = size_t(masks) * rows * p.d * es + (plain ? size_t(rows) * p.d * es : 0);
  offset = (offset + 255) / 256 * 256;
  float* energies = reinterpret_cast<float*>(base + offset);

  RESEFA_TRY(row_energies(p.jacobian, energies, p.P, p.d, stream));
  weighted_sums_kernel<<<unsigned(p.R), kThreads, 0, stream>>>(p.weights, energies, p.traces, p.P);
  RESEFA_LAUNCHED("weighted_sums_kernel");

  cublasMath_t saved_mode;
  RESEFA_CUBLAS(cublasGetMathMode(blas, &saved_mode));
  RESEFA_CUBLAS(cublasSetStream(blas, stream));
  // fp32 must not silently become TF32 through the handle's math mode (torch sets it from allow_tf32): default
  // math, and the compute type alone says whether tensor cores may round the operands.
  RESEFA_CUBLAS(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
  const cudaDataType io = p.precision == Precision::kBf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = p.precision == Precision::kTf32   ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                        : CUBLAS_COMPUTE_32F;
  const float one = 1.f, zero = 0.f;
  Status status;
  for (int64_t m0 = 0; m0 < p.R && status.ok(); m0 += masks) {
    const int64_t mb = std::min(masks, p.R - m0);
    for (int64_t p0 = 0; p0 < p.P; p0 += rows) {
      const int64_t pb = std::min(rows, p.P - p0);
      const void* a = nullptr;
      if (p.precision == Precision::kBf16) {
        weighted_copies_kernel<__nv_bfloat16><<<grid_for(pb * p.d), kThreads, 0, stream>>>(
            p.jacobian, p.weights, static_cast<__nv_bfloat16*>(copies), static_cast<__nv_bfloat16*>(plain), p.P,
            p.d, p0, pb, m0, mb);
        a = plain;
      } else {
        weighted_copies_kernel<float><<<grid_for(pb * p.d), kThreads, 0, stream>>>(
            p.jacobian, p.weights, static_cast<float*>(copies), nullptr, p.P, p.d, p0, pb, m0, mb);
        a = p.jacobian + p0 * p.d;
      }
      status = cuda_status(cudaGetLastError(), "launch of weighted_copies_kernel");
      if (!status.ok()) break;
      // Column-major view: X = Jᵀ is d×pb (ld d); G = X · (X diag w)ᵀ.
      const float* beta = (p0 == 0 && !p.accumulate) ? &zero : &one;
      status = cublas_status(
          cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_T, int(p.d), int(p.d), int(pb), &one, a, io,
                                     int(p.d), 0, copies, io, int(p.d), pb * p.d, beta, p.grams + m0 * p.d * p.d,
                                     CUDA_R_32F, int(p.d), p.d * p.d, int(mb), compute, CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx (masked grams)");
      if (!status.ok()) break;
    }
  }
  cublasSetMathMode(blas, saved_mode);
  return status;
}

}  // namespace resefa
