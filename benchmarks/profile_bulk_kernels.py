"""Where the bulk path's time goes, by CUDA kernel (torch.profiler): 1,000 face-part boxes, one latent,
P = 65,536, after the precompute, for --d and --backend. Not a benchmark of record (bench_solvers.py is).

    PYTHONPATH=. python benchmarks/profile_bulk_kernels.py --d 512 --backend cuda
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_solvers import random_boxes  # noqa: E402

from resefa_fast.regions import as_regions  # noqa: E402
from resefa_fast.solve.bulk import precompute, solve_bulk  # noqa: E402
from resefa_fast.testing import random_jacobian  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--regions", type=int, default=1000)
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--solver", default="auto")
    args = parser.parse_args()
    J = random_jacobian((256, 256), args.d, seed=args.d, device="cuda")
    basis = precompute(J)
    regions = as_regions(random_boxes(args.regions, 256), (1, 256, 256), J.shape[0], "cuda")
    run = lambda: solve_bulk(basis, regions, 16, 1e-3, "mean", backend=args.backend, solver=args.solver)  # noqa: E731
    run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = run()
    torch.cuda.synchronize()
    print(f"d={args.d} {args.regions} regions backend={args.backend} solver={args.solver}: "
          f"{time.perf_counter() - start:.3f} s; applications {out.info['applications']}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
