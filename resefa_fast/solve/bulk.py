"""Bulk path: many regions whose background is the complement, sharing one precomputed eigenbasis (DESIGN.md §2).

With ``A = G − B`` (``G = JᵀJ``) every region's pencil shares ``C = c_b G + a I``, and with
``μ = λ / (c_f + λ c_b)`` (monotone in λ, so the order is kept)::

    M_f n = λ M_b n   ⇔   B n = μ C n   ⇔   (C^{-1/2} B C^{-1/2}) y = μ y,   n = C^{-1/2} y

Once per Jacobian: ``G = V Σ Vᵀ`` (float64), ``JV = J V`` ``[P, r]``, row energies ``e_p``.
Per region, with ``D_a = (c_b Σ + a)^{-1/2}`` and ``K̃ = diag(√m) · JV[region rows] · D_a`` (a gather and two
scalings), ``μ`` are the squared singular values of K̃. Instead of μ, whose top values bunch up below ``1/c_b``
when λ is large (slow for an iterative solver, and ``λ = μ c_f / (1 − μ c_b)`` would cancel), each region solves
the equivalent small symmetric problem on ``W`` = the smaller Gram of K̃ (``K̃K̃ᵀ`` ``[n, n]`` or ``K̃ᵀK̃``
``[r, r]``)::

    W u = ν (I − c_b W) u,   ν = μ / (1 − c_b μ) = λ / c_f,     via  (I − c_b W) = L Lᵀ,  L⁻¹ W L⁻ᵀ v = ν v

so the eigenvalues keep λ's own spacing. ``I − c_b W`` is positive definite whenever ``a > 0``.

Truncation: keeping the leading r eigenpairs of G moves every singular value of K̃ (``√μ``) by at most
``ε_r = sqrt(σ_{r+1} / (c_b σ_{r+1} + a))`` (the discarded block of ``diag(√m) J C^{-1/2}`` has that norm);
``Solution.info["truncation_bound"]`` reports it per region (0 when nothing is discarded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import ResefaError, check
from ..gram import gram, row_energies
from ..regions import Regions
from .common import Solution, canonical_directions, relative_residuals, scale_constants, topk_eigh


@dataclass
class BulkBasis:
    """The per-Jacobian precompute. ``V`` ``[d, r]`` eigenvectors of G (descending), ``sigma`` ``[r]`` their
    eigenvalues, ``JV`` ``[P, r]`` in the compute dtype, ``energies`` ``[P]`` row energies ``‖J_p‖²``,
    ``discarded`` the largest eigenvalue dropped by truncation (0 if none)."""

    V: torch.Tensor
    sigma: torch.Tensor
    JV: torch.Tensor
    energies: torch.Tensor
    discarded: float

    @property
    def rank(self) -> int:
        return self.V.shape[1]


def precompute(jacobian: torch.Tensor, rank: Optional[int] = None, energy: Optional[float] = None,
               dtype: torch.dtype = torch.float64, row_block: int = 8192) -> BulkBasis:
    """Eigenbasis of ``G = JᵀJ`` for ``jacobian`` ``[P, d]`` (any float dtype). ``rank`` keeps the leading r
    eigenpairs, ``energy`` (in (0, 1]) the fewest whose eigenvalues sum to that fraction of ``tr G``; neither: all.
    G and its eigh run in float64 (on an H100 about as fast as float32, and the small eigenvalues that ``D_a``
    amplifies stay accurate); ``JV`` is stored in ``dtype``, the precision of every per-region step."""
    d = jacobian.shape[1]
    sigma, V = torch.linalg.eigh(gram(jacobian, dtype=torch.float64))
    sigma, V = sigma.flip(0).clamp_min(0), V.flip(1)
    keep = d
    if rank is not None:
        keep = rank
    elif energy is not None:
        cumulative = torch.cumsum(sigma, 0) / sigma.sum()
        keep = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=sigma.dtype, device=sigma.device))) + 1
    keep = max(1, min(keep, d))
    discarded = float(sigma[keep]) if keep < d else 0.0
    V = V[:, :keep].to(dtype)
    JV = torch.empty(jacobian.shape[0], keep, dtype=dtype, device=jacobian.device)
    energies = torch.empty(jacobian.shape[0], dtype=torch.float64, device=jacobian.device)
    for start in range(0, jacobian.shape[0], row_block):  # row blocks: no full-size copy of J in dtype
        rows = jacobian[start:start + row_block]
        JV[start:start + row_block] = rows.to(dtype) @ V
        energies[start:start + row_block] = row_energies(rows.to(torch.float64))
    return BulkBasis(V=V, sigma=sigma[:keep], JV=JV, energies=energies, discarded=discarded)


def _gather_rows(weights: torch.Tensor):
    """Padded row indices and weights of each region: ``(rows [R, n_max], w [R, n_max], counts [R])``; padding
    rows carry weight 0 (they add zero rows to K̃, i.e. zero eigenvalues, and change nothing else)."""
    nonzero = weights > 0
    counts = nonzero.sum(dim=1)
    n_max = int(counts.max())
    rows = torch.argsort(nonzero.to(torch.int8), dim=1, descending=True, stable=True)[:, :n_max]
    return rows, torch.gather(weights, 1, rows), counts


def _solve_chunk(basis: BulkBasis, weights: torch.Tensor, k: int, tau: float, normalize: str, solver: str,
                 tol: Optional[float]):
    """Solve R regions given by foreground ``weights`` ``[R, P]`` at once (padded batch)."""
    dtype, device = basis.JV.dtype, basis.JV.device
    P, r = basis.JV.shape
    rows, w, _ = _gather_rows(weights)  # [R, n]
    w = w.to(dtype)
    foreground_sum = weights.to(torch.float64).sum(dim=1)
    background_sum = P - foreground_sum
    c_f, c_b = scale_constants(foreground_sum, background_sum, normalize)  # [R] float64
    foreground_energy = weights.to(basis.energies.dtype) @ basis.energies
    a = tau * c_b * (basis.energies.sum() - foreground_energy)  # τ · tr(c_b A)   [R]
    sigma = basis.sigma.to(torch.float64)
    if bool((a <= 0).any()) and bool((sigma <= 0).any()):
        raise ResefaError(f"`tau` must be > 0 here: with tau = {tau} the background matrix M_b is singular "
                          "(the Jacobian's Gram JᵀJ is rank-deficient); use tau > 0 (default 1e-3)")
    scale = (c_b[:, None] * sigma[None, :] + a[:, None]).rsqrt()  # D_a   [R, r]
    K = basis.JV[rows] * w.sqrt()[..., None] * scale.to(dtype)[:, None, :]  # K̃   [R, n, r]
    n = K.shape[1]
    row_form = n <= r  # work in the smaller of the two spaces
    W = K @ K.transpose(1, 2) if row_form else K.transpose(1, 2) @ K  # [R, m, m]
    m = W.shape[-1]
    eye = torch.eye(m, dtype=dtype, device=device)
    L, info = torch.linalg.cholesky_ex(eye - c_b.to(dtype)[:, None, None] * W)
    if bool((info != 0).any()):
        raise ResefaError(f"`tau` must be > 0 here: the background matrix M_b is not positive definite with "
                          f"tau = {tau} for region(s) {torch.nonzero(info).flatten().tolist()}; use tau > 0")
    X = torch.linalg.solve_triangular(L, W, upper=False)
    C = torch.linalg.solve_triangular(L, X.transpose(1, 2), upper=False)  # L⁻¹ W L⁻ᵀ   [R, m, m]
    C = 0.5 * (C + C.transpose(1, 2))
    kk = min(k, m)
    if solver == "dense":
        values, vectors = torch.linalg.eigh(C)
        values, vectors = values.flip(-1)[:, :kk], vectors.flip(-1)[:, :, :kk]
        iterations = 0
    else:
        values, vectors, _, iterations, converged = topk_eigh(lambda Y: C @ Y, m, kk, batch=(C.shape[0],),
                                                              dtype=dtype, device=device, tol=tol)
        if not bool(converged.all()):  # finish the stragglers exactly rather than return unconverged pairs
            stragglers = torch.nonzero(~converged).flatten()
            dense_values, dense_vectors = torch.linalg.eigh(C[stragglers])
            values[stragglers] = dense_values.flip(-1)[:, :kk]
            vectors[stragglers] = dense_vectors.flip(-1)[:, :, :kk]
    u = torch.linalg.solve_triangular(L.transpose(1, 2), vectors, upper=True)  # eigenvectors of W   [R, m, k]
    y = K.transpose(1, 2) @ u if row_form else u  # right singular vectors of K̃ (unnormalised)   [R, r, k]
    z = scale.to(dtype)[:, :, None] * y  # n in V coordinates
    directions = canonical_directions(z.transpose(1, 2) @ basis.V.transpose(0, 1))  # [R, k, d]
    z = directions @ basis.V  # the same unit directions in V coordinates   [R, k, r]
    eigenvalues = c_f.to(dtype)[:, None] * values  # λ = c_f ν
    # Residuals in V coordinates (V has orthonormal columns): B z from the region's rows only.
    JVz = basis.JV[rows] @ z.transpose(1, 2)  # [R, n, k]
    Bz = (basis.JV[rows].transpose(1, 2) @ (w[..., None] * JVz)).transpose(1, 2)  # [R, k, r]
    foreground_n = c_f.to(dtype)[:, None, None] * Bz
    background_n = c_b.to(dtype)[:, None, None] * (basis.sigma.to(dtype)[None, None, :] * z - Bz) + a.to(dtype)[:, None,
                                                                                                       None] * z
    residuals = relative_residuals(foreground_n, background_n, eigenvalues)
    bound = torch.zeros_like(a)
    if basis.discarded > 0:
        bound = (basis.discarded / (c_b * basis.discarded + a)).sqrt()
    if kk < k:  # the region has fewer rows than k: check_k_against_regions prevents this for callers
        raise ResefaError(f"`k` must be at most the number of rows of the smallest region ({m}); got {k}")
    return eigenvalues, directions, residuals, bound, iterations


def solve_bulk(basis: BulkBasis, regions: Regions, k: int, tau: float, normalize: str, solver: str = "auto",
               tol: Optional[float] = None, memory_budget: Optional[int] = None) -> Solution:
    """Top-k directions for every region of ``regions`` (complement backgrounds only) from a :class:`BulkBasis`.

    Regions are processed in chunks whose padded operands fit ``memory_budget`` bytes (default: a quarter of the
    free GPU memory, or 512 MiB on the CPU); regions are sorted by size first so a chunk pads little. ``solver``: "dense" (eigh of the small matrix), "iterative" (subspace
    iteration), or "auto" (dense when the small matrix has at most 128 rows, else iterative)."""
    check(regions.background is None, "background",
          "None for the bulk path (it needs complement backgrounds; use the general path for explicit ones)")
    weights = regions.foreground.to(basis.JV.device)
    if memory_budget is None:
        memory_budget = 512 << 20
        if weights.device.type == "cuda":
            memory_budget = torch.cuda.mem_get_info(weights.device)[0] // 4
    R = weights.shape[0]
    P, r = basis.JV.shape
    counts = (weights > 0).sum(dim=1)
    order = torch.argsort(counts)
    itemsize = basis.JV.element_size()
    out_values = torch.empty(R, k, dtype=basis.JV.dtype, device=weights.device)
    out_directions = torch.empty(R, k, basis.V.shape[0], dtype=basis.JV.dtype, device=weights.device)
    out_residuals = torch.empty_like(out_values)
    out_bound = torch.empty(R, dtype=torch.float64, device=weights.device)
    iterations = []
    start = 0
    counts_sorted = counts[order].tolist()
    while start < R:
        stop = start + 1
        while stop < R:  # grow the chunk while K̃ and W (padded to the largest region) fit the budget
            n = counts_sorted[stop]
            m = min(n, r)
            if (stop + 1 - start) * (n * r + 3 * m * m) * itemsize > memory_budget:
                break
            stop += 1
        index = order[start:stop]
        n_max = counts_sorted[stop - 1]
        m = min(n_max, r)
        chunk_solver = solver
        if solver == "auto":
            chunk_solver = "dense" if m <= 128 else "iterative"
        values, directions, residuals, bound, its = _solve_chunk(basis, weights[index], k, tau, normalize,
                                                                 chunk_solver, tol)
        out_values[index], out_directions[index], out_residuals[index] = values, directions, residuals
        out_bound[index] = bound.to(out_bound.device)
        iterations.append(its)
        start = stop
    info = {"path": "bulk", "rank": basis.rank, "dtype": str(basis.JV.dtype).replace("torch.", ""),
            "applications": iterations, "truncation_bound": out_bound}
    return Solution(out_values, out_directions, out_residuals, info)
