// The Jacobian engine's explicit tangents between two convolutions, in one pass:
//   out[t, c, q] = base[t, c, q] · A[c, q] + B[c, q] · e[t, c] + X[c, q] · f[t, c]
// (a layer's demodulation derivative u·δd, its activation mask and the next layer's modulation dx·s + x·ds; see
// resefa_fast/models/ops.py `affine_tangents`). Torch needs four passes over the k tangents for this, each reading
// the primal-sized A / B / X once more per tangent; here each thread loads its A / B / X once and loops over the
// tangents: base read once, out written once.
#include <cuda_bf16.h>

#include "resefa/check.h"

namespace resefa {
namespace {

constexpr int kThreads = 256;

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ inline T from_float(float v);
template <> __device__ inline float from_float<float>(float v) { return v; }
template <> __device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC consecutive elements moved as one access (16 bytes for float, 8 for the half types at VEC = 4).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC>
__device__ inline void load_primal(const float* __restrict__ src, int64_t at, float fill, float (&x)[VEC]) {
  if (src == nullptr) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] = fill;
  } else {
    const Pack<float, VEC> t = *reinterpret_cast<const Pack<float, VEC>*>(src + at);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] = t.v[j];
  }
}

// One thread per VEC positions (c, q .. q+VEC-1) of the primal grid, looping over the k tangents. VEC divides Q, so
// the VEC positions share a channel.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) tangent_affine_kernel(TangentAffineParams p) {
  const int64_t i = (blockIdx.x * int64_t(kThreads) + threadIdx.x) * VEC;
  const int64_t CQ = p.C * p.Q;
  if (i >= CQ) return;
  const int64_t c = i / p.Q;
  float a[VEC], b[VEC], x[VEC];
  load_primal<VEC>(p.A, i, 1.f, a);
  load_primal<VEC>(p.B, i, 0.f, b);
  load_primal<VEC>(p.X, i, 0.f, x);
  const T* __restrict__ base = static_cast<const T*>(p.base);
  T* __restrict__ out = static_cast<T*>(p.out);
#pragma unroll 4
  for (int64_t t = 0; t < p.k; ++t) {
    const float e = p.e != nullptr ? __ldg(p.e + t * p.C + c) : 0.f;
    const float f = p.f != nullptr ? __ldg(p.f + t * p.C + c) : 0.f;
    const int64_t at = t * CQ + i;
    const Pack<T, VEC> in = *reinterpret_cast<const Pack<T, VEC>*>(base + at);
    Pack<T, VEC> result;
#pragma unroll
    for (int j = 0; j < VEC; ++j) result.v[j] = from_float<T>(fmaf(x[j], f, fmaf(b[j], e, to_float(in.v[j]) * a[j])));
    *reinterpret_cast<Pack<T, VEC>*>(out + at) = result;
  }
}

bool aligned(const void* ptr, size_t bytes) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <typename T>
Status launch(const TangentAffineParams& p, cudaStream_t stream) {
  // 4-wide accesses when every row of Q starts aligned; else one element per access
  const bool wide = p.Q % 4 == 0 && aligned(p.base, sizeof(T) * 4) && aligned(p.out, sizeof(T) * 4) &&
                    aligned(p.A, 16) && aligned(p.B, 16) && aligned(p.X, 16);
  const int vec = wide ? 4 : 1;
  const int64_t blocks = ceil_div(p.C * p.Q / vec, kThreads);
  RESEFA_REQUIRE(blocks < (int64_t(1) << 31), "tangent_affine: C*Q too large (" << p.C * p.Q << ")");
  if (wide) {
    tangent_affine_kernel<T, 4><<<unsigned(blocks), kThreads, 0, stream>>>(p);
  } else {
    tangent_affine_kernel<T, 1><<<unsigned(blocks), kThreads, 0, stream>>>(p);
  }
  RESEFA_LAUNCHED("tangent_affine_kernel");
  return Status::Ok();
}

}  // namespace

Status tangent_affine(const TangentAffineParams& p, cudaStream_t stream) {
  RESEFA_REQUIRE(p.base != nullptr && p.out != nullptr, "tangent_affine: base and out are required");
  RESEFA_REQUIRE(p.k >= 0 && p.C >= 0 && p.Q >= 0, "tangent_affine: negative size");
  RESEFA_REQUIRE((p.B == nullptr) == (p.e == nullptr) && (p.X == nullptr) == (p.f == nullptr),
                 "tangent_affine: B and e (X and f) come together");
  if (p.k == 0 || p.C * p.Q == 0) return Status::Ok();
  switch (p.type) {
    case TangentType::kFloat32: return launch<float>(p, stream);
    case TangentType::kFloat16: return launch<__half>(p, stream);
    case TangentType::kBFloat16: return launch<__nv_bfloat16>(p, stream);
  }
  return fail(StatusCode::kBadArgument, "tangent_affine: unknown tangent type");
}

}  // namespace resefa
