// Masked Grams G_r = Jᵀ diag(w_r) J for R masks: weighted copies formed by one kernel (J read once per pixel block
// for every mask of the block), the products by cuBLAS strided-batched GEMM with A = J shared (stride 0).
#include <cuda_bf16.h>

#include <algorithm>

#include "resefa/check.h"
#include "resefa/vector_access.cuh"

namespace resefa {
namespace {

constexpr int kThreads = 256;

// Vector stores of VEC consecutive floats (loads: resefa/vector_access.cuh). VEC = 4 goes through __stwb
// (st.global.wb.v4, the default write-back policy) because plain stores of the four computed floats were split into
// scalar stores by the compiler.
template <int VEC>
__device__ inline void store_vec(float* __restrict__ dst, const float (&x)[VEC]) {
  if constexpr (VEC == 4) {
    __stwb(reinterpret_cast<float4*>(dst), make_float4(x[0], x[1], x[2], x[3]));
  } else {
    for (int t = 0; t < VEC; ++t) dst[t] = x[t];
  }
}
// bf16: explicit conversions (torch builds with __CUDA_NO_BFLOAT16_CONVERSIONS__); VEC = 4 as one 8-byte store.
template <int VEC>
__device__ inline void store_vec(__nv_bfloat16* __restrict__ dst, const float (&x)[VEC]) {
  if constexpr (VEC == 4) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(x[0], x[1]), hi = __floats2bfloat162_rn(x[2], x[3]);
    __stwb(reinterpret_cast<uint2*>(dst), make_uint2(*reinterpret_cast<const unsigned*>(&lo),
                                                     *reinterpret_cast<const unsigned*>(&hi)));
  } else {
    for (int t = 0; t < VEC; ++t) dst[t] = __float2bfloat16_rn(x[t]);
  }
}

// Vectors each lane loads before it stores anything: independent loads in flight per lane (d = 512 with float4:
// the whole row in one batch).
constexpr int kBatch = 4;

// Rows handled by one lane group in one block. With `group` lanes per row a block covers
// (kThreads / group) · kRowsPerGroup rows, a function of d alone (copy_rows_per_block), so the host can size the
// trace-partial workspace before it knows the pointers' alignment.
constexpr int kRowsPerGroup = 4;

// out[m, i, :] = weights[m0 + m, p0 + i] · J[p0 + i, :] for the pixel block [p0, p0 + rows) and masks [m0, m0 + masks);
// J itself copied to `plain` when non-null (bf16 operands); partials[m, blockIdx.x] = Σ over this block's rows of
// weights[m0 + m, p] · ‖J_p‖² (the traces, so no second pass over J is needed).
//
// One group of `group` lanes (a power of two <= 32, sized to the row: small d does not leave most of a warp idle)
// per row and VEC floats per lane access: no per-element index division, J read once with 16-byte loads when
// VEC = 4. The trace partials are summed in a fixed order (lane group shuffle, then per-warp over the block's rows):
// no float atomics, so the traces are bitwise reproducible.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    weighted_copies_kernel(const float* __restrict__ jacobian, const float* __restrict__ weights,
                           T* __restrict__ out, T* __restrict__ plain, float* __restrict__ partials, int64_t P,
                           int64_t d, int64_t p0, int64_t rows, int64_t m0, int64_t masks, int group) {
  __shared__ float energy[kThreads * kRowsPerGroup];  // ‖J_p‖² of the block's rows (at most this many: group 1)
  const int lane = threadIdx.x & (group - 1);
  const int groups = kThreads / group;
  const int64_t first = blockIdx.x * int64_t(groups) * kRowsPerGroup;
  const int64_t per_block = int64_t(groups) * kRowsPerGroup;
  const int64_t nrows = rows - first < per_block ? rows - first : per_block;
  const int vectors = int(d / VEC);  // VEC divides d (host); d < 2^30 (checked): int column loops
  const int64_t plane = rows * d;   // one mask's copy; the GEMM's batch stride
  for (int it = 0; it < kRowsPerGroup; ++it) {  // uniform trip count: every lane reaches the shuffles
    const int64_t local = threadIdx.x / group + int64_t(it) * groups;
    float e = 0.f;
    if (local < nrows) {
      const int64_t i = first + local;
      const float* src = jacobian + (p0 + i) * d;
      const float* w = weights + m0 * P + p0 + i;
      T* dst = out + i * d;
      T* copy = plain != nullptr ? plain + i * d : nullptr;
      for (int c0 = lane; c0 < vectors; c0 += kBatch * group) {
        float v[kBatch][VEC];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {  // all loads first: the stores below are compiler barriers (asm)
          if (c0 + u * group < vectors) load_vec<VEC>(src + (c0 + u * group) * VEC, v[u]);
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int c = c0 + u * group;
          if (c < vectors) {
            for (int t = 0; t < VEC; ++t) e += v[u][t] * v[u][t];
            if (copy != nullptr) store_vec<VEC>(copy + c * VEC, v[u]);
          }
        }
        for (int64_t m = 0; m < masks; ++m) {
          const float wm = w[m * P];
#pragma unroll
          for (int u = 0; u < kBatch; ++u) {
            const int c = c0 + u * group;
            if (c < vectors) {
              float x[VEC];
              for (int t = 0; t < VEC; ++t) x[t] = wm * v[u][t];
              store_vec<VEC>(dst + m * plane + c * VEC, x);
            }
          }
        }
      }
    }
    for (int o = group / 2; o > 0; o >>= 1) e += __shfl_xor_sync(0xffffffffu, e, o);  // stays inside the group
    if (local < nrows && lane == 0) energy[local] = e;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, wl = threadIdx.x & 31;
  for (int64_t m = warp; m < masks; m += kThreads / 32) {
    const float* w = weights + (m0 + m) * P + p0 + first;
    float s = 0.f;
    for (int64_t l = wl; l < nrows; l += 32) s += w[l] * energy[l];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (wl == 0) partials[m * gridDim.x + blockIdx.x] = s;
  }
}

// traces[m] (+)= Σ_b partials[m, b], b in a fixed order: one block per mask. `add` for the second and later pixel
// blocks (stream-ordered, so still deterministic).
__global__ void __launch_bounds__(kThreads)
    trace_sums_kernel(const float* __restrict__ partials, int64_t blocks, float* __restrict__ traces, bool add) {
  __shared__ float warp_sums[kThreads / 32];
  const int64_t m = blockIdx.x;
  float s = 0.f;
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) s += partials[m * blocks + b];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) traces[m] = add ? traces[m] + s : s;
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

