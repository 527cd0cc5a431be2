"""General path: one region at a time, any background (DESIGN.md §2).

Masked Grams ``B`` and ``A`` (each from its own rows, symmetric blocks only; A is never formed as ``JᵀJ − B``, which
cancels when the background energy is small), then one of two routes to the top-k of ``M_f n = λ M_b n``:

- ``"cholesky"``: ``M_b = L Lᵀ`` and the top-k of ``x ↦ L⁻¹ M_f L⁻ᵀ x`` by subspace iteration (two triangular
  solves and one product per block; no d×d eigendecomposition).
- ``"woodbury"``: the paper's route (eqs. 10-12) with eq. 12 corrected: eigendecomposition ``c_b A = V D² Vᵀ``
  truncated to the eigenvalues above ``woodbury_eps · a``, ``C = V D² Vᵀ + a I``,
  ``C⁻¹ = (1/a)(I − V D̃ Vᵀ)`` with ``D̃ = D (aI + D²)⁻¹ D`` (the paper's ``aI − V D̃ Vᵀ`` is not the inverse), and
  the symmetric form ``C^{-1/2} M_f C^{-1/2}``. Dropping eigenvalues below ``ε·a`` moves each generalised
  eigenvalue by a relative ``ε`` at most.
- ``"refined"``: no float64 Gram at all — an approximate (float16-operand) Gram as preconditioner and float64
  refinement through J's rows (:mod:`.refined`); the fastest route for large d on GPUs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from ..gram import masked_grams
from ..reference import cholesky_checked
from ..errors import ResefaError
from ..regions import Regions
from .refined import solve_refined
from .common import Solution, canonical_directions, relative_residuals, scale_constants, top_eigenpairs, topk_eigh

METHODS = ("cholesky", "woodbury", "refined")


def woodbury_inverse(V: torch.Tensor, D: torch.Tensor, a: float) -> torch.Tensor:
    """``(V diag(D²) Vᵀ + a I)⁻¹ = (1/a)(I − V diag(D̃) Vᵀ)``, ``D̃ = D² / (a + D²)``, for V ``[d, r]`` with
    orthonormal columns and D ``[r]`` — the correct form of the paper's eq. 12."""
    d_tilde = D.square() / (a + D.square())
    eye = torch.eye(V.shape[0], dtype=V.dtype, device=V.device)
    return (eye - (V * d_tilde) @ V.transpose(0, 1)) / a


def _topk_of_operator(apply, size: int, k: int, dtype, device, tol):
    """Top-k of a d×d symmetric PSD operator by subspace iteration; if it has not converged, the operator is formed
    (``apply(I)``) and solved densely rather than returning unconverged pairs."""
    values, vectors, _, its, converged = topk_eigh(apply, size, k, dtype=dtype, device=device, tol=tol)
    if not bool(converged.all()):
        values, vectors, _ = top_eigenpairs(apply(torch.eye(size, dtype=dtype, device=device)), k, tol,
                                             dense_max=size)
    return values, vectors, its


def _region_matrices(J, foreground, background, tau, normalize, dtype, reduce=None):
    """``(M_f, M_b, a, c_f)`` for one region, in ``dtype``. A is built from the background rows themselves, never as
    ``JᵀJ − B``: when the background energy is tiny next to the foreground's, that difference would cancel the
    digits λ depends on. ``reduce``: completes the sums over rows held by other processes (see ``solve_general``)."""
    grams = masked_grams(J, torch.stack([foreground, background]), dtype=dtype)[0]  # [B, A]
    sums = torch.stack([foreground.sum(), background.sum()]).to(dtype)
    if reduce is not None:
        reduce(grams)
        reduce(sums)
    B, A = grams
    c_f, c_b = scale_constants(sums[0], sums[1], normalize)
    M_f = c_f * B
    M_b = c_b * A
    a = tau * torch.diagonal(M_b).sum()
    M_b.diagonal().add_(a)
    return M_f, M_b, a, c_f


def solve_pencil(M_f: torch.Tensor, M_b: torch.Tensor, a: torch.Tensor, k: int, tau: float,
                 data_dtype: torch.dtype, method: str = "cholesky", tol: Optional[float] = None,
                 woodbury_eps: float = 1e-7):
    """Top-k of ``M_f n = λ M_b n`` from the d×d matrices alone (``a``: the τ·tr term inside M_b). Returns
    ``(λ [k], n [k, d] unnormalised, operator applications, Woodbury rank or None)``. ``data_dtype``: the
    Jacobian's dtype, which sets what "numerically singular" means."""
    dtype, device, d = M_b.dtype, M_b.device, M_b.shape[0]
    if method == "cholesky":
        L = cholesky_checked(M_b, tau, data_dtype)
        Lt = L.transpose(0, 1)

        def apply(X):  # L⁻¹ M_f L⁻ᵀ X
            Z = torch.linalg.solve_triangular(Lt, X, upper=True)
            return torch.linalg.solve_triangular(L, M_f @ Z, upper=False)

        values, Y, its = _topk_of_operator(apply, d, k, dtype, device, tol)
        return values, torch.linalg.solve_triangular(Lt, Y, upper=True).transpose(0, 1), its, None
    # c_b A = M_b − a I; keep the eigenpairs above woodbury_eps · a (the paper's truncated SVD of J_b). The
    # eigendecomposition runs in float64 whatever the working dtype: a float32 eigh of A has an error constant large
    # enough to miss the float32 tolerance once 1/τ amplifies it.
    eigenvalues_A, V = torch.linalg.eigh((M_b - a * torch.eye(d, dtype=dtype, device=device)).double())
    keep = eigenvalues_A > woodbury_eps * a
    V, D2 = V[:, keep].to(dtype), eigenvalues_A[keep].to(dtype)
    inv_sqrt_a = a.rsqrt()
    shrink = (D2 + a).rsqrt() - inv_sqrt_a  # C^{-1/2} = a^{-1/2} I + V diag(shrink) Vᵀ

    def c_inv_sqrt(X):
        return inv_sqrt_a * X + V @ (shrink[:, None] * (V.transpose(0, 1) @ X))

    def apply(X):  # C^{-1/2} M_f C^{-1/2} X
        return c_inv_sqrt(M_f @ c_inv_sqrt(X))

    values, Y, its = _topk_of_operator(apply, d, k, dtype, device, tol)
    return values, c_inv_sqrt(Y).transpose(0, 1), its, int(keep.sum())


