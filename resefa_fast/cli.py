"""``resefa-fast``: the command line. Each subcommand's ``--help`` explains it.

    resefa-fast demo                                                   # the main job on the built-in model
    resefa-fast jacobian G.pkl --seeds 0-9 --space w --out J/          # checkpoint -> Jacobian store
    resefa-fast directions J/ --region eyes --k 16 --out eyes.npz      # one region
    resefa-fast mine G.pkl --seeds 0-9 --regions eyes,nose,mouth --box-grid 16,32,64 --out store/
    resefa-fast edit G.pkl --store store/ --region eyes --out edits/   # PNG grids and GIFs
    resefa-fast report store/                                          # store/report.html

Bad input exits with status 2 and one line naming the argument; a full disk (or a read-only / forbidden output)
exits with status 3 and one line. Nothing half-written is left behind, and a rerun resumes.
"""
from __future__ import annotations

import argparse
import errno
import glob
import os
import sys
from typing import List

import numpy as np
import torch

from .errors import ResefaError, check
from .jacobian import PRECISIONS
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


def _common(parser, source_help="Jacobian .npy file (any layout; the original's [N, H, W, 1, d] works) or a "
                                 "Jacobian store directory (resefa-fast jacobian)"):
    parser.add_argument("jacobian", help=source_help)
    parser.add_argument("--k", type=int, default=16, help="directions per region (default 16)")
    parser.add_argument("--tau", type=float, default=1e-3, help="regularisation τ of eq. 10 (default 1e-3)")
    parser.add_argument("--normalize", choices=("mean", "sum"), default="mean",
                        help="c = 1/Σweights ('mean', the original code) or 1 ('sum', the paper)")
    parser.add_argument("--grid", default=None, help="H,W of a flat [P, d] Jacobian's pixel grid")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def _grid(args):
    return None if args.grid is None else tuple(int(v) for v in args.grid.split(","))


def _model_options(parser):
    """Where the latent codes come from, and which Jacobian of the model is taken."""
    group = parser.add_argument_group("latent codes and Jacobian (when the source is a model)")
    group.add_argument("--seeds", default=None,
                       help="seeds of the z codes, e.g. 0-9,42 (z = np.random.RandomState(seed).randn(z_dim))")
    group.add_argument("--latents", default=None, help=".npy file of latent codes (instead of --seeds)")
    group.add_argument("--latent-kind", choices=("z", "w", "wp", "z+embedding"), default="z",
                       help="what --latents holds: z [N, z_dim] (the original scripts), w [N, w_dim] or W+ "
                            "[N, num_ws, w_dim]; BigGAN: z or z+embedding [N, z_dim + embed_dim]")
    group.add_argument("--truncation-psi", type=float, default=1.0,
                       help="truncation ψ of z/w codes (default 1); BigGAN: the truncation z is sampled with")
    group.add_argument("--class", dest="class_index", type=int, default=None,
                       help="BigGAN: the ImageNet class index to generate (required for a BigGAN)")
    group.add_argument("--space", choices=("w", "wp", "z", "z+embedding"), default=None,
                       help="StyleGAN: w (one w on all layers, as the original; d = w_dim, the default) or wp (W+, "
                            "d = num_ws·w_dim); BigGAN: z (the default) or z+embedding (directions across classes)")
    group.add_argument("--readout", default="original",
                       help="pixels analysed: original (as the original code: nearest resize to 256, channel sum "
                            "above 256), original:SIZE, area:SIZE[:rgb|sum|gray], rgb, gray, sum")
    group.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="arithmetic of the Jacobian's forward passes (default float32: tf32 off; float16 / "
                            "bfloat16: reduced-precision tangents, faster, J error about 1e-3 / 7e-3)")


def _open(args, spec):
    from .pipeline import open_model

    return open_model(spec, args.device, class_index=args.class_index, truncation=args.truncation_psi)


def _space(args, model) -> str:
    return args.space or model.spaces[0]


def _codes(args):
    """``(seeds, latents array)`` from --seeds / --latents (exactly one)."""
    from .pipeline import parse_seeds

    check((args.seeds is None) != (args.latents is None), "--seeds", "either --seeds or --latents",
          "both" if args.seeds else "neither")
    if args.seeds is not None:
        return parse_seeds(args.seeds), None
    check(os.path.isfile(args.latents), "--latents", "an existing .npy file", repr(args.latents))
    return None, np.load(args.latents)


