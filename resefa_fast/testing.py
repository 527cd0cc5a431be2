"""Random inputs with the structure of real generator Jacobians, for tests and benchmarks.

Real Jacobians are far from identity or white noise: a few latent directions carry most of the energy (a decaying
spectrum), nearby pixels move together, and a floor of small noise keeps them full rank. :func:`random_jacobian`
builds ``J = U diag(s) Wᵀ + noise`` with ``s_i = (1 + i)^-decay``, spatially smooth left factors ``U`` (random
fields blurred over the grid) and an orthonormal right factor ``W``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def random_jacobian(
    grid: Tuple[int, int],
    dim: int,
    rank: int = 30,
    noise: float = 1e-3,
    decay: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    channels: int = 1,
    smooth: int = 3,
) -> torch.Tensor:
    """A ``[C·H·W, d]`` Jacobian on ``grid`` = (H, W) (rows in ``c, h, w`` order): rank ``rank`` with singular
    values ``(1 + i)^-decay`` (times sqrt(P)), spatially smooth over ``smooth`` pixels, plus ``noise`` (relative)."""
    H, W = grid
    P = channels * H * W
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)  # generated where it is used (d = 9216 is big)
    options = {"generator": generator, "dtype": torch.float64, "device": device}
    rank = min(rank, dim, P)
    fields = torch.randn(rank * channels, 1, H, W, **options)
    if smooth > 1:
        kernel = torch.ones(1, 1, smooth, smooth, dtype=torch.float64, device=device) / smooth ** 2
        fields = F.conv2d(fields, kernel, padding=smooth // 2)[..., :H, :W]
    U = torch.linalg.qr(fields.reshape(rank, P).transpose(0, 1)).Q  # [P, rank] smooth, orthonormal
    V = torch.linalg.qr(torch.randn(dim, rank, **options)).Q  # [d, rank]
    s = (1.0 + torch.arange(rank, dtype=torch.float64, device=device)) ** -decay
    J = (U * s) @ V.transpose(0, 1) * P ** 0.5
    J += noise * (P / dim) ** 0.5 * torch.randn(P, dim, **options)
    return J.to(dtype)
