"""Where the explicit tangents (``StyleGAN2Generator.rows_jvp``) and torch.func's ``vmap(jvp)`` differ, W+ row by
W+ row: the engine's own row groups (layer skip by row, last stage sampled for the original readout), one chunk of
``--chunk`` tangents each, both ways, timed after a warm-up; then a CUDA kernel profile of the row where the
explicit tangents lose most (or gain least). On an H100 (2026-12-07) bench_main_job's sampled W+ Jacobian was 6-10 %
slower with the explicit tangents than with torch.func, where the CPU has them 1.4-2x faster; that run timed the
explicit tangents first, so they may have paid first-call costs the other run reused (benchmarks/NOTES.md item 16).
Here each variant of each row is warmed up before it is timed.

    python benchmarks/profile_tangents.py --json $OUT/tangents.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from bench_jacobian import describe, git_commit  # noqa: E402

from resefa_fast.jacobian import engine, readouts  # noqa: E402
from resefa_fast.models import random_stylegan2  # noqa: E402


def timed(device, fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="CPU-sized: 32² generator, w_dim 16, readout 16²")
    parser.add_argument("--precision", default="tf32")
    parser.add_argument("--chunk", type=int, default=64, help="tangents per timed chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", type=int, default=15, help="kernels listed for the worst row (0: no profile)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.small:
        G, readout = random_stylegan2(32, w_dim=16, small=True), readouts.original(16)
    else:
        G, readout = random_stylegan2(1024), readouts.original(256)
    G = G.to(device).eval().requires_grad_(False)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)).to(device))[0]
    chunk = min(args.chunk, G.w_dim)
    rows = []
    with engine._precision(args.precision, device), torch.no_grad():
        stride, tail = engine._sampling(G, readout, device)
        read = engine._pixels(tail if stride > 1 else readout)
        explicit = engine._staged_groups(G, ws, read, stride, explicit=True)
        plain = engine._staged_groups(G, ws, read, stride, explicit=False)
        cols = torch.arange(chunk)
        for row, (ours, theirs) in enumerate(zip(explicit, plain)):
            t_ours = timed(device, lambda: ours.columns(ours.primal, cols), args.repeats)
            t_func = timed(device, lambda: theirs.columns(theirs.primal, cols), args.repeats)
            a, b = ours.columns(ours.primal, cols).double(), theirs.columns(theirs.primal, cols).double()
            rows.append(dict(row=row, start_stage=ours.start, explicit_ms=1e3 * t_ours, func_ms=1e3 * t_func,
                             ratio=t_ours / t_func, rel_difference=float((a - b).norm() / b.norm())))
            print(rows[-1], flush=True)
        profiles = {}
        worst = max(rows, key=lambda r: r["explicit_ms"] - r["func_ms"])
        if args.kernels > 0 and device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            for name, group in (("explicit", explicit[worst["row"]]), ("func", plain[worst["row"]])):
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    group.columns(group.primal, cols)
                    torch.cuda.synchronize(device)
                profiles[name] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.kernels)
                print(f"=== row {worst['row']}, {name} ===\n{profiles[name]}", flush=True)

    total_ours, total_func = sum(r["explicit_ms"] for r in rows), sum(r["func_ms"] for r in rows)
    print(f"\n{describe(device)}, {args.precision}, {chunk} tangents per row, sampled stride {stride}")
    print("| W+ row | start stage | explicit ms | torch.func ms | ratio | rel. difference |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['start_stage']} | {r['explicit_ms']:.2f} | {r['func_ms']:.2f} | {r['ratio']:.2f} | "
              f"{r['rel_difference']:.1e} |")
    print(f"| all | | {total_ours:.1f} | {total_func:.1f} | {total_ours / total_func:.2f} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=describe(device), commit=git_commit(), precision=args.precision, chunk=chunk,
                           stride=stride, rows=rows, worst_row_profiles=profiles), f, indent=1)


if __name__ == "__main__":
    main()