int grid_for(int64_t n) { return int(std::min<int64_t>(ceil_div(n, kThreads), 132 * 16)); }

size_t element_bytes(Precision p) { return p == Precision::kBf16 ? 2 : 4; }

// Lanes per row in weighted_copies_kernel: the row's vector count rounded up to a power of two, at most a warp.
int lanes_per_row(int64_t vectors) {
  int group = 1;
  while (group < 32 && group < vectors) group *= 2;
  return group;
}
// float4 accesses need d % 4 == 0 (and aligned pointers, checked at launch); the group size, and so the rows per
// block, is taken from d alone so that the workspace size does not depend on the pointers.
int copy_group(int64_t d) { return lanes_per_row(d % 4 == 0 ? d / 4 : d); }
int64_t copy_rows_per_block(int64_t d) { return int64_t(kThreads / copy_group(d)) * kRowsPerGroup; }

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Workspace layout for blocks of `rows` pixels and `masks` masks: weighted copies [masks, rows, d], then (bf16) the
// bf16 copy of J [rows, d], then, 256-byte aligned, the per-block trace partials [masks, blocks of rows].
struct Layout {
  size_t plain = 0, partials = 0, total = 0;
};
Layout workspace_layout(const MaskedGramParams& p, int64_t rows, int64_t masks) {
  const size_t es = element_bytes(p.precision);
  Layout l;
  l.plain = size_t(masks) * rows * p.d * es;
  const size_t end = l.plain + (p.precision == Precision::kBf16 ? size_t(rows) * p.d * es : 0);
  l.partials = (end + 255) / 256 * 256;
  l.total = l.partials + size_t(masks) * ceil_div(rows, copy_rows_per_block(p.d)) * sizeof(float);
  return l;
}

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
  return workspace_layout(p, rows, masks).total;
}

