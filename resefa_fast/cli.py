"""``resefa-fast``: the command line. Each subcommand's ``--help`` explains it.

    resefa-fast directions J.npy --region eyes --k 16 --out eyes.npz
    resefa-fast mine J.npy --regions eyes,nose,mouth --boxes boxes.txt --box-grid 16,32,64 --out store/

Bad input exits with status 2 and one line naming the argument; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List

import numpy as np
import torch

from .errors import ResefaError, check
from .regions import Box


def parse_region(spec: str):
    """A region on the command line: a preset name, ``cx,cy,h,w``, or a mask file."""
    parts = spec.split(",")
    if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return spec


def read_box_file(path: str) -> List[Box]:
    """Boxes from a text file, one per line: ``cx cy h w [name]`` (commas or spaces; ``#`` comments)."""
    check(os.path.isfile(path), "--boxes", "an existing text file", repr(path))
    boxes = []
    for number, line in enumerate(open(path), start=1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        check(len(fields) in (4, 5) and all(f.lstrip("-").isdigit() for f in fields[:4]), "--boxes",
              "lines of 'cx cy h w [name]'", f"line {number} of {path}: {line.strip()!r}")
        name = fields[4] if len(fields) == 5 else f"box{number}"
        boxes.append(Box(*(int(f) for f in fields[:4]), name=name))
    check(len(boxes) > 0, "--boxes", "a file with at least one box", repr(path))
    return boxes


def box_grid(sizes: List[int], stride_fraction: float, size_hw) -> List[Box]:
    """Multi-scale grid of square boxes: for each size s, boxes of s×s every ``s·stride_fraction`` pixels."""
    H, W = size_hw
    boxes = []
    for s in sizes:
        check(0 < s <= min(H, W), "--box-grid", f"sizes in [1, {min(H, W)}]", s)
        step = max(1, int(round(s * stride_fraction)))
        for top in range(0, H - s + 1, step):
            for left in range(0, W - s + 1, step):
                boxes.append(Box(top + s // 2, left + s // 2, s, s, name=f"grid{s}_{top}_{left}"))
    return boxes


def _common(parser):
    parser.add_argument("jacobian", help="Jacobian .npy file (any layout; the original's [N, H, W, 1, d] works)")
    parser.add_argument("--k", type=int, default=16, help="directions per region (default 16)")
    parser.add_argument("--tau", type=float, default=1e-3, help="regularisation τ of eq. 10 (default 1e-3)")
    parser.add_argument("--normalize", choices=("mean", "sum"), default="mean",
                        help="c = 1/Σweights ('mean', the original code) or 1 ('sum', the paper)")
    parser.add_argument("--grid", default=None, help="H,W of a flat [P, d] Jacobian's pixel grid")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def _grid(args):
    return None if args.grid is None else tuple(int(v) for v in args.grid.split(","))


def cmd_directions(args) -> int:
    from .api import factorize
    from .mining import open_jacobian
    from .store import write_atomic

    array, _ = open_jacobian(args.jacobian)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    J = torch.as_tensor(np.array(array)).to(device)
    result = factorize(J, parse_region(args.region), k=args.k, tau=args.tau, normalize=args.normalize,
                       latents=args.latents, grid=_grid(args))
    arrays = {key: getattr(result, key).cpu().numpy() for key in ("directions", "eigenvalues", "residuals")}

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_atomic(args.out, save)
    values = arrays["eigenvalues"].reshape(-1, args.k)[0]
    print(f"{args.region}: directions {list(arrays['directions'].shape)}, top eigenvalues "
          f"{', '.join(f'{v:.4g}' for v in values[:4])}; max residual {arrays['residuals'].max():.1e}; "
          f"path {result.info['path']}; wrote {args.out}")
    return 0


def cmd_mine(args, shard=(0, 1)) -> int:
    from .mining import first_latent, mine, open_jacobian

    regions = list(args.regions.split(",")) if args.regions else []
    regions += [parse_region(box) for box in args.box or []]
    if args.boxes:
        regions += read_box_file(args.boxes)
    if args.masks:
        files = sorted(glob.glob(os.path.join(args.masks, "*.png")) + glob.glob(os.path.join(args.masks, "*.npy")))
        check(len(files) > 0, "--masks", "a folder with .png or .npy masks", repr(args.masks))
        regions += files
    if args.box_grid:
        grid = first_latent(open_jacobian(args.jacobian)[0], grid=_grid(args))[2].grid
        check(grid is not None, "--box-grid", "a Jacobian with a pixel grid (or --grid H,W)")
        regions += box_grid([int(s) for s in args.box_grid.split(",")], args.stride, grid[1:])
    check(len(regions) > 0, "--regions", "at least one region (--regions, --box, --boxes, --masks or --box-grid)")
    results = mine(args.jacobian, regions, out=args.out, k=args.k, tau=args.tau, normalize=args.normalize,
                   grid=_grid(args), device=args.device, progress=not args.quiet and shard[0] == 0, shard=shard)
    if shard[0] == 0:
        print(f"{len(results.names)} regions x {len(results.latents)} latent codes in {args.out}")
    if args.export_original and shard[1] == 1:
        written = results.export_original(args.export_original)
        print(f"wrote {len(written)} files in the original layout to {args.export_original}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resefa-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    directions = commands.add_parser("directions", help="one region of a stored Jacobian -> directions (.npz)",
                                     description="Top-k ReSeFa directions of one region for a stored Jacobian.")
    _common(directions)
    directions.add_argument("--region", required=True, help="preset name (e.g. eyes), cx,cy,h,w, or a mask file")
    directions.add_argument("--latents", choices=("per_image", "stack"), default="per_image",
                            help="several latent codes: one result each, or one shared result")
    directions.add_argument("--out", required=True, help="output .npz (directions, eigenvalues, residuals)")
    directions.set_defaults(run=cmd_directions)

    mine = commands.add_parser("mine", help="many regions x all latent codes of a stored Jacobian -> store",
                               description="Mine directions for many regions and every latent code into a "
                                           "resumable results store (rerunning skips what is done).")
    _common(mine)
    mine.add_argument("--regions", default=None, help="comma-separated preset names, e.g. eyes,nose,mouth")
    mine.add_argument("--box", action="append", help="one box cx,cy,h,w (repeatable)")
    mine.add_argument("--boxes", default=None, help="text file of boxes: 'cx cy h w [name]' per line")
    mine.add_argument("--masks", default=None, help="folder of mask images (.png, white = region) or .npy masks")
    mine.add_argument("--box-grid", default=None, help="multi-scale grid of square boxes: sizes, e.g. 16,32,64")
    mine.add_argument("--stride", type=float, default=0.5, help="grid step as a fraction of the box size")
    mine.add_argument("--out", required=True, help="results store directory")
    mine.add_argument("--export-original", default=None,
                      help="also write each result in the original code's file layout to this folder")
    mine.add_argument("--quiet", action="store_true", help="no progress bar")
    mine.set_defaults(run=cmd_mine)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ResefaError as error:
        print(f"resefa-fast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
