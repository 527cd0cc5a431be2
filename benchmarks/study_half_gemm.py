"""Study (GPU): why the mixed bulk route's ``W̃ = K̃K̃ᵀ`` (float16 operands, float32 sums, batched) runs at about a
quarter of the H100's float16 rate, and what would fix it (benchmarks/NOTES.md item 24; issue 4's d = 9216 target).

For ``K̃`` ``[R, n, r]`` float16 (r = 9216, a chunk of R same-size regions) it times, with CUDA events, the ways
``resefa_fast`` could form the product: ``torch.bmm(K̃, K̃ᵀ, out_dtype=float32)`` in one call and as
``gram.batched_row_gram`` does it (upper row-block pairs), each under cuBLAS and under cuBLASLt
(``torch.backends.cuda.preferred_blas_library``), for row counts n that are and are not multiples of 8 (cuBLAS's
Hopper kernels want 16-byte-aligned leading dimensions and batch strides), and prints TFLOP/s and the name of the
kernel that ran.

    python benchmarks/study_half_gemm.py              # R = 36, n in 1001, 1008, 2999, 3000; about 20 s on an H100
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from bench_jacobian import Timer  # noqa: E402

from resefa_fast.gram import batched_row_gram  # noqa: E402


def timed(fn):
    """Best seconds of ``fn()`` (bench_jacobian's Timer: CUDA events, after a warm-up) and the name of its longest
    kernel."""
    best, _, _ = Timer("cuda", warmup=1, repeats=5)(fn)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    top = max(events, key=lambda e: e.device_time_total).key if events else "?"
    return best, top


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", type=int, default=36, help="R, regions in one chunk")
    parser.add_argument("--rows", default="1001,1008,2999,3000", help="comma list of n")
    parser.add_argument("--rank", type=int, default=9216)
    args = parser.parse_args(argv)
    assert torch.cuda.is_available(), "a GPU study"
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, R = {args.regions}, r = {args.rank}")
    print("| n | library | form | ms | TFLOP/s (n² r R · 2) | kernel |\n|---:|---|---|---:|---:|---|")
    for n in (int(x) for x in args.rows.split(",")):
        K = torch.randn(args.regions, n, args.rank, device="cuda").half()
        flops = 2.0 * args.regions * n * n * args.rank
        for library in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(library)
            forms = {"bmm(out_dtype=float32)": lambda: torch.bmm(K, K.transpose(1, 2), out_dtype=torch.float32),
                     "batched_row_gram": lambda: batched_row_gram(K, out_dtype=torch.float32),
                     "bmm float16 out": lambda: torch.bmm(K, K.transpose(1, 2))}
            for form, fn in forms.items():
                try:
                    seconds, kernel = timed(fn)
                except RuntimeError as error:  # a library that does not serve this case
                    print(f"| {n} | {library} | {form} | failed: {str(error)[:60]} | | |")
                    continue
                print(f"| {n} | {library} | {form} | {seconds * 1e3:.2f} | {flops / seconds / 1e12:.0f} | "
                      f"{kernel[:70]} |", flush=True)
        torch.backends.cuda.preferred_blas_library("cublas")


if __name__ == "__main__":
    main()
