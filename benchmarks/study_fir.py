"""Study (GPU): the FIR filter of StyleGAN2's up-sampling convolutions, which the w-space tangents spend 13 % of
their device time on (torch's generic depthwise kernel; benchmarks/NOTES.md item 25). One filter for every
channel, so the same result comes from other convolutions; this times them on the tangents' shapes (k tangents ×
C channels at the 1024² and 512² blocks) and checks each against the depthwise one.

    python benchmarks/study_fir.py                 # about 20 s on an H100
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from bench_jacobian import Timer  # noqa: E402

from resefa_fast.models.ops import setup_filter  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tangents", type=int, default=16)
    parser.add_argument("--precision", default="tf32", choices=("float32", "tf32"))
    args = parser.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    f = setup_filter([1, 3, 3, 1]).cuda() * 4  # gain up² = 4, as conv2d_resample applies it
    f1 = torch.tensor([1.0, 3.0, 3.0, 1.0], device="cuda") / 8 * 2  # its separable factor (outer(f1, f1) = f)
    assert torch.allclose(torch.outer(f1, f1), f)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.precision}, "
          f"k = {args.tangents}")
    print("| shape [k, C, H, W] | variant | ms | GB/s (in + out) | max rel. diff |\n|---|---|---:|---:|---:|")
    for channels, size in ((32, 1027), (64, 515), (3, 1027)):
        x = torch.randn(args.tangents, channels, size, size, device="cuda")
        k = args.tangents
        variants = {
            "depthwise 4×4 (now)": lambda: F.conv2d(x, f[None, None].expand(channels, 1, 4, 4), groups=channels),
            "one channel, batch k·C": lambda: F.conv2d(x.reshape(k * channels, 1, size, size),
                                                       f[None, None]).reshape(k, channels, size - 3, size - 3),
            "separable depthwise 4×1, 1×4": lambda: F.conv2d(
                F.conv2d(x, f1.reshape(1, 1, 4, 1).expand(channels, 1, 4, 1), groups=channels),
                f1.reshape(1, 1, 1, 4).expand(channels, 1, 1, 4), groups=channels),
            "separable, one channel": lambda: F.conv2d(
                F.conv2d(x.reshape(k * channels, 1, size, size), f1.reshape(1, 1, 4, 1)),
                f1.reshape(1, 1, 1, 4)).reshape(k, channels, size - 3, size - 3),
        }
        reference, timer = None, Timer("cuda", warmup=1, repeats=5)
        for name, fn in variants.items():
            seconds, _, out = timer(fn)
            ms = seconds * 1e3
            reference = out if reference is None else reference
            diff = float((out - reference).abs().max() / reference.abs().max())
            gbs = (x.numel() + out.numel()) * 4 / ms / 1e6
            print(f"| {list(x.shape)} | {name} | {ms:.2f} | {gbs:.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
