"""Masked Gram matrices in torch ops (the CUDA extension's ``masked_grams`` has this same signature).

``masked_grams(J, weights)`` gives ``G_r = Jᵀ diag(weights[r]) J`` and ``traces[r] = Σ_p weights[r, p] ‖J_p‖²``;
``gram(J)`` gives the unmasked ``JᵀJ`` computing only the blocks on and above the diagonal (a torch-ops SYRK).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def row_energies(jacobian: torch.Tensor) -> torch.Tensor:
    """``e_p = ‖J_p‖²`` for ``jacobian`` ``[P, d]`` -> ``[P]``."""
    return jacobian.square().sum(dim=-1)


def masked_grams(
    jacobian: torch.Tensor,
    weights: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    accumulate: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grams [R, d, d], traces [R])`` for ``jacobian`` ``[P, d]`` and ``weights`` ``[R, P]``.

    Only the rows with a non-zero weight are read for each mask (a box of 2,000 pixels costs 2,000 rows, not P).
    ``accumulate=True`` adds into ``out`` (pixel chunks streaming in); traces are then those of this chunk."""
    R, d = weights.shape[0], jacobian.shape[1]
    if out is None:
        out = torch.empty(R, d, d, dtype=jacobian.dtype, device=jacobian.device)
    traces = torch.empty(R, dtype=jacobian.dtype, device=jacobian.device)
    energies = row_energies(jacobian)  # [P]
    for r in range(R):
        rows = torch.nonzero(weights[r]).flatten()
        w = weights[r, rows].to(jacobian.dtype)
        Jr = jacobian.index_select(0, rows)  # [n_r, d]
        product = (Jr * w[:, None]).transpose(0, 1) @ Jr
        if accumulate:
            out[r] += product
        else:
            out[r] = product
        traces[r] = (w * energies[rows]).sum()
    return out, traces


def gram(jacobian: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """``JᵀJ`` ``[d, d]`` for ``jacobian`` ``[P, d]``, computing each off-diagonal block once and mirroring it
    (about half the FLOPs of ``J.T @ J`` for large d)."""
    d = jacobian.shape[1]
    if d <= block:
        return jacobian.transpose(0, 1) @ jacobian
    out = torch.empty(d, d, dtype=jacobian.dtype, device=jacobian.device)
    starts = list(range(0, d, block))
    for i in starts:
        Ji = jacobian[:, i:i + block]
        rest = jacobian[:, i:]
        strip = Ji.transpose(0, 1) @ rest  # rows i-block, columns i..d
        out[i:i + block, i:] = strip
        out[i:, i:i + block] = strip.transpose(0, 1)
    return out
