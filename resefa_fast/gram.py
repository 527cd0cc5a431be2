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


def row_energies_float64(jacobian: torch.Tensor, chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """``e_p = ‖J_p‖²`` ``[P]`` summed in float64, converting row chunks as they are used (no float64 copy of J)."""
    if jacobian.dtype == torch.float64:  # one fused read
        return torch.linalg.vector_norm(jacobian, dim=1).square()
    rows = max(1, chunk_bytes // (8 * jacobian.shape[1]))
    return torch.cat([torch.linalg.vector_norm(jacobian[start:start + rows].to(torch.float64), dim=1).square()
                      for start in range(0, jacobian.shape[0], rows)])


def approximate_gram(jacobian: torch.Tensor, row_scale: torch.Tensor, precision: str) -> torch.Tensor:
    """``(diag(s) J)ᵀ (diag(s) J)`` ``[d, d]`` float32 with operands rounded to ``precision`` (a preconditioner, not
    a result: see :mod:`resefa_fast.solve.refined`).

    ``"float16"``: columns are scaled by powers of two to a maximum magnitude in [0.5, 1) (exact, and keeps
    float16 in range), rounded, multiplied on tensor cores with float32 accumulation and output, and unscaled —
    the rounding error of TF32 at twice its rate (on a CPU the same operands are multiplied in float32): the
    steps :func:`column_scales`, :func:`half_operands` and :func:`half_gram`.
    ``"float32"`` / ``"float64"``: :func:`gram` in that dtype."""
    if precision in ("float32", "float64"):
        return gram(jacobian, dtype=getattr(torch, precision), row_scale=row_scale.to(getattr(torch, precision)))
    if precision != "float16":
        raise ValueError(f"approximate_gram: precision must be 'float16', 'float32' or 'float64'; got {precision!r}")
    column_scale = column_scales(jacobian)
    return half_gram(half_operands(jacobian, column_scale, row_scale), column_scale)


def column_scales(jacobian: torch.Tensor) -> torch.Tensor:
    """``[d]`` float32 powers of two that bring each column's peak magnitude into [0.5, 1) (1 for a zero column)."""
    peak = torch.linalg.vector_norm(jacobian, ord=float("inf"), dim=0).float()
    exponent = torch.where(peak > 0, torch.frexp(peak).exponent, torch.zeros_like(peak, dtype=torch.int32))
    return torch.ldexp(torch.ones_like(peak), -exponent)


def half_operands(jacobian: torch.Tensor, column_scale: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
    """``diag(s) J diag(c)`` ``[P, d]`` in float16: ``J·c`` rounded, then times ``s`` rounded to float16 (the CUDA
    extension's ``prepare_refined_operands`` gives the same bits in one pass that also converts J to float64)."""
    half = torch.empty(jacobian.shape, dtype=torch.float16, device=jacobian.device)
    torch.mul(jacobian, column_scale.to(jacobian.dtype), out=half)  # scale and round in one pass
    _scale_rows(half, row_scale.to(torch.float16))  # √weights rounded to float16 too: a preconditioner's accuracy
    return half


def half_gram(half: torch.Tensor, column_scale: torch.Tensor) -> torch.Tensor:
    """``Jᵀ diag(s²) J`` float32 from :func:`half_operands`' ``H = diag(s) J diag(c)``: ``HᵀH`` unscaled."""
    product = _half_gram(half) if half.device.type == "cuda" else gram(half.float())  # no float16 GEMM on CPUs
    return product / (column_scale[:, None] * column_scale[None, :])


def _scale_rows(matrix: torch.Tensor, row_scale: torch.Tensor) -> None:
    """``matrix *= row_scale[:, None]`` in place, touching only the rows whose scale is not 1: a region's background
    weights are 1 outside the region, so this is a few thousand rows instead of a pass over all of them (1.7 ms at
    P = 65,536, d = 9,216 in float16 on an H100). Results are identical either way."""
    rows = torch.nonzero(row_scale != 1).flatten()
    if rows.numel() > matrix.shape[0] // 4:
        matrix.mul_(row_scale[:, None])
    elif rows.numel():
        matrix.index_copy_(0, rows, matrix.index_select(0, rows) * row_scale[rows, None])


def _half_gram(half: torch.Tensor, block: int = 1536) -> torch.Tensor:
    """``Hᵀ H`` float32 for a float16 ``H`` ``[P, d]``: blocks on and above the diagonal, float32 accumulation and
    output (``torch.mm(..., out_dtype=torch.float32)``)."""
    d = half.shape[1]
    out = torch.empty(d, d, dtype=torch.float32, device=half.device)
    starts = range(0, d, block)
    for i in starts:
        for j in starts:
            if j < i:
                continue
            product = torch.mm(half[:, i:i + block].transpose(0, 1), half[:, j:j + block], out_dtype=torch.float32)
            out[i:i + block, j:j + block] = product
            if j > i:
                out[j:j + block, i:i + block] = product.transpose(0, 1)
    return out


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


def batched_row_gram(K: torch.Tensor, blocks: int = 4, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``K Kᵀ`` ``[R, n, n]`` for ``K`` ``[R, n, r]``, computing only the row-block pairs on and above the diagonal
    (``(blocks + 1) / (2 · blocks)`` of the FLOPs of ``K @ Kᵀ``: cuBLAS has no batched SYRK). ``out_dtype``
    float32 for a float16 / bfloat16 ``K``: products accumulated and returned in float32 (``torch.bmm(...,
    out_dtype=)`` on GPUs; on a CPU the operands are widened to float32 first, which gives the same products)."""
    out_dtype = out_dtype or K.dtype

    def product(a, b):
        if a.dtype == out_dtype:
            return a @ b
        if a.is_cuda:
            return torch.bmm(a, b, out_dtype=out_dtype)
        return a.to(out_dtype) @ b.to(out_dtype)

    n = K.shape[1]
    if n < 256 or blocks <= 1:
        return product(K, K.transpose(1, 2))
    out = torch.empty(K.shape[0], n, n, dtype=out_dtype, device=K.device)
    align = 8 if n % 8 == 0 else 1  # block edges on 16-byte boundaries where n allows (cuBLAS's Hopper kernels)
    edges = [n * i // blocks // align * align for i in range(blocks + 1)]
    for i in range(blocks):
        rows_i = K[:, edges[i]:edges[i + 1]]
        for j in range(i, blocks):
            block = product(rows_i, K[:, edges[j]:edges[j + 1]].transpose(1, 2))
            out[:, edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = block
            if j > i:
                out[:, edges[j]:edges[j + 1], edges[i]:edges[i + 1]] = block.transpose(1, 2)
    return out
