// The one binding file: converts torch tensors to raw pointers, passes torch's current stream, cuBLAS / cuSOLVER
// handles and caching allocator to the core, and turns a non-ok Status into a Python exception (ValueError for bad
// input and ill-posed problems, RuntimeError for CUDA / library failures; resefa_fast.cuda_ops re-raises them as
// ResefaError / CudaOpError). Argument checks that need only shapes live in resefa_fast/cuda_ops.py; the ones
// here guard the pointers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <stdexcept>
#include <unordered_map>

#include "resefa/ops.h"

namespace {

using resefa::Status;
using resefa::StatusCode;

void raise_if_failed(const Status& s) {
  if (s.ok()) return;
  switch (s.code) {
    case StatusCode::kBadArgument:
      throw std::invalid_argument(s.message);  // pybind11: ValueError
    case StatusCode::kNotPositiveDefinite:
      throw std::invalid_argument("not positive definite: " + s.message);
    default:
      throw std::runtime_error(s.message);
  }
}

void require(bool cond, const std::string& message) {
  if (!cond) throw std::invalid_argument(message);
}

void check_cuda_tensor(const torch::Tensor& t, const char* name, at::ScalarType dtype) {
  require(t.is_cuda(), std::string(name) + " must be a CUDA tensor");
  require(t.scalar_type() == dtype, std::string(name) + " has the wrong dtype " + std::string(c10::toString(t.scalar_type())));
  require(t.is_contiguous(), std::string(name) + " must be contiguous");
}

resefa::DeviceBuffer torch_allocator() {
  resefa::DeviceBuffer b;
  b.allocate = [](size_t bytes, void*) -> void* { return c10::cuda::CUDACachingAllocator::raw_alloc(bytes); };
  b.release = [](void* ptr, void*) { c10::cuda::CUDACachingAllocator::raw_delete(ptr); };
  return b;
}

// torch's at::cuda::getCurrentCUDASolverDnHandle lives in libtorch_cuda_linalg.so, which torch loads lazily and
// extensions cannot link against portably; so one cuSOLVER handle per (thread, device), created on first use and
// kept for the process (the pattern torch's own handle pool follows). cuBLAS comes from torch.
cusolverDnHandle_t solver_handle() {
  thread_local std::unordered_map<int, cusolverDnHandle_t> handles;
  const int device = c10::cuda::current_device();
  auto it = handles.find(device);
  if (it == handles.end()) {
    cusolverDnHandle_t h = nullptr;
    const auto status = cusolverDnCreate(&h);
    if (status != CUSOLVER_STATUS_SUCCESS)
      throw std::runtime_error("cusolverDnCreate failed with status " + std::to_string(int(status)));
    it = handles.emplace(device, h).first;
  }
  return it->second;
}

cudaDataType data_type(const torch::Tensor& t) {
  require(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "dtype must be float32 or float64");
  return t.scalar_type() == at::kDouble ? CUDA_R_64F : CUDA_R_32F;
}

std::tuple<torch::Tensor, torch::Tensor> masked_grams(const torch::Tensor& jacobian, const torch::Tensor& weights,
                                                      c10::optional<torch::Tensor> out, bool accumulate,
                                                      int64_t precision, int64_t workspace_budget) {
  check_cuda_tensor(jacobian, "jacobian", at::kFloat);
  check_cuda_tensor(weights, "weights", at::kFloat);
  require(jacobian.dim() == 2 && weights.dim() == 2 && weights.size(1) == jacobian.size(0),
          "jacobian [P, d] and weights [R, P] expected");
  require(precision >= 0 && precision <= 2, "precision must be 0 (fp32), 1 (tf32) or 2 (bf16)");
  const c10::cuda::CUDAGuard guard(jacobian.device());
  const int64_t P = jacobian.size(0), d = jacobian.size(1), R = weights.size(0);
  torch::Tensor grams;
  if (out.has_value()) {
    grams = *out;
    check_cuda_tensor(grams, "out", at::kFloat);
    require(grams.dim() == 3 && grams.size(0) == R && grams.size(1) == d && grams.size(2) == d, "out must be [R, d, d]");
  } else {
    require(!accumulate, "accumulate=True needs out");
    grams = torch::empty({R, d, d}, jacobian.options());
  }
  auto traces = torch::empty({R}, jacobian.options());
  resefa::MaskedGramParams p;
  p.jacobian = jacobian.data_ptr<float>();
  p.weights = weights.data_ptr<float>();
  p.grams = grams.data_ptr<float>();
  p.traces = traces.data_ptr<float>();
  p.P = P, p.d = d, p.R = R, p.accumulate = accumulate;
  p.precision = static_cast<resefa::Precision>(precision);
  const size_t bytes = resefa::masked_grams_workspace_bytes(p, size_t(workspace_budget), nullptr, nullptr);
  auto workspace = torch::empty({int64_t(bytes)}, jacobian.options().dtype(at::kByte));
  raise_if_failed(resefa::masked_grams(p, workspace.data_ptr(), bytes, at::cuda::getCurrentCUDABlasHandle(),
                                       at::cuda::getCurrentCUDAStream()));
  return {grams, traces};
}

torch::Tensor row_energies(const torch::Tensor& jacobian) {
  check_cuda_tensor(jacobian, "jacobian", at::kFloat);
  require(jacobian.dim() == 2, "jacobian must be [P, d]");
  const c10::cuda::CUDAGuard guard(jacobian.device());
  auto energies = torch::empty({jacobian.size(0)}, jacobian.options());
  raise_if_failed(resefa::row_energies(jacobian.data_ptr<float>(), energies.data_ptr<float>(), jacobian.size(0),
                                       jacobian.size(1), at::cuda::getCurrentCUDAStream()));
  return energies;
}

std::tuple<torch::Tensor, c10::optional<torch::Tensor>, torch::Tensor> prepare_refined_operands(
    const torch::Tensor& jacobian, const torch::Tensor& column_scale, const torch::Tensor& row_scale, bool float64) {
  check_cuda_tensor(jacobian, "jacobian", at::kFloat);
  check_cuda_tensor(column_scale, "column_scale", at::kFloat);
  check_cuda_tensor(row_scale, "row_scale", at::kHalf);
  require(jacobian.dim() == 2 && column_scale.dim() == 1 && row_scale.dim() == 1 &&
              column_scale.size(0) == jacobian.size(1) && row_scale.size(0) == jacobian.size(0),
          "jacobian [P, d], column_scale [d] and row_scale [P] expected");
  require(column_scale.device() == jacobian.device() && row_scale.device() == jacobian.device(),
          "jacobian, column_scale and row_scale must be on one device");
  const c10::cuda::CUDAGuard guard(jacobian.device());
  const int64_t P = jacobian.size(0), d = jacobian.size(1);
  auto half = torch::empty({P, d}, jacobian.options().dtype(at::kHalf));
  c10::optional<torch::Tensor> exact;
  if (float64) exact = torch::empty({P, d}, jacobian.options().dtype(at::kDouble));
  auto energies = torch::empty({P}, jacobian.options().dtype(at::kDouble));
  resefa::RefinedPrepParams p;
  p.jacobian = jacobian.data_ptr<float>();
  p.column_scale = column_scale.data_ptr<float>();
  p.row_scale = reinterpret_cast<const __half*>(row_scale.data_ptr<at::Half>());
  p.scaled = reinterpret_cast<__half*>(half.data_ptr<at::Half>());
  p.exact = float64 ? exact->data_ptr<double>() : nullptr;
  p.energies = energies.data_ptr<double>();
  p.P = P, p.d = d;
  raise_if_failed(resefa::prepare_refined_operands(p, at::cuda::getCurrentCUDAStream()));
  return {half, exact, energies};
}

std::tuple<torch::Tensor, torch::Tensor> gather_scaled_rows(const torch::Tensor& jv, const torch::Tensor& scale,
                                                            c10::optional<torch::Tensor> boxes,
                                                            c10::optional<torch::Tensor> masks, int64_t C,
                                                            int64_t H, int64_t W) {
  check_cuda_tensor(jv, "jv", at::kFloat);
  check_cuda_tensor(scale, "scale", at::kFloat);
  require(boxes.has_value() != masks.has_value(), "exactly one of boxes / masks");
  require(jv.dim() == 2 && jv.size(0) == C * H * W && scale.dim() == 2 && scale.size(1) == jv.size(1),
          "jv [C*H*W, k] and scale [R, k] expected");
  const c10::cuda::CUDAGuard guard(jv.device());
  const int64_t R = scale.size(0), k = jv.size(1);
  resefa::GatherParams p;
  p.jv = jv.data_ptr<float>();
  p.scale = scale.data_ptr<float>();
  torch::Tensor lists;
  if (boxes.has_value()) {
    check_cuda_tensor(*boxes, "boxes", at::kInt);
    require(boxes->dim() == 2 && boxes->size(0) == R && boxes->size(1) == 4, "boxes must be [R, 4]");
    p.boxes = boxes->data_ptr<int32_t>();
  } else {
    check_cuda_tensor(*masks, "masks", at::kFloat);
    require(masks->dim() == 3 && masks->size(0) == R && masks->size(1) == H && masks->size(2) == W,
            "masks must be [R, H, W]");
    p.masks = masks->data_ptr<float>();
    lists = torch::empty({R, H * W}, jv.options().dtype(at::kInt));
  }
  auto counts = torch::empty({R}, jv.options().dtype(at::kInt));
  p.counts = counts.data_ptr<int32_t>();
  p.C = C, p.H = H, p.W = W, p.k = k, p.R = R;
  const auto stream = at::cuda::getCurrentCUDAStream();
  int32_t* list_ptr = lists.defined() ? lists.data_ptr<int32_t>() : nullptr;
  raise_if_failed(resefa::region_counts(p, list_ptr, stream));
  p.max_rows = counts.max().item<int32_t>();  // the output's shape depends on it: one synchronisation
  auto out = torch::empty({R, p.max_rows, k}, jv.options());
  p.out = out.data_ptr<float>();
  raise_if_failed(resefa::gather_scaled_rows(p, list_ptr, stream));
  return {out, counts};
}

const float* optional_primal(const c10::optional<torch::Tensor>& t, const char* name, int64_t C, int64_t Q) {
  if (!t.has_value()) return nullptr;
  check_cuda_tensor(*t, name, at::kFloat);
  require(t->numel() == C * Q, std::string(name) + " must have C*Q elements");
  return t->data_ptr<float>();
}

const float* optional_coefficients(const c10::optional<torch::Tensor>& t, const char* name, int64_t k, int64_t C) {
  if (!t.has_value()) return nullptr;
  check_cuda_tensor(*t, name, at::kFloat);
  require(t->dim() == 2 && t->size(0) == k && t->size(1) == C, std::string(name) + " must be [k, C]");
  return t->data_ptr<float>();
}

torch::Tensor tangent_affine(const torch::Tensor& base, c10::optional<torch::Tensor> A, c10::optional<torch::Tensor> B,
                             c10::optional<torch::Tensor> e, c10::optional<torch::Tensor> X,
                             c10::optional<torch::Tensor> f) {
  static const std::unordered_map<int, resefa::TangentType> types = {
      {int(at::kFloat), resefa::TangentType::kFloat32}, {int(at::kHalf), resefa::TangentType::kFloat16},
      {int(at::kBFloat16), resefa::TangentType::kBFloat16}};
  const auto type = types.find(int(base.scalar_type()));
  require(type != types.end(), "base must be float32, float16 or bfloat16");
  check_cuda_tensor(base, "base", base.scalar_type());
  require(base.dim() >= 2, "base must be [k, C, ...]");
  const c10::cuda::CUDAGuard guard(base.device());
  const int64_t k = base.size(0), C = base.size(1), Q = k * C == 0 ? 0 : base.numel() / (k * C);
  resefa::TangentAffineParams p;
  auto out = torch::empty_like(base);
  p.base = base.data_ptr(), p.out = out.data_ptr(), p.type = type->second, p.k = k, p.C = C, p.Q = Q;
  p.A = optional_primal(A, "A", C, Q), p.B = optional_primal(B, "B", C, Q), p.X = optional_primal(X, "X", C, Q);
  p.e = optional_coefficients(e, "e", k, C), p.f = optional_coefficients(f, "f", k, C);
  raise_if_failed(resefa::tangent_affine(p, at::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> syevdx_topk(const torch::Tensor& a, int64_t k) {
  const auto dtype = data_type(a);
  check_cuda_tensor(a, "A", a.scalar_type());
  require(a.dim() == 2 && a.size(0) == a.size(1), "A must be square [n, n]");
  const c10::cuda::CUDAGuard guard(a.device());
  auto work = a.clone();
  auto values = torch::empty({k}, a.options());
  auto vectors = torch::empty({k, a.size(0)}, a.options());
  raise_if_failed(resefa::syevdx_topk(solver_handle(), dtype, work.data_ptr(), a.size(0), k,
                                      values.data_ptr(), vectors.data_ptr(), torch_allocator(),
                                      at::cuda::getCurrentCUDAStream()));
  return {values, vectors};
}

std::tuple<torch::Tensor, torch::Tensor> sygvdx_topk(const torch::Tensor& a, const torch::Tensor& b, int64_t k) {
  const auto dtype = data_type(a);
  check_cuda_tensor(a, "A", a.scalar_type());
  check_cuda_tensor(b, "B", a.scalar_type());
  require(a.dim() == 2 && a.size(0) == a.size(1) && b.sizes() == a.sizes(), "A and B must be square [n, n]");
  const c10::cuda::CUDAGuard guard(a.device());
  auto wa = a.clone(), wb = b.clone();
  auto values = torch::empty({k}, a.options());
  auto vectors = torch::empty({k, a.size(0)}, a.options());
  raise_if_failed(resefa::sygvdx_topk(solver_handle(), dtype, wa.data_ptr(), wb.data_ptr(),
                                      a.size(0), k, values.data_ptr(), vectors.data_ptr(), torch_allocator(),
                                      at::cuda::getCurrentCUDAStream()));
  return {values, vectors};
}

std::tuple<torch::Tensor, torch::Tensor> syev_batched(const torch::Tensor& a) {
  const auto dtype = data_type(a);
  check_cuda_tensor(a, "A", a.scalar_type());
  require(a.dim() == 3 && a.size(1) == a.size(2), "A must be [batch, n, n]");
  const c10::cuda::CUDAGuard guard(a.device());
  auto vectors = a.clone();
  auto values = torch::empty({a.size(0), a.size(1)}, a.options());
  raise_if_failed(resefa::syev_batched(solver_handle(), dtype, vectors.data_ptr(), a.size(0),
                                       a.size(1), values.data_ptr(), torch_allocator(),
                                       at::cuda::getCurrentCUDAStream()));
  return {values, vectors};  // vectors[b, j, :] = eigenvector j (rows), ascending
}

std::tuple<torch::Tensor, torch::Tensor> gesvdr_topk(const torch::Tensor& a, int64_t k, int64_t oversample,
                                                     int64_t niters) {
  const auto dtype = data_type(a);
  check_cuda_tensor(a, "A", a.scalar_type());
  require(a.dim() == 2, "A must be [m, n]");
  const c10::cuda::CUDAGuard guard(a.device());
  auto work = a.clone();
  auto s = torch::empty({k}, a.options());
  auto v = torch::empty({k, a.size(1)}, a.options());
  raise_if_failed(resefa::gesvdr_topk(solver_handle(), dtype, work.data_ptr(), a.size(0),
                                      a.size(1), k, oversample, niters, s.data_ptr(), v.data_ptr(), torch_allocator(),
                                      at::cuda::getCurrentCUDAStream()));
  return {s, v};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "resefa_fast CUDA core (csrc/): masked Grams, refined-route operands, bulk-path gathers, cuSOLVER top-k, "
          "tangent affine maps";
  m.attr("cuda_version") = CUDART_VERSION;  // toolkit the extension was compiled with, e.g. 13000
  m.def("masked_grams", &masked_grams, "grams[r] = J^T diag(w_r) J and traces", py::arg("jacobian"),
        py::arg("weights"), py::arg("out") = py::none(), py::arg("accumulate") = false, py::arg("precision") = 0,
        py::arg("workspace_budget") = int64_t(512) << 20);
  m.def("row_energies", &row_energies, "e_p = |J_p|^2");
  m.def("prepare_refined_operands", &prepare_refined_operands,
        "refined-route operands in one pass: float16 (J*c)*r [P, d], float64 J [P, d] or None, float64 |J_p|^2 [P]",
        py::arg("jacobian"), py::arg("column_scale"), py::arg("row_scale"), py::arg("float64") = true);
  m.def("gather_scaled_rows", &gather_scaled_rows, "bulk-path operand, padded [R, max_rows, k], counts [R]");
  m.def("syevdx_topk", &syevdx_topk, "top-k eigenpairs (values [k] descending, vectors [k, n] rows)");
  m.def("sygvdx_topk", &sygvdx_topk, "generalised top-k A x = l B x (values desc, vectors [k, n], x^T B x = 1)");
  m.def("syev_batched", &syev_batched, "batched eigh: values [b, n] ascending, vectors [b, n, n] rows");
  m.def("gesvdr_topk", &gesvdr_topk, "randomised top-k SVD: s [k], right vectors [k, n] rows");
  m.def("tangent_affine", &tangent_affine, "out = base*A + B (x) e + X (x) f over k tangents [k, C, ...]",
        py::arg("base"), py::arg("A") = py::none(), py::arg("B") = py::none(), py::arg("e") = py::none(),
        py::arg("X") = py::none(), py::arg("f") = py::none());
}
