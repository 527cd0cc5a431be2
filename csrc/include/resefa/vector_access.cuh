// Internal device helper of the core's kernels (not part of the public API in ops.h).
#pragma once

namespace resefa {

// VEC consecutive floats into registers: VEC = 4 is one 16-byte read-only load (the caller checked the alignment),
// any other VEC that many scalar loads.
template <int VEC>
__device__ inline void load_vec(const float* __restrict__ src, float (&x)[VEC]) {
  if constexpr (VEC == 4) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(src));
    x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
  } else {
    for (int t = 0; t < VEC; ++t) x[t] = __ldg(src + t);
  }
}

}  // namespace resefa