def cmd_jacobian(args) -> int:
    from .pipeline import write_jacobian_store

    model = _open(args, args.model)
    seeds, codes = _codes(args)
    ws = model.latents(seeds or (), codes=codes, kind=args.latent_kind, truncation_psi=args.truncation_psi)
    manifest = write_jacobian_store(model, ws, args.out, space=_space(args, model), readout=args.readout,
                                    seeds=seeds,
                                    precision=args.precision, progress=not args.quiet,
                                    settings={"truncation_psi": args.truncation_psi, "latents": args.latents,
                                              "latent_kind": args.latent_kind})
    print(f"Jacobians {manifest['shape']} of {model.spec} ({manifest['space']}, readout {args.readout}) in "
          f"{args.out}")
    return 0


def cmd_directions(args) -> int:
    from .api import factorize
    from .mining import open_jacobian

    array, _ = open_jacobian(args.jacobian)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    J = torch.as_tensor(np.array(array)).to(device)
    result = factorize(J, parse_region(args.region), k=args.k, tau=args.tau, normalize=args.normalize,
                       latents=args.latents, grid=_grid(args))
    arrays = {key: getattr(result, key).cpu().numpy() for key in ("directions", "eigenvalues", "residuals")}
    save_directions(args, arrays, result.info["path"])
    return 0


def save_directions(args, arrays, how: str) -> None:
    """``arrays`` (directions, eigenvalues, residuals) into ``args.out`` (.npz, atomically), and the one-line
    summary of ``resefa-fast directions`` (``how``: the solver path, and how the work was spread)."""
    import io

    from .store import write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(args.out, buffer.getvalue())
    values = arrays["eigenvalues"].reshape(-1, args.k)[0]
    print(f"{args.region}: directions {list(arrays['directions'].shape)}, top eigenvalues "
          f"{', '.join(f'{v:.4g}' for v in values[:4])}; max residual {arrays['residuals'].max():.1e}; "
          f"path {how}; wrote {args.out}")


def cmd_mine(args, shard=(0, 1)) -> int:
    from .mining import _is_model, first_latent, mine, open_jacobian

    regions = list(args.regions.split(",")) if args.regions else []
    regions += [parse_region(box) for box in args.box or []]
    if args.boxes:
        regions += read_box_file(args.boxes)
    if args.masks:
        files = sorted(glob.glob(os.path.join(args.masks, "*.png")) + glob.glob(os.path.join(args.masks, "*.npy")))
        check(len(files) > 0, "--masks", "a folder with .png or .npy masks", repr(args.masks))
        regions += files
    from_model = _is_model(args.jacobian)
    model = _open(args, args.jacobian) if from_model else None
    if args.box_grid:
        if from_model:
            from .pipeline import parse_readout
            with torch.no_grad():
                grid = tuple(parse_readout(args.readout)(model.synthesize(model.latents([0]))).shape[1:])
        else:
            grid = first_latent(open_jacobian(args.jacobian)[0], grid=_grid(args))[2].grid
        check(grid is not None, "--box-grid", "a Jacobian with a pixel grid (or --grid H,W)")
        regions += box_grid([int(s) for s in args.box_grid.split(",")], args.stride, grid[1:])
    check(len(regions) > 0, "--regions", "at least one region (--regions, --box, --boxes, --masks or --box-grid)")
    extra = {}
    if from_model:
        seeds, codes = _codes(args)
        extra = dict(seeds=seeds, latents=codes, latent_kind=args.latent_kind, truncation_psi=args.truncation_psi,
                     space=_space(args, model), readout=args.readout, precision=args.precision)
    else:
        check(args.seeds is None and args.latents is None, "--seeds", "no --seeds / --latents when the source is a "
              "stored Jacobian (its latent codes are fixed)", args.seeds or args.latents)
    results = mine(model if from_model else args.jacobian, regions, out=args.out, k=args.k, tau=args.tau,
                   normalize=args.normalize, grid=_grid(args), device=args.device,
                   progress=not args.quiet and shard[0] == 0, shard=shard, locality_top=args.locality_top,
                   locality_strengths=_floats(args.strengths, "--strengths"), **extra)
    if shard[0] == 0:
        print(f"{len(results.names)} regions x {len(results.latents)} latent codes in {args.out}")
    if args.export_original and shard[1] == 1:
        written = results.export_original(args.export_original)
        print(f"wrote {len(written)} files in the original layout to {args.export_original}")
    return 0


