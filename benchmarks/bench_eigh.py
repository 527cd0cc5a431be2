"""The bulk path's eigensolvers by library: ``torch.linalg.eigh`` through cuSOLVER and through MAGMA
(``torch.backends.cuda.preferred_linalg_library``), for the precompute's one large float64 problem (G = JᵀJ at
d = 9216, 0.85-1.17 s of the 1,000-region job: issue 4) and for a batch of small ones (1,000 × 512², the d = 512
bulk path's per-region problems; also the extension's batched Xsyev when it is built).

Every result is checked before it counts: residual ``‖G V − V Λ‖_F / ‖G‖_F`` and ``‖VᵀV − I‖_F``. Medians of
--repeats after a warm-up; a Markdown table last, JSON with --json.

    python benchmarks/bench_eigh.py --json $OUT/eigh.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_jacobian import describe, git_commit  # noqa: E402

from resefa_fast.gram import gram  # noqa: E402
from resefa_fast.testing import random_jacobian  # noqa: E402


def timed(fn, repeats):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def accuracy(G, values, vectors):
    """``(residual, orthogonality)`` of an eigendecomposition of ``G`` ``[..., m, m]`` (float64)."""
    residual = torch.linalg.matrix_norm(G @ vectors - vectors * values[..., None, :]) / torch.linalg.matrix_norm(G)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    orthogonality = torch.linalg.matrix_norm(vectors.transpose(-1, -2) @ vectors - eye)
    return float(residual.max()), float(orthogonality.max())


def solvers():
    """``(name, eigh)`` pairs for the libraries torch can use here, and the extension's batched Xsyev."""
    def with_library(library):
        def eigh(A):
            saved = torch.backends.cuda.preferred_linalg_library()
            torch.backends.cuda.preferred_linalg_library(library)
            try:
                return torch.linalg.eigh(A)
            finally:
                torch.backends.cuda.preferred_linalg_library(saved)
        return eigh
    found = [("torch.linalg.eigh, cusolver", with_library("cusolver")),
             ("torch.linalg.eigh, magma", with_library("magma"))]
    try:
        from resefa_fast.cuda_ops import syevj_batched
        found.append(("extension syevj_batched (Xsyev)", syevj_batched))
    except Exception as error:  # the extension is optional: say why it is not in the table
        print(f"extension not timed: {type(error).__name__}: {error}")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=9216, help="size of the one large problem (G = JᵀJ)")
    parser.add_argument("--batch", type=int, default=1000, help="number of small problems")
    parser.add_argument("--m", type=int, default=512, help="size of each small problem")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_eigh.py times GPU eigensolvers: no CUDA device here")
    device = torch.device("cuda")
    J = random_jacobian((256, 256), args.d, seed=args.d, device=device)
    large = gram(J, dtype=torch.float64)
    del J
    generator = torch.Generator(device=device).manual_seed(0)
    K = torch.randn(args.batch, 2 * args.m, args.m, generator=generator, dtype=torch.float64, device=device)
    small = K.transpose(1, 2) @ K / (2 * args.m)  # Wishart-like per-region Grams
    del K
    rows = []
    for problem, A in (("large", large), ("batch", small)):
        for name, eigh in solvers():
            if name.startswith("extension") and problem == "large":
                continue
            try:
                seconds, (values, vectors) = timed(lambda: eigh(A), args.repeats)
            except Exception as error:  # e.g. a torch built without MAGMA: a row saying so, not a crash
                rows.append(dict(problem=problem, solver=name, error=f"{type(error).__name__}: {error}"[:200]))
                continue
            residual, orthogonality = accuracy(A, values, vectors)
            shape = f"{args.d}²" if problem == "large" else f"{args.batch} × {args.m}²"
            rows.append(dict(problem=problem, shape=shape, solver=name, seconds=seconds, residual=residual,
                             orthogonality=orthogonality))
            print(rows[-1], flush=True)
            del values, vectors
    report = dict(date=datetime.date.today().isoformat(), commit=git_commit(), device=describe(device),
                  dtype="float64", rows=rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    print("| problem | solver | time | residual | ‖VᵀV − I‖ |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['problem']} | {row['solver']} | failed: {row['error'][:60]} | | |")
        else:
            print(f"| {row['shape']} | {row['solver']} | {row['seconds'] * 1e3:.1f} ms | {row['residual']:.1e} | "
                  f"{row['orthogonality']:.1e} |")


if __name__ == "__main__":
    main()
