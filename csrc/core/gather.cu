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

__global__ void gather_kernel(GatherParams p, const int32_t* __restrict__ lists) {
  const int64_t r = blockIdx.y, HW = p.H * p.W;
  const int64_t count = p.counts[r], n = p.max_rows * p.k;
  int64_t r0 = 0, c0 = 0, bw = 1, per_channel = 1;
  if (p.boxes != nullptr) {
    const BoxBounds b = box_bounds(p.boxes + 4 * r, p.H, p.W);
    r0 = b.r0, c0 = b.c0, bw = imax(b.c1 - b.c0, 1), per_channel = (b.r1 - b.r0) * (b.c1 - b.c0);
  } else {
    per_channel = count / p.C;
  }
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / p.k, j = e - i * p.k;
    float value = 0.f;
    if (i < count) {
      const int64_t c = i / per_channel, q = i - c * per_channel;
      int64_t pixel;
      float root = 1.f;  // √m: 1 inside a box
      if (p.boxes != nullptr) {
        pixel = (r0 + q / bw) * p.W + c0 + q % bw;
      } else {
        pixel = lists[r * HW + q];
        root = sqrtf(p.masks[r * HW + pixel]);
      }
      value = root * p.jv[(c * HW + pixel) * p.k + j] * p.scale[r * p.k + j];
    }
    p.out[(r * p.max_rows) * p.k + e] = value;
  }
}

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
  RESEFA_REQUIRE(p.k > 0 && p.R > 0 && p.R <= 65535, "gather: need 0 < R <= 65535 and k > 0; got R=" << p.R);
  RESEFA_REQUIRE(p.boxes != nullptr || pixel_lists != nullptr, "gather: masks need the pixel lists");
  if (p.max_rows == 0) return Status::Ok();
  const int64_t n = p.max_rows * p.k;
  dim3 grid(unsigned(std::min<int64_t>(ceil_div(n, kThreads), 4096)), unsigned(p.R));
  gather_kernel<<<grid, kThreads, 0, stream>>>(p, pixel_lists);
  RESEFA_LAUNCHED("gather_kernel");
  return Status::Ok();
}

}  // namespace resefa