Status masked_grams(const MaskedGramParams& p, void* workspace, size_t workspace_bytes, cublasHandle_t blas,
                    cudaStream_t stream) {
  RESEFA_REQUIRE(p.jacobian && p.weights && p.grams && p.traces, "masked_grams: null pointer");
  RESEFA_REQUIRE(p.P > 0 && p.d > 0 && p.R > 0,
                 "masked_grams: P, d, R must be positive; got P=" << p.P << ", d=" << p.d << ", R=" << p.R);
  RESEFA_REQUIRE(p.d < (int64_t(1) << 30) && p.P <= (int64_t(1) << 31) - 1,  // d < 2^30: int column loops
                 "masked_grams: P and d must fit cuBLAS's int dimensions");
  // Recover the block sizes the workspace was sized for: the largest budget whose layout fits. The size is monotone
  // in the budget, so a workspace of masked_grams_workspace_bytes(p, b) gets exactly b's blocks (the former 3/4
  // steps from workspace_bytes could land on a smaller pixel block, e.g. 3 instead of 2 GEMMs at R = 8).
  size_t lo = 0, hi = workspace_bytes;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo + 1) / 2;
    if (masked_grams_workspace_bytes(p, mid, nullptr, nullptr) <= workspace_bytes) lo = mid; else hi = mid - 1;
  }
  int64_t rows = 0, masks = 0;
  const size_t needed = masked_grams_workspace_bytes(p, lo, &rows, &masks);
  RESEFA_REQUIRE(needed <= workspace_bytes && workspace != nullptr,
                 "masked_grams: workspace of " << workspace_bytes << " bytes is too small");
  char* base = static_cast<char*>(workspace);
  const Layout layout = workspace_layout(p, rows, masks);
  void* copies = base;
  void* plain = p.precision == Precision::kBf16 ? base + layout.plain : nullptr;
  float* partials = reinterpret_cast<float*>(base + layout.partials);
  // 16-byte loads of J and 4-element stores of the copies when every row start is aligned: d % 4 == 0 and aligned
  // base pointers (a J view with a storage offset may not be; then the scalar kernel, same results).
  const size_t es = element_bytes(p.precision);
  const bool vector = p.d % 4 == 0 && aligned(p.jacobian, 16) && aligned(copies, 4 * es) &&
                      (plain == nullptr || aligned(plain, 4 * es));
  const int group = copy_group(p.d);
  const int64_t rows_per_block = copy_rows_per_block(p.d);

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
      const int64_t blocks = ceil_div(pb, rows_per_block);
      const void* a = p.jacobian + p0 * p.d;
      if (p.precision == Precision::kBf16) {
        auto kernel = vector ? weighted_copies_kernel<__nv_bfloat16, 4> : weighted_copies_kernel<__nv_bfloat16, 1>;
        kernel<<<unsigned(blocks), kThreads, 0, stream>>>(p.jacobian, p.weights, static_cast<__nv_bfloat16*>(copies),
                                                          static_cast<__nv_bfloat16*>(plain), partials, p.P, p.d,
                                                          p0, pb, m0, mb, group);
        a = plain;
      } else {
        auto kernel = vector ? weighted_copies_kernel<float, 4> : weighted_copies_kernel<float, 1>;
        kernel<<<unsigned(blocks), kThreads, 0, stream>>>(p.jacobian, p.weights, static_cast<float*>(copies), nullptr,
                                                          partials, p.P, p.d, p0, pb, m0, mb, group);
      }
      status = cuda_status(cudaGetLastError(), "launch of weighted_copies_kernel");
      if (!status.ok()) break;
      trace_sums_kernel<<<unsigned(mb), kThreads, 0, stream>>>(partials, blocks, p.traces + m0, p0 > 0);
      status = cuda_status(cudaGetLastError(), "launch of trace_sums_kernel");
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
