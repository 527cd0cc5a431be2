"""Stage-by-stage timing of one bulk-path chunk (gather, small Gram, Cholesky, transform, top-k), to see where the
per-region time goes. Not a benchmark of record: bench_solvers.py is. Usage: python benchmarks/profile_bulk.py"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from resefa_fast.solve.common import orthonormalize, topk_eigh  # noqa: E402


def stage(name, fn, device, results, repeats=3):
    fn()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    results.append((name, (time.perf_counter() - start) / repeats))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--R", type=int, default=32)
    parser.add_argument("--n", type=int, default=2100)
    parser.add_argument("--r", type=int, default=9216)
    parser.add_argument("--k", type=int, default=16)
    args = parser.parse_args()
    device = torch.device(args.device)
    for dtype in (torch.float64, torch.float32):
        results = []
        R, n, r = args.R, args.n, args.r
        JV = torch.randn(65536, r, dtype=dtype, device=device) / r ** 0.5
        rows = torch.randint(0, 65536, (R, n), device=device)
        K = stage("gather K = JV[rows]*scale", lambda: JV[rows] * 0.5, device, results)
        W = stage("W = K Kᵀ (bmm)" if n <= r else "W = Kᵀ K", lambda: K @ K.transpose(1, 2) if n <= r
                  else K.transpose(1, 2) @ K, device, results)
        m = W.shape[-1]
        Z = torch.eye(m, dtype=dtype, device=device) - 0.5 * W / W.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
        L = stage("cholesky_ex(I - c_b W)", lambda: torch.linalg.cholesky_ex(Z)[0], device, results)
        X = stage("trsm L⁻¹ W", lambda: torch.linalg.solve_triangular(L, W, upper=False), device, results)
        C = stage("trsm (L⁻¹ W) L⁻ᵀ", lambda: torch.linalg.solve_triangular(L, X.transpose(1, 2), upper=False),
                  device, results)
        Linv = stage("L⁻¹ by trsm on I", lambda: torch.linalg.solve_triangular(
            L, torch.eye(m, dtype=dtype, device=device).expand(R, m, m), upper=False), device, results)
        stage("C by two bmm with L⁻¹", lambda: Linv @ W @ Linv.transpose(1, 2), device, results)
        C = 0.5 * (C + C.transpose(1, 2))
        Xb = torch.randn(R, m, 2 * args.k, dtype=dtype, device=device)
        stage("one iteration: C @ X", lambda: C @ Xb, device, results, repeats=10)
        stage("one iteration: orthonormalize", lambda: orthonormalize(Xb), device, results, repeats=10)
        H = Xb.transpose(1, 2) @ Xb
        stage("one iteration: eigh [R, 32, 32]", lambda: torch.linalg.eigh(H), device, results, repeats=10)
        out = stage("topk_eigh (whole)", lambda: topk_eigh(lambda Y: C @ Y, m, args.k, batch=(R,), dtype=dtype,
                                                           device=device), device, results, repeats=1)
        if m <= 4096:
            stage("dense eigh [R, m, m]", lambda: torch.linalg.eigh(C), device, results, repeats=1)
        print(f"\n{dtype}, R={R}, n={n}, r={r}, m={m}, iterations={out[3]}")
        for name, seconds in results:
            print(f"  {name:<36s} {seconds * 1e3:9.2f} ms   {seconds / R * 1e3:8.3f} ms/region")
        del JV, K, W, Z, L, X, C, Linv
        torch.cuda.empty_cache() if device.type == "cuda" else None


if __name__ == "__main__":
    main()
