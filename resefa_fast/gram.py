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
    dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grams [R, d, d], traces [R])`` for ``jacobian`` ``[P, d]`` and ``weights`` ``[R, P]``, accumulated in
    ``dtype`` (default: the Jacobian's).

    Only the rows with a non-zero weight are read for each mask (a box of 2,000 pixels costs 2,000 rows, not P).
    ``accumulate=True`` adds into ``out`` (pixel chunks streaming in); traces are then those of this chunk."""
    dtype = dtype or jacobian.dtype
    R, d = weights.shape[0], jacobian.shape[1]
    if out is None:
        out = torch.zeros(R, d, d, dtype=dtype, device=jacobian.device)
    elif not accumulate:
        out.zero_()
    traces = torch.empty(R, dtype=dtype, device=jacobian.device)
    for r in range(R):
        rows = torch.nonzero(weights[r]).flatten()
        root = weights[r, rows].to(dtype).sqrt()
        chunk = gram(jacobian.index_select(0, rows), dtype=dtype, row_scale=root)  # (√m J)ᵀ(√m J)
        out[r] += chunk
        traces[r] = torch.diagonal(chunk).sum()
    return out, traces


def gram(jacobian: torch.Tensor, dtype: Optional[torch.dtype] = None, row_scale: Optional[torch.Tensor] = None,
         block: int = 2048) -> torch.Tensor:
    """``JᵀJ`` ``[d, d]`` for ``jacobian`` ``[P, d]`` (rows scaled by ``row_scale`` ``[P]`` first if given),
    accumulated in ``dtype`` (default: the Jacobian's).

    Blocks on and above the diagonal are computed and mirrored (a torch-ops SYRK: 15 of 25 blocks at d = 9216),
    and column blocks are converted to ``dtype`` (and scaled) as they are used, so a float64 Gram of a float32
    Jacobian needs no float64 copy of J."""
    dtype = dtype or jacobian.dtype

    def columns(start):
        piece = jacobian[:, start:start + block].to(dtype)
        return piece if row_scale is None else piece * row_scale[:, None]

    d = jacobian.shape[1]
    if d <= block:
        Jd = columns(0)
        return Jd.transpose(0, 1) @ Jd
    out = torch.empty(d, d, dtype=dtype, device=jacobian.device)
    starts = range(0, d, block)
    for i in starts:
        Ji = columns(i)
        for j in starts:
            if j < i:
                continue
            Jj = Ji if j == i else columns(j)
            product = Ji.transpose(0, 1) @ Jj
            out[i:i + block, j:j + block] = product
            if j > i:
                out[j:j + block, i:i + block] = product.transpose(0, 1)
    return out


def batched_row_gram(K: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """``K Kᵀ`` ``[R, n, n]`` for ``K`` ``[R, n, r]``, computing only the row-block pairs on and above the diagonal
    (``(blocks + 1) / (2 · blocks)`` of the FLOPs of ``K @ Kᵀ``: cuBLAS has no batched SYRK)."""
    n = K.shape[1]
    if n < 256 or blocks <= 1:
        return K @ K.transpose(1, 2)
    out = torch.empty(K.shape[0], n, n, dtype=K.dtype, device=K.device)
    edges = [n * i // blocks for i in range(blocks + 1)]
    for i in range(blocks):
        rows_i = K[:, edges[i]:edges[i + 1]]
        for j in range(i, blocks):
            product = rows_i @ K[:, edges[j]:edges[j + 1]].transpose(1, 2)
            out[:, edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = product
            if j > i:
                out[:, edges[j]:edges[j + 1], edges[i]:edges[i + 1]] = product.transpose(1, 2)
    return out
