"""Jacobian inputs: torch, numpy or cupy arrays in every layout the original code and its users write.

A Jacobian becomes a :class:`JacobianInput`: a torch tensor ``values`` of shape ``[N, P, d]`` (N latent codes, P
analysed pixels, d latent dims) on the array's own device, with the pixel grid ``(C, H, W)`` its rows flatten
(pixel index ``p = c*H*W + h*W + w``). Arrays are wrapped without a copy where possible (``torch.from_numpy``,
DLPack for cupy and anything else that speaks it).

Accepted layouts (``batched=None`` infers; ``True`` / ``False`` forces a leading latent axis N or none):

======================  =====================================================
``[P, d]``              flat rows; masks must then be flat ``[P]`` or ``grid`` given
``[H, W, d]``           one channel
``[C, H, W, d]``        channels kept (e.g. RGB)
``[H, W, 1, d]``        the original's layout for one latent (channel-summed)
``[C, H, W, 1, d]``     the original's layout, channels kept (needs ``batched=False``, see below)
``[N, H, W, 1, d]``     the original file (``compute_jacobian.py`` output)
``[N, C, H, W, 1, d]``  the original file for generators of <= 256 pixels
======================  =====================================================

A 5-D array with a singleton second-to-last axis is read as the original file ``[N, H, W, 1, d]`` unless
``batched=False`` says it is one latent's ``[C, H, W, 1, d]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import ResefaError, check

Grid = Tuple[int, int, int]  # (C, H, W)


@dataclass
class JacobianInput:
    """A validated Jacobian. ``values``: ``[N, P, d]`` floating tensor; ``grid``: ``(C, H, W)`` or None if unknown;
    ``batched``: whether the caller's array had a latent axis (results then keep it)."""

    values: torch.Tensor  # [N, P, d]
    grid: Optional[Grid]
    batched: bool

    @property
    def num_latents(self) -> int:
        return self.values.shape[0]

    @property
    def num_pixels(self) -> int:
        return self.values.shape[1]

    @property
    def dim(self) -> int:
        return self.values.shape[2]


def as_tensor(array, argument: str) -> torch.Tensor:
    """Wrap a torch / numpy / cupy (or any DLPack-capable) array as a torch tensor, without a copy where possible."""
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray):
        if any(s < 0 for s in array.strides):  # torch.from_numpy refuses negative strides
            array = np.ascontiguousarray(array)
        return torch.from_numpy(array)
    if hasattr(array, "__dlpack__"):  # cupy, jax, ...
        return torch.from_dlpack(array)
    if isinstance(array, (list, tuple)):
        return torch.as_tensor(np.asarray(array))
    raise ResefaError(
        f"`{argument}` must be a torch tensor, a numpy array or a DLPack array (cupy, ...); got {type(array).__name__}"
    )


def _parse_single(shape: Sequence[int], grid: Optional[Sequence[int]]) -> Tuple[int, int, Optional[Grid]]:
    """For one latent's array shape, return ``(P, d, grid)``."""
    d = shape[-1]
    if len(shape) == 2:
        P = shape[0]
        parsed = None
    elif len(shape) == 3:
        parsed = (1, shape[0], shape[1])
    elif len(shape) == 4 and shape[2] == 1:
        parsed = (1, shape[0], shape[1])
    elif len(shape) == 4:
        parsed = (shape[0], shape[1], shape[2])
    elif len(shape) == 5 and shape[3] == 1:
        parsed = (shape[0], shape[1], shape[2])
    else:
        raise ResefaError(
            "`jacobian` must have one of the layouts [P, d], [H, W, d], [C, H, W, d], [H, W, 1, d], [C, H, W, 1, d] "
            f"(with an optional leading latent axis N); got shape {tuple(shape)}"
        )
    if parsed is not None:
        P = parsed[0] * parsed[1] * parsed[2]
    if grid is not None:
        grid = tuple(int(g) for g in grid)
        check(len(grid) in (2, 3), "grid", "(H, W) or (C, H, W)", grid)
        if len(grid) == 2:
            grid = (1,) + grid
        check(grid[0] * grid[1] * grid[2] == P, "grid", f"a pixel grid with C*H*W = {P} rows of `jacobian`", grid)
        check(parsed is None or grid == parsed, "grid", f"the grid {parsed} of `jacobian`'s layout", grid)
        parsed = grid
    return P, d, parsed


def as_jacobian(
    jacobian,
    batched: Optional[bool] = None,
    grid: Optional[Sequence[int]] = None,
    check_finite: bool = True,
) -> JacobianInput:
    """Validate ``jacobian`` and view it as ``[N, P, d]`` (see the module docstring for the layouts)."""
    if isinstance(jacobian, JacobianInput):
        return jacobian
    values = as_tensor(jacobian, "jacobian")
    check(values.is_floating_point(), "jacobian", "a floating-point array", values.dtype)
    check(values.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
          "jacobian", "float16, bfloat16, float32 or float64", values.dtype)
    shape = tuple(values.shape)
    check(len(shape) >= 2, "jacobian", "an array of at least 2 dimensions [P, d]", f"shape {shape}")
    if batched is None:
        batched = len(shape) == 6 or (len(shape) == 5 and shape[3] == 1)
    if batched:
        check(len(shape) >= 3, "jacobian", "[N, P, d] or longer when batched=True", f"shape {shape}")
        N, single = shape[0], shape[1:]
    else:
        N, single = 1, shape
    P, d, parsed_grid = _parse_single(single, grid)
    check(N >= 1 and P >= 2 and d >= 1, "jacobian", "non-empty (N >= 1 latents, P >= 2 pixels, d >= 1 dims)",
          f"shape {shape}")
    values = values.reshape(N, P, d)
    if values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()  # exact widening: half inputs are accumulated in float32
    if check_finite:
        check(bool(torch.isfinite(values).all()), "jacobian", "finite (it contains NaN or Inf)")
    return JacobianInput(values=values, grid=parsed_grid, batched=bool(batched))
