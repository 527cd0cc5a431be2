"""Readouts: differentiable, batched maps from a generator's image ``[B, C, H, W]`` to the analysed pixels
``[B, C', H', W']``. The Jacobian's rows are the readout's output flattened row-major (p = c·H'·W' + h·W' + w).

Every readout is a plain callable, so any differentiable ``image -> pixels`` function works too; the classes here
carry a ``name`` (recorded by benchmarks) and compose with :func:`compose`.

A :class:`Readout` may also declare that it reads the image only at a regular stride (``Readout.sampling``):
``original(size)`` on an image of width ``W = s·size`` (integer s > 1) reads exactly the pixels ``(s·i, s·j)``
(checked, see :func:`nearest_stride`) and sums their channels. The Jacobian engine then asks a generator that can
(``StagedGenerator.run_last_stage_sampled``) for those pixels only.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import check

__all__ = ["Readout", "original", "area", "rgb", "crop", "grayscale", "channel_sum", "compose", "nearest_stride"]

#: What ``Readout.sampling`` returns when the readout reads an image only at a stride: ``(stride, tail)``.
Sampling = Tuple[int, Callable[[torch.Tensor], torch.Tensor]]

#: ITU-R BT.601 luma weights (what PIL's "L" mode uses).
LUMA = (0.299, 0.587, 0.114)


class Readout:
    """A named, differentiable ``[B, C, H, W] -> [B, C', H', W']`` map.

    ``sampler`` (optional): ``(shape, device) -> (stride, tail)`` or None, see :meth:`sampling`."""

    def __init__(self, name: str, function: Callable[[torch.Tensor], torch.Tensor],
                 sampler: Optional[Callable[[Tuple[int, ...], torch.device], Optional[Sampling]]] = None):
        self.name = name
        self.function = function
        self.sampler = sampler

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.function(image)

    def sampling(self, shape: Sequence[int], device="cpu") -> Optional[Sampling]:
        """``(stride, tail)`` when, on an image of ``shape`` ``[B, C, H, W]`` (H and W divisible by ``stride``
        > 1) on ``device``, this readout equals ``tail(image[..., ::stride, ::stride])`` exactly (``tail``: a
        pixel-wise map, e.g. a channel sum); None when it declares no such thing (then it needs the whole image)."""
        if self.sampler is None:
            return None
        found = self.sampler(tuple(shape), torch.device(device))
        if found is None:
            return None
        stride, tail = found
        height, width = shape[-2:]
        return found if stride > 1 and height % stride == 0 and width % stride == 0 else None

    def __repr__(self) -> str:
        return f"Readout({self.name})"


def original(size: int = 256) -> Readout:
    """The readout the original ReSeFa code differentiates (compute_jacobian.py ``syn2jaco``): *only when the image
    is larger than* ``size`` it is resized with ``F.interpolate(image, scale_factor=size / W)`` (nearest) and summed
    over channels; an image of at most ``size`` pixels is returned unchanged (RGB, its own resolution).
    ``[B, C, H, W] -> [B, 1, size·H/W, size]`` (W > size) or ``[B, C, H, W]``."""
    check(isinstance(size, int) and size > 0, "size", "a positive int", size)

    def read(image):
        width = image.shape[-1]
        if width > size:
            image = F.interpolate(image, scale_factor=size / width, mode="nearest").sum(dim=1, keepdim=True)
        return image

    def sampler(shape, device):
        # only an integer ratio W / size, and only where the nearest resize really keeps pixels (s·i, s·j)
        height, width = shape[-2:]
        if width <= size or width % size or height % (width // size):
            return None
        stride = width // size
        if not nearest_stride(height, width, size / width, stride, str(device)):
            return None
        return stride, _channel_reducer("sum")

    return Readout(f"original{size}", read, sampler)


@functools.lru_cache(maxsize=64)
def nearest_stride(height: int, width: int, scale_factor: float, stride: int, device: str = "cpu") -> bool:
    """Whether ``F.interpolate(image, scale_factor=scale_factor, mode="nearest")`` of a ``[.., height, width]``
    image on ``device`` is exactly ``image[..., ::stride, ::stride]`` (shape and index set). Checked, not assumed:
    torch computes the source index as ``floor(dst · (1 / scale_factor))`` in float, which for a ratio like 1/3
    need not be ``3·dst``. The probe is a 2-channel image of row / column indices (exact in float32)."""
    rows = torch.arange(height, dtype=torch.float32, device=device)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32, device=device)[None, :].expand(height, width)
    probe = torch.stack([rows, cols])[None]  # [1, 2, H, W]
    try:
        resized = F.interpolate(probe, scale_factor=scale_factor, mode="nearest")
    except RuntimeError:  # e.g. an empty output (floor(W · scale_factor) = 0): the readout fails too
        return False
    expected = probe[..., ::stride, ::stride]
    return resized.shape == expected.shape and torch.equal(resized, expected)


def area(size, channels: str = "rgb") -> Readout:
    """Antialiased resize to ``size`` (an int or (H', W')) by area averaging (a box filter: exact for integer
    factors), then ``channels``: "rgb" (keep), "sum" (channel sum, as the original) or "gray" (BT.601 luma)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    check(len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size), "size", "an int or (H, W) > 0", size)
    reduce = _channel_reducer(channels)

    def read(image):
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="area")
        return reduce(image)

    return Readout(f"area{size[0]}x{size[1]}-{channels}", read)


