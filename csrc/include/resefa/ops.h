// resefa_fast CUDA core: masked Grams, the refined route's operands, bulk-path gathers, cuSOLVER top-k routines.
//
// Plain CUDA C++ on raw device pointers and a cudaStream_t; no torch headers. Every op has one host launcher
// that checks its arguments and each launch and returns a Status; the binding (csrc/bindings.cpp) turns a
// non-ok Status into a Python exception (kBadArgument -> ResefaError, the rest -> RuntimeError).
// Row-major layouts throughout (torch's); symbols as in DESIGN.md: P pixels, d latent dims, R regions, k directions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

namespace resefa {

enum class StatusCode { kOk = 0, kBadArgument, kCudaError, kCublasError, kCusolverError, kNotPositiveDefinite,
                        kNoConvergence };

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;
  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
};

enum class Precision { kFp32 = 0, kTf32 = 1, kBf16 = 2 };

// ---------------------------------------------------------------------------------------------------------------
// Masked Grams: grams[r] = Jᵀ diag(weights[r]) J, traces[r] = Σ_p weights[r,p] ‖J_p‖².
// Design: a small kernel forms the weighted copies (w_r ∘ J) for a block of masks and pixels in the workspace,
// cuBLAS strided-batched GEMM (A = J shared, stride 0) multiplies; J is read once per pixel block for all masks
// of the block. Pixels stream in blocks of `pixel_block` rows so the workspace stays bounded.
struct MaskedGramParams {
  const float* jacobian = nullptr;  // [P, d]
  const float* weights = nullptr;   // [R, P]
  float* grams = nullptr;           // [R, d, d]
  float* traces = nullptr;          // [R]
  int64_t P = 0, d = 0, R = 0;
  bool accumulate = false;          // add into grams (traces are always this call's)
  Precision precision = Precision::kFp32;
};

// Bytes of device workspace masked_grams needs (callers allocate it; the binding uses torch's allocator).
size_t masked_grams_workspace_bytes(const MaskedGramParams& p, size_t budget_bytes, int64_t* pixel_block,
                                    int64_t* mask_block);
Status masked_grams(const MaskedGramParams& p, void* workspace, size_t workspace_bytes, cublasHandle_t blas,
                    cudaStream_t stream);

