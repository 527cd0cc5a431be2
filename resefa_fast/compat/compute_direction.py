"""``python -m resefa_fast.compat.compute_direction``: the original ``compute_direction.py``, computed correctly.

Same arguments (``jaco_path``, ``--region``, ``--save_dir``, ``--job``, ``--name``, ``--data_name``,
``--full_rank``, ``--tao``) and the same outputs: per latent code ``image_XX_region_R_name_N.npy`` (all d directions
as rows, ``[d, d]``, sorted by eigenvalue, largest first) and ``..._mask.png``, in
``./work_dirs/{job}/{data_name}/{region}`` unless ``--save_dir`` is given.

The directions come from the float64 oracle (Cholesky + eigh), not ``inv(M_b) @ M_f`` with a non-symmetric eig:
with ``--full_rank`` they equal what the original should give (τ = ``--tao``); without it, the original inverts an
unregularised, often singular M_b and returns drifting directions, whereas this script says so and asks for
``--full_rank``. Rows are unit vectors with the sign convention of resefa_fast (largest component positive).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..errors import ResefaError, check
from ..inputs import as_jacobian
from ..reference import solve
from ..regions import PRESETS, Box, as_regions, box_mask
from ..store import write_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jaco_path", type=str, help="Path to jacobian matrix.")
    parser.add_argument("--region", type=str, default="eyes", help="The region to be used to compute jacobian.")
    parser.add_argument("--save_dir", type=str, default="", help="Directory to save the results.")
    parser.add_argument("--job", type=str, default="directions", help="Name for the job (default: directions)")
    parser.add_argument("--name", type=str, default="resefa", help="Name of help save the results.")
    parser.add_argument("--data_name", type=str, default="ffhq", help="Name of the dataset (preset family).")
    parser.add_argument("--full_rank", action="store_true", help="Regularise the background (tao * trace * I).")
    parser.add_argument("--tao", type=float, default=1e-3, help="Coefficient to the identity matrix (1e-3).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check(os.path.isfile(args.jaco_path), "jaco_path", "an existing .npy file", repr(args.jaco_path))
        check(args.data_name in PRESETS, "--data_name", f"one of {sorted(PRESETS)}", repr(args.data_name))
        check(args.region in PRESETS[args.data_name], "--region",
              f"a region of {args.data_name} ({', '.join(PRESETS[args.data_name])})", repr(args.region))
        jacobians = np.load(args.jaco_path, mmap_mode="r")
        save_dir = args.save_dir or f"./work_dirs/{args.job}/{args.data_name}/{args.region}"
        os.makedirs(save_dir, exist_ok=True)
        tau = args.tao if args.full_rank else 0.0
        # as the original's get_mask: the preset's coordinates taken on the Jacobian's own grid
        region = Box(*PRESETS[args.data_name][args.region], name=args.region)
        for index in range(jacobians.shape[0]):
            jac = as_jacobian(np.array(jacobians[index]), batched=False)
            regions = as_regions(region, jac.grid, jac.num_pixels)
            try:
                result = solve(jac.values[0], regions, jac.dim, tau, "mean")
            except ResefaError as error:
                raise ResefaError(f"{error} (here: pass --full_rank, as the original needs to be correct)") from error
            stem = os.path.join(save_dir, f"image_{index:02d}_region_{args.region}_name_{args.name}")
            directions = result.directions[0].numpy().astype(jacobians.dtype)
            write_atomic(stem + ".npy", lambda tmp: np.save(open(tmp, "wb"), directions))
            mask = box_mask(region, (jac.grid[1], jac.grid[2])).numpy()
            write_atomic(stem + "_mask.png", lambda tmp: save_mask(tmp, mask))
        print(f"wrote {jacobians.shape[0]} direction files to {save_dir}")
        return 0
    except ResefaError as error:
        print(f"compute_direction: error: {error}", file=sys.stderr)
        return 2


def save_mask(path: str, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.repeat(mask[:, :, None], 3, axis=2) * 255).astype(np.uint8)).save(path, format="PNG")


if __name__ == "__main__":
    sys.exit(main())