def rgb() -> Readout:
    """The image itself (all channels, full resolution)."""
    return Readout("rgb", lambda image: image)


def channel_sum() -> Readout:
    """``[B, C, H, W] -> [B, 1, H, W]``, the sum over channels."""
    return Readout("sum", _channel_reducer("sum"))


def grayscale() -> Readout:
    """``[B, 3, H, W] -> [B, 1, H, W]``, BT.601 luma (0.299 R + 0.587 G + 0.114 B)."""
    return Readout("gray", _channel_reducer("gray"))


def crop(box: Sequence[int]) -> Readout:
    """Crop to ``box = (top, left, height, width)`` in the coordinates of its input ``[B, C, H, W]``."""
    box = tuple(box)
    check(len(box) == 4 and all(isinstance(v, int) for v in box) and box[0] >= 0 and box[1] >= 0
          and box[2] > 0 and box[3] > 0, "box", "(top, left, height, width) ints, top/left >= 0, sizes > 0", box)
    top, left, height, width = box

    def read(image):
        check(top + height <= image.shape[-2] and left + width <= image.shape[-1], "box",
              f"inside the {tuple(image.shape[-2:])} image", box)
        return image[..., top:top + height, left:left + width]

    return Readout(f"crop{top},{left},{height},{width}", read)


def compose(*readouts: Callable) -> Readout:
    """Apply ``readouts`` left to right (e.g. ``compose(area(256), crop(box), grayscale())``)."""
    names = [getattr(r, "name", getattr(r, "__name__", "fn")) for r in readouts]

    def read(image):
        for r in readouts:
            image = r(image)
        return image

    return Readout("+".join(names), read)


def _channel_reducer(channels: str) -> Callable[[torch.Tensor], torch.Tensor]:
    check(channels in ("rgb", "sum", "gray"), "channels", "'rgb', 'sum' or 'gray'", repr(channels))
    if channels == "rgb":
        return lambda image: image
    if channels == "sum":
        return lambda image: image.sum(dim=1, keepdim=True)

    def gray(image):
        check(image.shape[1] == 3, "readout", "grayscale of a 3-channel image", f"{image.shape[1]} channels")
        weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        return (image * weights).sum(dim=1, keepdim=True)
    return gray


def output_grid(shape: Tuple[int, ...]) -> Tuple[int, int, int]:
    """``(C, H, W)`` of a readout output shape ``[C, H, W]`` or ``[H, W]`` (C = 1)."""
    return (1,) + tuple(shape) if len(shape) == 2 else tuple(shape)
