"""The float64 oracle every fast path is tested against, and a port of the original algorithm.

``solve`` (the oracle): dense masked Grams, Cholesky ``M_b = L Lᵀ``, full ``eigh`` of ``L⁻¹ M_f L⁻ᵀ`` (paper eq. 9),
``n = L⁻ᵀ y``, all in float64 on the Jacobian's device. Simple and obviously right, and slow on purpose.

``solve_original``: the original ReSeFa ``compute_direction.py`` algorithm, for side-by-side comparisons: float32
Grams (numpy keeps the file's dtype), ``inv(M_b) @ M_f`` and a *non-symmetric* ``np.linalg.eig``; regularised only
when ``full_rank=True`` (``M_b + τ·tr(M_b)·I``). Its directions drift from the correct ones when M_b is
ill-conditioned (DESIGN.md §1); it is a baseline, not an answer.

Both take ``(jacobian [P, d], regions, k, tau, normalize)`` like the fast paths in ``resefa_fast.solve``;
:func:`factorize` and :func:`factorize_original` take the public argument forms of :func:`resefa_fast.factorize`.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import ResefaError
from .regions import Regions
from .solve.common import Solution, canonical_directions, relative_residuals, scale_constants


def masked_grams(jacobian: torch.Tensor, weights: torch.Tensor):
    """Float64 twin of :func:`resefa_fast.gram.masked_grams`: ``(grams [R, d, d], traces [R])``."""
    J = jacobian.double()
    W = weights.double()
    grams = torch.einsum("rp,pi,pj->rij", W, J, J)
    traces = W @ J.square().sum(dim=1)
    return grams, traces


def problem_matrices(jacobian: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor, tau: float,
                     normalize: str):
    """``(M_f, M_b)`` ``[d, d]`` float64 for one region (weights ``[P]``), DESIGN.md §1."""
    grams, traces = masked_grams(jacobian, torch.stack([foreground, background]))
    c_f, c_b = scale_constants(foreground.double().sum(), background.double().sum(), normalize)
    M_f = c_f * grams[0]
    M_b = c_b * grams[1]
    a = tau * torch.trace(M_b)
    M_b = M_b + a * torch.eye(M_b.shape[0], dtype=M_b.dtype, device=M_b.device)
    return M_f, M_b


def cholesky_checked(M_b: torch.Tensor, tau: float, data_dtype: torch.dtype) -> torch.Tensor:
    """Cholesky factor of M_b, or a :class:`ResefaError` (suggesting τ > 0) when M_b is not positive definite at
    the precision of the data: the factorisation fails, or its pivots span more than ``1/(d·eps)`` with ``eps`` that
    of the Jacobian's own dtype. (A rank-deficient float32 Jacobian yields a float64 M_b whose smallest eigenvalues
    are float32 rounding noise: positive, but meaningless.)"""
    L, info = torch.linalg.cholesky_ex(M_b)
    pivots = torch.diagonal(L, dim1=-2, dim2=-1).abs()
    eps = max(torch.finfo(M_b.dtype).eps, torch.finfo(data_dtype).eps)
    ill = bool((info != 0).any()) or bool(
        ((pivots.amin(-1) ** 2) <= M_b.shape[-1] * eps * (pivots.amax(-1) ** 2)).any())
    if ill:
        raise ResefaError(
            f"`tau` must be > 0 here: the background matrix M_b is not positive definite with tau = {tau} "
            f"at the precision of the {str(data_dtype).replace('torch.', '')} Jacobian (its background part is "
            "rank-deficient); use tau > 0 (default 1e-3) to regularise it")
    return L


def solve(jacobian: torch.Tensor, regions: Regions, k: int, tau: float, normalize: str) -> Solution:
    """The float64 oracle for R regions: Cholesky + full eigh (eq. 9)."""
    J = jacobian.double()
    background = regions.background_weights()
    eigenvalues, directions, residuals = [], [], []
    for r in range(len(regions)):
        M_f, M_b = problem_matrices(J, regions.foreground[r], background[r], tau, normalize)
        L = cholesky_checked(M_b, tau, jacobian.dtype)
        L_inv_M_f = torch.linalg.solve_triangular(L, M_f, upper=False)
        C = torch.linalg.solve_triangular(L, L_inv_M_f.transpose(0, 1), upper=False)  # L⁻¹ M_f L⁻ᵀ
        values, vectors = torch.linalg.eigh(0.5 * (C + C.transpose(0, 1)))
        values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
        n = torch.linalg.solve_triangular(L.transpose(0, 1), vectors, upper=True).transpose(0, 1)  # [k, d]
        n = canonical_directions(n)
        eigenvalues.append(values)
        directions.append(n)
        residuals.append(relative_residuals(n @ M_f, n @ M_b, values))
    return Solution(torch.stack(eigenvalues), torch.stack(directions), torch.stack(residuals),
                    {"path": "reference", "method": "cholesky+eigh", "dtype": "float64"})


def solve_original(jacobian: torch.Tensor, regions: Regions, k: int, tau: float = 1e-3, normalize: str = "mean",
                   full_rank: bool = False) -> Solution:
    """Port of the original algorithm (numpy, float32 Grams, inv + non-symmetric eig). ``full_rank`` adds
    ``τ·tr(M_b)·I`` to M_b as the original's ``--full_rank`` flag does; without it M_b is used as is. Returns
    real parts of its eigenpairs, sorted by eigenvalue, largest first (its directions file order)."""
    J = jacobian.detach().cpu().numpy().astype(np.float32)
    fg_all = regions.foreground.cpu().numpy().astype(np.float32)
    bg_all = regions.background_weights().cpu().numpy().astype(np.float32)
    eigenvalues, directions = [], []
    for fg, bg in zip(fg_all, bg_all):
        c_f, c_b = (1.0 / fg.sum(), 1.0 / bg.sum()) if normalize == "mean" else (1.0, 1.0)
        M_f = (c_f * (J * fg[:, None]).T @ J).astype(np.float32)
        M_b = (c_b * (J * bg[:, None]).T @ J).astype(np.float32)
        if full_rank:
            M_b = M_b + np.float32(tau * np.trace(M_b)) * np.eye(M_b.shape[0], dtype=np.float32)
        try:
            values, vectors = np.linalg.eig(np.linalg.inv(M_b) @ M_f)
        except np.linalg.LinAlgError as error:
            raise ResefaError(f"`region`: the original algorithm cannot invert M_b ({error}); use full_rank=True") \
                from error
        order = np.argsort(-values.real)[:k]
        eigenvalues.append(values.real[order])
        directions.append(vectors.real[:, order].T)
    directions = canonical_directions(torch.from_numpy(np.stack(directions)).double())
    eigenvalues = torch.from_numpy(np.stack(eigenvalues)).double()
    nan = torch.full_like(eigenvalues, float("nan"))  # the original reports no residuals
    return Solution(eigenvalues, directions, nan, {"path": "original", "method": "inv+eig", "dtype": "float32",
                                                   "full_rank": full_rank})


def factorize(jacobian, region, k: int = 16, tau: float = 1e-3, background=None, normalize: str = "mean", **kwargs):
    """The float64 oracle with the arguments of :func:`resefa_fast.factorize` (``backend="reference"``)."""
    from .api import factorize as public_factorize

    return public_factorize(jacobian, region, k=k, tau=tau, background=background, normalize=normalize,
                            backend="reference", **kwargs)


def factorize_original(jacobian, region, k=None, tau: float = 1e-3, background=None, normalize: str = "mean",
                       full_rank: bool = False, batched=None, grid=None):
    """The original algorithm (:func:`solve_original`) on the public argument forms. ``k=None`` returns all d
    directions, like the original's ``[d, d]`` directions file. One latent code at a time (as the original)."""
    from .api import Directions
    from .errors import check
    from .inputs import as_jacobian
    from .regions import as_regions

    jac = as_jacobian(jacobian, batched=batched, grid=grid)
    check(jac.num_latents == 1, "jacobian", "one latent code for the original algorithm", f"N = {jac.num_latents}")
    regions = as_regions(region, jac.grid, jac.num_pixels, "cpu", background)
    k = jac.dim if k is None else k
    solution = solve_original(jac.values[0], regions, k, tau=tau, normalize=normalize, full_rank=full_rank)
    pick = (lambda t: t[0]) if regions.single else (lambda t: t)
    return Directions(pick(solution.directions), pick(solution.eigenvalues), pick(solution.residuals),
                      list(regions.names), dict(solution.info, backend="original"))
