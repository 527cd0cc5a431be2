// cuSOLVER routines with every status and `info` checked: top-k symmetric (syevdx), generalised top-k (sygvdx),
// batched symmetric (Xsyev batched), randomised truncated SVD (Xgesvdr). Inputs symmetric (or handled through
// the transpose), so torch's row-major layout needs no copies.
#include <vector>

#include "resefa/check.h"

namespace resefa {
namespace {

// RAII for a caller-allocated device buffer.
struct Scratch {
  const DeviceBuffer& alloc;
  void* ptr = nullptr;
  Scratch(const DeviceBuffer& a, size_t bytes) : alloc(a) { ptr = bytes ? a.allocate(bytes, a.ctx) : nullptr; }
  ~Scratch() {
    if (ptr) alloc.release(ptr, alloc.ctx);
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr); }
};

struct Params {
  cusolverDnParams_t handle = nullptr;
  ~Params() {
    if (handle) cusolverDnDestroyParams(handle);
  }
};

size_t dtype_bytes(cudaDataType t) { return t == CUDA_R_64F ? 8 : 4; }

// vectors[i, :] = rows[k - 1 - i, :], values[i] = w[k - 1 - i]: ascending LAPACK order -> descending.
template <typename T>
__global__ void reverse_kernel(const T* __restrict__ rows, const T* __restrict__ w, T* __restrict__ vectors,
                               T* __restrict__ values, int64_t k, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < k * n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e - i * n;
    vectors[e] = rows[(k - 1 - i) * n + j];
    if (j == 0) values[i] = w[k - 1 - i];
  }
}

Status reverse(cudaDataType dtype, const void* rows, const void* w, void* vectors, void* values, int64_t k,
               int64_t n, cudaStream_t stream) {
  const unsigned grid = unsigned(std::min<int64_t>(ceil_div(k * n, 256), 4096));
  if (dtype == CUDA_R_64F)
    reverse_kernel<double><<<grid, 256, 0, stream>>>(static_cast<const double*>(rows),
                                                     static_cast<const double*>(w), static_cast<double*>(vectors),
                                                     static_cast<double*>(values), k, n);
  else
    reverse_kernel<float><<<grid, 256, 0, stream>>>(static_cast<const float*>(rows), static_cast<const float*>(w),
                                                    static_cast<float*>(vectors), static_cast<float*>(values), k, n);
  RESEFA_LAUNCHED("reverse_kernel");
  return Status::Ok();
}

// Copy `count` info words to the host (the one synchronisation: a failure must reach the caller).
Status read_info(const int* d_info, std::vector<int>& h_info, cudaStream_t stream) {
  RESEFA_CUDA(cudaMemcpyAsync(h_info.data(), d_info, h_info.size() * sizeof(int), cudaMemcpyDeviceToHost, stream));
  RESEFA_CUDA(cudaStreamSynchronize(stream));
  return Status::Ok();
}

Status check_dtype(cudaDataType dtype) {
  RESEFA_REQUIRE(dtype == CUDA_R_32F || dtype == CUDA_R_64F, "dtype must be float32 or float64");
  return Status::Ok();
}

}  // namespace

Status syevdx_topk(cusolverDnHandle_t solver, cudaDataType dtype, void* a, int64_t n, int64_t k, void* values,
                   void* vectors, const DeviceBuffer& alloc, cudaStream_t stream) {
  RESEFA_TRY(check_dtype(dtype));
  RESEFA_REQUIRE(a && values && vectors, "syevdx_topk: null pointer");
  RESEFA_REQUIRE(n > 0 && k >= 1 && k <= n, "syevdx_topk: need 1 <= k <= n; got k=" << k << ", n=" << n);
  RESEFA_CUSOLVER(cusolverDnSetStream(solver, stream));
  Params params;
  RESEFA_CUSOLVER(cusolverDnCreateParams(&params.handle));
  Scratch w(alloc, n * dtype_bytes(dtype));
  int64_t found = 0;
  double vl = 0, vu = 0;  // unused with an index range
  size_t device_bytes = 0, host_bytes = 0;
  // Column-major lower of A = row-major upper; A symmetric, so either triangle is A's.
  RESEFA_CUSOLVER(cusolverDnXsyevdx_bufferSize(solver, params.handle, CUSOLVER_EIG_MODE_VECTOR,
                                               CUSOLVER_EIG_RANGE_I, CUBLAS_FILL_MODE_LOWER, n, dtype, a, n, &vl,
                                               &vu, n - k + 1, n, &found, dtype, w.ptr, dtype, &device_bytes,
                                               &host_bytes));
  Scratch work(alloc, device_bytes + sizeof(int));
  std::vector<char> host(host_bytes + 1);
  int* d_info = reinterpret_cast<int*>(work.as<char>() + device_bytes);
  RESEFA_CUSOLVER(cusolverDnXsyevdx(solver, params.handle, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I,
                                    CUBLAS_FILL_MODE_LOWER, n, dtype, a, n, &vl, &vu, n - k + 1, n, &found, dtype,
                                    w.ptr, dtype, work.ptr, device_bytes, host.data(), host_bytes, d_info));
  std::vector<int> info(1);
  RESEFA_TRY(read_info(d_info, info, stream));
  if (info[0] < 0) return fail(StatusCode::kCusolverError, "syevdx: argument " + std::to_string(-info[0]) + " illegal");
  if (info[0] > 0) return fail(StatusCode::kNoConvergence, "syevdx: " + std::to_string(info[0]) + " off-diagonal elements did not converge");
  if (found != k) return fail(StatusCode::kCusolverError, "syevdx: found " + std::to_string(found) + " eigenpairs, asked for " + std::to_string(k));
  // Column j of the column-major result = row j of the row-major buffer.
  return reverse(dtype, a, w.ptr, vectors, values, k, n, stream);
}

