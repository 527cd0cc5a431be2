"""Phase times of the refined one-region route (resefa_fast/solve/refined.py) on a generator-like Jacobian.

Runs the route's pieces in order with CUDA events between them (each phase synchronised, so the sum is a little
above the end-to-end time of ``solve_general(..., method="refined")``, which is timed last). Prints a table and
writes JSON.

    python benchmarks/profile_refined.py --d 9216 --json $OUT/profile_refined.json [--kernels 30]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import resefa_fast as rf
from resefa_fast.regions import as_regions
from resefa_fast.solve.common import relative_residuals, scale_constants
from resefa_fast.solve.general import solve_general
from resefa_fast.solve.refined import BlockedCholesky, _initial_block, _operands, _Pencil, _rayleigh_ritz
from resefa_fast.testing import random_jacobian


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=9216)
    parser.add_argument("--grid", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--precision", default="float16")
    parser.add_argument("--json", default=None)
    parser.add_argument("--kernels", type=int, default=0,
                        help="also print the top N CUDA kernels of one end-to-end solve (torch.profiler)")
    args = parser.parse_args()
    device = torch.device("cuda")
    J = random_jacobian((args.grid, args.grid), args.d, seed=args.d, device=device)
    P = J.shape[0]
    regions = as_regions(rf.preset("eyes") if args.grid == 256 else (args.grid // 2, args.grid // 2, 10, 40),
                         (1, args.grid, args.grid), P, device)
    foreground, background = regions.foreground[0], regions.background_weights(torch.float64)[0]
    phases = []

    def phase(name, fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        phases.append((name, time.perf_counter() - start))
        return out

    for repeat in range(2):  # the first round warms up cuBLAS/cuSOLVER handles and the allocator
        phases.clear()
        m, b = foreground.double(), background
        c_f, c_b = scale_constants(m.sum(), b.sum(), "mean")
        G, exact, e = phase(f"operands: approximate Gram ({args.precision}), float64 rows, energies",
                            lambda: _operands(J, background.float().sqrt(), args.precision))
        a = 1e-3 * c_b * (b @ e)
        M = G * c_b.float()
        M.diagonal().add_(a.float())
        L = phase("Cholesky (float32)", lambda: torch.linalg.cholesky_ex(M)[0])
        factor = phase("diagonal block inverses", lambda: BlockedCholesky(L))
        q = 2 * args.k
        rows = torch.nonzero(foreground).flatten()
        pencil = _Pencil(exact, m, b, c_f, c_b, a, rows)
        Z = phase("initial block (block solves, top-k of FᵀF)",
                  lambda: _initial_block(J, foreground, rows, factor, c_f, args.k, q))
        Y, FZ, BZ = phase("pass over J (float64 chunks)", lambda: pencil.images(Z))
        theta, X, Y, FX, BX = phase("Rayleigh-Ritz", lambda: _rayleigh_ritz(pencil, Z, Y, FZ, BZ, q))
        res = relative_residuals(FX[:, :args.k].T, BX[:, :args.k].T, theta[:args.k])
        phases.append((f"(initial residual max {float(res.max()):.1e})", 0.0))
        for it in range(3):
            R = FX - BX * theta
            W = phase("precondition (block solves)", lambda: factor.solve((R / R.norm(dim=0)).float()).double())
            W = W - X @ (BX.T @ W)
            W = W / W.norm(dim=0)
            YW, FW, BW = phase("pass over J (float64 chunks)", lambda: pencil.images(W))
            theta, X, Y, FX, BX = phase("Rayleigh-Ritz", lambda: _rayleigh_ritz(
                pencil, torch.cat([X, W], 1), torch.cat([Y, YW], 1), torch.cat([FX, FW], 1),
                torch.cat([BX, BW], 1), q))
            res = relative_residuals(FX[:, :args.k].T, BX[:, :args.k].T, theta[:args.k])
            phases.append((f"(residual after iteration {it + 1}: {float(res.max()):.1e})", 0.0))
        exact = pencil = None  # free the float64 copy before the end-to-end run
        out = phase("end to end: solve_general(method='refined')",
                    lambda: solve_general(J, regions, args.k, 1e-3, "mean", method="refined"))
        phases.append((f"(iterations {out.info['iterations']})", 0.0))
    if args.kernels:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            solve_general(J, regions, args.k, 1e-3, "mean", method="refined")
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.kernels,
                                        max_name_column_width=70))
    rows = [{"phase": n, "ms": s * 1e3} for n, s in phases]
    print(f"| phase (d={args.d}, P={P}, k={args.k}, {torch.cuda.get_device_name()}) | ms |\n|---|---:|")
    for r in rows:
        print(f"| {r['phase']} | {r['ms']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"d": args.d, "P": P, "k": args.k, "device": torch.cuda.get_device_name(),
                       "torch": torch.__version__, "phases": rows}, f, indent=1)


if __name__ == "__main__":
    main()
