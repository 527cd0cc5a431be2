"""The main job's target (issue 7): mine 1,000 regions for one latent code in W+ on an FFHQ-1024-shaped StyleGAN2
(random weights, config-f), Jacobian included, under a minute on an H100.

Phases, each timed on its own, then the whole ``resefa_fast.mine`` call end to end:
- ``jacobian``: ``rf.jacobian(G, ws, readout=original)`` — W+ (9,216 tangents, layer skip): each precision, and
  each ``--chunks`` size at ``--precision``, timed on a sample of columns (every 8th tangent of every W+ row), each
  variant after one untimed run of itself, and extrapolated (sampled J compared with the first's); the fastest
  chunk at ``--precision`` is timed in full;
- ``mine``: ``Factorizer(J).factorize_many(1000 boxes, k=16)`` (bulk path, float64);
- ``end to end``: ``rf.mine(model, boxes, seeds=[0], space="wp", precision=P)``, store writes included.

The 1,000 boxes: a multi-scale grid on the 256×256 readout (32² every 8 px, 64² every 16 px), first 1,000.

    python benchmarks/bench_main_job.py --json $OUT/main_job.json          # H100
    python benchmarks/bench_main_job.py --small                            # CPU smoke run (seconds)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from bench_jacobian import describe, git_commit  # noqa: E402

import resefa_fast as rf  # noqa: E402
from resefa_fast.cli import box_grid  # noqa: E402
from resefa_fast.jacobian import readouts  # noqa: E402
from resefa_fast.models import random_stylegan2  # noqa: E402
from resefa_fast.pipeline import Model  # noqa: E402

TARGET_SECONDS = 60.0


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn, warm=False):
    """``(seconds, fn())``; ``warm``: run ``fn`` once untimed first, so that each variant pays its own first-call
    costs (cuDNN plans for new convolution shapes, allocator growth) outside its timing, not the variant after it."""
    if warm:
        fn()
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="CPU-sized: 32² generator, 64 boxes")
    parser.add_argument("--precision", default="tf32", help="precision of the full Jacobian and the end-to-end run")
    parser.add_argument("--regions", type=int, default=1000)
    parser.add_argument("--sample-precisions", default="float32,tf32,bfloat16",
                        help="precisions timed on the column sample (auto chunk); the first is the error reference")
    parser.add_argument("--chunks", default="", help="chunk sizes timed on the sample at --precision, e.g. 16,32,64")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time the sample with the generator's weights in channels_last (NHWC) format")
    parser.add_argument("--compare-full-last-stage", action="store_true",
                        help="also time the sample at --precision with the last block computed in full (the engine's "
                             "SAMPLE_LAST_STAGE switch off): the gain of sampling it where the readout reads")
    parser.add_argument("--compare-func-tangents", action="store_true",
                        help="also time the sample at --precision with torch.func's vmap(jvp) instead of the "
                             "generator's explicit tangents (the engine's EXPLICIT_TANGENTS switch off)")
    parser.add_argument("--sample-only", action="store_true", help="stop after the sampled timings")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.small:
        G = random_stylegan2(32, w_dim=16, small=True).to(device)
        readout, regions_wanted, grid = readouts.original(16), 64, 16
        sizes = (4, 8)
    else:
        G = random_stylegan2(1024).to(device)
        readout, regions_wanted, grid = readouts.original(256), args.regions, 256
        sizes = (32, 64)
    G.eval().requires_grad_(False)
    model = Model(G, spec=f"random:{G.img_resolution}", fingerprint={"random_seed": 0, "resolution": G.img_resolution})
    boxes = box_grid(list(sizes), 0.25, (grid, grid))[:regions_wanted]
    ws = model.latents([0])
    d = G.num_ws * G.w_dim
    rows = []

    # Jacobian: the precisions, then chunk sizes, on a column sample (extrapolated); the best in full
    sample = torch.arange(0, d, 8)
    reference = None
    trials = [(p, None) for p in args.sample_precisions.split(",") if p] + [
        (args.precision, int(c)) for c in args.chunks.split(",") if c]
    best = (float("inf"), None)
    for precision, chunk in trials:
        seconds, (J, info) = timed(device, lambda p=precision, c=chunk: rf.jacobian(
            G, ws[0], readout=readout, precision=p, columns=sample.tolist(), chunk_size=c, progress=False,
            return_info=True), warm=True)
        reference = J.float() if reference is None else reference
        error = float((J.float() - reference).norm() / reference.norm())
        chunks = sorted(set(info.chunk_sizes)) if hasattr(info, "chunk_sizes") else None
        rows.append(dict(phase=f"jacobian (sampled, extrapolated), chunk {chunk or 'auto'}", precision=precision,
                         seconds=seconds * d / len(sample), rel_error_vs_first=error, chunks=chunks,
                         explicit_tangents=info.explicit_tangents))
        print(rows[-1], flush=True)
        if precision == args.precision and seconds < best[0]:
            best = (seconds, chunk)
    from resefa_fast.jacobian import engine

    switches = [(args.compare_full_last_stage, "SAMPLE_LAST_STAGE", "last block in full"),
                (args.compare_func_tangents, "EXPLICIT_TANGENTS", "torch.func tangents")]
    for wanted, switch, label in switches:  # the engine with one of its optimisations off, for its gain
        if not wanted:
            continue
        setattr(engine, switch, False)
        try:
            seconds, (J, info) = timed(device, lambda: rf.jacobian(
                G, ws[0], readout=readout, precision=args.precision, columns=sample.tolist(), progress=False,
                return_info=True), warm=True)
        finally:
            setattr(engine, switch, True)
        error = float((J.float() - reference).norm() / reference.norm())
        rows.append(dict(phase=f"jacobian (sampled, extrapolated), {label}, chunk auto", precision=args.precision,
                         seconds=seconds * d / len(sample), rel_error_vs_first=error,
                         sampled_stride=info.sampled_stride, explicit_tangents=info.explicit_tangents))
        print(rows[-1], flush=True)
    if args.channels_last:
        G_nhwc = random_stylegan2(G.img_resolution, w_dim=G.w_dim, small=args.small).to(device)
        G_nhwc = G_nhwc.to(memory_format=torch.channels_last)
        G_nhwc.eval().requires_grad_(False)
        seconds, J = timed(device, lambda: rf.jacobian(G_nhwc, ws[0], readout=readout, precision=args.precision,
                                                         columns=sample.tolist(), progress=False), warm=True)
        error = float((J.float() - reference).norm() / reference.norm())
        rows.append(dict(phase="jacobian (sampled, extrapolated), channels_last weights, chunk auto",
                         precision=args.precision, seconds=seconds * d / len(sample), rel_error_vs_first=error))
        print(rows[-1], flush=True)
        del G_nhwc
    del reference
    if args.sample_only:
        return _report(args, device, G, boxes, d, rows)
    chunk = best[1]
    seconds, J = timed(device, lambda: rf.jacobian(G, ws[0], readout=readout, precision=args.precision,
                                                     chunk_size=chunk, progress=False))
    rows.append(dict(phase=f"jacobian (full), chunk {chunk or 'auto'}", precision=args.precision, seconds=seconds,
                     shape=list(J.shape)))
    print(rows[-1], flush=True)
    factorizer_seconds, result = timed(device, lambda: rf.Factorizer(J, grid=(1, grid, grid)).factorize_many(
        boxes, k=16, progress=False))
    rows.append(dict(phase=f"mine {len(boxes)} regions (precompute + bulk)", precision="float64",
                     seconds=factorizer_seconds, max_residual=float(result.residuals.max())))
    print(rows[-1], flush=True)
    J = result = None  # free the device memory before the end-to-end run
    with tempfile.TemporaryDirectory() as out:
        seconds, _ = timed(device, lambda: rf.mine(model, boxes, out=os.path.join(out, "store"), k=16, seeds=[0],
                                                   space="wp", readout="original" if not args.small else
                                                   "original:16", precision=args.precision, device=str(device),
                                                   chunk_size=chunk,
                                                   progress=False))
    rows.append(dict(phase=f"end to end: rf.mine, {len(boxes)} regions, 1 latent, W+", precision=args.precision,
                     seconds=seconds, target_seconds=TARGET_SECONDS if not args.small else None))
    print(rows[-1], flush=True)

    return _report(args, device, G, boxes, d, rows)


def _report(args, device, G, boxes, d, rows):
    report = dict(device=describe(device), torch=torch.__version__, commit=git_commit(),
                  date=datetime.date.today().isoformat(), generator=G.init_kwargs, regions=len(boxes), d=d, rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    print(f"\n{report['device']}, torch {report['torch']}, {report['date']}, d = {d}, {len(boxes)} regions, k = 16")
    print("| phase | precision | seconds | note |\n|---|---|---|---|")
    for r in rows:
        note = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                         if k not in ("phase", "precision", "seconds") and v is not None)
        print(f"| {r['phase']} | {r['precision']} | {r['seconds']:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