Status sygvdx_topk(cusolverDnHandle_t solver, cudaDataType dtype, void* a, void* b, int64_t n, int64_t k,
                   void* values, void* vectors, const DeviceBuffer& alloc, cudaStream_t stream) {
  RESEFA_TRY(check_dtype(dtype));
  RESEFA_REQUIRE(a && b && values && vectors, "sygvdx_topk: null pointer");
  RESEFA_REQUIRE(n > 0 && k >= 1 && k <= n && n < (int64_t(1) << 31),
                 "sygvdx_topk: need 1 <= k <= n < 2^31; got k=" << k << ", n=" << n);
  RESEFA_CUSOLVER(cusolverDnSetStream(solver, stream));
  const int ni = int(n), il = int(n - k + 1), iu = int(n);
  int found = 0, lwork = 0;
  Scratch w(alloc, n * dtype_bytes(dtype));
  const auto itype = CUSOLVER_EIG_TYPE_1;  // A x = λ B x
  const auto jobz = CUSOLVER_EIG_MODE_VECTOR;
  const auto range = CUSOLVER_EIG_RANGE_I;
  const auto uplo = CUBLAS_FILL_MODE_LOWER;
  if (dtype == CUDA_R_64F) {
    RESEFA_CUSOLVER(cusolverDnDsygvdx_bufferSize(solver, itype, jobz, range, uplo, ni, static_cast<double*>(a), ni,
                                                 static_cast<double*>(b), ni, 0., 0., il, iu, &found,
                                                 w.as<double>(), &lwork));
  } else {
    RESEFA_CUSOLVER(cusolverDnSsygvdx_bufferSize(solver, itype, jobz, range, uplo, ni, static_cast<float*>(a), ni,
                                                 static_cast<float*>(b), ni, 0.f, 0.f, il, iu, &found,
                                                 w.as<float>(), &lwork));
  }
  const size_t work_bytes = size_t(lwork) * dtype_bytes(dtype);
  Scratch work(alloc, work_bytes + sizeof(int));
  int* d_info = reinterpret_cast<int*>(work.as<char>() + work_bytes);
  if (dtype == CUDA_R_64F) {
    RESEFA_CUSOLVER(cusolverDnDsygvdx(solver, itype, jobz, range, uplo, ni, static_cast<double*>(a), ni,
                                      static_cast<double*>(b), ni, 0., 0., il, iu, &found, w.as<double>(),
                                      work.as<double>(), lwork, d_info));
  } else {
    RESEFA_CUSOLVER(cusolverDnSsygvdx(solver, itype, jobz, range, uplo, ni, static_cast<float*>(a), ni,
                                      static_cast<float*>(b), ni, 0.f, 0.f, il, iu, &found, w.as<float>(),
                                      work.as<float>(), lwork, d_info));
  }
  std::vector<int> info(1);
  RESEFA_TRY(read_info(d_info, info, stream));
  if (info[0] < 0) return fail(StatusCode::kCusolverError, "sygvdx: argument " + std::to_string(-info[0]) + " illegal");
  if (info[0] > ni)
    return fail(StatusCode::kNotPositiveDefinite,
                "sygvdx: B is not positive definite (Cholesky failed at leading minor " +
                    std::to_string(info[0] - ni) + " of " + std::to_string(ni) + ")");
  if (info[0] > 0) return fail(StatusCode::kNoConvergence, "sygvdx: the eigensolver did not converge (info " + std::to_string(info[0]) + ")");
  if (found != k) return fail(StatusCode::kCusolverError, "sygvdx: found " + std::to_string(found) + " eigenpairs, asked for " + std::to_string(k));
  return reverse(dtype, a, w.ptr, vectors, values, k, n, stream);
}

