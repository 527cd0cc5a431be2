"""Regions of the analysed image: boxes, presets, masks, label maps, and batches of them.

A region is a weight per analysed pixel, ``m`` in [0, 1] (hard boxes are 0/1). The foreground weights are ``m``;
the background weights are ``1 - m`` unless an explicit background mask is given.

Boxes use the original ReSeFa convention ``[center_x, center_y, height, width]`` where *x indexes rows*:
``mask[cx - h//2 : cx - h//2 + h, cy - w//2 : cy - w//2 + w] = 1``. Unlike the original (numpy slicing, where a
negative start wraps around) the box is clipped to the grid. A box's coordinates are on the Jacobian's own grid
unless it carries another ``grid`` (the presets are defined on 256x256); masks and boxes given at another
resolution are resampled to the Jacobian's grid by area averaging (down) or nearest neighbour (up).

Anything :func:`as_regions` accepts as ``region``:

- a preset name (``"eyes"``, ``"ffhq/eyes"``, ``"ffhqu/eyesr2"``, ``"biggan/center0"``) or a :class:`Box`;
- four integers ``(cx, cy, h, w)``, or an integer array ``[R, 4]`` of boxes;
- a mask: bool or float array (numpy, torch, cupy) ``[H, W]`` (the same for every channel) or flat ``[P]``;
- a stack of masks ``[R, H, W]`` or ``[R, P]``;
- a path to a mask image (PNG etc., white = region) or a ``.npy`` file;
- a list mixing any of the above (one region each).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ResefaError, check
from .inputs import Grid, as_tensor

PRESET_GRID = (256, 256)

#: Presets of the original code, ``[center_x, center_y, height, width]`` on a 256x256 grid (x indexes rows).
PRESETS: Dict[str, Dict[str, Tuple[int, int, int, int]]] = {
    "ffhq": {
        "left_eye": (120, 95, 20, 38),
        "right_eye": (120, 159, 20, 38),
        "eyes": (120, 128, 20, 115),
        "nose": (142, 131, 40, 46),
        "mouth": (184, 127, 30, 70),
        "chin": (217, 130, 42, 110),
        "eyebrow": (126, 105, 15, 118),
    },
    "ffhqu": {
        "eyesr2": (134, 116, 30, 115),
        "eyesr3": (64, 128, 26, 115),
        "eyest0": (70, 88, 30, 115),
        "eyest3": (108, 142, 26, 115),
    },
    "biggan": {
        "center0": (120, 120, 80, 80),
        "center1": (120, 120, 130, 130),
        "center2": (120, 120, 200, 200),
        "left_side": (128, 64, 256, 128),
        "top_side": (64, 128, 128, 256),
        "head0": (89, 115, 49, 70),
        "head1": (93, 110, 48, 70),
    },
}


@dataclass(frozen=True)
class Box:
    """A box ``[center_x, center_y, height, width]`` (x indexes rows) on ``grid`` (None: the Jacobian's grid)."""

    center_x: int
    center_y: int
    height: int
    width: int
    grid: Optional[Tuple[int, int]] = None
    name: Optional[str] = None

    def bounds(self, size: Tuple[int, int]) -> Tuple[int, int, int, int]:
        """Row and column bounds ``(r0, r1, c0, c1)`` clipped to ``size`` = (H, W)."""
        r0 = self.center_x - self.height // 2
        c0 = self.center_y - self.width // 2
        r1, c1 = r0 + self.height, c0 + self.width
        return max(r0, 0), min(r1, size[0]), max(c0, 0), min(c1, size[1])


def preset(name: str) -> Box:
    """The preset box ``name`` (``"eyes"`` looks in ffhq, then ffhqu, then biggan; ``"biggan/center0"`` is exact)."""
    if "/" in name:
        family, key = name.split("/", 1)
        if family in PRESETS and key in PRESETS[family]:
            return Box(*PRESETS[family][key], grid=PRESET_GRID, name=name)
    else:
        for family in PRESETS:
            if name in PRESETS[family]:
                return Box(*PRESETS[family][name], grid=PRESET_GRID, name=name)
    known = ", ".join(f"{f}/{k}" for f in PRESETS for k in PRESETS[f])
    raise ResefaError(f"`region` names no known preset: {name!r}; known presets: {known}")


def box_mask(box: Union[Box, Sequence[int]], size: Tuple[int, int]) -> torch.Tensor:
    """A 0/1 mask ``[H, W]`` (float32) of ``box`` drawn on a grid of ``size`` = (H, W), the box's coordinates
    taken on that grid."""
    if not isinstance(box, Box):
        box = Box(*(int(v) for v in box))
    check(box.height > 0 and box.width > 0, "region", "a box with positive height and width",
          (box.center_x, box.center_y, box.height, box.width))
    mask = torch.zeros(size, dtype=torch.float32)
    r0, r1, c0, c1 = box.bounds(size)
    if r1 > r0 and c1 > c0:
        mask[r0:r1, c0:c1] = 1.0
    return mask


def resample_mask(mask: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resample masks ``[..., h, w]`` to ``size`` = (H, W): area average when shrinking (soft edges keep the
    covered fraction), nearest neighbour when growing (hard masks stay hard)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    lead = mask.shape[:-2]
    x = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    shrink = size[0] <= mask.shape[-2] and size[1] <= mask.shape[-1]
    x = F.interpolate(x, size=size, mode="area" if shrink else "nearest")
    return x.reshape(*lead, *size)


def masks_from_labels(label_map, labels: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, List[int]]:
    """Segmentation label map ``[H, W]`` (integers) -> a stack of 0/1 masks ``[R, H, W]``, one per label.

    ``labels`` picks and orders the labels (default: every label present, ascending). Returns the stack and the
    labels it holds."""
    labels_map = as_tensor(label_map, "label_map")
    check(labels_map.dim() == 2, "label_map", "a 2-D array [H, W] of integer labels",
          f"shape {tuple(labels_map.shape)}")
    check(not labels_map.is_floating_point() or bool((labels_map == labels_map.round()).all()),
          "label_map", "integer labels")
    present = sorted(int(v) for v in torch.unique(labels_map).tolist())
    if labels is None:
        labels = present
    labels = [int(v) for v in labels]
    missing = [v for v in labels if v not in present]
    check(not missing, "labels", f"labels present in `label_map` ({present})", missing)
    masks = torch.stack([(labels_map == v).float() for v in labels])
    return masks, labels


def load_mask_file(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Read a mask from an image file (grayscale / 255, white = region) or a ``.npy`` file."""
    path = os.fspath(path)
    check(os.path.isfile(path), "region", "an existing mask file", repr(path))
    if path.endswith(".npy"):
        return as_tensor(np.load(path), "region").float()
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is a test dependency
        raise ResefaError(f"reading the mask image {path!r} needs pillow (pip install pillow)") from error
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA"):
            image = image.getchannel("A")
        array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy())


@dataclass
class Regions:
    """A batch of R regions on a Jacobian's pixel rows.

    ``foreground``: ``[R, P]`` weights in [0, 1]; ``background``: ``[R, P]`` explicit background weights, or None
    for the complement ``1 - foreground``; ``boxes``: ``[R, 4]`` integer row/column bounds ``(r0, r1, c0, c1)`` on
    the Jacobian's grid when every region is a box on it (lets the bulk path gather rows without masks), else None;
    ``names``: a label per region; ``single``: the caller gave one region (results drop the R axis)."""

    foreground: torch.Tensor  # [R, P]
    background: Optional[torch.Tensor] = None  # [R, P]
    boxes: Optional[torch.Tensor] = None  # [R, 4] (r0, r1, c0, c1)
    names: List[str] = field(default_factory=list)
    single: bool = False

    def __len__(self) -> int:
        return self.foreground.shape[0]

    def background_weights(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The background weights ``[R, P]`` in ``dtype`` (explicit, or the complement ``1 − m`` formed in
        ``dtype``, so that it matches ``G − B`` of the bulk path to that precision even for soft masks)."""
        if self.background is not None:
            return self.background.to(dtype)
        return 1.0 - self.foreground.to(dtype)


def _flat_masks(masks: torch.Tensor, grid: Optional[Grid], num_pixels: int, argument: str) -> torch.Tensor:
    """Masks ``[R, H', W']`` or ``[R, P]`` -> ``[R, P]`` weights on the Jacobian's rows."""
    check(masks.dtype == torch.bool or masks.is_floating_point() or not masks.is_complex(), argument,
          "a bool or real-valued mask", masks.dtype)
    masks = masks.to(torch.float32)
    if masks.dim() == 2 and masks.shape[1] == num_pixels:
        return masks
    check(masks.dim() == 3, argument,
          f"a mask [H, W] (or a stack [R, H, W]) or flat weights [P] / [R, P] with P = {num_pixels}",
          f"shape {tuple(masks.shape)}")
    check(grid is not None, argument,
          "flat weights [P] when the Jacobian's layout gives no pixel grid (or pass `grid=(H, W)`)",
          f"a spatial mask of shape {tuple(masks.shape)}")
    C, H, W = grid
    masks = resample_mask(masks, (H, W))  # [R, H, W]
    return masks.reshape(masks.shape[0], 1, H * W).expand(-1, C, -1).reshape(masks.shape[0], C * H * W)


def _one_region(region, grid: Optional[Grid], num_pixels: int, argument: str):
    """One region -> ``(weights [P], name, box bounds or None)``."""
    if isinstance(region, str) and not os.path.exists(region) and "." not in os.path.basename(region):
        region = preset(region)
    if isinstance(region, (str, os.PathLike)):
        name = os.path.basename(os.fspath(region))
        return _flat_masks(load_mask_file(region)[None], grid, num_pixels, argument)[0], name, None
    if isinstance(region, (tuple, list)) and len(region) == 4 and all(isinstance(v, (int, np.integer)) for v in region):
        region = Box(*(int(v) for v in region))
    if isinstance(region, Box):
        check(grid is not None, argument, "a mask of flat weights [P] when the Jacobian has no grid (or pass `grid`)",
              "a box")
        size = (grid[1], grid[2])
        name = region.name or "box[{},{},{},{}]".format(region.center_x, region.center_y, region.height, region.width)
        if region.grid is None or tuple(region.grid) == size:
            mask = box_mask(region, size)
            bounds = region.bounds(size)
        else:
            mask = resample_mask(box_mask(region, tuple(region.grid)), size)
            bounds = None
        return _flat_masks(mask[None], grid, num_pixels, argument)[0], name, bounds
    mask = as_tensor(region, argument)
    check(mask.dim() in (1, 2), argument, "one mask [H, W] or flat weights [P]", f"shape {tuple(mask.shape)}")
    mask = mask.cpu() if mask.device.type != "cpu" else mask
    flat = _flat_masks(mask.reshape(1, -1) if mask.dim() == 1 else mask[None], grid, num_pixels, argument)[0]
    return flat, "mask", None


def _is_box_array(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and t.dtype != torch.bool and t.dim() == 2 and t.shape[1] == 4


def _validate_weights(weights: torch.Tensor, argument: str) -> None:
    check(bool(torch.isfinite(weights).all()), argument, "finite (it contains NaN or Inf)")
    check(bool(((weights >= 0) & (weights <= 1)).all()), argument, "weights in [0, 1]",
          f"values from {float(weights.min()):.4g} to {float(weights.max()):.4g}")


def _is_box(region) -> bool:
    return isinstance(region, Box) or (
        isinstance(region, (tuple, list)) and len(region) == 4
        and all(isinstance(v, (int, np.integer)) for v in region))


def _parse_regions(region, grid: Optional[Grid], num_pixels: int):
    """``region`` -> ``(weights [R, P], names, box bounds per region or None, single)``."""
    if isinstance(region, (str, os.PathLike)) or _is_box(region):
        entries, single = [region], True
    elif isinstance(region, (list, tuple)):
        check(len(region) > 0, "region", "a non-empty list of regions")
        entries, single = list(region), False
    else:
        array = as_tensor(region, "region")
        integer = not array.is_floating_point() and array.dtype != torch.bool
        if integer and array.dim() == 2 and array.shape[1] == 4:
            entries, single = [Box(*row) for row in array.cpu().tolist()], False
        elif integer and array.dim() == 1 and array.shape[0] == 4 and num_pixels != 4:
            entries, single = [Box(*array.cpu().tolist())], True
        else:
            array = array.cpu()
            flat_stack = array.dim() == 2 and array.shape[1] == num_pixels and (
                grid is None or (grid[1], grid[2]) != tuple(array.shape))
            if array.dim() == 3 or flat_stack:
                weights = _flat_masks(array, grid, num_pixels, "region")
                names = [f"mask{i}" for i in range(weights.shape[0])]
                return weights, names, [None] * len(names), False
            entries, single = [array], True
    parsed = [_one_region(entry, grid, num_pixels, "region") for entry in entries]
    return torch.stack([p[0] for p in parsed]), [p[1] for p in parsed], [p[2] for p in parsed], single


def as_regions(
    region,
    grid: Optional[Grid],
    num_pixels: int,
    device: Union[str, torch.device] = "cpu",
    background=None,
) -> Regions:
    """Turn ``region`` (see the module docstring) and an optional explicit ``background`` of the same forms into
    validated :class:`Regions` on ``device``. Raises :class:`ResefaError` for empty regions, regions that leave no
    background, weights outside [0, 1], and shape mismatches."""
    foreground, names, bounds, single = _parse_regions(region, grid, num_pixels)
    _validate_weights(foreground, "region")
    empty = torch.nonzero(foreground.sum(dim=1) <= 0).flatten().tolist()
    check(not empty, "region", "a region selecting at least one pixel", f"empty region(s) at index {empty}")
    background_weights = None
    if background is None:
        full = torch.nonzero((1.0 - foreground).sum(dim=1) <= 0).flatten().tolist()
        check(not full, "region", "a region that leaves some background (or pass an explicit `background`)",
              f"region(s) covering every pixel at index {full}")
    else:
        bg = _parse_regions(background, grid, num_pixels)[0]
        _validate_weights(bg, "background")
        check(bg.shape[0] in (1, foreground.shape[0]), "background",
              f"one background mask or one per region ({foreground.shape[0]})", f"{bg.shape[0]} masks")
        empty = torch.nonzero(bg.sum(dim=1) <= 0).flatten().tolist()
        check(not empty, "background", "a mask selecting at least one pixel", f"empty mask(s) at index {empty}")
        background_weights = bg.expand(foreground.shape[0], -1).contiguous().to(device)
    boxes = None
    if grid is not None and grid[0] == 1 and all(b is not None for b in bounds):
        boxes = torch.tensor(bounds, dtype=torch.int64, device=device)
    return Regions(foreground=foreground.to(device), background=background_weights, boxes=boxes,
                   names=names, single=single)
