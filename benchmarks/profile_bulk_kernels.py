"""Where the bulk path's time goes, by CUDA kernel and by phase (torch.profiler; each phase is one of the bulk
module's functions, wrapped in a named range): 1,000 face-part boxes, one latent, P = 65,536, after the precompute,
for --d, --backend and --gram. Not a benchmark of record (bench_solvers.py is).

    PYTHONPATH=. python benchmarks/profile_bulk_kernels.py --d 9216 --backend torch --gram mixed
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_solvers import random_boxes  # noqa: E402

from resefa_fast.regions import as_regions  # noqa: E402
from resefa_fast.solve import bulk  # noqa: E402
from resefa_fast.solve.bulk import precompute, solve_bulk  # noqa: E402
from resefa_fast.testing import random_jacobian  # noqa: E402


#: The bulk module's functions timed as phases.
PHASES = ("_gather_rows", "_region_totals", "batched_row_gram", "_mixed_top_eigenpairs", "_top_eigenpairs",
          "topk_eigh", "orthonormalize", "_foreground_products", "_background_products", "canonical_directions",
          "relative_residuals")


def in_range(name, fn):
    """``fn`` inside a profiler range called ``name``."""
    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)
    return wrapped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--regions", type=int, default=1000)
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--gram", default="auto")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a constant of resefa_fast.solve.bulk, e.g. MIXED_START_TOL=1e-2")
    args = parser.parse_args()
    for assignment in args.set:
        name, value = assignment.split("=", 1)
        setattr(bulk, name, type(getattr(bulk, name))(value))
    for name in PHASES:  # a named profiler range around each phase
        setattr(bulk, name, in_range(name, getattr(bulk, name)))
    J = random_jacobian((256, 256), args.d, seed=args.d, device=args.device)
    basis = precompute(J)
    regions = as_regions(random_boxes(args.regions, 256), (1, 256, 256), J.shape[0], args.device)
    run = lambda: solve_bulk(basis, regions, 16, 1e-3, "mean", backend=args.backend, solver=args.solver,  # noqa: E731
                             gram=args.gram)
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    run()
    synchronize()
    start = time.perf_counter()
    out = run()
    synchronize()
    print(f"d={args.d} {args.regions} regions backend={args.backend} solver={args.solver} gram={args.gram} "
          f"{' '.join(args.set)}: "
          f"{time.perf_counter() - start:.3f} s; applications {out.info['applications']}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                + [torch.profiler.ProfilerActivity.CUDA] * (args.device == "cuda")) as prof:
        run()
        synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=60)
    print(table)
    print("phases (device time of the kernels each launched, and CPU time; nested phases counted in their callers):")
    phases = {}  # the profiler lists each range twice, as a CPU event and as a device annotation: one row each
    for event in prof.key_averages():
        if event.key in PHASES:
            device, cpu, calls = phases.get(event.key, (0.0, 0.0, 0))
            phases[event.key] = (max(device, event.device_time_total), max(cpu, event.cpu_time_total),
                                 max(calls, event.count))
    for name, (device, cpu, calls) in phases.items():
        print(f"  {name:32s} {device / 1e3:9.1f} ms device {cpu / 1e3:9.1f} ms CPU {calls:5d} calls")


if __name__ == "__main__":
    main()
