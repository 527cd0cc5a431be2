"""Time the StyleGAN2 generator of resefa_fast.models: images/s (float32 and tf32, batch 1..32) and forward-mode
tangents/s (``vmap(jvp)`` through the synthesis network, the original readout), on a generator of FFHQ-1024 shape
with random weights (config-f: channel_base 32768, channel_max 512, 18 W+ rows).

Rows:
- ``reference (fused)``: the official formulation (per-sample weights, grouped convolution; tests/models_reference.py),
  the baseline and the correctness check: ours vs it on one image, relative error ≤ 1e-5 (float32, tf32 off);
- ``ours`` forward: images/s by batch and precision;
- ``ours vmap(jvp)``: W+ tangents per second, chunks of k tangents at one latent (primal computed once per chunk),
  readout = nearest resize to 256 + channel sum (the original's), tangents on one W+ row per chunk (the cost of a
  tangent does not depend on its row without layer skip);
- ``toy`` forward / jvp: ``resefa_fast.jacobian.toy.ToyGenerator.config_f`` (bilinear up-sampling, no FIR filter),
  the generator of DESIGN.md §5's numbers, for comparison.

    python benchmarks/bench_models.py --device cuda --json $OUT/models.json
    python benchmarks/bench_models.py --small            # CPU smoke run (64² generator, few channels)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from bench_jacobian import Timer, describe, git_commit  # noqa: E402  (one timer for all benchmarks)

from resefa_fast.jacobian import readouts  # noqa: E402
from resefa_fast.jacobian.toy import ToyGenerator  # noqa: E402
from resefa_fast.models import random_stylegan2  # noqa: E402

#: ours (float32, tf32 off) vs the fused official formulation on the same weights: the issue's target.
IMAGE_RTOL = 1e-5


def precision(mode: str):
    """Context: tf32 on or off for matmuls and cuDNN convolutions."""
    class _P:
        def __enter__(self):
            self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            on = mode == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on

        def __exit__(self, *exc):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
    return _P()


def reference_image(G, ws):
    """The official fused formulation on G's weights (tests/models_reference.py), in float64."""
    import models_reference as ref
    sd = {k: v.double() for k, v in G.state_dict().items()}
    kw = G.init_kwargs
    blocks, _ = ref.official_blocks(sd, kw)
    return ref.ref_synthesis(blocks, ws.double(), "const", clamp=kw["conv_clamp"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--chunks", default="8,16,32", help="tangents per vmap(jvp) call")
    parser.add_argument("--precisions", default="float32,tf32")
    parser.add_argument("--small", action="store_true", help="CPU-sized run: 64², channel_max 64, batches 1,4")
    parser.add_argument("--no-toy", action="store_true", help="skip the ToyGenerator comparison rows")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.small:
        args.resolution = 64 if args.resolution == 1024 else args.resolution
        args.batches, args.chunks = "1,4", "4,8"
    device = torch.device(args.device)
    timer = Timer(device, warmup=1, repeats=3)
    G = random_stylegan2(args.resolution, small=args.small).to(device)
    toy = None if args.no_toy else (
        ToyGenerator(args.resolution, 512, channels=lambda r: min(max(1024, args.resolution) // r, 64))
        if args.small else ToyGenerator.config_f(args.resolution)).to(device).eval().requires_grad_(False)
    readout = readouts.original(256)
    ws1 = G.map(torch.randn(1, G.z_dim, device=device, generator=torch.Generator(device).manual_seed(0)))
    report = dict(device=describe(device), torch=torch.__version__, commit=git_commit(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(), args=vars(args),
                  generator=dict(G.init_kwargs, parameters=G.num_parameters(), num_ws=G.num_ws), rows=[])

    # correctness first: ours (float32, tf32 off) vs the official fused formulation in float64
    with precision("float32"), torch.no_grad():
        error = float((G.synthesis(ws1).double() - reference_image(G, ws1)).norm()
                      / reference_image(G, ws1).norm())
    report["correctness"] = {"vs_fused_reference": error}
    print(f"ours vs fused reference (float32): relative error {error:.2e}", flush=True)
    assert error <= IMAGE_RTOL, error

    rows = report["rows"]

    def timed(name, mode, unit, count, fn):
        """Time ``fn`` (``count`` items) into one row; a run out of device memory gives an "out of memory" row."""
        try:
            seconds, peak, _ = timer(fn)
        except torch.OutOfMemoryError:
            rows.append(dict(method=name, precision=mode, batch=count, error="out of memory"))
            torch.cuda.empty_cache()
            print(f"| {name} | {mode} | {count} | out of memory | | |", flush=True)
            return
        r = dict(method=name, precision=mode, unit=unit, batch=count, per_item_ms=seconds / count * 1e3,
                 items_per_s=count / seconds, peak_gib=None if peak is None else peak / 2 ** 30)
        rows.append(r)
        print(f"| {name} | {mode} | {count} | {r['per_item_ms']:.2f} | {r['items_per_s']:.1f} {unit}/s | "
              f"{'' if peak is None else f'{peak / 2 ** 30:.2f}'} |", flush=True)

    print("\n| method | precision | batch or chunk | ms / item | rate | peak GiB |\n|---|---|---|---|---|---|")
    for mode in args.precisions.split(","):
        with precision(mode), torch.no_grad():
            for batch in [int(b) for b in args.batches.split(",")]:
                ws = ws1.expand(batch, -1, -1).contiguous()
                for name, fn in [("ours forward", lambda ws=ws: G.synthesis(ws))] + (
                        [] if toy is None else [("toy forward", lambda ws=ws: toy(ws[:, :toy.num_ws]))]):
                    timed(name, mode, "images", batch, fn)
        with precision(mode):
            for chunk in [int(k) for k in args.chunks.split(",")]:
                for name, gen, n_ws in [("ours vmap(jvp)", G, G.num_ws)] + (
                        [] if toy is None else [("toy vmap(jvp)", toy, toy.num_ws)]):
                    w = ws1[0, :n_ws]
                    tangents = torch.zeros(chunk, *w.shape, device=device)
                    tangents[torch.arange(chunk), n_ws // 2, torch.arange(chunk) % w.shape[1]] = 1

                    def pixels(x, gen=gen):
                        out = gen.synthesis(x[None]) if gen is G else gen(x[None])
                        return readout(out)

                    def run(w=w, tangents=tangents, pixels=pixels):
                        return torch.func.vmap(lambda t: torch.func.jvp(pixels, (w,), (t,))[1])(tangents)
                    timed(name, mode, "tangents", chunk, run)
    best = min((r for r in rows if r.get("method") == "ours vmap(jvp)" and "per_item_ms" in r),
               key=lambda r: r["per_item_ms"], default=None)
    if best:
        report["full_jacobian_estimate_s"] = {"w (512)": best["per_item_ms"] * 512 / 1e3,
                                              f"W+ ({G.num_ws * 512})": best["per_item_ms"] * G.num_ws * 512 / 1e3}
        print(f"\nbest ours: {best['per_item_ms']:.2f} ms / tangent ({best['precision']}, chunk {best['batch']}) -> "
              + ", ".join(f"{k}: {v:.1f} s" for k, v in report["full_jacobian_estimate_s"].items())
              + " (no layer skip)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


if __name__ == "__main__":
    main()