// e_p = ‖J_p‖².
Status row_energies(const float* jacobian /* [P, d] */, float* energies /* [P] */, int64_t P, int64_t d,
                    cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// Refined-route operands in one pass over J (one kernel, J read once):
//   scaled[p, j] = fp16(fp16(J[p, j] · c_j) · r_p)   bit for bit torch's `torch.mul(J, c, out=half)` then
//                  `half.mul_(r[:, None])` (float32 products, each rounded to nearest even once),
//   exact[p, j]  = (double) J[p, j]                  (skipped when `exact` is null),
//   energies[p]  = Σ_j (double) J[p, j]²             (double accumulation in a fixed order: deterministic).
// Design: one 256-thread block per row, float4 loads / 8-byte float16 and 16-byte float64 stores when d % 4 == 0 and
// the pointers are aligned (scalar accesses otherwise), cub block reduction for the energy.
struct RefinedPrepParams {
  const float* jacobian = nullptr;      // [P, d]
  const float* column_scale = nullptr;  // [d]
  const __half* row_scale = nullptr;    // [P]
  __half* scaled = nullptr;             // [P, d] (the float16 copy `half`)
  double* exact = nullptr;              // [P, d], or null: not written
  double* energies = nullptr;           // [P]
  int64_t P = 0, d = 0;
};
Status prepare_refined_operands(const RefinedPrepParams& p, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// Bulk path gather: out[r, i, :] = √m_r(p_i) · jv[p_i, :] · scale[r, :] for the i-th row p_i of region r
// (pixel index p = c·H·W + h·W + w, rows in increasing p), zero rows for i ≥ counts[r].
struct GatherParams {
  const float* jv = nullptr;       // [P, k], P = C·H·W
  const float* scale = nullptr;    // [R, k]
  const int32_t* boxes = nullptr;  // [R, 4] (center_x, center_y, height, width), x indexes rows; or null
  const float* masks = nullptr;    // [R, H, W] weights in [0, 1]; or null (exactly one of boxes / masks)
  float* out = nullptr;            // [R, max_rows, k]
  int32_t* counts = nullptr;       // [R]
  int64_t C = 0, H = 0, W = 0, k = 0, R = 0, max_rows = 0;
};

// Region row counts ([R], device) without materialising masks; a sync-free kernel. For masks it also writes the
// compacted pixel list of each region into `pixel_lists` ([R, H·W] int32, workspace).
Status region_counts(const GatherParams& p, int32_t* pixel_lists, cudaStream_t stream);
// Requires region_counts to have run on the same stream with the same pixel_lists.
Status gather_scaled_rows(const GatherParams& p, const int32_t* pixel_lists, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// Tangent affine map of the Jacobian engine's explicit tangents (k tangents of a [C, Q] activation, Q = H·W):
//   out[t, c, q] = base[t, c, q] · A[c, q] + B[c, q] · e[t, c] + X[c, q] · f[t, c]
// base / out in the tangents' dtype, everything else float32; A null means 1, B / e and X / f null mean the term is
// absent. Arithmetic in float32 (two FMAs), one rounding to the tangents' dtype. out must not alias base.
enum class TangentType { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
struct TangentAffineParams {
  const void* base = nullptr;  // [k, C, Q]
  void* out = nullptr;         // [k, C, Q]
  TangentType type = TangentType::kFloat32;
  const float* A = nullptr;    // [C, Q]
  const float* B = nullptr;    // [C, Q]
  const float* e = nullptr;    // [k, C]
  const float* X = nullptr;    // [C, Q]
  const float* f = nullptr;    // [k, C]
  int64_t k = 0, C = 0, Q = 0;
};
Status tangent_affine(const TangentAffineParams& p, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// cuSOLVER routines. Matrices are symmetric, so row- vs column-major does not matter on input; eigenvectors come
// back as rows of `vectors` ([k, n]), eigenvalues descending.
struct DeviceBuffer {  // workspace supplied by the caller's allocator
  void* (*allocate)(size_t bytes, void* ctx) = nullptr;
  void (*release)(void* ptr, void* ctx) = nullptr;
  void* ctx = nullptr;
};

// dtype: CUDA_R_32F or CUDA_R_64F. `a` [n, n] is overwritten (its first k rows hold the vectors, ascending);
// values [k] and vectors [k, n] descending.
Status syevdx_topk(cusolverDnHandle_t solver, cudaDataType dtype, void* a, int64_t n, int64_t k, void* values,
                   void* vectors, const DeviceBuffer& alloc, cudaStream_t stream);
// Generalised A x = λ B x, B SPD; vectors B-orthonormal (xᵀ B x = 1). a, b overwritten. kNotPositiveDefinite when
// the Cholesky factorisation of B fails.
Status sygvdx_topk(cusolverDnHandle_t solver, cudaDataType dtype, void* a, void* b, int64_t n, int64_t k,
                   void* values, void* vectors, const DeviceBuffer& alloc, cudaStream_t stream);
// Many symmetric eigenproblems at once: a [batch, n, n] overwritten by eigenvectors (rows, ascending),
// values [batch, n] ascending (LAPACK order).
Status syev_batched(cusolverDnHandle_t solver, cudaDataType dtype, void* a, int64_t batch, int64_t n,
                    void* values, const DeviceBuffer& alloc, cudaStream_t stream);
// Randomised truncated SVD (cusolverDnXgesvdr) of a [m, n] row-major: top-k singular values s [k] and
// right singular vectors v [k, n] (rows). `a` is overwritten. oversample p, power iterations niters.
Status gesvdr_topk(cusolverDnHandle_t solver, cudaDataType dtype, void* a, int64_t m, int64_t n, int64_t k,
                   int64_t oversample, int64_t niters, void* s, void* v, const DeviceBuffer& alloc,
                   cudaStream_t stream);

}  // namespace resefa
