"""Small calls of every CUDA-extension kernel, for compute-sanitizer (memcheck / racecheck) on the GPU machine:

    compute-sanitizer --tool memcheck python3 benchmarks/sanitize_cuda_ops.py

Sizes are odd and tiny so the instrumented run stays short; prints "sanitize ok" at the end.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from resefa_fast import cuda_ops  # noqa: E402

J = torch.randn(301, 19, device="cuda")
w = torch.rand(3, 301, device="cuda")
for precision in ("fp32", "tf32", "bf16"):
    out, _ = cuda_ops.masked_grams(J, w, precision=precision)
    cuda_ops.masked_grams(J, w, out=out, accumulate=True, precision=precision, workspace_bytes=4096)
cuda_ops.row_energies(J)
# d % 4 == 0: the float4 weighted-copy path (fp32 and the bf16 8-byte stores); a view 4 bytes off alignment: scalar
J4 = torch.randn(301, 20, device="cuda")
for precision in ("fp32", "bf16"):
    cuda_ops.masked_grams(J4, w, precision=precision)
cuda_ops.masked_grams(torch.randn(301 * 20 + 1, device="cuda")[1:].view(301, 20), w)
# the refined route's operands: float4 path (d = 20, with and without the float64 copy), scalar paths (d = 19; J a
# view 4 bytes off alignment)
r = torch.rand(301, device="cuda").half()
cuda_ops.prepare_refined_operands(J4, torch.rand(20, device="cuda"), r)
cuda_ops.prepare_refined_operands(J4, torch.rand(20, device="cuda"), r, float64=False)
cuda_ops.prepare_refined_operands(J, torch.rand(19, device="cuda"), r)
cuda_ops.prepare_refined_operands(torch.randn(301 * 20 + 1, device="cuda")[1:].view(301, 20),
                                  torch.rand(20, device="cuda"), r)
jv, scale = torch.randn(2 * 13 * 11, 7, device="cuda"), torch.rand(4, 7, device="cuda")
cuda_ops.gather_scaled_rows(jv, scale, boxes=torch.tensor([[6, 5, 3, 4], [0, 0, 5, 5], [12, 10, 9, 9], [6, 5, 0, 2]]),
                            grid=(13, 11))
masks = torch.rand(4, 13, 11)
masks[masks < 0.5] = 0
cuda_ops.gather_scaled_rows(jv, scale, masks=masks, grid=(13, 11))
for width in (8, 6):  # float4 and float2 gathers (k = 7 above: scalar)
    jv_w, scale_w = torch.randn(2 * 13 * 11, width, device="cuda"), torch.rand(4, width, device="cuda")
    cuda_ops.gather_scaled_rows(jv_w, scale_w, masks=masks, grid=(13, 11))
a = torch.randn(40, 40, device="cuda", dtype=torch.float64)
a = a @ a.T + torch.eye(40, device="cuda", dtype=torch.float64)
cuda_ops.syevdx_topk(a, 3)
cuda_ops.sygvdx_topk(a, a + torch.eye(40, device="cuda", dtype=torch.float64), 3)
cuda_ops.syevj_batched(a.float().expand(5, 40, 40).contiguous())
cuda_ops.truncated_svd(torch.randn(200, 40, device="cuda"), 4, 8, 1)
torch.cuda.synchronize()
# the tangent affine map: 4-wide accesses (Q = 12) in each tangent dtype, one-element ones (Q = 7; base a view one
# element off alignment), with and without each term
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for Q in (12, 7):
        base = torch.randn(5, 3, Q, device="cuda").to(dtype)
        A, B, X = (torch.randn(3, Q, device="cuda") for _ in range(3))
        e, f = torch.randn(5, 3, device="cuda"), torch.randn(5, 3, device="cuda")
        cuda_ops.tangent_affine(base, A, B, e, X, f)
        cuda_ops.tangent_affine(base, None, B, e)
        cuda_ops.tangent_affine(base, A, None, None, X, f)
    misaligned = torch.randn(5 * 3 * 12 + 1, device="cuda").to(dtype)[1:].view(5, 3, 12)
    cuda_ops.tangent_affine(misaligned, torch.randn(3, 12, device="cuda"), torch.randn(3, 12, device="cuda"), e)
torch.cuda.synchronize()
print("sanitize ok")
