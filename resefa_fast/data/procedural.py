"""Procedural 64x64 RGB "faces" built from independent local parts with known factors and part boxes.

Every image is a function of a few scalar factors, each drawn uniformly from [0, 1] and independently:

- *local* factors move one part, drawn only inside its fixed box (:data:`PART_BOXES`):
  left/right eye (``*_eye_open``: eyelid opening, ``*_eye_gaze``: iris position left to right), nose
  (``nose_size``), mouth (``mouth_width``, ``mouth_open``, ``mouth_colour``: pale pink to dark red lips);
- *global* factors change the whole picture: ``skin_tone``, ``face_width``, ``hair_colour``, ``hair_line``,
  ``background_hue``, ``background_value``, ``light_angle``, ``light_strength`` (a multiplicative linear lighting
  gradient over the whole image).

Shapes are drawn from signed distance fields with a one-pixel linear coverage ramp (``alpha = clamp(0.5 - sdf)``,
i.e. antialiased), composited back to front, then lit. A part's layers are multiplied by its hard box mask, and the
factor ranges keep every part (with its antialiasing ramp) off the box's outermost ring of pixels, so the mask never
cuts a shape and a local factor changes no pixel outside its box (exactly: the lighting is pointwise). Rendering
is vectorised over the batch (a few dozen elementwise ops on ``[N, 64, 64]``), so it runs on any device at
thousands of images per second.

Boxes use the project's region convention ``[center_x, center_y, height, width]`` with *x indexing rows*
(:mod:`resefa_fast.regions`), on the 64x64 grid; ``left`` / ``right`` are the image's left and right (as in the
original ReSeFa ``ffhq`` presets, ``left_eye`` has the smaller column).

    >>> from resefa_fast.data import procedural
    >>> images, factors = procedural.sample(16, seed=0)        # [16, 3, 64, 64] in [-1, 1], dict of [16] tensors
    >>> factors["mouth_open"][:] = 1.0                          # open every mouth
    >>> opened = procedural.render(factors)                     # differs from `images` only inside the mouth box
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..errors import check
from ..regions import Box

__all__ = ["FACTORS", "LOCAL_FACTORS", "GLOBAL_FACTORS", "PART_BOXES", "RESOLUTION", "part_boxes", "part_masks",
           "sample_factors", "render", "sample"]

#: Image side in pixels.
RESOLUTION = 64

#: Part boxes ``[center_x, center_y, height, width]`` (x = row) on the 64x64 grid.
PART_BOXES: Dict[str, Tuple[int, int, int, int]] = {
    "left_eye": (26, 23, 10, 14),   # rows 21..30, cols 16..29
    "right_eye": (26, 41, 10, 14),  # rows 21..30, cols 34..47
    "nose": (38, 32, 12, 10),       # rows 32..43, cols 27..36
    "mouth": (50, 32, 10, 24),      # rows 45..54, cols 20..43
}

#: Every factor and the part it moves (None: global). All factors are uniform on [0, 1].
FACTORS: Dict[str, Optional[str]] = {
    "left_eye_open": "left_eye", "left_eye_gaze": "left_eye",
    "right_eye_open": "right_eye", "right_eye_gaze": "right_eye",
    "nose_size": "nose",
    "mouth_width": "mouth", "mouth_open": "mouth", "mouth_colour": "mouth",
    "skin_tone": None, "face_width": None, "hair_colour": None, "hair_line": None,
    "background_hue": None, "background_value": None, "light_angle": None, "light_strength": None,
}
LOCAL_FACTORS = tuple(name for name, part in FACTORS.items() if part is not None)
GLOBAL_FACTORS = tuple(name for name, part in FACTORS.items() if part is None)

# Colours (RGB in [0, 1]).
_SKIN_LIGHT, _SKIN_DARK = (0.96, 0.80, 0.69), (0.42, 0.27, 0.19)
_HAIR = ((0.08, 0.06, 0.05), (0.42, 0.25, 0.12), (0.90, 0.74, 0.42))  # black, brown, blond
_SCLERA, _IRIS, _PUPIL, _EYELID = (0.96, 0.96, 0.94), (0.22, 0.38, 0.62), (0.03, 0.03, 0.05), (0.16, 0.09, 0.08)
_LIPS_PALE, _LIPS_DARK, _MOUTH_INSIDE = (0.88, 0.50, 0.52), (0.56, 0.06, 0.12), (0.22, 0.04, 0.05)
_FACE_CENTRE, _FACE_HALF_HEIGHT = (33.5, 31.5), 26.5


def part_boxes() -> Dict[str, Box]:
    """The part boxes as :class:`resefa_fast.regions.Box` on the 64x64 grid, named ``procedural/<part>``."""
    return {part: Box(*box, grid=(RESOLUTION, RESOLUTION), name=f"procedural/{part}")
            for part, box in PART_BOXES.items()}


def part_masks(device=None) -> Dict[str, torch.Tensor]:
    """0/1 masks ``[64, 64]`` (float32) of the part boxes."""
    masks = {}
    for part, box in part_boxes().items():
        r0, r1, c0, c1 = box.bounds((RESOLUTION, RESOLUTION))
        mask = torch.zeros(RESOLUTION, RESOLUTION, device=device)
        mask[r0:r1, c0:c1] = 1.0
        masks[part] = mask
    return masks


def _box_centre(part: str) -> Tuple[float, float]:
    """Geometric centre (row, col) of a part box: half-way between its first and last pixel centres."""
    cx, cy, h, w = PART_BOXES[part]
    return cx - h // 2 + (h - 1) / 2, cy - w // 2 + (w - 1) / 2


def sample_factors(n: int, seed: int = 0, device=None) -> Dict[str, torch.Tensor]:
    """``n`` independent draws of every factor, uniform on [0, 1]: dict of float32 ``[n]`` tensors on ``device``.

    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (one ``[n, F]`` draw, columns in the order of
    :data:`FACTORS`), so a seed gives the same factors on every device."""
    check(isinstance(n, int) and n >= 0, "n", "an int >= 0", n)
    generator = torch.Generator().manual_seed(int(seed))
    values = torch.rand(n, len(FACTORS), generator=generator).to(device)  # [n, F]
    return {name: values[:, i] for i, name in enumerate(FACTORS)}


# ---- distance fields ([N, H, W] from per-image parameters [N, 1, 1]) -------------------------------------------


def _coverage(sdf: torch.Tensor) -> torch.Tensor:
    """Antialiased coverage of a shape from its signed distance (negative inside): a one-pixel linear ramp."""
    return (0.5 - sdf).clamp(0.0, 1.0)


def _ellipse_sdf(rows, cols, centre_row, centre_col, half_height, half_width):
    """Approximate signed distance to an axis-aligned ellipse: the first-order estimate ``(k0 - 1) k0 / k1``
    (``k0 = |p / r|``, ``k1 = |p / r²|``; exact on the axes), but never less than the distance to the ellipse's
    bounding rectangle (a lower bound of the true distance; the first-order estimate alone is far too small
    beyond the ends of a thin ellipse), so nothing is drawn more than half a pixel outside that rectangle."""
    u, v = rows - centre_row, cols - centre_col
    k0 = torch.sqrt((u / half_height).square() + (v / half_width).square())
    k1 = torch.sqrt((u / half_height.square()).square() + (v / half_width.square()).square())
    outside_rectangle = torch.sqrt((u.abs() - half_height).clamp(min=0).square()
                                   + (v.abs() - half_width).clamp(min=0).square())
    first_order = (k0 - 1.0) * k0 / (k1 + 1e-6)
    return torch.where(outside_rectangle > 0, torch.maximum(first_order, outside_rectangle), first_order)


def _circle_sdf(rows, cols, centre_row, centre_col, radius):
    return torch.sqrt((rows - centre_row).square() + (cols - centre_col).square()) - radius


_CONSTANTS: Dict[Tuple[str, Any], torch.Tensor] = {}


def _constant(key, device, make) -> torch.Tensor:
    """A constant tensor kept per device: a host-to-device copy synchronises, so a training loop that renders a
    batch every step must not make one per call."""
    key = (str(torch.device(device)), key)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = make()
    return _CONSTANTS[key]


def _colour(rgb, device) -> torch.Tensor:
    return _constant(rgb, device, lambda: torch.tensor(rgb, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def _lerp_colour(a, b, t: torch.Tensor) -> torch.Tensor:
    """Per-image colour ``[N, 3, 1, 1]`` between colours a and b at ``t`` ``[N]``."""
    a, b = _colour(a, t.device), _colour(b, t.device)
    return a + (b - a) * t.view(-1, 1, 1, 1)


def _hsv(hue: torch.Tensor, saturation: float, value: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB ``[N, 3, 1, 1]`` for ``hue`` and ``value`` ``[N]`` in [0, 1]."""
    k = torch.stack([(offset + hue * 6.0) % 6.0 for offset in (5.0, 3.0, 1.0)], dim=1)  # [N, 3]
    rgb = value[:, None] * (1 - saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return rgb.view(-1, 3, 1, 1)


def _over(image: torch.Tensor, colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Composite ``colour`` (``[N, 3, 1, 1]`` or ``[N, 3, H, W]``) over ``image`` with coverage ``alpha``
    ``[N, H, W]``."""
    return torch.lerp(image, colour.expand_as(image), alpha[:, None])


# ---- the picture ------------------------------------------------------------------------------------------------


def render(factors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Images ``[N, 3, 64, 64]`` in [-1, 1] (float32) of the given factors (every name of :data:`FACTORS`, each a
    ``[N]`` tensor with values in [0, 1], all on one device)."""
    missing = [name for name in FACTORS if name not in factors]
    check(not missing, "factors", f"a value for every factor of FACTORS ({', '.join(FACTORS)})",
          f"missing {missing}")
    f = {name: torch.as_tensor(factors[name]).float().clamp(0.0, 1.0) for name in FACTORS}
    device = f["skin_tone"].device
    p = {name: value.view(-1, 1, 1) for name, value in f.items()}  # [N, 1, 1] for the distance fields
    coords = torch.arange(RESOLUTION, dtype=torch.float32, device=device)
    rows, cols = coords.view(1, -1, 1), coords.view(1, 1, -1)  # pixel centres at integers
    masks = {part: _constant(("mask", part), device, lambda part=part: part_masks(device)[part])
             for part in PART_BOXES}
    one = torch.ones_like(p["skin_tone"])

    # background, hair, neck and face (global factors)
    image = _hsv(f["background_hue"], 0.45, 0.35 + 0.5 * f["background_value"]).expand(-1, 3, RESOLUTION,
                                                                                        RESOLUTION).clone()
    skin = _lerp_colour(_SKIN_LIGHT, _SKIN_DARK, f["skin_tone"])
    face_half_width = 20.0 + 3.0 * p["face_width"]
    hair_colour = torch.where(f["hair_colour"].view(-1, 1, 1, 1) < 0.5,
                              _lerp_colour(_HAIR[0], _HAIR[1], 2 * f["hair_colour"]),
                              _lerp_colour(_HAIR[1], _HAIR[2], 2 * f["hair_colour"] - 1))
    hair_outline = _ellipse_sdf(rows, cols, _FACE_CENTRE[0] - 3.0, _FACE_CENTRE[1], (_FACE_HALF_HEIGHT + 2.0) * one,
                                face_half_width + 2.5)
    hairline = 10.0 + 5.0 * p["hair_line"] + 0.012 * (cols - _FACE_CENTRE[1]).square()
    neck = torch.maximum((cols - _FACE_CENTRE[1]).abs() - 7.5, 50.0 - rows) * one
    image = _over(image, skin * 0.85, _coverage(neck))
    face = _ellipse_sdf(rows, cols, _FACE_CENTRE[0], _FACE_CENTRE[1], _FACE_HALF_HEIGHT * one, face_half_width)
    image = _over(image, skin, _coverage(face))
    image = _over(image, hair_colour, _coverage(torch.maximum(hair_outline, rows - hairline)))

    # eyes: eyelid outline, sclera, iris and pupil clipped to the sclera
    for side in ("left", "right"):
        box = masks[f"{side}_eye"]
        r, c = _box_centre(f"{side}_eye")
        half_height = 0.3 + 2.8 * p[f"{side}_eye_open"]
        half_width = 4.6 * one
        eyelid = _coverage(_ellipse_sdf(rows, cols, r, c, half_height + 0.8, half_width + 0.8)) * box
        sclera = _coverage(_ellipse_sdf(rows, cols, r, c, half_height, half_width)) * box
        iris_col = c + (p[f"{side}_eye_gaze"] - 0.5) * 5.6
        iris = torch.minimum(_coverage(_circle_sdf(rows, cols, r, iris_col, 2.0)), sclera)
        pupil = torch.minimum(_coverage(_circle_sdf(rows, cols, r, iris_col, 0.9)), sclera)
        image = _over(image, _colour(_EYELID, device), eyelid)
        image = _over(image, _colour(_SCLERA, device), sclera)
        image = _over(image, _colour(_IRIS, device), iris)
        image = _over(image, _colour(_PUPIL, device), pupil)

    # nose: a shaded ridge and two nostrils
    r, c = _box_centre("nose")
    size = p["nose_size"]
    ridge_half_height, ridge_half_width = 2.5 + 2.3 * size, 1.2 + 1.4 * size
    ridge = _coverage(_ellipse_sdf(rows, cols, r, c, ridge_half_height, ridge_half_width)) * masks["nose"]
    image = _over(image, skin * 0.72, ridge * 0.85)
    nostril_row, nostril_radius = r + 0.6 * ridge_half_height, 0.6 + 0.4 * size
    for sign in (-1.0, 1.0):
        nostril = _circle_sdf(rows, cols, nostril_row, c + sign * (ridge_half_width + 0.2), nostril_radius)
        image = _over(image, skin * 0.45, _coverage(nostril) * masks["nose"])

    # mouth: lips and the dark inside
    r, c = _box_centre("mouth")
    inside_half_height = 0.2 + 2.3 * p["mouth_open"]
    lips_half_width = 4.5 + 4.5 * p["mouth_width"]
    lips = _coverage(_ellipse_sdf(rows, cols, r, c, inside_half_height + 1.4, lips_half_width)) * masks["mouth"]
    inside = _coverage(_ellipse_sdf(rows, cols, r, c, inside_half_height, 0.85 * lips_half_width - 0.5))
    image = _over(image, _lerp_colour(_LIPS_PALE, _LIPS_DARK, f["mouth_colour"]), lips)
    image = _over(image, _colour(_MOUTH_INSIDE, device), inside * masks["mouth"])

    # lighting: a linear gradient of strength up to ±30 % in direction light_angle, applied pointwise
    angle = 2 * math.pi * p["light_angle"]
    u, v = (rows - 31.5) / 32.0, (cols - 31.5) / 32.0
    light = 1.0 + 0.3 * p["light_strength"] * (torch.cos(angle) * u + torch.sin(angle) * v)  # [N, H, W]
    image = (image * light[:, None]).clamp(0.0, 1.0)
    return image * 2.0 - 1.0


def sample(n: int, seed: int = 0, device=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``n`` images ``[n, 3, 64, 64]`` in [-1, 1] on ``device`` and their factors (dict of ``[n]`` tensors),
    deterministic from ``seed`` (the same factors on every device; pixels equal up to float rounding)."""
    factors = sample_factors(n, seed, device)
    return render(factors), factors
