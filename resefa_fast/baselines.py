"""Directions ReSeFa is compared with (the quality benchmark, tests): random directions, and SeFa's closed-form
global directions (Shen & Zhou, CVPR 2021: eigenvectors of AᵀA, A the style-affine weights of the layers).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .errors import check
from .solve.common import canonical_directions

__all__ = ["random_directions", "sefa_directions"]


def random_directions(k: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``[k, dim]`` float64 unit rows, uniform on the sphere."""
    rows = torch.randn(k, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(rows, dim=1)


def sefa_directions(generator, k: int, layers: Optional[Sequence[int]] = None) -> torch.Tensor:
    """SeFa: the top-``k`` eigenvectors ``[k, w_dim]`` (float64, unit, largest eigenvalue first) of ``AᵀA``, A the
    style-affine weights ``[channels, w_dim]`` of the W+ rows ``layers`` (default all) stacked, each weight's
    columns scaled to unit norm as SeFa's code does. For a StyleGAN2 of resefa_fast.models (official names)."""
    weights = []
    for name, parameter in generator.state_dict().items():
        if not name.endswith("affine.weight"):
            continue
        if layers is not None and _ws_row(generator, name) not in layers:
            continue
        A = parameter.detach().double().cpu()
        weights.append(A / A.norm(dim=0, keepdim=True))
    check(len(weights) > 0, "generator", "a StyleGAN2 with style-affine layers (official parameter names)",
          type(generator).__name__)
    A = torch.cat(weights)
    check(0 < k <= A.shape[1], "k", f"in [1, {A.shape[1]}]", k)
    values, vectors = torch.linalg.eigh(A.T @ A)
    return canonical_directions(vectors[:, -k:].flip(1).T.contiguous())


def _ws_row(generator, name: str) -> int:
    """The W+ row read by the affine layer ``name`` (``synthesis.b{res}.{conv0|conv1|torgb}.affine.weight``)."""
    synthesis = generator.synthesis
    block, layer = name.split(".")[1], name.split(".")[2]
    rows = {}
    first = 0
    for res in synthesis.block_resolutions:
        b = getattr(synthesis, f"b{res}")
        rows[(f"b{res}", "conv0")] = first
        rows[(f"b{res}", "conv1")] = first + (b.num_conv - 1)
        rows[(f"b{res}", "torgb")] = first + b.num_conv
        first += b.num_conv
    return rows[(block, layer)]
