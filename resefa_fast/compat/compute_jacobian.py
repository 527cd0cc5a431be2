"""``python -m resefa_fast.compat.compute_jacobian``: the original ``compute_jacobian.py``, computed our way.

Same arguments (``weight_path``, ``--save_dir``, ``--job``, ``--seed``, ``--nums``, ``--img_size``, ``--w_dim``,
``--save_jpg``, ``--data_name``, ``--latent_path``, ``--stylegan2`` / ``--stylegan3``, ...) and the same outputs in
``./work_dirs/{job}/{data_name}/seed_{seed}_num_{nums}_{stylegan2|stylegan3t|stylegan3r}`` unless ``--save_dir``:

- ``latent_codes.npy``: the w codes ``[nums, w_dim]`` (z drawn as ``np.random.seed(seed); randn(nums, z_dim)``,
  or the first ``nums`` rows of ``--latent_path``, mapped without truncation);
- ``jacobians_w.npy``: d image / d w, ``[nums, 256, 256, 1, w_dim]`` for images above 256 pixels (nearest resize
  to 256, channel sum) or ``[nums, C, H, W, 1, w_dim]`` for smaller ones (the original ``syn2jaco``);
- ``images/{index:06d}.jpg`` unless ``--save_jpg`` is given (the original's flag is ``store_false``).

Differences, by design: the Jacobian comes from forward-mode JVPs (one per latent dimension, not one backward pass
per pixel); the checkpoint may be in any format :func:`resefa_fast.models.load` reads (the original reads Hammer
``.pth`` only), and its shape comes from the file: ``--img_size`` / ``--w_dim`` are checked against it instead of
building the network; ``--b`` and ``--batch_size`` are accepted and unused (as in the original); noise is constant
(the original's ``--randomize_noise`` is parsed but never used there either).
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np
import torch

from ..errors import ResefaError, check
from ..jacobian import Memmap, jacobian, readouts
from ..store import write_bytes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("General options.")
    group.add_argument("weight_path", type=str, help="Weight path to the pre-trained model.")
    group.add_argument("--save_dir", type=str, default=None, help="Directory to save the results.")
    group.add_argument("--job", type=str, default="jacobians", help="Name for the job (default: jacobians)")
    group.add_argument("--seed", type=int, default=4, help="Seed for sampling. (default: 4)")
    group.add_argument("--nums", type=int, default=5, help="Number of samples to synthesized. (default: 5)")
    group.add_argument("--img_size", type=int, default=1024, help="Size of the synthesized images (checked).")
    group.add_argument("--w_dim", type=int, default=512, help="Dimension of the latent w (checked).")
    group.add_argument("--save_jpg", action="store_false", help="Give it to NOT save the images (default: saved).")
    group.add_argument("-d", "--data_name", type=str, default="ffhq", help="Name of the datasets. (default: ffhq)")
    group.add_argument("--latent_path", type=str, default="", help="Path to the given z codes. (default: None)")
    group = parser.add_argument_group("StyleGAN2")
    group.add_argument("--stylegan2", action="store_true", help="The checkpoint is a StyleGAN2.")
    group.add_argument("--scale_stylegan2", type=float, default=1.0, help="Accepted (the shape comes from the file).")
    group.add_argument("--randomize_noise", type=str, default="const", help="Accepted; noise is constant.")
    group = parser.add_argument_group("StyleGAN3")
    group.add_argument("--stylegan3", action="store_true", help="The checkpoint is a StyleGAN3.")
    group.add_argument("--cfg", type=str, default="T", help="Config of the stylegan3 (T/R).")
    group.add_argument("--scale_stylegan3r", type=float, default=2.0, help="Accepted (the shape comes from the file).")
    group.add_argument("--scale_stylegan3t", type=float, default=1.0, help="Accepted (the shape comes from the file).")
    group.add_argument("--tx", type=float, default=0, help="Accepted; unused by the original's Jacobians too.")
    group.add_argument("--ty", type=float, default=0, help="Accepted; unused by the original's Jacobians too.")
    group.add_argument("--rotate", type=float, default=0, help="Accepted; unused by the original's Jacobians too.")
    group = parser.add_argument_group("Jacobians")
    group.add_argument("--b", type=float, default=1e-3, help="Accepted, unused (as in the original).")
    group.add_argument("--batch_size", type=int, default=4, help="Accepted, unused (as in the original).")
    group.add_argument("--device", default=None, help="cuda or cpu (ours; default: cuda when available)")
    return parser.parse_args(argv)


def job_description(args) -> str:
    if args.stylegan2:
        return "stylegan2"
    check(args.cfg in ("T", "R"), "--cfg", "T or R", repr(args.cfg))
    return f"stylegan3{args.cfg.lower()}"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from ..models import load

        check(args.stylegan2 != args.stylegan3, "--stylegan2", "exactly one of --stylegan2 and --stylegan3",
              "both" if args.stylegan2 else "neither")
        check(args.nums >= 1, "--nums", "an int >= 1", args.nums)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        G = load(args.weight_path, device=device).generator
        family = "stylegan3" if "StyleGAN3" in type(G).__name__ else "stylegan2"
        check(family == ("stylegan3" if args.stylegan3 else "stylegan2"), "--stylegan2/--stylegan3",
              f"the family of {args.weight_path} ({family})", "--stylegan3" if args.stylegan3 else "--stylegan2")
        check(G.img_resolution == args.img_size, "--img_size", f"the checkpoint's resolution {G.img_resolution}",
              args.img_size)
        check(G.w_dim == args.w_dim, "--w_dim", f"the checkpoint's w_dim {G.w_dim}", args.w_dim)
        save_dir = args.save_dir or (f"work_dirs/{args.job}/{args.data_name}/"
                                     f"seed_{args.seed}_num_{args.nums}_{job_description(args)}")
        os.makedirs(save_dir, exist_ok=True)

        if os.path.exists(args.latent_path):
            z = np.load(args.latent_path)[:args.nums]
            check(z.ndim == 2 and z.shape[1] == G.z_dim, "--latent_path", f"z codes [N, {G.z_dim}]", z.shape)
        else:
            z = np.random.RandomState(args.seed).randn(args.nums, G.z_dim)  # = np.random.seed(seed); randn(...)
        z = torch.from_numpy(z.astype(np.float32)).to(device)
        with torch.no_grad():
            ws = G.map(z)  # [N, num_ws, w_dim], rows equal (no truncation): w = ws[:, 0]
        codes = [w for w in ws[:, 0]]
        jacobian(G, codes, readout=readouts.original(256), out=Memmap(os.path.join(save_dir, "jacobians_w.npy")),
                 progress=True)
        buffer = io.BytesIO()
        np.save(buffer, ws[:, 0].cpu().numpy())
        write_bytes(os.path.join(save_dir, "latent_codes.npy"), buffer.getvalue())
        if args.save_jpg:
            _save_images(G, ws, os.path.join(save_dir, "images"))
        print(f"wrote latent_codes.npy, jacobians_w.npy ({args.nums} codes) to {save_dir}")
        return 0
    except ResefaError as error:
        print(f"compute_jacobian: error: {error}", file=sys.stderr)
        return 2


def _save_images(G, ws, directory: str) -> None:
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    with torch.no_grad():
        for index in range(ws.shape[0]):
            image = G.synthesize(ws[index:index + 1])[0]
            pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            write_bytes(os.path.join(directory, f"{index:06d}.jpg"), buffer.getvalue())


if __name__ == "__main__":
    sys.exit(main())
