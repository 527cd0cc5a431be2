"""Pictures of edits: uint8 images with the region outlined, grids (PNG) and animations (GIF), written atomically.

Grids put one direction per row and one strength per column; animations go from the smallest strength to the
largest and back. The region is drawn as a one-pixel outline in :data:`OUTLINE` on every frame.
"""
from __future__ import annotations

import io
from typing import List, Optional

import numpy as np
import torch

from .errors import check
from .store import write_bytes

__all__ = ["OUTLINE", "to_uint8", "outline", "draw_region", "grid_image", "save_png", "save_gif", "png_bytes"]

#: Colour of the region outline (RGB).
OUTLINE = (255, 32, 32)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[..., C, H, W]`` in about [-1, 1] -> ``[..., H, W, 3]`` uint8 (grey images repeated to RGB)."""
    images = images.detach().float().cpu()
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    images = images.movedim(-3, -1).numpy()
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images[..., :3]


def outline(mask: torch.Tensor) -> np.ndarray:
    """Boolean ``[H, W]``: the pixels of ``mask > 0.5`` that touch a pixel outside it (or the image border)."""
    inside = np.asarray(mask.detach().cpu() > 0.5)
    padded = np.pad(inside, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


def draw_region(images: np.ndarray, mask: Optional[torch.Tensor]) -> np.ndarray:
    """``images`` ``[..., H, W, 3]`` uint8 with ``mask``'s outline drawn (a copy; ``mask`` None: unchanged)."""
    if mask is None:
        return images
    edge = outline(mask)
    check(edge.shape == images.shape[-3:-1], "mask", f"a mask of the image size {images.shape[-3:-1]}", edge.shape)
    images = images.copy()
    images[..., edge, :] = OUTLINE
    return images


def grid_image(tiles: np.ndarray, gap: int = 2) -> np.ndarray:
    """``[rows, cols, H, W, 3]`` -> one image with ``gap`` white pixels between tiles."""
    rows, cols, H, W, _ = tiles.shape
    canvas = np.full((rows * H + (rows - 1) * gap, cols * W + (cols - 1) * gap, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            canvas[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = tiles[r, c]
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: str, image: np.ndarray) -> None:
    write_bytes(path, png_bytes(image))


def gif_bytes(frames: List[np.ndarray], seconds_per_frame: float = 0.15) -> bytes:
    from PIL import Image

    sequence = list(frames) + list(frames[-2:0:-1])  # there and back: the loop has no jump
    pictures = [Image.fromarray(frame) for frame in sequence]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], loop=0,
                     duration=int(1000 * seconds_per_frame), disposal=1)
    return buffer.getvalue()


def save_gif(path: str, frames: List[np.ndarray], seconds_per_frame: float = 0.15) -> None:
    write_bytes(path, gif_bytes(frames, seconds_per_frame))