def _floats(text: str, argument: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ResefaError(f"`{argument}` must be comma-separated numbers; got {text!r}") from None


def _ints(text: str, argument: str) -> List[int]:
    from .pipeline import parse_seeds

    try:
        return parse_seeds(text)
    except ResefaError:
        raise ResefaError(f"`{argument}` must be comma-separated ints or ranges like 4-7; got {text!r}") from None


def cmd_edit(args) -> int:
    from .editing import edit, strengths_between
    from .regions import as_regions
    from .visualize import draw_region, grid_image, save_gif, save_png, to_uint8

    model = _open(args, args.model)
    directions, region, names = _directions_for_edit(args, model)
    if args.seeds is not None or args.latents is not None:
        seeds, codes = _codes(args)
        ws = model.latents(seeds or (), codes=codes, kind=args.latent_kind, truncation_psi=args.truncation_psi)
        labels = [f"seed{s}" for s in seeds] if seeds else [f"latent{i}" for i in range(ws.shape[0])]
    else:
        from .store import load_results
        check(args.store is not None, "--seeds", "--seeds or --latents (or --store, whose codes are used)", None)
        results = load_results(args.store)
        ws = torch.as_tensor(results.codes()[results.latents]).to(model.device)
        labels = [f"latent{n}" for n in results.latents]
    chosen = _ints(args.directions, "--directions")
    check(all(i < directions.shape[-2] for i in chosen), "--directions",
          f"indices below the {directions.shape[-2]} directions available", args.directions)
    strengths = strengths_between(args.start, args.end, args.steps)
    layers = _ints(args.layers, "--layers") if args.layers else None
    R = model.resolution
    mask = None
    if region is not None:
        mask = as_regions(region, (1, R, R), R * R, "cpu").foreground[0].reshape(R, R)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for n, label in enumerate(labels):
        rows = directions[n] if directions.ndim == 3 else directions
        images = draw_region(to_uint8(edit(model, ws[n], rows[chosen], strengths, layers)), mask)
        path = os.path.join(args.out, f"{label}_{names}.png")
        save_png(path, grid_image(images))
        written.append(path)
        for row, index in enumerate(chosen):
            path = os.path.join(args.out, f"{label}_{names}_direction{index:03d}.gif")
            save_gif(path, list(images[row]))
            written.append(path)
    print(f"wrote {len(written)} files ({len(labels)} latent codes x {len(chosen)} directions, strengths "
          f"{args.start:g}..{args.end:g} in {args.steps} steps) to {args.out}")
    return 0


def _directions_for_edit(args, model):
    """``(directions [k, d] or [N, k, d], region for drawing or None, a name for the files)``."""
    from .regions import preset

    if args.store is not None:
        from .store import load_results
        results = load_results(args.store)
        check(args.region is not None, "--region", f"a region of the store ({', '.join(results.names[:20])})", None)
        check(args.region in results.names, "--region", f"a region of the store ({', '.join(results.names[:20])}"
              f"{' ...' if len(results.names) > 20 else ''})", repr(args.region))
        r = results.names.index(args.region)
        directions = np.stack([results.get(n)["directions"][r] for n in results.latents])  # [N, k, d]
        if args.seeds is not None or args.latents is not None:
            directions = directions[0]  # the first latent code's directions, applied to other codes
        mask = torch.as_tensor(results.regions()[r])
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in args.region)
        return directions, mask, safe
    check(args.directions_file is not None, "--store", "--store or --directions-file", None)
    path = args.directions_file
    check(os.path.isfile(path), "--directions-file", "an existing .npy or .npz file", repr(path))
    data = np.load(path)
    directions = data["directions"] if isinstance(data, np.lib.npyio.NpzFile) else data
    check(directions.ndim == 2, "--directions-file", "directions [k, d] (rows; the original's [d, d] works)",
          directions.shape)
    region = None
    if args.region is not None:
        region = parse_region(args.region)
        region = preset(region) if isinstance(region, str) and not os.path.isfile(region) else region
    return directions, region, os.path.splitext(os.path.basename(path))[0]


