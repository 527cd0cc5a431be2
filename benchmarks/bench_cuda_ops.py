"""Time the CUDA extension's ops (resefa_fast.cuda_ops) beside plain torch and naive torch.linalg.eigh.

Rows (float32 unless said), each checked against a reference before it is timed:
- masked Grams G_r = Jᵀ diag(w_r) J for R soft masks, P = 65,536: ours (fp32 / tf32 / bf16) vs torch
  ``(J·w_r)ᵀ @ J`` per mask in the same precision; GFLOP/s counted as R · 2·P·d² (the full GEMM, as torch does);
- the bulk gather K̃_r for 1,000 boxes on 256² (k columns of JV) vs a torch loop of index_select;
- top-k eigenpairs (syevdx) and generalised top-k (sygvdx) vs torch.linalg.eigh (and Cholesky + eigh);
- batched eigh (Xsyev batched) vs torch.linalg.eigh on the same batch;
- truncated SVD (gesvdr) vs torch.svd_lowrank vs torch.linalg.svd of a bulk-sized K̃;
- a truncated-SVD sweep ("truncated SVD sweep" rows): block Krylov (resefa_fast.solve.common.block_krylov_svd) at
  q = 1..8 iterations, gesvdr and torch.svd_lowrank at 2..16 power iterations, eigh(KᵀK), on two 3600 × 512
  operands (the logspace spectrum above, generated on the CPU, and a generator-like one) in fp32 and fp64, each
  with its max relative singular-value error vs float64; then an "equal accuracy" table: the fastest configuration
  of each method that reaches 1e-4 (and 1e-6 in fp64), or "not reached" (JSON key ``equal_accuracy``).

CUDA events after warm-up, median of --repeats. Prints a Markdown table last, writes JSON with --json.

    python benchmarks/bench_cuda_ops.py --json $OUT/bench_cuda_ops.json
    python benchmarks/bench_cuda_ops.py --quick        # smaller sizes (seconds)
    python benchmarks/bench_cuda_ops.py --svd-only     # the truncated-SVD rows only (on CPU without CUDA: no gesvdr)
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
from bench_jacobian import git_commit  # noqa: E402  (one commit stamp for all benchmarks)

from resefa_fast import cuda_ops  # noqa: E402
from resefa_fast._ext import extension_status  # noqa: E402
from resefa_fast.solve.common import block_krylov_svd  # noqa: E402
from resefa_fast.testing import random_jacobian  # noqa: E402


def cuda_time(fn, repeats, warmup=2):
    """Median milliseconds of ``fn()`` by CUDA events after ``warmup`` calls; returns ``(ms, last result)``."""
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), result


def cpu_time(fn, repeats, warmup=1):
    """Median milliseconds of ``fn()`` by wall clock (CPU runs of the SVD sweep); returns ``(ms, last result)``."""
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def torch_grams(J, w, precision):
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        Jb = J.bfloat16()
        return torch.stack([((J * m[:, None]).bfloat16().T @ Jb).float() for m in w])
    return torch.stack([(J * m[:, None]).T @ J for m in w])


def bench_grams(rows, P, d, R, repeats):
    g = torch.Generator(device="cuda").manual_seed(0)
    J = torch.randn(P, d, device="cuda", generator=g)
    w = torch.rand(R, P, device="cuda", generator=g)
    sub = slice(0, 4096)  # correctness on a pixel subset against float64
    ref = torch.einsum("pi,rp,pj->rij", J[sub].double(), w[:, sub].double(), J[sub].double())
    flops = R * 2.0 * P * d * d
    for precision in ("fp32", "tf32", "bf16"):
        err = rel(cuda_ops.masked_grams(J[sub].contiguous(), w[:, sub].contiguous(), precision=precision)[0], ref)
        err_torch = rel(torch_grams(J[sub], w[:, sub], precision), ref)
        ms, _ = cuda_time(lambda: cuda_ops.masked_grams(J, w, precision=precision), repeats)
        ms_t, _ = cuda_time(lambda: torch_grams(J, w, precision), repeats)
        torch.backends.cuda.matmul.allow_tf32 = False
        size = f"P={P} d={d} R={R}"
        rows.append(dict(op="masked_grams", impl="ours", precision=precision, size=size, ms=ms,
                         gflops=flops / ms / 1e6, rel_err=err, vs_torch=ms_t / ms))
        rows.append(dict(op="masked_grams", impl="torch matmul", precision=precision, size=size, ms=ms_t,
                         gflops=flops / ms_t / 1e6, rel_err=err_torch, vs_torch=1.0))
        torch.cuda.empty_cache()


def random_boxes(count, grid, generator):
    h = torch.randint(10, 51, (count,), generator=generator)
    w = torch.randint(20, 121, (count,), generator=generator)
    cx = (torch.rand(count, generator=generator) * (grid - h) + h // 2).long()
    cy = (torch.rand(count, generator=generator) * (grid - w) + w // 2).long()
    return torch.stack([cx, cy, h, w], 1).int()


def bench_gather(rows, R, k, repeats, grid=256):
    g = torch.Generator().manual_seed(1)
    jv = torch.randn(grid * grid, k, device="cuda")
    scale = torch.rand(R, k, device="cuda")
    boxes = random_boxes(R, grid, g)
    masks = torch.zeros(R, grid, grid)
    for r, (cx, cy, h, w) in enumerate(boxes.tolist()):
        masks[r, cx - h // 2: cx - h // 2 + h, cy - w // 2: cy - w // 2 + w] = 1
    masks = masks.cuda()
    flat = masks.reshape(R, -1)

    def torch_loop():
        out = []
        for r in range(R):
            idx = torch.nonzero(flat[r]).flatten()
            out.append(jv.index_select(0, idx) * scale[r])
        return out

    ref = torch_loop()
    out, counts = cuda_ops.gather_scaled_rows(jv, scale, boxes=boxes.cuda(), grid=(grid, grid))
    ok = all(torch.equal(out[r, : ref[r].shape[0]], ref[r]) for r in range(R))
    size = f"R={R} boxes k={k} grid={grid}"
    nbytes = 2 * 4.0 * counts.sum().item() * k  # read + write each gathered element
    for name, fn in (("ours (boxes)", lambda: cuda_ops.gather_scaled_rows(jv, scale, boxes=boxes.cuda(),
                                                                          grid=(grid, grid))),
                     ("ours (masks)", lambda: cuda_ops.gather_scaled_rows(jv, scale, masks=masks, grid=(grid, grid))),
                     ("torch loop", torch_loop)):
        ms, _ = cuda_time(fn, repeats)
        rows.append(dict(op="gather_scaled_rows", impl=name, precision="fp32", size=size, ms=ms,
                         gbps=nbytes / ms / 1e6, exact=ok))


def spd(n, dtype):
    x = torch.randn(n, n, device="cuda", dtype=torch.float64)
    return ((x @ x.T) / n + torch.eye(n, device="cuda", dtype=torch.float64)).to(dtype)


def bench_eigen(rows, n, k, repeats, dtype=torch.float32):
    a = spd(n, dtype)
    b = spd(n, dtype)
    ref = torch.linalg.eigvalsh(a.double()).flip(0)[:k]
    size = f"n={n} k={k} {str(dtype)[6:]}"
    ms, (values, _) = cuda_time(lambda: cuda_ops.syevdx_topk(a, k), repeats, warmup=1)
    rows.append(dict(op="top-k eigh", impl="ours syevdx", precision=str(dtype)[6:], size=size, ms=ms,
                     rel_err=((values.double() - ref).abs() / ref).max().item()))
    ms, (values_t, _) = cuda_time(lambda: torch.linalg.eigh(a), repeats, warmup=1)
    rows.append(dict(op="top-k eigh", impl="torch.linalg.eigh (full)", precision=str(dtype)[6:], size=size, ms=ms,
                     rel_err=((values_t.flip(0)[:k].double() - ref).abs() / ref).max().item()))

    L = torch.linalg.cholesky(b.double())
    Cm = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, a.double(), upper=False).T, upper=False)
    gref = torch.linalg.eigvalsh(Cm).flip(0)[:k]

    def torch_general():
        Lf = torch.linalg.cholesky(b)
        C = torch.linalg.solve_triangular(Lf, torch.linalg.solve_triangular(Lf, a, upper=False).T, upper=False)
        return torch.linalg.eigh(C)

    ms, (gvalues, _) = cuda_time(lambda: cuda_ops.sygvdx_topk(a, b, k), repeats, warmup=1)
    rows.append(dict(op="generalised top-k", impl="ours sygvdx", precision=str(dtype)[6:], size=size, ms=ms,
                     rel_err=((gvalues.double() - gref).abs() / gref).max().item()))
    ms, (tvalues, _) = cuda_time(torch_general, repeats, warmup=1)
    rows.append(dict(op="generalised top-k", impl="torch cholesky+eigh", precision=str(dtype)[6:], size=size,
                     ms=ms, rel_err=((tvalues.flip(0)[:k].double() - gref).abs() / gref).max().item()))


def bench_batched(rows, batch, n, repeats, dtype=torch.float32):
    x = torch.randn(batch, n, n, device="cuda", dtype=dtype)
    a = x + x.mT
    ref = torch.linalg.eigvalsh(a.double())
    size = f"{batch}x{n}^2 {str(dtype)[6:]}"
    for name, fn in (("ours Xsyev batched", lambda: cuda_ops.syevj_batched(a)),
                     ("torch.linalg.eigh batched", lambda: torch.linalg.eigh(a))):
        ms, (values, _) = cuda_time(fn, repeats, warmup=1)
        err = ((values.double() - ref).abs().amax(1) / ref.abs().amax(1)).max().item()
        rows.append(dict(op="batched eigh", impl=name, precision=str(dtype)[6:], size=size, ms=ms, rel_err=err))


def bench_svd(rows, m, n, k, repeats):
    g = torch.Generator(device="cuda").manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(m, n, device="cuda", generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, n, device="cuda", generator=g))
    s_true = torch.logspace(2, -2, n, device="cuda")  # a bulk-operand-like decaying spectrum
    a = (U * s_true) @ V.T
    ref = torch.linalg.svdvals(a.double())[:k]
    size = f"{m}x{n} k={k}"
    for name, fn in (("ours gesvdr (p=16, it=2)", lambda: cuda_ops.truncated_svd(a, k, 16, 2)[0]),
                     ("torch.svd_lowrank (q=k+16, it=2)", lambda: torch.svd_lowrank(a, q=k + 16, niter=2)[1][:k]),
                     ("torch.linalg.svdvals via eigh(KᵀK)", lambda: torch.linalg.eigvalsh(a.T @ a).flip(0)[:k].sqrt()),
                     ("torch.linalg.svd (full)", lambda: torch.linalg.svd(a, full_matrices=False)[1][:k])):
        ms, s = cuda_time(fn, repeats, warmup=1)
        rows.append(dict(op="truncated SVD", impl=name, precision="fp32", size=size, ms=ms,
                         rel_err=((s.double() - ref).abs() / ref).max().item()))


#: Iteration counts of the sweep: block Krylov's q (basis of (q + 1) b columns), the power iterations of gesvdr and
#: torch.svd_lowrank (each 2 products with K, on l = k + 16 columns).
KRYLOV_ITERATIONS = (1, 2, 3, 4, 6, 8)
POWER_ITERATIONS = (2, 4, 8, 16)
#: Equal-accuracy targets (max relative singular-value error of the top k vs float64) by precision.
SVD_TARGETS = {"fp32": (1e-4,), "fp64": (1e-4, 1e-6)}
SVD_METHODS = ("block Krylov", "gesvdr", "torch.svd_lowrank", "eigh(KᵀK)")


def svd_operands(m, n, seed=2):
    """The sweep's operands ``{name: float64 [m, n] on the CPU}``: the logspace spectrum of :func:`bench_svd`
    (10² to 10⁻², slowly decaying: 2 % steps) and a generator-like one (rank 40, (1 + i)^-0.7, 1e-3 noise)."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    side = int(round(m ** 0.5))
    grid = (side, m // side) if side * (m // side) == m else (1, m)
    return {"logspace": (U * torch.logspace(2, -2, n, dtype=torch.float64)) @ V.T,
            "generator-like": random_jacobian(grid, n, rank=40, decay=0.7, seed=seed, dtype=torch.float64)}


def svd_configs(k, n, gesvdr=True, krylov_iterations=KRYLOV_ITERATIONS, power_iterations=POWER_ITERATIONS):
    """``(method, impl label, iterations, products with K, columns, fn(a) -> top-k singular values)`` per config."""
    b, width = k + 8, k + 16
    configs = [("block Krylov", f"block Krylov (b={b}, q={q})", q, 2 * q + 2, b,
                lambda a, q=q: block_krylov_svd(a, k, q, block=b)[1]) for q in krylov_iterations]
    if gesvdr:
        configs += [("gesvdr", f"ours gesvdr (p=16, it={it})", it, 2 * it + 2, width,
                     lambda a, it=it: cuda_ops.truncated_svd(a, k, 16, it)[0])
                    for it in power_iterations if width <= n]
    configs += [("torch.svd_lowrank", f"torch.svd_lowrank (q=k+16, it={it})", it, 2 * it + 2, width,
                 lambda a, it=it: torch.svd_lowrank(a, q=width, niter=it)[1][:k]) for it in power_iterations]
    configs.append(("eigh(KᵀK)", "eigh(KᵀK) with vectors", 0, 2, n,
                    lambda a: torch.linalg.eigh(a.mT @ a)[0].flip(-1)[:k].clamp_min(0).sqrt()))
    return configs


def bench_svd_sweep(rows, summary, m, n, k, repeats, device="cuda", timer=cuda_time, gesvdr=True,
                    dtypes=(torch.float32, torch.float64), **config_kwargs):
    """Time every :func:`svd_configs` entry on each operand and dtype (rows with op "truncated SVD sweep"), then
    append the equal-accuracy summary of those rows to ``summary``."""
    first = len(rows)
    for name, operand in svd_operands(m, n).items():
        for dtype in dtypes:
            a = operand.to(device=device, dtype=dtype)
            ref = torch.linalg.svdvals(a.double().cpu())[:k]
            precision = "fp32" if dtype == torch.float32 else "fp64"
            for method, impl, iterations, products, columns, fn in svd_configs(k, n, gesvdr, **config_kwargs):
                try:
                    ms, s = timer(lambda: fn(a), repeats, warmup=1)
                    err = ((s.double().cpu() - ref).abs() / ref).max().item()
                except Exception as error:  # e.g. a solver that fails to converge: record it, keep the sweep
                    rows.append(dict(op="ERROR", impl=f"{impl}: {type(error).__name__}", precision=precision,
                                     size=str(error)[:200], ms=0.0))
                    continue
                rows.append(dict(op="truncated SVD sweep", impl=impl, precision=precision,
                                 size=f"{name} {m}x{n} k={k}", ms=ms, rel_err=err, method=method,
                                 operand=name, iterations=iterations, k_products=products, columns=columns,
                                 k_gflop=2.0 * m * n * columns * products / 1e9))
    summary.extend(equal_accuracy(rows[first:]))


def equal_accuracy(rows, targets=SVD_TARGETS, methods=SVD_METHODS):
    """Per (operand, precision, target): the fastest sweep row of each method whose error is <= target, as
    ``{"operand", "precision", "target", method: {"impl", "ms", "rel_err"} or None (not reached)}``."""
    out = []
    sweep = [r for r in rows if r.get("op") == "truncated SVD sweep"]
    for operand in dict.fromkeys(r["operand"] for r in sweep):
        for precision, precision_targets in targets.items():
            group = [r for r in sweep if r["operand"] == operand and r["precision"] == precision]
            if not group:
                continue
            for target in precision_targets:
                entry = {"operand": operand, "precision": precision, "target": target}
                for method in methods:
                    reached = [r for r in group if r["method"] == method and r["rel_err"] <= target]
                    if any(r["method"] == method for r in group):
                        best = min(reached, key=lambda r: r["ms"]) if reached else None
                        entry[method] = (None if best is None else
                                         {"impl": best["impl"], "ms": best["ms"], "rel_err": best["rel_err"]})
                out.append(entry)
    return out


def equal_accuracy_markdown(summary, methods=SVD_METHODS):
    lines = ["Equal accuracy (fastest configuration reaching the target; ms, its error):", "",
             "| operand | prec | target | " + " | ".join(methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    for entry in summary:
        cells = []
        for method in methods:
            if method not in entry:
                cells.append("(not run)")
            elif entry[method] is None:
                cells.append("not reached")
            else:
                best = entry[method]
                cells.append(f"{best['impl']}: {best['ms']:.3f} ms ({best['rel_err']:.0e})")
        lines.append(f"| {entry['operand']} | {entry['precision']} | {entry['target']:.0e} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def markdown(rows, meta):
    lines = [f"device {meta['device']}, torch {meta['torch']} (CUDA {meta['cuda']}), commit {meta['commit']}, "
             f"{meta['date']}", "",
             "| op | impl | prec | size | ms | GFLOP/s or GB/s | rel err | torch/ours |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['gflops']:.0f} GF/s" if "gflops" in r else (f"{r['gbps']:.0f} GB/s" if "gbps" in r else "")
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else ("exact" if r.get("exact") else "MISMATCH")
        speed = f"{r['vs_torch']:.2f}" if "vs_torch" in r else ""
        lines.append(f"| {r['op']} | {r['impl']} | {r['precision']} | {r['size']} | {r['ms']:.3f} | {rate} | {err} "
                     f"| {speed} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--json", default=None)
    parser.add_argument("--svd-only", action="store_true",
                        help="only the truncated-SVD rows and sweep; without CUDA (or the extension) the sweep runs "
                        "on the CPU by wall clock, without gesvdr")
    args = parser.parse_args()
    status = extension_status()
    cuda = torch.cuda.is_available()
    if not status["available"] and not args.svd_only:
        print(f"CUDA extension unavailable: {status['reason']}; nothing to time")
        sys.exit(0 if not cuda else 1)
    commit = git_commit()
    meta = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "extension": status, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    rows, summary = [], []

    def sweep():
        bench_svd_sweep(rows, summary, 3600, 512, 16, args.repeats, device="cuda" if cuda else "cpu",
                        timer=cuda_time if cuda else cpu_time, gesvdr=status["available"] and cuda)

    if args.svd_only:
        sections = ([lambda: bench_svd(rows, 3600, 512, 16, args.repeats)] if status["available"] else []) + [sweep]
    else:
        sections = [lambda: bench_grams(rows, 65536, 512, 8, args.repeats),
                    lambda: bench_grams(rows, 65536, 512, 1, args.repeats),
                    lambda: bench_gather(rows, 1000, 512 if not args.quick else 64, args.repeats),
                    lambda: bench_eigen(rows, 512, 16, args.repeats),
                    lambda: bench_batched(rows, 1000, 32, args.repeats),
                    lambda: bench_batched(rows, 100, 512, max(1, args.repeats // 2)),
                    lambda: bench_svd(rows, 3600, 512, 16, args.repeats), sweep]
    if not args.quick and not args.svd_only:
        sections += [lambda: bench_grams(rows, 65536, 9216, 1, 3),
                     lambda: bench_eigen(rows, 9216, 16, 2)]
    for section in sections:
        try:
            section()
        except Exception as error:  # keep the other rows; record the failure
            rows.append(dict(op="ERROR", impl=type(error).__name__, precision="", size=str(error)[:200], ms=0.0))
        print(markdown(rows[-1:], meta).splitlines()[-1], flush=True)
    table = markdown(rows, meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "equal_accuracy": summary}, f, indent=1, default=str)
    print(table)
    if summary:
        print()
        print(equal_accuracy_markdown(summary))


if __name__ == "__main__":
    main()
