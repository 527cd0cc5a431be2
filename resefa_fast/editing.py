"""Finite edits along directions, and how local they are (the paper's Fig. 5).

    >>> images = edit(model, ws, directions[:4], strengths=np.linspace(-10, 10, 7))   # [4, 7, C, R, R]
    >>> change = in_out_change(model, ws, directions[:4], "eyes")                     # mean squared change
    >>> change["inside"], change["outside"], change["ratio"]                          # [4] each

An edit moves a W+ code ``ws`` ``[num_ws, w_dim]`` along a unit direction n by a strength α, as the original
manipulate script does: a w-space direction (``d = w_dim``) is added to each edited layer, a W+ direction
(``d = num_ws·w_dim``) to its own rows of the edited layers. ``layers`` (default: all) chooses the edited rows.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .errors import check
from .inputs import as_tensor
from .regions import as_regions

__all__ = ["DEFAULT_STRENGTH", "change_inside_outside", "edit", "edit_codes", "in_out_change", "strengths_between"]

#: Largest strength of the default edits (the original manipulate script's ±10, for unit directions).
DEFAULT_STRENGTH = 10.0


def strengths_between(start: float = -DEFAULT_STRENGTH, end: float = DEFAULT_STRENGTH, steps: int = 7) -> np.ndarray:
    check(isinstance(steps, int) and steps >= 1, "steps", "an int >= 1", steps)
    return np.linspace(start, end, steps)


def edit_codes(ws: torch.Tensor, directions, strengths, layers: Optional[Sequence[int]] = None,
               model=None) -> torch.Tensor:
    """Codes ``[k, S, *code_shape]``: ``ws`` moved along each of ``directions`` ``[k, d]`` by each of
    ``strengths`` ``[S]``. For a StyleGAN (the default) ``ws`` is W+ ``[num_ws, w_dim]``, d = w_dim or num_ws·w_dim,
    and ``layers`` the edited rows; ``model`` (a :class:`resefa_fast.pipeline.Model`) decides for other families."""
    from .pipeline import edit_wplus

    directions = as_tensor(directions, "directions").to(ws.device, torch.float32)
    if directions.ndim == 1:
        directions = directions[None]
    check(directions.ndim == 2, "directions", "rows [k, d]", tuple(directions.shape))
    strengths = torch.as_tensor(np.asarray(strengths, dtype=np.float32).reshape(-1), device=ws.device)
    if model is None:
        return edit_wplus(ws, directions, strengths, layers)
    return model.edit_codes(ws, directions, strengths, layers)


def edit(model, ws, directions, strengths=None, layers: Optional[Sequence[int]] = None, batch: int = 16):
    """Images ``[k, S, C, R, R]`` (about [-1, 1]) of ``ws`` edited along ``directions`` (see :func:`edit_codes`).
    ``model``: a :class:`resefa_fast.pipeline.Model` or path / ``builtin:`` name; ``ws``: one W+ code
    ``[num_ws, w_dim]`` (torch, numpy or cupy); ``strengths`` default :func:`strengths_between`."""
    from .pipeline import open_model

    model = open_model(model)
    ws = _one_code(ws, model)
    strengths = strengths_between() if strengths is None else strengths
    codes = edit_codes(ws, directions, strengths, layers, model)
    k, S = codes.shape[:2]
    images = model.synthesize(codes.reshape(k * S, *ws.shape), batch=batch)
    return images.reshape(k, S, *images.shape[1:])


def in_out_change(model, ws, directions, region, strengths=(-DEFAULT_STRENGTH, DEFAULT_STRENGTH),
                  layers: Optional[Sequence[int]] = None, batch: int = 16) -> Dict[str, torch.Tensor]:
    """Locality of finite edits: for each direction, the mean squared pixel change (over channels, pixels and
    ``strengths``) inside ``region`` and outside it, and their ratio (higher = more local).

    ``region``: anything :func:`resefa_fast.regions.as_regions` takes for one region (preset, box, mask at any
    resolution: resampled to the image). Returns ``inside``, ``outside``, ``ratio``: float64 ``[k]`` on the CPU.
    """
    from .pipeline import open_model

    model = open_model(model)
    ws = _one_code(ws, model)
    R = model.resolution
    weights = as_regions(region, (1, R, R), R * R, "cpu").foreground
    check(weights.shape[0] == 1, "region", "one region", f"{weights.shape[0]} regions")
    inside_weight = weights[0].to(model.device)
    check(float((1 - inside_weight).sum()) > 0, "region", "a region that leaves some of the image outside it",
          "the whole image")
    base = model.synthesize(ws[None])[0]
    return change_inside_outside(edit(model, ws, directions, strengths, layers, batch), base, inside_weight)


def change_inside_outside(images: torch.Tensor, base: torch.Tensor, weights: torch.Tensor) -> Dict[str, torch.Tensor]:
    """In/out change of edited ``images`` ``[k, S, C, R, R]`` against ``base`` ``[C, R, R]`` for region
    ``weights`` ``[R, R]`` (or ``[R·R]``) in [0, 1]: mean squared change over channels, strengths and the pixels
    inside (weighted by ``weights``) and outside (by ``1 - weights``). float64 ``[k]`` each, on the CPU."""
    k, S = images.shape[:2]
    change = (images.to(torch.float64) - base.to(torch.float64)).square().mean(dim=2).reshape(k, S, -1)
    inside_weight = weights.reshape(-1).to(change.device, torch.float64)
    outside_weight = 1 - inside_weight
    inside = (change @ inside_weight / inside_weight.sum()).mean(1)
    outside = (change @ outside_weight / outside_weight.sum()).mean(1)
    return {"inside": inside.cpu(), "outside": outside.cpu(), "ratio": (inside / outside).cpu()}


def _one_code(ws, model) -> torch.Tensor:
    ws = as_tensor(ws, "ws").to(model.device, torch.float32)
    shape = tuple(model.code_shape)
    if ws.ndim == len(shape) + 1 and ws.shape[0] == 1:
        ws = ws[0]
    check(tuple(ws.shape) == shape, "ws", f"one code {list(shape)} of this model (W+ for a StyleGAN)",
          tuple(ws.shape))
    return ws
