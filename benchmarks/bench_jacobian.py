"""Time the Jacobian engine against its floor and the alternatives, side by side, for w and W+.

Generator: our StyleGAN2 at 1024² with config-f channel counts and random weights
(``resefa_fast.models.configs.random_stylegan2``: sampled last stage, explicit tangents), or with ``--generator toy``
the config-f-shaped stand-in of the first measurements (``resefa_fast.jacobian.toy.ToyGenerator.config_f``, neither);
readout: the original's (nearest resize to 256, channel sum). Rows, for w (d = 512) and W+ (d = 9,216):

- ``forward (floor)``: a plain batched forward pass, images/s (the cost a tangent is compared with);
- ``ours``: ``resefa_fast.jacobian`` with layer skip off, ``ours + layer skip`` (W+ only: tangent groups start
  at the first stage reading their row) and ``ours + layer skip by row`` (the generator takes W+ as a tuple of rows,
  so only the perturbed row carries a tangent: ``StagedGenerator.accepts_ws_rows``; with a generator that has
  ``rows_jvp`` -- StyleGAN2 -- its explicit tangents) and, for such a generator, ``ours + layer skip by row,
  torch.func tangents`` (the same with ``engine.EXPLICIT_TANGENTS = False``: ``vmap(jvp)`` of the row);
- ``ours bf16`` (with --precision-study): the reduced-precision tangent mode, its J / Gram / direction errors;
- ``jacfwd``: ``torch.func.jacfwd`` of the same function, k columns per call (it has no chunk_size argument);
- ``reverse``: ``torch.func.jacrev(chunk_size=k)``, one VJP per analysed pixel (the original's approach).

A correctness check runs first (ours vs reverse mode on sampled pixel rows and vs jacfwd on sampled columns: relative
Frobenius error ≤ 1e-4). Timings use CUDA events after a warm-up; when --columns / --rows is less than the full
size, the rate is measured on an evenly spread sample of columns (rows for reverse mode) and the full time is
extrapolated (marked in the table). Our timed runs skip the input checks (``check_fn=False``: 3 forwards and one
JVP per call, which a sample would extrapolate d / sample times). Prints a Markdown table, writes JSON (--json)
with device, versions, commit.

    python benchmarks/bench_jacobian.py --device cuda --json $OUT/jacobian.json
    python benchmarks/bench_jacobian.py --small          # CPU-sized smoke run (32² generator, w_dim 16)
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resefa_fast.jacobian import engine, is_staged, jacobian, readouts, synthesize  # noqa: E402
from resefa_fast.jacobian.engine import PRECISIONS, _is_oom  # noqa: E402
from resefa_fast.jacobian.toy import ToyGenerator  # noqa: E402
from resefa_fast.models import ops  # noqa: E402
from resefa_fast.models.configs import random_stylegan2  # noqa: E402

#: Forward vs reverse mode in float32 (DESIGN.md §6).
JACOBIAN_RTOL = 1e-4


class Timer:
    """Seconds of ``fn()``: CUDA events on CUDA (after ``warmup`` calls), perf_counter on the CPU; best of
    ``repeats``. Also the peak memory above the start (CUDA)."""

    def __init__(self, device, warmup=1, repeats=3):
        self.device, self.warmup, self.repeats = torch.device(device), warmup, repeats

    def __call__(self, fn):
        cuda = self.device.type == "cuda"
        for _ in range(self.warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        best, result = float("inf"), None
        for _ in range(self.repeats):
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                result = fn()
                stop.record()
                torch.cuda.synchronize(self.device)
                best = min(best, start.elapsed_time(stop) / 1e3)
            else:
                t0 = time.perf_counter()
                result = fn()
                best = min(best, time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated(self.device) - base) if cuda else None
        return best, peak, result


def measure(timer, fn, sampled, count, **row):
    """One table row: ``fn`` timed on ``sampled`` items, the total extrapolated to ``count`` items. A run that
    runs out of device memory gives a row marked "out of memory" instead of ending the benchmark."""
    try:
        seconds, peak, _ = timer(fn)
    except Exception as error:  # noqa: BLE001 - only OOM is kept
        if not _is_oom(error):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return dict(row, count=count, seconds=None, per_item_ms=None, rate=None, peak=None, error="out of memory")
    return dict(row, count=count, seconds=seconds * count / sampled, per_item_ms=seconds / sampled * 1e3,
                rate=sampled / seconds, peak=peak)


def relative_error(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def spread(total, count):
    """``count`` indices spread evenly over ``range(total)`` (all of them when count >= total)."""
    if count >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, count).round().long().unique()


def git_commit() -> str:
    """The commit a benchmark ran on: ``GIT_COMMIT`` (the device machine gets a copy of the tree without .git, so
    the caller passes it), else ``git rev-parse --short HEAD``, else "unknown". Every benchmark records this."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="CPU-sized: 32² generator, w_dim 16, readout 16²")
    parser.add_argument("--generator", default="stylegan2",
                        help="'stylegan2' (ours, random weights), 'toy' (config-f-shaped stand-in) or module:factory")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--w-dim", type=int, default=512)
    parser.add_argument("--readout-size", type=int, default=256)
    parser.add_argument("--spaces", default="w,wplus", help="comma list of w, wplus")
    parser.add_argument("--chunk-size", type=int, default=None, help="tangents per chunk (default: ours picks it)")
    parser.add_argument("--baseline-chunk", type=int, default=32, help="chunk of jacfwd / jacrev / the floor batch")
    parser.add_argument("--columns", type=int, default=None,
                        help="time this many sampled columns per space and extrapolate (default: all for w, "
                             "1152 for W+)")
    parser.add_argument("--rows", type=int, default=256, help="pixel rows timed for reverse mode (extrapolated)")
    parser.add_argument("--no-reverse", action="store_true")
    parser.add_argument("--no-jacfwd", action="store_true")
    parser.add_argument("--precision-study", action="store_true",
                        help="float16 and bfloat16 tangents vs float32: J, Gram and top-direction errors (full "
                             "w-space J)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="of the floor and of our rows (DESIGN.md §5's plain-torch numbers, which the targets "
                             "quote, ran with cuDNN's default tf32 convolutions; float16 / bfloat16: reduced-"
                             "precision tangents, the floor under autocast, tf32 on); the correctness check is "
                             "float32")
    parser.add_argument("--compare-unfused", action="store_true",
                        help="also time 'ours' with the explicit tangents' elementwise work as torch passes "
                             "(models.ops.FUSED_TANGENTS off) instead of the fused CUDA kernel")
    parser.add_argument("--kernels", type=int, default=0,
                        help="also profile one chunk of 'ours' per space: the top N CUDA kernels and the share of "
                             "device time in convolutions / GEMMs against everything else")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.small:
        args.resolution, args.w_dim, args.readout_size = 32, 16, 16
        args.device = args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision != "float32"
    # cuDNN's default algorithm choice, as the engine gets in use: with cudnn.benchmark every new convolution shape
    # (many per W+ row and chunk size) is autotuned, and on our StyleGAN2-1024 the run did not finish in 480 s

    G = make_generator(args, device)
    readout = readouts.original(args.readout_size)
    w = torch.randn(args.w_dim, generator=torch.Generator().manual_seed(0)).to(device)
    timer = Timer(device, warmup=1, repeats=args.repeats)
    rows, report = [], {"correctness": {}}

    def pixels_of(x):  # latent (w or W+) -> analysed pixels [P], the function every row differentiates
        ws = x.expand(G.num_ws, G.w_dim) if x.dim() == 1 else x
        return readout(synthesize(G, ws[None]))[0].reshape(-1)

    # the floor: a plain batched forward pass
    batch = args.baseline_chunk
    ws_batch = w.expand(batch, G.num_ws, G.w_dim).contiguous()
    half = args.precision in ("float16", "bfloat16")
    floor_autocast = torch.autocast(device.type, dtype=getattr(torch, args.precision) if half else None,
                                    enabled=half)
    with torch.no_grad(), floor_autocast:
        seconds, peak, image = timer(lambda: readout(synthesize(G, ws_batch)))
    P = image[0].numel()
    floor_per_image = seconds / batch
    rows.append(dict(space="-", method=f"forward (floor), batch {batch}", count=batch, unit="images",
                     seconds=seconds, per_item_ms=floor_per_image * 1e3, rate=batch / seconds, peak=peak,
                     extrapolated=False))
    print(f"P = {P} analysed pixels, floor {floor_per_image * 1e3:.3f} ms / image", flush=True)

    for space in args.spaces.split(","):
        rows += bench_space(space, G, w, readout, pixels_of, P, timer, args, report)

    if args.precision_study:
        report["precision"] = precision_study(G, w, readout, args.chunk_size)

    for row in rows:
        row["vs_floor"] = (row["per_item_ms"] / (floor_per_image * 1e3)
                           if row["unit"] == "tangents" and row["per_item_ms"] is not None else None)
    print_table(rows)
    report.update(rows=rows, args=vars(args), P=P, device=describe(device), torch=torch.__version__,
                  commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  generator=f"{args.generator if args.generator != 'toy' else 'ToyGenerator'} "
                            f"{'small' if args.small else 'config-f'} {args.resolution}² w_dim {args.w_dim}, "
                            f"readout {readout.name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


def make_generator(args, device):
    """The generator timed: our StyleGAN2 with config-f channel counts (``--small``: channel_base 1024, at most 64
    channels), the config-f-shaped ``ToyGenerator`` (``--generator toy``; ``--small``: a 32² one), or ``--generator
    module:factory`` called as ``factory(resolution=..., w_dim=...)``, which must return a
    :class:`~resefa_fast.jacobian.StagedGenerator`."""
    if args.generator == "stylegan2":
        G = random_stylegan2(args.resolution, w_dim=args.w_dim, small=args.small)
    elif args.generator != "toy":
        module, _, name = args.generator.partition(":")
        G = getattr(importlib.import_module(module), name)(resolution=args.resolution, w_dim=args.w_dim)
        assert is_staged(G), f"{args.generator} must return a StagedGenerator"
    elif args.small:
        G = ToyGenerator(args.resolution, args.w_dim, channels=lambda r: min(256 // r * 4, 64))
    else:
        G = ToyGenerator.config_f(args.resolution, args.w_dim)
    if isinstance(G, torch.nn.Module):
        G = G.to(device).eval().requires_grad_(False)
    return G


def jacfwd_columns(pixels_of, latent, cols):
    """``torch.func.jacfwd`` restricted to the latent dimensions ``cols`` (it has no column argument):
    ``[P, len(cols)]``."""
    where = cols.to(latent.device)

    def restricted(v):
        return pixels_of(latent + torch.zeros(latent.numel(), device=latent.device).index_add(0, where, v)
                         .reshape(latent.shape))
    return torch.func.jacfwd(restricted)(torch.zeros(cols.numel(), device=latent.device))


def bench_space(space, G, w, readout, pixels_of, P, timer, args, report):
    """The rows of one latent space ("w": d = w_dim, "wplus": d = num_ws · w_dim), after the correctness check."""
    device = w.device
    latent = w if space == "w" else w.expand(G.num_ws, G.w_dim).contiguous()
    d = latent.numel()
    sample = spread(d, args.columns or (d if space == "w" else min(d, 1152)))
    extrapolated = sample.numel() < d

    # correctness first: ours vs reverse mode on sampled pixel rows, and vs jacfwd on sampled columns. Without
    # cuDNN: its float32 convolution algorithms differ between calls and batch sizes by 2-4e-4 relative on a
    # StyleGAN2 (benchmarks/check_sampled_stage.py), more than the 1e-4 this check is about; torch's own
    # convolutions are exact to float32 rounding, so the check sees the engine, not the algorithm choice.
    check_cols, check_rows = spread(d, min(d, 64)), spread(P, min(P, 64)).to(device)
    matmul_tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
        J_cols = jacobian(G, latent, readout=readout, columns=check_cols, chunk_size=args.chunk_size,
                          progress=False)  # [P, 64]
        # reverse mode in chunks of 4 rows: 64 batched VJPs through a 1024² generator exceed 2^31 elements per
        # activation, which CUDA kernels reject ("invalid argument", seen on an H100)
        J_rows = torch.func.jacrev(lambda x: pixels_of(x)[check_rows], chunk_size=4)(latent).reshape(-1, d)
        error_rev = relative_error(J_cols[check_rows], J_rows[:, check_cols.to(device)])
        # jacfwd 8 columns at a time: 64 W+ tangents at once needed 16 GiB more than an H100 had left (seen there)
        J_fwd = torch.cat([jacfwd_columns(pixels_of, latent, part) for part in check_cols.split(8)], dim=1)
        error_fwd = relative_error(J_cols, J_fwd)
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32  # --precision again for the timed rows
    report["correctness"][space] = {"vs_reverse": error_rev, "vs_jacfwd": error_fwd}
    print(f"{space}: ours vs reverse {error_rev:.2e}, vs jacfwd {error_fwd:.2e} (cuDNN off)", flush=True)
    assert error_rev <= JACOBIAN_RTOL and error_fwd <= JACOBIAN_RTOL, report["correctness"][space]
    del J_cols, J_rows, J_fwd
    torch.cuda.empty_cache() if device.type == "cuda" else None

    rows = []
    by_row = hasattr(G, "accepts_ws_rows")  # a generator that can take W+ as a tuple of rows
    explicit = by_row and callable(getattr(G, "rows_jvp", None))  # the generator's own tangents
    # (name, layer skip, W+ by rows, explicit tangents where the engine can use them, fused tangent passes)
    variants = [("ours", False, False, True, True)] + (
        [("ours, tangent passes unfused", False, False, True, False)] if args.compare_unfused else []) + (
        [("ours + layer skip", True, False, True, True)] if space == "wplus" else []) + (
        [("ours + layer skip by row", True, True, True, True)] if space == "wplus" and by_row else []) + (
        [("ours + layer skip by row, torch.func tangents", True, True, False, True)] if space == "wplus" and explicit
        else [])
    for name, skip, rows_on, explicit_on, fused in variants:
        info = {}
        if by_row:
            G.accepts_ws_rows = rows_on  # W+ as a tuple of rows: one row carries the tangent (StagedGenerator)
        engine.EXPLICIT_TANGENTS = explicit_on
        ops.FUSED_TANGENTS = fused  # one CUDA kernel between two convolutions, or torch's passes

        def run(skip=skip, info=info):
            J, info["run"] = jacobian(G, latent, readout=readout, columns=sample, chunk_size=args.chunk_size,
                                      layer_skip=skip, precision=args.precision, progress=False,
                                      return_info=True, check_fn=False)
            return J.shape
        row = measure(timer, run, sample.numel(), d, space=space, method=name, unit="tangents",
                      extrapolated=extrapolated)
        stats = info.get("run")
        if stats is not None:
            row.update(chunk_size=stats.chunk_size, splits=stats.splits, stage_runs=stats.stage_runs,
                       stage_runs_without_skip=stats.stage_runs_without_skip,
                       explicit_tangents=stats.explicit_tangents, sampled_stride=stats.sampled_stride)
        rows.append(row)
    engine.EXPLICIT_TANGENTS = ops.FUSED_TANGENTS = True
    if by_row:
        G.accepts_ws_rows = False
    if args.kernels and device.type == "cuda":
        report.setdefault("kernels", {})[space] = kernel_profile(
            lambda: jacobian(G, latent, readout=readout, columns=sample[:rows[0].get("chunk_size") or 32],
                             precision=args.precision, progress=False, check_fn=False), args.kernels)

    k = args.baseline_chunk
    if not args.no_jacfwd:
        def run_jacfwd():  # k columns per jacfwd call
            for part in sample.split(k):
                jacfwd_columns(pixels_of, latent, part)
        rows.append(measure(timer, run_jacfwd, sample.numel(), d, space=space,
                            method=f"torch.func.jacfwd, chunk {k}", unit="tangents", extrapolated=extrapolated))
    if not args.no_reverse:
        pix = spread(P, args.rows).to(device)

        k_rev = min(k, 4)  # larger reverse chunks through a 1024² generator exceed CUDA's 2^31-element launch limit

        def run_reverse():
            return torch.func.jacrev(lambda x: pixels_of(x)[pix], chunk_size=k_rev)(latent).shape
        rows.append(measure(timer, run_reverse, pix.numel(), P, space=space,
                            method=f"torch.func.jacrev, chunk {k_rev}", unit="pixel rows",
                            extrapolated=pix.numel() < P))
    return rows


#: Kernel-name fragments of the matrix-unit work (cuDNN convolutions and cuBLAS / CUTLASS GEMMs).
MATRIX_KERNELS = ("conv", "gemm", "xmma", "cutlass", "cudnn", "dgrad", "wgrad", "fprop", "implicit")


def kernel_profile(fn, top):
    """One warmed-up call of ``fn`` under torch.profiler: prints the ``top`` CUDA kernels by device time and the
    share of convolution / GEMM kernels (:data:`MATRIX_KERNELS`) against everything else (elementwise, reductions,
    copies); returns both."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    total = max(sum(e.device_time_total for e in kernels), 1e-9)
    matrix = sum(e.device_time_total for e in kernels if any(f in e.key.lower() for f in MATRIX_KERNELS))
    print(f"\nkernels of one chunk: {total / 1e3:.1f} ms on the device, convolutions / GEMMs {matrix / total:.0%}")
    print("| kernel | ms | calls |\n|---|---:|---:|")
    for e in kernels[:top]:
        print(f"| {e.key[:90]} | {e.device_time_total / 1e3:.2f} | {e.count} |")
    return {"device_ms": total / 1e3, "matrix_share": matrix / total,
            "top": [(e.key, e.device_time_total / 1e3, e.count) for e in kernels[:top]]}


def precision_study(G, w, readout, chunk_size):
    """float16 and bfloat16 tangents vs float32 on the full w-space J: relative error of J, of the unmasked and the
    "center" region Grams, and the top-8 directions of the region (``resefa_fast.reference``, float64, τ = 1e-3):
    eigenvalue relative errors and |cos|; and each run's seconds (tf32 off for the float32 one)."""
    from resefa_fast import reference

    def run(precision):
        started = time.perf_counter()
        J = jacobian(G, w, readout=readout, chunk_size=chunk_size, precision=precision, progress=False).double()
        return J, time.perf_counter() - started

    J32, seconds32 = run("float32")
    side = int(round(J32.shape[0] ** 0.5))
    mask = torch.zeros(side, side, dtype=torch.float64)
    mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 1
    m = mask.reshape(-1).to(J32.device)
    top32 = reference.factorize(J32.reshape(side, side, -1).cpu(), mask, k=8)
    results = {"float32_seconds": seconds32}
    for precision in ("float16", "bfloat16"):
        J16, seconds = run(precision)
        top16 = reference.factorize(J16.reshape(side, side, -1).cpu(), mask, k=8)
        result = {"seconds": seconds, "J_rel_error": relative_error(J16, J32),
                  "gram_rel_error": relative_error(J16.T @ J16, J32.T @ J32),
                  "region_gram_rel_error": relative_error((J16 * m[:, None]).T @ J16, (J32 * m[:, None]).T @ J32),
                  "top8_eigenvalue_rel_error": ((top16.eigenvalues - top32.eigenvalues).abs()
                                                / top32.eigenvalues.abs()).tolist(),
                  "top8_abs_cos": (top16.directions * top32.directions).sum(1).abs().tolist()}
        print(f"{precision} tangents vs float32:", json.dumps(result), flush=True)
        results[precision] = result
        del J16
    return results


def describe(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def print_table(rows):
    print("\n| space | method | d or P | total s | ms / item | items/s | vs floor | peak GiB | chunk |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['space']} | {r['method']} | {r['count']} {r['unit']} | {r['error']} | | | | | |")
            continue
        peak = "-" if r["peak"] is None else f"{r['peak'] / 2 ** 30:.2f}"
        total = f"{r['seconds']:.3f}" + ("*" if r.get("extrapolated") else "")
        ratio = "-" if r.get("vs_floor") is None else f"{r['vs_floor']:.2f}x"
        print(f"| {r['space']} | {r['method']} | {r['count']} {r['unit']} | {total} | {r['per_item_ms']:.3f} | "
              f"{r['rate']:.1f} | {ratio} | {peak} | {r.get('chunk_size', '-')} |")
    print("\n* extrapolated from an evenly spread sample (columns for ours / jacfwd, pixel rows for jacrev)")


if __name__ == "__main__":
    main()