Status syev_batched(cusolverDnHandle_t solver, cudaDataType dtype, void* a, int64_t batch, int64_t n, void* values,
                    const DeviceBuffer& alloc, cudaStream_t stream) {
  RESEFA_TRY(check_dtype(dtype));
  RESEFA_REQUIRE(a && values, "syev_batched: null pointer");
  RESEFA_REQUIRE(batch > 0 && n > 0, "syev_batched: need batch > 0 and n > 0; got " << batch << ", " << n);
  RESEFA_CUSOLVER(cusolverDnSetStream(solver, stream));
  Params params;
  RESEFA_CUSOLVER(cusolverDnCreateParams(&params.handle));
  size_t device_bytes = 0, host_bytes = 0;
  RESEFA_CUSOLVER(cusolverDnXsyevBatched_bufferSize(solver, params.handle, CUSOLVER_EIG_MODE_VECTOR,
                                                    CUBLAS_FILL_MODE_LOWER, n, dtype, a, n, dtype, values, dtype,
                                                    &device_bytes, &host_bytes, batch));
  Scratch work(alloc, device_bytes + batch * sizeof(int));
  std::vector<char> host(host_bytes + 1);
  int* d_info = reinterpret_cast<int*>(work.as<char>() + device_bytes);
  RESEFA_CUSOLVER(cusolverDnXsyevBatched(solver, params.handle, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                         dtype, a, n, dtype, values, dtype, work.ptr, device_bytes, host.data(),
                                         host_bytes, d_info, batch));
  std::vector<int> info(batch);
  RESEFA_TRY(read_info(d_info, info, stream));
  for (int64_t i = 0; i < batch; ++i) {
    if (info[i] < 0) return fail(StatusCode::kCusolverError, "syev_batched: argument " + std::to_string(-info[i]) + " illegal");
    if (info[i] > 0)
      return fail(StatusCode::kNoConvergence, "syev_batched: problem " + std::to_string(i) + " did not converge (info " + std::to_string(info[i]) + ")");
  }
  return Status::Ok();
}

Status gesvdr_topk(cusolverDnHandle_t solver, cudaDataType dtype, void* a, int64_t m, int64_t n, int64_t k,
                   int64_t oversample, int64_t niters, void* s, void* v, const DeviceBuffer& alloc,
                   cudaStream_t stream) {
  RESEFA_TRY(check_dtype(dtype));
  RESEFA_REQUIRE(a && s && v, "gesvdr_topk: null pointer");
  RESEFA_REQUIRE(m > 0 && n > 0 && k >= 1 && oversample >= 0 && k + oversample <= std::min(m, n) && niters >= 0,
                 "gesvdr_topk: need k >= 1, oversample >= 0, k + oversample <= min(m, n); got k="
                     << k << ", oversample=" << oversample << ", m=" << m << ", n=" << n);
  RESEFA_CUSOLVER(cusolverDnSetStream(solver, stream));
  Params params;
  RESEFA_CUSOLVER(cusolverDnCreateParams(&params.handle));
  // Row-major a [m, n] is the column-major aᵀ (n × m, ld n): a's right singular vectors are aᵀ's left ones.
  const int64_t rows = n, cols = m, small = std::min(m, n);
  const size_t es = dtype_bytes(dtype);
  Scratch sing(alloc, small * es);
  Scratch left(alloc, rows * small * es);  // column-major [rows, ≥ k], ld rows
  Scratch right(alloc, cols * small * es);  // not referenced (jobv 'N'); passed as a valid pointer
  size_t device_bytes = 0, host_bytes = 0;
  RESEFA_CUSOLVER(cusolverDnXgesvdr_bufferSize(solver, params.handle, 'S', 'N', rows, cols, k, oversample, niters,
                                               dtype, a, rows, dtype, sing.ptr, dtype, left.ptr, rows, dtype,
                                               right.ptr, cols, dtype, &device_bytes, &host_bytes));
  Scratch work(alloc, device_bytes + sizeof(int));
  std::vector<char> host(host_bytes + 1);
  int* d_info = reinterpret_cast<int*>(work.as<char>() + device_bytes);
  RESEFA_CUSOLVER(cusolverDnXgesvdr(solver, params.handle, 'S', 'N', rows, cols, k, oversample, niters, dtype, a,
                                    rows, dtype, sing.ptr, dtype, left.ptr, rows, dtype, right.ptr, cols, dtype,
                                    work.ptr, device_bytes, host.data(), host_bytes, d_info));
  std::vector<int> info(1);
  RESEFA_TRY(read_info(d_info, info, stream));
  if (info[0] != 0) return fail(StatusCode::kCusolverError, "gesvdr: info " + std::to_string(info[0]));
  // Descending already; column j of `left` (column-major, ld rows) = row j of v [k, n].
  RESEFA_CUDA(cudaMemcpyAsync(v, left.ptr, k * n * es, cudaMemcpyDeviceToDevice, stream));
  RESEFA_CUDA(cudaMemcpyAsync(s, sing.ptr, k * es, cudaMemcpyDeviceToDevice, stream));
  return Status::Ok();
}

}  // namespace resefa
