"""One self-contained HTML page for a results store: per region the mask on the image, edit strips of the top
directions, the eigenvalue spectrum and the in/out change of each edit. Pictures are embedded as data URIs, so the
page is one file that can be mailed or archived; the PNGs are also written beside it (``report_files/``).

    >>> write_report("store/", "store/report.html", model="builtin:faces64")
"""
from __future__ import annotations

import base64
import html
import io
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from .editing import change_inside_outside, edit, strengths_between
from .errors import check
from .regions import resample_mask
from .store import load_results, write_bytes
from .visualize import draw_region, grid_image, png_bytes, to_uint8

__all__ = ["write_report", "spectrum_png"]


def spectrum_png(eigenvalues: np.ndarray, title: str) -> bytes:
    """A log-scale plot of one region's eigenvalues (matplotlib, no display needed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the report's spectrum plots need matplotlib: pip install matplotlib") from error
    figure, axis = plt.subplots(figsize=(3.2, 2.2), dpi=80)
    values = np.asarray(eigenvalues, dtype=np.float64)
    axis.semilogy(np.arange(1, len(values) + 1), np.maximum(values, 1e-300), "o-", markersize=3)
    axis.set_xlabel("direction")
    axis.set_ylabel("λ (M_f / M_b)")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def write_report(store: str, out: str, model=None, latent: Optional[int] = None, top: int = 3,
                 strengths: Optional[Sequence[float]] = None, layers: Optional[Sequence[int]] = None,
                 max_regions: int = 48, progress: bool = True) -> str:
    """Write the HTML report of the results store ``store`` to ``out`` and return its path.

    ``model``: the generator to render edits with (default: the store's own model spec); ``latent``: which stored
    latent code (default: the first); ``top``: directions shown per region; ``strengths``: edit strengths
    (default :func:`~resefa_fast.editing.strengths_between` with 5 steps); ``max_regions``: regions shown (the
    first ones; a mined grid can hold thousands)."""
    from tqdm.auto import tqdm

    from .pipeline import open_model

    results = load_results(store)
    check(len(results.latents) > 0, "store", "a results store with at least one mined latent code", repr(store))
    latent = results.latents[0] if latent is None else latent
    check(latent in results.latents, "latent", f"a stored latent code ({results.latents[:10]})", latent)
    spec = model if model is not None else results.manifest.get("model_spec")
    check(spec is not None, "model", "a model to render the edits (the store was mined from a bare Jacobian)", None)
    source = results.manifest.get("source", {})
    model = open_model(spec, class_index=source.get("class_index"), truncation=source.get("truncation_psi") or 1.0)
    fingerprint = results.manifest.get("source", {}).get("model")
    check(fingerprint is None or fingerprint == model.fingerprint, "model",
          "the model the store was mined with (same file)", f"{model.spec} differs from the store's {fingerprint}")
    strengths = strengths_between(steps=5) if strengths is None else np.asarray(strengths, dtype=np.float64)
    data = results.get(latent)
    ws = torch.as_tensor(results.codes()[latent]).to(model.device)
    region_maps = torch.as_tensor(results.regions())
    R = model.resolution
    base = model.synthesize(ws[None])[0]
    base_picture = to_uint8(base)
    files = os.path.splitext(out)[0] + "_files"
    os.makedirs(files, exist_ok=True)

    shown = list(range(min(len(results.names), max_regions)))
    sections: List[str] = []
    for r in tqdm(shown, desc="report regions", disable=not progress):
        name = results.names[r]
        mask = resample_mask(region_maps[r].float(), (R, R))
        count = min(top, data["directions"].shape[1])
        images = edit(model, ws, data["directions"][r, :count], strengths, layers)  # [top, S, C, R, R]
        change = change_inside_outside(images, base, mask.to(images.device))
        tiles = draw_region(to_uint8(images), mask)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        mask_png, strip_png = png_bytes(draw_region(base_picture, mask)), png_bytes(grid_image(tiles))
        spectrum = spectrum_png(data["eigenvalues"][r], name)
        for suffix, payload in (("mask", mask_png), ("edits", strip_png), ("spectrum", spectrum)):
            write_bytes(os.path.join(files, f"{r:04d}_{safe}_{suffix}.png"), payload)
        rows = "".join(
            f"<tr><td>{i}</td><td>{data['eigenvalues'][r, i]:.4g}</td><td>{float(change['inside'][i]):.3g}</td>"
            f"<td>{float(change['outside'][i]):.3g}</td><td>{float(change['ratio'][i]):.3g}</td></tr>"
            for i in range(count))
        sections.append(
            f"<section><h2>{html.escape(name)}</h2><div class='row'>"
            f"<figure><img alt='region {html.escape(name)}' src='{_data_uri(mask_png)}'><figcaption>region"
            f"</figcaption></figure><figure><img alt='spectrum' src='{_data_uri(spectrum)}'><figcaption>"
            f"eigenvalues</figcaption></figure></div>"
            f"<figure><img alt='edits' src='{_data_uri(strip_png)}'><figcaption>directions 0..{count - 1} (rows), "
            f"strengths {', '.join(f'{a:g}' for a in strengths)} (columns)</figcaption></figure>"
            "<table><tr><th>direction</th><th>λ</th><th>change inside</th><th>change outside</th><th>in/out</th>"
            f"</tr>{rows}</table></section>")
    manifest = results.manifest
    settings = manifest.get("settings", {})
    header = (f"<p>store <code>{html.escape(os.path.abspath(store))}</code>, model <code>{html.escape(model.spec)}"
              f"</code>, latent code {latent}, {len(results.names)} regions ({len(shown)} shown), k = "
              f"{settings.get('k')}, τ = {settings.get('tau')}, normalisation {settings.get('normalize')}, space "
              f"{manifest.get('source', {}).get('space')}, readout {manifest.get('source', {}).get('readout')}, "
              f"resefa_fast {manifest.get('package_version')}.</p><p>Change = mean squared pixel change of the "
              "edited image (over channels and strengths) inside the region and outside it; in/out above 1 means "
              "the edit is local.</p>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>resefa_fast report</title><style>"
            "body{font-family:sans-serif;margin:2em}section{border-top:1px solid #ccc;padding:.5em 0}"
            ".row{display:flex;gap:1em}figure{margin:.3em}table{border-collapse:collapse}"
            "td,th{padding:2px 8px;border:1px solid #ddd;text-align:right}</style></head><body>"
            f"<h1>resefa_fast report</h1>{header}{''.join(sections)}</body></html>")
    write_bytes(out, page.encode("utf-8"))
    return out
