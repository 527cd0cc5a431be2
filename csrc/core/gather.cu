// Bulk-path operand K̃_r = diag(√m_r) · JV[rows of region r] · diag(scale[r]), padded to max_rows, for many regions
// at once; regions from box coordinates (no mask materialised) or dense masks (compacted by a block scan).
#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "resefa/check.h"

namespace resefa {
namespace {

constexpr int kThreads = 256;

__device__ inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

struct BoxBounds {
  int64_t r0, r1, c0, c1;  // rows [r0, r1), cols [c0, c1), clipped to the grid
};

// Original convention [center_x, center_y, height, width], x indexes rows: rows cx - h//2 : cx - h//2 + h.
__device__ inline BoxBounds box_bounds(const int32_t* box, int64_t H, int64_t W) {
  const int64_t cx = box[0], cy = box[1], h = box[2], w = box[3];
  const int64_t top = cx - h / 2, left = cy - w / 2;  // h, w >= 0 (checked on the host): / is Python's //
  BoxBounds b{imax(top, 0), imin(top + h, H), imax(left, 0), imin(left + w, W)};
  if (b.r1 < b.r0) b.r1 = b.r0;
  if (b.c1 < b.c0) b.c1 = b.c0;
  return b;
}

__global__ void box_counts_kernel(GatherParams p) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= p.R) return;
  const BoxBounds b = box_bounds(p.boxes + 4 * r, p.H, p.W);
  p.counts[r] = int32_t(p.C * (b.r1 - b.r0) * (b.c1 - b.c0));
}

// One block per region: the (h, w) pixels with m > 0, in increasing order, and C × their number.
__global__ void mask_lists_kernel(GatherParams p, int32_t* __restrict__ lists) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scratch;
  __shared__ int running;
  const int64_t r = blockIdx.x, HW = p.H * p.W;
  if (threadIdx.x == 0) running = 0;
  __syncthreads();
  for (int64_t start = 0; start < HW; start += kThreads) {
    const int64_t q = start + threadIdx.x;
    const int flag = (q < HW && p.masks[r * HW + q] > 0.f) ? 1 : 0;
    int position, total;
    Scan(scratch).ExclusiveSum(flag, position, total);
    if (flag) lists[r * HW + running + position] = int32_t(q);
    __syncthreads();  // every thread has read `running` before it moves; scratch reusable
    if (threadIdx.x == 0) running += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) p.counts[r] = int32_t(p.C * running);
}

// Rows per lane group and block of gather_kernel (see there).
constexpr int kRowsPerGroup = 4;
// Vectors each lane loads before it stores anything: independent loads in flight (k = 512, float4: a whole row).
constexpr int kBatch = 4;

// Lanes per output row: the row's vector count rounded up to a power of two, at most a warp (small k leaves few
// lanes idle).
int lanes_per_row(int64_t vectors) {
  int group = 1;
  while (group < 32 && group < vectors) group *= 2;
  return group;
}

template <int VEC>
__device__ inline void load_vec(const float* __restrict__ src, float (&x)[VEC]) {
  if constexpr (VEC == 4) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(src));
    x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
  } else if constexpr (VEC == 2) {
    const float2 t = __ldg(reinterpret_cast<const float2*>(src));
    x[0] = t.x, x[1] = t.y;
  } else {
    x[0] = __ldg(src);
  }
}

// Streaming (evict-first) stores: the padded output is written once and is far larger than L2, so it should not
// push the rows of jv (reused by overlapping regions) out of it.
template <int VEC>
__device__ inline void store_vec(float* __restrict__ dst, const float (&x)[VEC]) {
  if constexpr (VEC == 4) {
    __stcs(reinterpret_cast<float4*>(dst), make_float4(x[0], x[1], x[2], x[3]));
  } else if constexpr (VEC == 2) {
    __stcs(reinterpret_cast<float2*>(dst), make_float2(x[0], x[1]));
  } else {
    __stcs(dst, x[0]);
  }
}