def solve_general(
    jacobian: torch.Tensor,
    regions: Regions,
    k: int,
    tau: float,
    normalize: str,
    method: str = "cholesky",
    tol: Optional[float] = None,
    woodbury_eps: float = 1e-7,
    dtype: torch.dtype = torch.float64,
    reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Solution:
    """Top-k directions of each region, one region at a time. ``jacobian`` ``[P, d]`` (any float dtype); Grams,
    factorisations and eigensolvers run in ``dtype``.

    ``reduce``: when the rows of J are split across processes (``jacobian`` and ``regions`` then hold this
    process's rows), an in-place sum over the processes, applied to the masked Grams and weight sums; every
    process then solves the same d×d pencil (the foreground-rows shortcut below needs all rows, so it is skipped)."""
    J = jacobian
    background = regions.background_weights(dtype)
    foreground = regions.foreground.to(dtype)
    out_values, out_vectors, out_residuals, iterations = [], [], [], []
    info = {"path": "general", "method": method, "ops": "torch", "dtype": str(dtype).replace("torch.", "")}
    if method == "refined":
        if reduce is not None:
            raise ResefaError("method 'refined' needs all rows of J in one process; use method='cholesky' with "
                              "pixel-sharded Jacobians")
        return _solve_refined_regions(J, foreground, background, k, tau, normalize, tol, dtype, info)
    for r in range(len(regions)):
        M_f, M_b, a, c_f = _region_matrices(J, foreground[r], background[r], tau, normalize, dtype, reduce)
        rows = torch.nonzero(foreground[r]).flatten()
        if method == "cholesky" and reduce is None and rows.numel() < J.shape[1]:
            # M_f = c_f J_fᵀ diag(m) J_f has rank <= n_f < d: with F = L⁻¹ (√m J_f)ᵀ [d, n_f], the nonzero
            # eigenvalues of L⁻¹ M_f L⁻ᵀ = c_f F Fᵀ are those of c_f FᵀF [n_f, n_f], eigenvectors y = F u.
            L = cholesky_checked(M_b, tau, J.dtype)
            F = torch.linalg.solve_triangular(
                L, (J[rows].to(dtype) * foreground[r, rows].sqrt()[:, None]).transpose(0, 1), upper=False)
            S = c_f * (F.transpose(0, 1) @ F)
            values, U, its = top_eigenpairs(S, k, tol)
            n = torch.linalg.solve_triangular(L.transpose(0, 1), F @ U, upper=True).transpose(0, 1)
        else:
            values, n, its, rank = solve_pencil(M_f, M_b, a, k, tau, J.dtype, method, tol, woodbury_eps)
            if rank is not None:
                info["woodbury_rank"] = rank
        n = canonical_directions(n)
        out_values.append(values)
        out_vectors.append(n)
        out_residuals.append(relative_residuals(n @ M_f, n @ M_b, values))
        iterations.append(its)
    info["applications"] = iterations
    return Solution(torch.stack(out_values), torch.stack(out_vectors), torch.stack(out_residuals), info)


def _solve_refined_regions(J, foreground, background, k, tau, normalize, tol, dtype, info) -> Solution:
    """The ``"refined"`` route for each region. It refines in float64 whatever ``dtype`` (the cost is in passes over
    J, not in the working precision); results are returned in ``dtype``. Residuals are the exact pencil's."""
    out_values, out_vectors, out_residuals, details = [], [], [], []
    for r in range(len(foreground)):
        values, n, residuals, detail = solve_refined(J, foreground[r], background[r], k, tau, normalize, tol=tol)
        out_values.append(values)
        out_vectors.append(canonical_directions(n))
        out_residuals.append(residuals)
        details.append(detail)
    info.update(refinement="float64", precision=details[0]["precision"],
                iterations=[x["iterations"] for x in details])
    return Solution(torch.stack(out_values).to(dtype), torch.stack(out_vectors).to(dtype),
                    torch.stack(out_residuals).to(dtype), info)
