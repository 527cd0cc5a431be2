// Internal helpers of the core: turn CUDA / cuBLAS / cuSOLVER return codes into a Status (no exceptions here).
#pragma once

#include <sstream>

#include "resefa/ops.h"

namespace resefa {

inline Status fail(StatusCode code, const std::string& message) { return Status{code, message}; }

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return fail(StatusCode::kCudaError, std::string(what) + ": " + cudaGetErrorString(err));
}
inline Status cublas_status(cublasStatus_t err, const char* what) {
  if (err == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return fail(StatusCode::kCublasError, std::string(what) + ": cuBLAS status " + std::to_string(int(err)));
}
inline Status cusolver_status(cusolverStatus_t err, const char* what) {
  if (err == CUSOLVER_STATUS_SUCCESS) return Status::Ok();
  return fail(StatusCode::kCusolverError, std::string(what) + ": cuSOLVER status " + std::to_string(int(err)));
}

#define RESEFA_TRY(expr)            \
  do {                              \
    ::resefa::Status s_ = (expr);   \
    if (!s_.ok()) return s_;        \
  } while (0)
#define RESEFA_CUDA(expr) RESEFA_TRY(::resefa::cuda_status((expr), #expr))
#define RESEFA_CUBLAS(expr) RESEFA_TRY(::resefa::cublas_status((expr), #expr))
#define RESEFA_CUSOLVER(expr) RESEFA_TRY(::resefa::cusolver_status((expr), #expr))
// After a kernel launch: configuration errors surface here, asynchronous faults at the next synchronising call.
#define RESEFA_LAUNCHED(name) RESEFA_TRY(::resefa::cuda_status(cudaGetLastError(), "launch of " name))
#define RESEFA_REQUIRE(cond, msg)                                                   \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::ostringstream os_;                                                       \
      os_ << msg;                                                                   \
      return ::resefa::fail(::resefa::StatusCode::kBadArgument, os_.str());         \
    }                                                                               \
  } while (0)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace resefa
