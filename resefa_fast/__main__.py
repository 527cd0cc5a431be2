"""``python -m resefa_fast``: mine directions for every FFHQ preset region on a built-in Jacobian, no downloads.

The built-in Jacobian is generator-like (resefa_fast.testing.random_jacobian: decaying spectrum, spatially smooth,
plus a few latent dims that move one facial region each, as local semantics do). The run precomputes once
(:class:`resefa_fast.Factorizer`), factorizes all presets in one batch, checks one region against the float64
reference, prints a table and writes ``directions.npy`` (``[R, k, d]``), ``eigenvalues.npy`` and ``regions.txt``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

from . import Factorizer, PRESETS, factorize, preset
from .regions import as_regions, box_mask
from .testing import random_jacobian


def builtin_jacobian(grid: int, dim: int, device) -> torch.Tensor:
    """``[grid, grid, dim]``: a generator-like Jacobian with 4 local latent dims per FFHQ preset region."""
    J = random_jacobian((grid, grid), dim, rank=min(60, dim), noise=1e-3, seed=0, device=device)
    J = J.reshape(grid, grid, dim)
    generator = torch.Generator().manual_seed(1)
    for index, name in enumerate(sorted(PRESETS["ffhq"])):
        inside = torch.nn.functional.interpolate(box_mask(preset(name), (256, 256))[None, None], size=(grid, grid),
                                                 mode="area")[0, 0] > 0.5
        dims = slice(4 * index, 4 * index + 4)
        J[inside.to(device), dims] += 0.5 * torch.randn(int(inside.sum()), 4, generator=generator).to(device)
    return J


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grid", type=int, default=128, help="analysed grid H = W (default 128)")
    parser.add_argument("--dim", type=int, default=512, help="latent dimension d (default 512)")
    parser.add_argument("--k", type=int, default=8, help="directions per region (default 8)")
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="resefa_fast_")
    os.makedirs(out, exist_ok=True)

    start = time.perf_counter()
    J = builtin_jacobian(args.grid, args.dim, args.device)
    names = sorted(PRESETS["ffhq"])
    factorizer = Factorizer(J)
    result = factorizer.factorize_many(names, k=args.k)
    elapsed = time.perf_counter() - start

    check = factorize(J, names[0], k=args.k + 1, backend="reference")
    worst_rel = float(((result.eigenvalues[0] - check.eigenvalues[:args.k]).abs() / check.eigenvalues[:args.k]).max())
    worst_cos = float((result.directions[0] * check.directions[:args.k]).sum(-1).abs().min())

    print(f"resefa_fast: {len(names)} regions, d = {args.dim}, {args.grid}x{args.grid} grid, k = {args.k}, "
          f"device {args.device}, {elapsed:.2f} s in all")
    print(f"{'region':<12} {'pixels':>7} {'λ1':>10} {'λ2':>10} {'λ3':>10} {'max residual':>13}")
    weights = as_regions(names, (1, args.grid, args.grid), args.grid ** 2).foreground
    for r, name in enumerate(names):
        lam = result.eigenvalues[r]
        print(f"{name:<12} {int((weights[r] > 0).sum()):>7} {float(lam[0]):>10.4g} {float(lam[1]):>10.4g} "
              f"{float(lam[2]):>10.4g} {float(result.residuals[r].max()):>13.2e}")
    print(f"check of '{names[0]}' against the float64 reference: eigenvalue rel. error {worst_rel:.1e}, "
          f"min |cos| {worst_cos:.12f}")
    np.save(os.path.join(out, "directions.npy"), result.directions.cpu().numpy())
    np.save(os.path.join(out, "eigenvalues.npy"), result.eigenvalues.cpu().numpy())
    with open(os.path.join(out, "regions.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"wrote directions.npy [{len(names)}, {args.k}, {args.dim}], eigenvalues.npy, regions.txt to {out}")
    return 0 if worst_rel < 1e-8 and worst_cos > 1 - 1e-8 else 1


if __name__ == "__main__":
    sys.exit(main())
