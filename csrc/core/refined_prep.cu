// The refined route's operands in one pass over J: the row- and column-scaled float16 copy (torch's two multiplies
// bit for bit), the float64 copy and the float64 row energies. J is read once; three torch passes read it three
// times (and the float16 copy twice more).
#include <cub/block/block_reduce.cuh>

#include "resefa/check.h"
#include "resefa/vector_access.cuh"

namespace resefa {
namespace {

constexpr int kThreads = 256;
// Vectors each thread loads before it stores anything: independent loads in flight per thread (the streaming stores
// are compiler barriers). d = 9216 with float4: 9 vectors per thread, batches of 4, 4, 1.
constexpr int kBatch = 4;

// torch's `torch.mul(J, c, out=half)` (float32 product, one round-to-nearest-even to float16: c10::Half(float) is
// __float2half) followed by `half.mul_(r)` (Half × Half in float32 "opmath", rounded once); the float32 product of
// two float16 values is exact, so this is also the correctly rounded float16 product.
__device__ inline __half scaled_half(float x, float c, float r) {
  const __half h = __float2half_rn(x * c);
  return __float2half_rn(__half2float(h) * r);
}

// Streaming (evict-first) stores: both copies are written once and are far larger than L2 at the sizes this is for.
// VEC = 4: one 8-byte store of four halves, two 16-byte stores of four doubles.
template <int VEC>
__device__ inline void store_half(__half* __restrict__ dst, const __half (&h)[VEC]) {
  if constexpr (VEC == 4) {
    const unsigned lo = unsigned(__half_as_ushort(h[0])) | (unsigned(__half_as_ushort(h[1])) << 16);
    const unsigned hi = unsigned(__half_as_ushort(h[2])) | (unsigned(__half_as_ushort(h[3])) << 16);
    __stcs(reinterpret_cast<uint2*>(dst), make_uint2(lo, hi));
  } else {
    __stcs(reinterpret_cast<unsigned short*>(dst), __half_as_ushort(h[0]));
  }
}

template <int VEC>
__device__ inline void store_double(double* __restrict__ dst, const double (&e)[VEC]) {
  if constexpr (VEC == 4) {
    __stcs(reinterpret_cast<double2*>(dst), make_double2(e[0], e[1]));
    __stcs(reinterpret_cast<double2*>(dst) + 1, make_double2(e[2], e[3]));
  } else {
    __stcs(dst, e[0]);
  }
}

// One block per row p = blockIdx.x; thread t handles the row's vectors t, t + kThreads, ... (VEC floats each: 4 when
// d and the pointers allow, else 1). The energy is accumulated in double per thread in a fixed order, then reduced
// by cub::BlockReduce (a fixed tree): no atomics, bitwise reproducible. (double) x is exact and so is x², so
// contracting the accumulation into an FMA changes nothing.
template <int VEC>
__global__ void __launch_bounds__(kThreads) refined_prep_kernel(RefinedPrepParams p) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage scratch;
  const int64_t row = blockIdx.x;
  const int64_t base = row * p.d;
  const float* __restrict__ src = p.jacobian + base;
  __half* __restrict__ half_row = p.scaled + base;
  double* __restrict__ exact_row = p.exact != nullptr ? p.exact + base : nullptr;
  const float r = __half2float(p.row_scale[row]);
  const int vectors = int(p.d / VEC);  // VEC divides d (host); d < 2^30 (checked): int column loops
  double energy = 0.0;
  for (int v0 = threadIdx.x; v0 < vectors; v0 += kBatch * kThreads) {
    float x[kBatch][VEC], c[kBatch][VEC];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (v0 + u * kThreads < vectors) {
        load_vec<VEC>(src + (v0 + u * kThreads) * VEC, x[u]);
        load_vec<VEC>(p.column_scale + (v0 + u * kThreads) * VEC, c[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (v0 + u * kThreads < vectors) {
        const int64_t j = int64_t(v0 + u * kThreads) * VEC;
        __half h[VEC];
        double e[VEC];
#pragma unroll
        for (int t = 0; t < VEC; ++t) {
          h[t] = scaled_half(x[u][t], c[u][t], r);
          e[t] = double(x[u][t]);
          energy += e[t] * e[t];
        }
        store_half<VEC>(half_row + j, h);
        if (exact_row != nullptr) store_double<VEC>(exact_row + j, e);
      }
    }
  }
  const double total = Reduce(scratch).Sum(energy);
  if (threadIdx.x == 0) p.energies[row] = total;
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace

Status prepare_refined_operands(const RefinedPrepParams& p, cudaStream_t stream) {
  RESEFA_REQUIRE(p.jacobian && p.column_scale && p.row_scale && p.scaled && p.energies,
                 "prepare_refined_operands: null pointer");
  RESEFA_REQUIRE(p.P > 0 && p.d > 0, "prepare_refined_operands: P and d must be positive; got P=" << p.P
                                         << ", d=" << p.d);
  RESEFA_REQUIRE(p.P <= (int64_t(1) << 31) - 1 && p.d < (int64_t(1) << 30),  // one block per row; int column loops
                 "prepare_refined_operands: need P < 2^31 and d < 2^30; got P=" << p.P << ", d=" << p.d);
  // float4 loads of J and the column scales, 8-byte float16 and 16-byte float64 stores: d a multiple of 4 (so every
  // row start keeps the base pointers' alignment) and the base pointers aligned; else scalar accesses.
  const bool vec4 = p.d % 4 == 0 && aligned(p.jacobian, 16) && aligned(p.column_scale, 16) && aligned(p.scaled, 8) &&
                    (p.exact == nullptr || aligned(p.exact, 16));
  auto kernel = vec4 ? refined_prep_kernel<4> : refined_prep_kernel<1>;
  kernel<<<unsigned(p.P), kThreads, 0, stream>>>(p);
  RESEFA_LAUNCHED("refined_prep_kernel");
  return Status::Ok();
}

}  // namespace resefa
