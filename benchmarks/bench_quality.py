"""Quality of the directions on the built-in model (issue 8): are ReSeFa's directions local?

For each part region of ``builtin:faces64`` (eyes, nose, mouth boxes, where the procedural data's local factors
live) and each seed, the directions of four methods are edited through the generator at strengths ±6 (about 8
standard deviations of w along a unit direction) and scored by
- ``in/out``: mean squared pixel change inside the box / outside it (the paper's Fig. 5; higher = more local);
- ``on target``: the share of directions whose largest per-pixel change is in the region's own part box among the
  four part boxes and the rest of the image (which part the edit moves).

Methods: ReSeFa (``rf.factorize``, top 3), the original algorithm (``reference.factorize_original`` with
``full_rank``, float32 ``inv`` + ``eig``, top 3), SeFa (global closed form, top 8: eigenvectors of the
style-affine weights; the same 8 for every region) and random unit directions (16).

    cd benchmarks && python bench_quality.py --json results/quality.json --image results/quality_edits.png
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import resefa_fast as rf  # noqa: E402
from resefa_fast.baselines import random_directions, sefa_directions  # noqa: E402
from resefa_fast.data import procedural  # noqa: E402
from resefa_fast.editing import change_inside_outside, edit, strengths_between  # noqa: E402
from resefa_fast.jacobian import readouts  # noqa: E402
from resefa_fast.visualize import draw_region, grid_image, save_png, to_uint8  # noqa: E402

STRENGTH = 6.0
K = 3


def scores(model, ws, directions, part):
    """in/out ratios ``[k]`` and, per direction, the part (or "rest") with the largest mean squared change."""
    images = edit(model, ws, directions, [-STRENGTH, STRENGTH])  # [k, 2, C, H, W]
    base = model.synthesize(ws[None])[0]
    masks = procedural.part_masks()
    ratio = change_inside_outside(images, base, masks[part])["ratio"]
    change = (images.double() - base.double()).square().mean(dim=(1, 2))  # [k, H, W]
    rest = 1 - sum(masks.values())
    names = list(masks) + ["rest"]
    per_pixel = torch.stack([(change * m).sum((1, 2)) / m.sum() for m in list(masks.values()) + [rest]], 1)
    moved = [names[i] for i in per_pixel.argmax(1).tolist()]
    return ratio.numpy(), moved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    parser.add_argument("--image", default=None, help="PNG of the top ReSeFa direction of every part (seed 0)")
    args = parser.parse_args(argv)
    model = rf.open_model("builtin:faces64", args.device)
    sefa = sefa_directions(model.generator, 8)
    randoms = random_directions(16, model.w_dim, seed=1)
    results = {}
    strips = []
    for seed in range(args.seeds):
        ws = model.latents([seed])[0]
        J = rf.jacobian(model.generator, ws[0], readout=readouts.rgb(), progress=False)
        for part, box in procedural.part_boxes().items():
            methods = {
                "ReSeFa": rf.factorize(J, box, k=K, grid=(3, 64, 64)).directions,
                "original algorithm": rf.reference.factorize_original(J.cpu(), box, k=K, full_rank=True,
                                                                      grid=(3, 64, 64)).directions,
                "SeFa (global)": sefa,
                "random": randoms,
            }
            for method, directions in methods.items():
                ratio, moved = scores(model, ws, directions, part)
                entry = results.setdefault((part, method), {"ratios": [], "top1": [], "on_target": []})
                entry["ratios"].extend(ratio.tolist())
                entry["top1"].append(float(ratio.max() if method in ("SeFa (global)", "random") else ratio[0]))
                entry["on_target"].extend(m == part for m in moved)
            if seed == 0:
                top = methods["ReSeFa"][:1]
                images = edit(model, ws, top, strengths_between(-STRENGTH, STRENGTH, 7))[0]
                strips.append(draw_region(to_uint8(images), procedural.part_masks()[part]))
        print(f"seed {seed} done", flush=True)

    rows = []
    for (part, method), entry in results.items():
        rows.append(dict(part=part, method=method, median_in_out=float(np.median(entry["ratios"])),
                         best_in_out=float(np.mean(entry["top1"])), on_target=float(np.mean(entry["on_target"]))))
    print(f"\nbuiltin:faces64, {args.seeds} seeds, strengths ±{STRENGTH:g}, {datetime.date.today().isoformat()}")
    print("| part | method | in/out, median over directions | in/out, top direction (best for SeFa/random) "
          "| edits moving this part most |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['method']} | {r['median_in_out']:.2f} | {r['best_in_out']:.2f} | "
              f"{100 * r['on_target']:.0f} % |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model="builtin:faces64", seeds=args.seeds, strength=STRENGTH, k=K,
                           date=datetime.date.today().isoformat(), rows=rows), f, indent=1)
    if args.image:
        save_png(args.image, grid_image(np.stack(strips)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