// out[r, i, :] for the rows i of this block, region r = blockIdx.y. A group of `group` lanes (power of two <= 32)
// owns one output row and moves VEC floats per access (VEC = 4 / 2 when k and the pointers allow, else 1): the row's
// source pixel is found once per row (32-bit divisions), never per element, and padding rows are written with the
// same wide stores. Values are computed exactly as before: (√m · jv) · scale in float32, √m = 1 inside a box.
template <int VEC>
__global__ void __launch_bounds__(kThreads) gather_kernel(GatherParams p, const int32_t* __restrict__ lists, int group) {
  const int64_t r = blockIdx.y, HW = p.H * p.W;
  const int64_t count = p.counts[r];
  int64_t r0 = 0, c0 = 0;
  uint32_t bw = 1, per_channel = 1;  // counts are int32, so row indices and these fit in 32 bits
  if (p.boxes != nullptr) {
    const BoxBounds b = box_bounds(p.boxes + 4 * r, p.H, p.W);
    r0 = b.r0, c0 = b.c0, bw = uint32_t(imax(b.c1 - b.c0, 1)), per_channel = uint32_t((b.r1 - b.r0) * (b.c1 - b.c0));
  } else {
    per_channel = uint32_t(count / p.C);
  }
  const int lane = threadIdx.x & (group - 1);
  const int groups = kThreads / group;
  const int vectors = int(p.k / VEC);  // VEC divides k (host); k < 2^30 (checked): int column loops
  const float* scale = p.scale + r * p.k;
  const int64_t first = blockIdx.x * int64_t(groups) * kRowsPerGroup;
  for (int it = 0; it < kRowsPerGroup; ++it) {
    const int64_t i = first + threadIdx.x / group + int64_t(it) * groups;
    if (i >= p.max_rows) break;  // no shuffles or barriers below: lanes may leave early
    float* dst = p.out + (r * p.max_rows + i) * p.k;
    if (i < count) {
      const uint32_t row = uint32_t(i), c = row / per_channel, q = row - c * per_channel;
      int64_t pixel;
      float root = 1.f;  // √m: 1 inside a box
      if (p.boxes != nullptr) {
        const uint32_t y = q / bw;
        pixel = (r0 + y) * p.W + c0 + (q - y * bw);
      } else {
        pixel = lists[r * HW + q];
        root = sqrtf(p.masks[r * HW + pixel]);
      }
      const float* src = p.jv + (int64_t(c) * HW + pixel) * p.k;
      for (int v0 = lane; v0 < vectors; v0 += kBatch * group) {
        float x[kBatch][VEC], s[kBatch][VEC];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {  // all loads first: the streaming stores are compiler barriers (asm)
          if (v0 + u * group < vectors) {
            load_vec<VEC>(src + (v0 + u * group) * VEC, x[u]);
            load_vec<VEC>(scale + (v0 + u * group) * VEC, s[u]);
          }
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (v0 + u * group < vectors) {
            for (int t = 0; t < VEC; ++t) x[u][t] = root * x[u][t] * s[u][t];
            store_vec<VEC>(dst + (v0 + u * group) * VEC, x[u]);
          }
        }
      }
    } else {
      const float zeros[VEC] = {};
      for (int v = lane; v < vectors; v += group) store_vec<VEC>(dst + v * VEC, zeros);
    }
  }
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace

Status region_counts(const GatherParams& p, int32_t* pixel_lists, cudaStream_t stream) {
  RESEFA_REQUIRE((p.boxes == nullptr) != (p.masks == nullptr), "gather: exactly one of boxes / masks");
  RESEFA_REQUIRE(p.counts != nullptr && p.R > 0 && p.C > 0 && p.H > 0 && p.W > 0,
                 "gather: counts pointer and positive R, C, H, W required");
  if (p.boxes != nullptr) {
    box_counts_kernel<<<unsigned(ceil_div(p.R, kThreads)), kThreads, 0, stream>>>(p);
    RESEFA_LAUNCHED("box_counts_kernel");
  } else {
    RESEFA_REQUIRE(pixel_lists != nullptr, "gather: masks need a pixel-list workspace [R, H*W]");
    mask_lists_kernel<<<unsigned(p.R), kThreads, 0, stream>>>(p, pixel_lists);
    RESEFA_LAUNCHED("mask_lists_kernel");
  }
  return Status::Ok();
}

Status gather_scaled_rows(const GatherParams& p, const int32_t* pixel_lists, cudaStream_t stream) {
  RESEFA_REQUIRE(p.jv && p.scale && p.out && p.counts, "gather: null pointer");
  RESEFA_REQUIRE(p.k > 0 && p.k < (int64_t(1) << 30) && p.R > 0 && p.R <= 65535,
                 "gather: need 0 < R <= 65535 and 0 < k < 2^30; got R=" << p.R << ", k=" << p.k);
  RESEFA_REQUIRE(p.boxes != nullptr || pixel_lists != nullptr, "gather: masks need the pixel lists");
  if (p.max_rows == 0) return Status::Ok();
  // Widest access every row start allows: k a multiple of the width and the three base pointers aligned to it.
  auto fits = [&](int vec) {
    const size_t bytes = sizeof(float) * vec;
    return p.k % vec == 0 && aligned(p.jv, bytes) && aligned(p.scale, bytes) && aligned(p.out, bytes);
  };
  const int vec = fits(4) ? 4 : fits(2) ? 2 : 1;
  const int group = lanes_per_row(p.k / vec);
  const int64_t rows_per_block = int64_t(kThreads / group) * kRowsPerGroup;
  RESEFA_REQUIRE(ceil_div(p.max_rows, rows_per_block) <= (int64_t(1) << 31) - 1, "gather: max_rows too large");
  dim3 grid(unsigned(ceil_div(p.max_rows, rows_per_block)), unsigned(p.R));
  auto kernel = vec == 4 ? gather_kernel<4> : vec == 2 ? gather_kernel<2> : gather_kernel<1>;
  kernel<<<grid, kThreads, 0, stream>>>(p, pixel_lists, group);
  RESEFA_LAUNCHED("gather_kernel");
  return Status::Ok();
}

}  // namespace resefa
