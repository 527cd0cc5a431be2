"""``resefa-fast demo``: the main job on the built-in model, end to end, with no arguments and no downloads.

1. Jacobians of ``builtin:faces64`` (w space, RGB readout at 64×64) at seeds 0-3 → ``OUT/jacobians/``;
2. directions for its part regions (eyes, nose, mouth) at every seed, with the in/out change of the top
   directions' edits → ``OUT/store/``;
3. edits of the top directions (PNG grid + GIF per direction, region outlined) → ``OUT/edits/``;
4. the HTML report → ``OUT/report.html``.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import torch

from .regions import Box

__all__ = ["run_demo", "DEFAULT_MODEL", "SEEDS"]

DEFAULT_MODEL = "builtin:faces64"
SEEDS = (0, 1, 2, 3)
K, TOP = 8, 3
#: Largest edit strength: about 8 standard deviations of the built-in model's w along a unit direction (σ ≈ 0.7);
#: the original's ±10 leaves the data for this small model.
STRENGTH = 6.0


def run_demo(out: str = "resefa_demo", model: Optional[str] = None, device: Optional[str] = None,
             quiet: bool = False) -> int:
    from .editing import edit, strengths_between
    from .mining import mine
    from .pipeline import open_model, write_jacobian_store
    from .report import write_report
    from .visualize import draw_region, grid_image, save_gif, save_png, to_uint8

    start = time.perf_counter()
    model = open_model(model or DEFAULT_MODEL, device)
    regions = [Box(*box, grid=(model.resolution, model.resolution), name=part)
               for part, box in model.presets.items()]
    if not regions:  # a model without part boxes: the centre quarter and the four quadrants
        R = model.resolution
        regions = [Box(R // 2, R // 2, R // 2, R // 2, name="centre")] + [
            Box(r, c, R // 2, R // 2, name=f"quadrant{i}") for i, (r, c) in
            enumerate([(R // 4, R // 4), (R // 4, 3 * R // 4), (3 * R // 4, R // 4), (3 * R // 4, 3 * R // 4)])]
    os.makedirs(out, exist_ok=True)
    print(f"resefa-fast demo: model {model.spec} ({model.resolution}x{model.resolution}, w_dim {model.w_dim}), "
          f"device {model.device}, seeds {list(SEEDS)}, regions {', '.join(r.name for r in regions)}")

    ws = model.latents(SEEDS)
    jacobians = os.path.join(out, "jacobians")
    manifest = write_jacobian_store(model, ws, jacobians, space="w", readout="rgb", seeds=SEEDS, progress=not quiet)
    seconds_jacobian = time.perf_counter() - start
    store = os.path.join(out, "store")
    results = mine(jacobians, regions, out=store, k=K, device=str(model.device), progress=not quiet,
                   locality_top=TOP, locality_strengths=(-STRENGTH, STRENGTH))
    seconds_mining = time.perf_counter() - start - seconds_jacobian

    edits = os.path.join(out, "edits")
    os.makedirs(edits, exist_ok=True)
    data, maps = results.get(0), torch.as_tensor(results.regions())
    strengths = strengths_between(-STRENGTH, STRENGTH, steps=7)
    for r, name in enumerate(results.names):
        images = draw_region(to_uint8(edit(model, ws[0], data["directions"][r, :TOP], strengths)), maps[r])
        save_png(os.path.join(edits, f"seed{SEEDS[0]}_{name}.png"), grid_image(images))
        save_gif(os.path.join(edits, f"seed{SEEDS[0]}_{name}_direction000.gif"), list(images[0]))
    report = write_report(store, os.path.join(out, "report.html"), model=model, progress=not quiet,
                          strengths=strengths_between(-STRENGTH, STRENGTH, steps=5))

    print(f"\n{'region':<10} {'λ1':>10} {'λ2':>10} {'in/out (top 3 directions, mean over seeds)':>44}")
    ratios = np.stack([results.get(n)["locality_inside"] / results.get(n)["locality_outside"]
                       for n in results.latents]).mean(0)  # [R, TOP]
    for r, name in enumerate(results.names):
        print(f"{name:<10} {data['eigenvalues'][r, 0]:>10.4g} {data['eigenvalues'][r, 1]:>10.4g} "
              f"{'  '.join(f'{v:8.2f}' for v in ratios[r]):>44}")
    print(f"\nJacobians {manifest['shape']} in {seconds_jacobian:.1f} s, mining {len(results.names)} regions x "
          f"{len(results.latents)} seeds (with locality) in {seconds_mining:.1f} s, "
          f"{time.perf_counter() - start:.1f} s in all")
    print(f"Jacobian store: {jacobians}\nresults store:  {store}\nedits:          {edits}\nreport:         {report}")
    return 0