def cmd_report(args) -> int:
    from .report import write_report

    out = args.out or os.path.join(args.store, "report.html")
    write_report(args.store, out, model=args.model, latent=args.latent, top=args.top,
                 strengths=_floats(args.strengths, "--strengths") if args.strengths else None,
                 max_regions=args.max_regions, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, model=args.model, device=args.device, quiet=args.quiet)


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

    demo = commands.add_parser("demo", help="the main job on the built-in model: Jacobian, mining, edits, report",
                               description="Computes Jacobians of the built-in model, mines directions for its part "
                                           "regions, writes edits (PNG/GIF) and the HTML report, and prints where "
                                           "they are. No arguments needed, no downloads.")
    demo.add_argument("--out", default="resefa_demo", help="output folder (default ./resefa_demo)")
    demo.add_argument("--model", default=None, help="another model than the built-in one (checkpoint path)")
    demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=cmd_demo)

    jac = commands.add_parser("jacobian", help="checkpoint + seeds or a latent file -> Jacobian store",
                              description="Forward-mode Jacobians of a generator at latent codes, stored as the "
                                          "original code's jacobians .npy layout plus the codes and a manifest.")
    jac.add_argument("model", help="checkpoint (NVIDIA .pkl, rosinality .pt, Hammer/genforce .pth, resefa_fast) or "
                                   "builtin:NAME")
    _model_options(jac)
    jac.add_argument("--out", required=True, help="Jacobian store directory")
    jac.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    jac.add_argument("--quiet", action="store_true", help="no progress bar")
    jac.set_defaults(run=cmd_jacobian)

    mine = commands.add_parser("mine", help="many regions x many latent codes -> results store (resumable)",
                               description="Mine directions for many regions and every latent code into a "
                                           "resumable results store (rerunning skips what is done). The source is "
                                           "a stored Jacobian, a Jacobian store, or a model with --seeds/--latents "
                                           "(each Jacobian computed on the device, used and dropped).")
    _common(mine, "Jacobian .npy file, Jacobian store directory, or a model (checkpoint or builtin:NAME)")
    _model_options(mine)
    mine.add_argument("--locality-top", type=int, default=0,
                      help="measure the in/out pixel change of finite edits for the top N directions of every "
                           "region (needs the model; default 0)")
    mine.add_argument("--strengths", default="-10,10",
                      help="edit strengths of the locality measure (write --strengths=-6,6: a leading minus)")
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

    edit = commands.add_parser("edit", help="checkpoint + directions + seeds -> image grids (PNG) and GIFs",
                               description="Edit latent codes along directions, as the original manipulate script: "
                                           "one PNG grid per latent code (rows: directions, columns: strengths) "
                                           "and one GIF per direction, the region outlined in red.")
    edit.add_argument("model", help="checkpoint or builtin:NAME")
    edit.add_argument("--store", default=None, help="results store to take the directions (and codes) from")
    edit.add_argument("--directions-file", default=None,
                      help="directions .npy [k, d] (rows; the original's files work) or .npz with 'directions'")
    edit.add_argument("--region", default=None, help="region name in the store, or a preset / box / mask to draw")
    _model_options(edit)
    edit.add_argument("--directions", default="0-2", help="which directions (indices, default 0-2)")
    edit.add_argument("--layers", default=None, help="W+ rows to edit, e.g. 4-7 (default: all)")
    edit.add_argument("--start", type=float, default=-10.0, help="smallest strength (default -10)")
    edit.add_argument("--end", type=float, default=10.0, help="largest strength (default 10)")
    edit.add_argument("--steps", type=int, default=7, help="strengths from start to end (default 7)")
    edit.add_argument("--out", required=True, help="output folder")
    edit.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    edit.set_defaults(run=cmd_edit)

    report = commands.add_parser("report", help="results store -> one self-contained HTML page",
                                 description="Per region: the mask, edit strips of the top directions, the "
                                             "eigenvalue spectrum and the in/out change of each edit.")
    report.add_argument("store", help="results store directory (mined from a model or a Jacobian store)")
    report.add_argument("--out", default=None, help="HTML file (default STORE/report.html)")
    report.add_argument("--model", default=None, help="model to render with (default: the store's)")
    report.add_argument("--latent", type=int, default=None, help="stored latent code shown (default: first)")
    report.add_argument("--top", type=int, default=3, help="directions shown per region (default 3)")
    report.add_argument("--strengths", default=None, help="edit strengths, e.g. -10,-5,0,5,10 (default)")
    report.add_argument("--max-regions", type=int, default=48, help="regions shown (default 48)")
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    report.set_defaults(run=cmd_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ResefaError as error:
        print(f"resefa-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, quota, permissions: every file is written atomically, so nothing is half
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        print(f"resefa-fast {args.command}: error: {error.strerror} ({error.filename or 'output'}); the files "
              "written before it are complete and kept: free space (or fix the permissions) and rerun to resume",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
