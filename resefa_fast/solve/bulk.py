"""Bulk path: many regions whose background is the complement, sharing one precomputed eigenbasis (DESIGN.md §2).

With ``A = G − B`` (``G = JᵀJ``) every region's pencil shares ``C = c_b G + a I``, and with
``μ = λ / (c_f + λ c_b)`` (monotone in λ, so the order is kept)::

    M_f n = λ M_b n   ⇔   B n = μ C n   ⇔   (C^{-1/2} B C^{-1/2}) y = μ y,   n = C^{-1/2} y

Once per Jacobian: ``G = V Σ Vᵀ`` (float64), ``JV = J V`` ``[P, r]``, row energies ``e_p``.
Per region, with ``D_a = (c_b Σ + a)^{-1/2}`` and ``K̃ = diag(√m) · JV[region rows] · D_a`` (one gather; the row
scaling only for soft masks, the column scaling only where ``K̃`` itself is a GEMM operand, i.e. for ``K̃K̃ᵀ``
formed in float64),
``μ`` are the eigenvalues of ``W``, the smaller Gram of K̃ (``K̃K̃ᵀ`` ``[n, n]`` or ``K̃ᵀK̃`` ``[r, r]``):
dense eigh when W is small, else Chebyshev-filtered subspace iteration (``μ`` bunches just below ``1/c_b`` when
λ is large, which the filter handles far better than plain subspace iteration). Then ``λ = μ c_f / (1 − μ c_b)``.

That difference cancels ``log10(1 + λ c_b / c_f)`` digits, as does every background quantity formed as
``JᵀJ − B``, and when λ c_b / c_f is large the top μ bunch so tightly that their eigenvectors are an arbitrary
basis of the bunch. So this path runs in float64 only, and a chunk whose λ c_b / c_f exceeds 100 is refined:
the eigenvectors come from the transformed pencil ``W u = ν (I − c_b W) u`` (``ν = λ / c_f``, λ's own gaps; via
``I − c_b W = L Lᵀ``), and a Rayleigh–Ritz step on the exact pencil, with ``A n`` from the background rows
themselves (one GEMM pair over all P rows), gives λ and the residuals without cancellation.

Truncation: keeping the leading r eigenpairs of G moves every singular value of K̃ (``√μ``) by at most
``ε_r = sqrt(σ_{r+1} / (c_b σ_{r+1} + a))`` (the discarded block of ``diag(√m) J C^{-1/2}`` has that norm);
``Solution.info["truncation_bound"]`` reports it per region (0 when nothing is discarded).

Rows split across processes (:mod:`resefa_fast.distributed`): ``JV`` and ``energies`` then hold this process's
rows, and ``reduce`` (an in-place sum over the processes) completes every sum over pixel rows — the region
totals, ``W = K̃ᵀK̃`` ``[r, r]`` (the column form: the row form ``K̃K̃ᵀ`` couples rows of different processes and
is not a sum), and the products with foreground and background rows. Everything after those sums is identical
on every process; ``share`` splits the per-region eigenproblems of W over the processes instead of repeating them
(each solves its share of the regions, and the results are gathered on all).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..errors import ResefaError, check
from ..gram import batched_row_gram, gram, row_energies
from ..regions import Regions
from .common import (Solution, canonical_directions, default_tolerance, orthonormalize, relative_residuals,
                     scale_constants, small_eigh, tf32_matmuls, topk_eigh)


#: In-place sum of a tensor over the processes that hold the other rows of J (returns it); None: all rows are here.
Reduce = Optional[Callable[[torch.Tensor], torch.Tensor]]
#: ``share(fn, batched, *args)``: ``fn(*batched, *args)`` for a function independent per region (dim 0 of the
#: ``batched`` tensors), computed by each process on its share of the regions and gathered; None: all here.
Share = Optional[Callable[..., tuple]]


@dataclass
class BulkBasis:
    """The per-Jacobian precompute. ``V`` ``[d, r]`` eigenvectors of G (descending), ``sigma`` ``[r]`` their
    eigenvalues, ``JV`` ``[P, r]`` in the compute dtype, ``energies`` ``[P]`` row energies ``‖J_p‖²``,
    ``discarded`` the largest eigenvalue dropped by truncation (0 if none), ``data_eps`` the Jacobian dtype's eps."""

    V: torch.Tensor
    sigma: torch.Tensor
    JV: torch.Tensor
    energies: torch.Tensor
    discarded: float
    data_eps: float = 2.0 ** -52  # unit roundoff of the Jacobian's own dtype (what "numerically zero" means)

    @property
    def rank(self) -> int:
        return self.V.shape[1]


def precompute(jacobian: torch.Tensor, rank: Optional[int] = None, energy: Optional[float] = None,
               dtype: torch.dtype = torch.float64, row_block: int = 8192) -> BulkBasis:
    """Eigenbasis of ``G = JᵀJ`` for ``jacobian`` ``[P, d]`` (any float dtype). ``rank`` keeps the leading r
    eigenpairs, ``energy`` (in (0, 1]) the fewest whose eigenvalues sum to that fraction of ``tr G``; neither: all.
    G and its eigh run in float64 (on an H100 about as fast as float32, and the small eigenvalues that ``D_a``
    amplifies stay accurate); ``JV`` is stored in ``dtype`` (float64: the only precision this path accepts).
    (:func:`gram_eigenbasis` and :func:`project_rows` are its two halves, for callers that sum G over processes.)"""
    check_bulk_dtype(dtype)
    sigma, V, discarded = gram_eigenbasis(gram(jacobian, dtype=torch.float64), rank, energy, dtype)
    JV, energies = project_rows(jacobian, V, dtype, row_block)
    return BulkBasis(V=V, sigma=sigma, JV=JV, energies=energies, discarded=discarded,
                     data_eps=torch.finfo(jacobian.dtype).eps)


def check_bulk_dtype(dtype: torch.dtype) -> None:
    check(dtype == torch.float64, "dtype", "torch.float64 for the bulk path: its complement trick (A = JᵀJ − B) "
          "cancels digits that float32 does not have when a region's background energy is small (use the general "
          "path, method='cholesky', for float32)", dtype)


def gram_eigenbasis(G: torch.Tensor, rank: Optional[int] = None, energy: Optional[float] = None,
                    dtype: torch.dtype = torch.float64):
    """``(sigma [r] descending, V [d, r] in dtype, largest discarded eigenvalue or 0)`` of the float64 ``G``
    ``[d, d]``, truncated by ``rank`` / ``energy`` as :func:`precompute` describes."""
    d = G.shape[0]
    sigma, V = torch.linalg.eigh(G)
    sigma, V = sigma.flip(0).clamp_min(0), V.flip(1)
    keep = d
    if rank is not None:
        keep = rank
    elif energy is not None:
        cumulative = torch.cumsum(sigma, 0) / sigma.sum()
        keep = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=sigma.dtype, device=sigma.device))) + 1
    keep = max(1, min(keep, d))
    discarded = float(sigma[keep]) if keep < d else 0.0
    return sigma[:keep], V[:, :keep].to(dtype), discarded


def project_rows(jacobian: torch.Tensor, V: torch.Tensor, dtype: torch.dtype = torch.float64,
                 row_block: int = 8192):
    """``(JV [P, r] in dtype, row energies [P] float64)`` of ``jacobian`` ``[P, d]``, in row blocks (no
    full-size copy of J in dtype)."""
    JV = torch.empty(jacobian.shape[0], V.shape[1], dtype=dtype, device=jacobian.device)
    energies = torch.empty(jacobian.shape[0], dtype=torch.float64, device=jacobian.device)
    for start in range(0, jacobian.shape[0], row_block):
        rows = jacobian[start:start + row_block]
        JV[start:start + row_block] = rows.to(dtype) @ V
        energies[start:start + row_block] = row_energies(rows.to(torch.float64))
    return JV, energies


#: The padded row count of a chunk is a multiple of this (where P allows): float16 / float32 operands and outputs of
#: the chunk's GEMMs then start on 16-byte boundaries, which cuBLAS's Hopper kernels require (benchmarks/NOTES.md
#: item 24).
ROW_ALIGNMENT = 8


def _padded_rows(count: int, P: int) -> int:
    """The rows a chunk whose largest region has ``count`` rows is padded to: a multiple of :data:`ROW_ALIGNMENT`,
    at most P."""
    return min(-(-count // ROW_ALIGNMENT) * ROW_ALIGNMENT, P)


def _gather_rows(weights: torch.Tensor):
    """Padded row indices and weights of each region: ``(rows [R, n], w [R, n], counts [R])``, n the largest count
    padded by :func:`_padded_rows`; padding rows carry weight 0 (they add zero rows to K̃, i.e. zero eigenvalues,
    and change nothing else)."""
    nonzero = weights > 0
    counts = nonzero.sum(dim=1)
    n_max = _padded_rows(int(counts.max()), weights.shape[1])
    rows = torch.argsort(nonzero.to(torch.int8), dim=1, descending=True, stable=True)[:, :n_max]
    return rows, torch.gather(weights, 1, rows), counts


def _row_sum(partial: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """A sum over pixel rows: this process's ``partial`` completed over the other processes' rows."""
    return partial if reduce is None else reduce(partial)


def _foreground_products(K: torch.Tensor, scale: Optional[torch.Tensor], X: torch.Tensor,
                         reduce: Reduce) -> torch.Tensor:
    """``B X`` for ``X`` ``[R, r, b]`` (V coordinates) from the foreground rows: ``K = diag(√m) JV[rows]``
    (``scale`` None) or ``K̃ = K D_a`` (``scale`` = D_a, divided out: ``B X = D_a⁻¹ K̃ᵀ K̃ D_a⁻¹ X``)."""
    if scale is None:
        return _row_sum(K.transpose(1, 2) @ (K @ X), reduce)
    return _row_sum(K.transpose(1, 2) @ (K @ (X / scale[:, :, None])), reduce) / scale[:, :, None]


def _background_products(basis: BulkBasis, weights: torch.Tensor, z: torch.Tensor,
                         reduce: Reduce = None) -> torch.Tensor:
    """``A z`` for every region and direction, ``[R, k, r]``, from all P rows: ``JVᵀ diag(1 − m) JV z``. One GEMM
    pair over P rows per chunk; every term is a non-negative background contribution, so nothing cancels."""
    R, k, r = z.shape
    JZ = basis.JV @ z.reshape(R * k, r).transpose(0, 1)  # J n for all pixels   [P, R·k]
    background = (1.0 - weights.to(z.dtype)).transpose(0, 1)  # [P, R]
    JZ = (JZ.view(-1, R, k) * background[:, :, None]).view(-1, R * k)
    return _row_sum(basis.JV.transpose(0, 1) @ JZ, reduce).transpose(0, 1).reshape(R, k, r)


def _dense_eigh(W: torch.Tensor, backend: str):
    """All eigenpairs of ``W`` ``[R, m, m]`` (ascending): cuSOLVER's batched Xsyev through the extension for the
    "cuda" backend (32x torch's batched eigh at 100 x 512², which loops over the batch above 32 rows), else torch."""
    if backend == "cuda":
        from ..cuda_ops import syevj_batched

        return syevj_batched(W)
    return torch.linalg.eigh(W)


def _top_eigenpairs(W: torch.Tensor, k: int, solver: str, tol: Optional[float], backend: str = "torch"):
    """Top eigenpairs of a batch of small symmetric PSD matrices ``[R, m, m]``: ``(values [R, b], vectors
    [R, m, b], operator applications)`` for a block of ``b = min(m, max(2k, k + 8))`` ≥ k pairs, the top k
    converged. Iterations that did not converge are finished densely."""
    block = min(W.shape[-1], max(2 * k, k + 8))
    if solver == "dense":
        values, vectors = _dense_eigh(W, backend)
        return values.flip(-1)[:, :block], vectors.flip(-1)[:, :, :block], 0
    values, vectors, _, applications, converged = topk_eigh(lambda Y: W @ Y, W.shape[-1], k, batch=(W.shape[0],),
                                                            dtype=W.dtype, device=W.device, tol=tol,
                                                            block=block, return_block=True)
    if not bool(converged.all()):  # finish the stragglers exactly rather than return unconverged pairs
        stragglers = torch.nonzero(~converged).flatten()
        dense_values, dense_vectors = _dense_eigh(W[stragglers], backend)
        values[stragglers] = dense_values.flip(-1)[:, :block]
        vectors[stragglers] = dense_vectors.flip(-1)[:, :, :block]
    return values, vectors, applications


#: Exact float64 products the mixed route may spend before a region falls back to its float64 Gram.
MIXED_MAX_PRODUCTS = 6
#: Residual tolerance and work bound of the mixed route's float32 start on W̃ (its own accuracy is ≈ 1e-3).
MIXED_START_TOL, MIXED_START_APPLICATIONS = 1e-3, 64
#: Neumann-series terms of the mixed route's correction (benchmarks/study_mixed_bulk.py: 2 reach float64 residuals
#: in 3 exact products from a TF32 Gram).
MIXED_NEUMANN_TERMS = 2


def _approximate_gram(K: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W̃ ≈ K̃K̃ᵀ`` ``[R, n, n]`` float32 for ``K̃ = K D_a`` (``K`` ``[R, n, r]`` float64, ``scale`` = D_a
    ``[R, r]``): ``K̃`` rounded to float16 in the pass that scales it (no float64 copy of K̃), products accumulated
    and returned in float32 (on a CPU the same operands are multiplied in float32). float16's range suffices: the
    columns of JV have energies σ, so ``|K̃_pc| ≤ (σ_c / (c_b σ_c + a))^½ < c_b^-½ ≤ √P`` (1,774 for a 3 × 1024²
    readout; float16 ends at 65,504); entries below its smallest subnormal are lost, a perturbation the exact
    products correct like any other. The operands are 16-byte aligned (rows padded by :func:`_gather_rows`,
    columns here): unaligned, cuBLAS served this GEMM with sm75/sm80 kernels at 100–140 TFLOP/s, aligned with its
    Hopper kernels at 450–830 (H100, 1,000 regions at d = 9216: 0.42 → 0.16 s; benchmarks/NOTES.md item 24)."""
    R, n, r = K.shape
    columns = -(-r // ROW_ALIGNMENT) * ROW_ALIGNMENT  # rows of K̃ on 16-byte boundaries; extra columns zero
    half = torch.empty(R, n, columns, dtype=torch.float16, device=K.device)
    torch.mul(K, scale[:, None, :], out=half[..., :r])  # scale and round in one pass
    half[..., r:].zero_()
    return batched_row_gram(half, out_dtype=torch.float32)


def _mixed_top_eigenpairs(K: torch.Tensor, scale: torch.Tensor, k: int, tol: Optional[float]):
    """Top eigenpairs of ``W = K̃K̃ᵀ`` ``[R, n, n]``, ``K̃ = K D_a`` (``K`` ``[R, n, r]`` float64, unscaled;
    ``scale`` = D_a ``[R, r]``), without forming W in float64 (benchmarks/NOTES.md items 19
    and 20): ``W̃`` from float16 operands (:func:`_approximate_gram`), its top block by subspace iteration in
    float32, then steps of one exact product ``K̃(K̃ᵀX) = K(D_a²(KᵀX))`` (D_a on the small side: no scaled copy
    of K), Rayleigh–Ritz, and the first-order correction ``(θ_i − W̃)⁻¹ R`` on the complement of the block from
    :data:`MIXED_NEUMANN_TERMS` terms of its Neumann series (products with W̃ only). Returns ``(values [R, b],
    vectors U [R, n, b], W U [R, n, b] from the last exact product, exact products, converged [R])``; regions not
    converged within :data:`MIXED_MAX_PRODUCTS` products are the caller's to finish, as is at once any region
    whose float32 start is not finite (seen, before :func:`small_eigh` solved float32 problems in float64, on
    regions with fewer rows than the block)."""
    tol = default_tolerance(torch.float64) if tol is None else tol
    R, n, _ = K.shape
    block = min(n, max(2 * k, k + 8))
    squared = scale.square()[:, :, None]  # D_a²   [R, r, 1]
    with tf32_matmuls(True):
        W_approx = _approximate_gram(K, scale)  # [R, n, n] float32
        # only a start: as accurate as W̃ itself (1e-3) and bounded in work
        _, X, _, _, _ = topk_eigh(lambda Y: W_approx @ Y, n, k, batch=(R,), dtype=torch.float32, device=K.device,
                                  block=block, return_block=True, tol=MIXED_START_TOL,
                                  max_applications=MIXED_START_APPLICATIONS)
    # a start that is not finite leaves its region to the caller's float64 Gram (NaN would make the batched
    # eigensolves below fail for every region); any finite orthonormal block keeps the batch going meanwhile
    broken = ~torch.isfinite(X).all(dim=2).all(dim=1)
    X = torch.where(broken[:, None, None], torch.eye(n, block, dtype=X.dtype, device=X.device), X)
    X = orthonormalize(X.double())
    for products in range(1, MIXED_MAX_PRODUCTS + 1):
        Y = K @ (squared * (K.transpose(1, 2) @ X))  # the exact product of the step
        theta, Q = small_eigh(X.transpose(1, 2) @ Y)
        theta, Q = theta.flip(-1), Q.flip(-1)
        X, Y = X @ Q, Y @ Q
        residuals = Y - X * theta[:, None, :]
        scale_theta = theta[:, :1].abs().clamp_min(torch.finfo(torch.float64).tiny)
        residual = torch.linalg.vector_norm(residuals[..., :k], dim=1) / scale_theta
        converged = (residual <= tol).all(dim=-1) & ~broken
        if bool((converged | broken).all()) or products == MIXED_MAX_PRODUCTS:
            return theta, X, Y, products, converged
        # X += Σ_m (P W̃ P / θ)^m P R / θ, P = I − X Xᵀ: the correction (θ_i − W̃)⁻¹ R off the block; none for
        # Ritz values at W's numerical null space (a region with fewer rows than the block, or padding)
        null = theta <= scale_theta * torch.finfo(torch.float64).eps ** 0.5
        inverse = torch.where(null, 0.0, 1.0 / torch.where(null, 1.0, theta))[:, None, :]
        project = lambda V: V - X @ (X.transpose(1, 2) @ V)  # noqa: E731
        term = project(residuals) * inverse
        correction = term.clone()
        for _ in range(MIXED_NEUMANN_TERMS):
            with tf32_matmuls(True):
                term = project((W_approx @ term.float()).double()) * inverse
            correction += term
        X = orthonormalize(X + correction)


def _transformed_eigenvectors(W: torch.Tensor, c_b: torch.Tensor, k: int, solver: str, tol: Optional[float],
                              tau: float, backend: str):
    """A block of eigenvectors of ``W`` ``[R, m, b]`` separated by ν = μ / (1 − c_b μ) instead of μ: the top of
    ``L⁻¹ W L⁻ᵀ`` with ``I − c_b W = L Lᵀ``, mapped back by ``u = L⁻ᵀ v``."""
    m = W.shape[-1]
    L, info = torch.linalg.cholesky_ex(torch.eye(m, dtype=W.dtype, device=W.device) - c_b[:, None, None] * W)
    if bool((info != 0).any()):
        raise ResefaError(
            f"`tau` is too small for region(s) {torch.nonzero(info).flatten().tolist()}: their background energy is "
            f"below float64's resolution next to the foreground's, so M_b is numerically singular (tau = {tau}); "
            "use a larger tau")
    C = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, W, upper=False).transpose(1, 2),
                                      upper=False)
    _, v, applications = _top_eigenpairs(0.5 * (C + C.transpose(1, 2)), k, solver, tol, backend)
    return torch.linalg.solve_triangular(L.transpose(1, 2), v, upper=True), applications


def _pencil_rayleigh_ritz(basis: BulkBasis, weights, K, scale, Z, c_f, c_b, a, k, reduce: Reduce = None):
    """Rayleigh–Ritz of the exact pencil ``(M_f, M_b)`` on the span of ``Z`` ``[R, r, b]`` (V coordinates), with
    ``A Z`` from the background rows (no cancellation); ``K``, ``scale`` as :func:`_foreground_products` takes them.
    Returns ``(λ [R, k], z [R, k, r] unit, B z, A z)``."""
    Z = orthonormalize(Z)
    Bz = _foreground_products(K, scale, Z, reduce)  # [R, r, b]
    Az = _background_products(basis, weights, Z.transpose(1, 2), reduce).transpose(1, 2)  # [R, r, b]
    Zt = Z.transpose(1, 2)
    H_f = c_f[:, None, None] * (Zt @ Bz)
    H_b = c_b[:, None, None] * (Zt @ Az) + a[:, None, None] * torch.eye(Z.shape[-1], dtype=Z.dtype, device=Z.device)
    L, info = torch.linalg.cholesky_ex(0.5 * (H_b + H_b.transpose(1, 2)))
    if bool((info != 0).any()):
        raise ResefaError("`tau` must be larger: M_b is numerically singular on the directions found for region(s) "
                          f"{torch.nonzero(info).flatten().tolist()} (no background energy along them)")
    C = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, H_f, upper=False).transpose(1, 2),
                                      upper=False)
    values, vectors = torch.linalg.eigh(0.5 * (C + C.transpose(1, 2)))
    coefficients = torch.linalg.solve_triangular(L.transpose(1, 2), vectors.flip(-1)[:, :, :k], upper=True)
    norms = torch.linalg.vector_norm(Z @ coefficients, dim=1, keepdim=True)  # [R, 1, k]
    coefficients = coefficients / norms
    return (values.flip(-1)[:, :k], (Z @ coefficients).transpose(1, 2), (Bz @ coefficients).transpose(1, 2),
            (Az @ coefficients).transpose(1, 2))


def _per_region(share: Share, fn, batched: tuple, *args):
    """``fn(*batched, *args)``, through the ``share`` hook when there is one."""
    return fn(*batched, *args) if share is None else share(fn, batched, *args)


def _region_totals(basis: BulkBasis, weights: torch.Tensor, counts: torch.Tensor, reduce: Reduce):
    """Sums over all rows, in one reduction: ``(rows with m > 0 [R], Σm [R], Σ m_p e_p [R], P, Σ e_p)``."""
    R = weights.shape[0]
    totals = torch.cat([counts.to(torch.float64), weights.to(torch.float64).sum(dim=1),
                        weights.to(basis.energies.dtype) @ basis.energies,
                        torch.stack([torch.tensor(float(weights.shape[1]), dtype=torch.float64,
                                                  device=weights.device), basis.energies.sum()])])
    totals = _row_sum(totals, reduce)
    return totals[:R], totals[R:2 * R], totals[2 * R:3 * R], totals[3 * R], totals[3 * R + 1]


def _solve_chunk(basis: BulkBasis, weights: torch.Tensor, k: int, tau: float, normalize: str, solver: str,
                 tol: Optional[float], backend: str, reduce: Reduce = None, share: Share = None,
                 gram: str = "float64"):
    """Solve R regions given by foreground ``weights`` ``[R, P]`` at once (padded batch)."""
    dtype = basis.JV.dtype
    r = basis.JV.shape[1]
    rows, w, counts = _gather_rows(weights)  # [R, n]
    counts, foreground_sum, foreground_energy, P, total_energy = _region_totals(basis, weights, counts, reduce)
    check(k <= int(counts.min()), "k", f"at most the number of rows of the smallest region ({int(counts.min())})", k)
    w = w.to(dtype)
    c_f, c_b = scale_constants(foreground_sum, P - foreground_sum, normalize)  # [R] float64
    a = tau * c_b * (total_energy - foreground_energy)  # τ·tr(c_b A)  [R]
    sigma = basis.sigma.to(torch.float64)
    if tau == 0 and bool(sigma[-1] <= sigma.shape[0] * basis.data_eps * sigma[0]):
        raise ResefaError("`tau` must be > 0 here: with tau = 0 the background matrix M_b is singular at the "
                          "precision of the Jacobian (its Gram JᵀJ is rank-deficient); use tau > 0 (default 1e-3)")
    scale = (c_b[:, None] * sigma[None, :] + a[:, None]).rsqrt().to(dtype)  # D_a   [R, r]
    K = basis.JV[rows]  # the one gather of the chunk   [R, n, r]
    if bool(((w == 0) | (w == 1)).all()):
        # hard masks: √m is 1 on a region's rows, so only the padding rows (w = 0) are zeroed; index_fill_ writes
        # those alone, where a boolean-mask assignment passes over all of K (0.11 s per 1,000 regions at d = 9216)
        K.view(-1, r).index_fill_(0, torch.nonzero(w.reshape(-1) == 0).flatten(), 0.0)
    else:
        K.mul_(w.sqrt()[..., None])  # diag(√m) JV[rows], in place
    n = K.shape[1]
    row_form = reduce is None and n <= r  # work in the smaller of the two spaces (only K̃ᵀK̃ sums over processes)
    mixed = row_form and gram == "mixed"
    # K holds K̃ = K D_a only where K̃ itself is a GEMM operand (the float64 K̃K̃ᵀ); elsewhere D_a is applied to the
    # r×r Gram (column form) or on the small side of each product (mixed route), with no pass over K
    K_scale = None
    if mixed:
        W = None
    elif row_form:
        K_scale = scale
        K.mul_(scale[:, None, :])
        W = batched_row_gram(K)  # [R, n, n]
    else:  # W = K̃ᵀK̃ = D_a (KᵀK) D_a
        W = _row_sum(K.transpose(1, 2) @ K, reduce).mul_(scale[:, :, None]).mul_(scale[:, None, :])  # [R, r, r]

    def tilde_t(X):  # K̃ᵀ X for the row form
        product = K.transpose(1, 2) @ X
        return product if K_scale is not None else scale[:, :, None] * product

    # Top μ of W (with W u, for B z below); ν = μ / (1 − c_b μ) cancels log10(1 + λ c_b / c_f) digits, refined
    # below where that matters.
    if mixed:  # regions the mixed route does not finish get their float64 Gram
        mu, u, Wu, applications, converged = _mixed_top_eigenpairs(K, scale, k, tol)
        if not bool(converged.all()):
            stragglers = torch.nonzero(~converged).flatten()
            W_stragglers = batched_row_gram(K[stragglers] * scale[stragglers, None, :])
            values, vectors, more = _top_eigenpairs(W_stragglers, k, solver, tol, backend)
            mu[stragglers], u[stragglers], Wu[stragglers] = values, vectors, W_stragglers @ vectors
            applications += more
        Wu = Wu[:, :, :k]
    else:
        mu, u, applications = _per_region(share, _top_eigenpairs, (W,), k, solver, tol, backend)
        Wu = W @ u[:, :, :k]
    c_f, c_b, a = c_f.to(dtype), c_b.to(dtype), a.to(dtype)
    eigenvalues = c_f[:, None] * mu[:, :k] / (1.0 - c_b[:, None] * mu[:, :k])  # λ = c_f ν
    if float((eigenvalues * (c_b / c_f)[:, None]).abs().max()) > 100.0:  # > 2 of float64's 16 digits at stake
        # μ bunches below 1/c_b: its top eigenvectors are an arbitrary basis of the bunch. The transformed pencil
        # W u = ν (I − c_b W) u has λ's own gaps; then Rayleigh–Ritz on the exact pencil polishes λ.
        if W is None:  # the transform needs W itself (I − c_b W = L Lᵀ)
            W = batched_row_gram(K * scale[:, None, :])
        u, more = _per_region(share, _transformed_eigenvectors, (W, c_b), k, solver, tol, tau, backend)
        applications += more
        z = scale[:, :, None] * (tilde_t(u) if row_form else u)
        eigenvalues, z, Bz, Az = _pencil_rayleigh_ritz(basis, weights, K, K_scale, z, c_f, c_b, a, k, reduce)
    else:
        # n = V z with z = D_a y, y the right singular vectors of K̃ (y = K̃ᵀu in the row form, u in the column
        # form); B z = D_a⁻¹ K̃ᵀK̃ y = D_a⁻¹ K̃ᵀ(W u) (row form) or D_a⁻¹ W u (column form), from W u: one pass over
        # K for both y and B z (the row form), none in the column form. A z = (Σ − B) z is exact enough here.
        u = u[:, :, :k]
        y, KtWu = tilde_t(torch.cat([u, Wu], dim=2)).split(k, dim=2) if row_form else (u, Wu)
        z = scale[:, :, None] * y
        norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)  # [R, 1, k]
        z, Bz = (z / norms).transpose(1, 2), (KtWu / (scale[:, :, None] * norms)).transpose(1, 2)  # [R, k, r]
        Az = basis.sigma.to(dtype)[None, None, :] * z - Bz
    latent = z @ basis.V.transpose(0, 1)  # the directions in latent coordinates   [R, k, d]
    directions = canonical_directions(latent)
    # the sign the canonicalisation applied (directions = ±latent/‖latent‖), without mapping the directions back by
    # V (R·k·d·r FLOPs: 2.7 TFLOP per 1,000 regions at d = 9216)
    sign = torch.sign((directions * latent).sum(-1, keepdim=True))
    z, Bz, Az = sign * z, sign * Bz, sign * Az
    foreground_n = c_f[:, None, None] * Bz
    background_n = c_b[:, None, None] * Az + a[:, None, None] * z
    residuals = relative_residuals(foreground_n, background_n, eigenvalues)
    bound = torch.zeros_like(a, dtype=torch.float64)
    if basis.discarded > 0:
        bound = (basis.discarded / (c_b * basis.discarded + a)).sqrt()
    return eigenvalues, directions, residuals, bound, applications


def solve_bulk(basis: BulkBasis, regions: Regions, k: int, tau: float, normalize: str, solver: str = "auto",
               tol: Optional[float] = None, memory_budget: Optional[int] = None,
               progress: Optional[bool] = None, backend: str = "torch", reduce: Reduce = None,
               share: Share = None, gram: str = "auto") -> Solution:
    """Top-k directions for every region of ``regions`` (complement backgrounds only) from a :class:`BulkBasis`.

    Regions are processed in chunks whose padded operands fit ``memory_budget`` bytes (default: a quarter of the free
    GPU memory, or 512 MiB on the CPU); regions are sorted by size first so a chunk pads little. ``solver``: "dense"
    (eigh of the small matrix), "iterative" (subspace iteration), or "auto" (dense when the small matrix has at most 32
    rows on a GPU, 256 on the CPU, else iterative). ``backend``: "torch" or "cuda" (the extension's batched Xsyev for
    the dense small eigenproblems: those of the "dense" solver and the iterative solver's unconverged stragglers).
    ``reduce``, ``share``: see the module docstring (rows split across processes; then ``memory_budget`` must be the
    same on every process, so all cut the same chunks). ``gram``: how the row form's per-region Gram ``K̃K̃ᵀ`` is
    handled (regions with fewer rows than the rank; elsewhere everything is float64): "float64" (formed in
    float64), "mixed" (formed from float16 operands on tensor cores and only approximate; float64 eigenpairs then
    come from a few exact products, and a region that does not converge in :data:`MIXED_MAX_PRODUCTS` gets its
    float64 Gram; see :func:`_mixed_top_eigenpairs`), or "auto" (mixed on GPUs unless ``solver`` is "dense", which
    asks for the dense eigh of each Gram; float64 on CPUs, which have no fast low-precision products). Both give
    float64 eigenpairs to the tolerance (residuals are checked against the exact operators either way)."""
    check(gram in ("auto", "float64", "mixed"), "gram", '"auto", "float64" or "mixed"', repr(gram))
    check(regions.background is None, "background",
          "None for the bulk path (it needs complement backgrounds; use the general path for explicit ones)")
    weights = regions.foreground.to(basis.JV.device)
    if gram == "auto":
        gram = "mixed" if weights.device.type == "cuda" and solver != "dense" else "float64"
    if memory_budget is None:
        memory_budget = 512 << 20
        if weights.device.type == "cuda":
            memory_budget = torch.cuda.mem_get_info(weights.device)[0] // 4
    R = weights.shape[0]
    r = basis.JV.shape[1]
    counts = _row_sum((weights > 0).sum(dim=1), reduce)  # [R] rows per region, over all processes
    order = torch.argsort(counts)
    itemsize = basis.JV.element_size()
    out_values = torch.empty(R, k, dtype=basis.JV.dtype, device=weights.device)
    out_directions = torch.empty(R, k, basis.V.shape[0], dtype=basis.JV.dtype, device=weights.device)
    out_residuals = torch.empty_like(out_values)
    out_bound = torch.empty(R, dtype=torch.float64, device=weights.device)
    iterations = []
    start = 0
    counts_sorted = counts[order].tolist()
    bar = tqdm(total=R, desc="regions", unit="region", disable=not (R >= 500 if progress is None else progress))
    while start < R:
        stop = start + 1
        while stop < R:  # grow the chunk while K̃ and W (padded to the largest region) fit the budget
            n = _padded_rows(counts_sorted[stop], weights.shape[1])
            m = r if reduce is not None else min(n, r)
            mixed_bytes = 2 * n * r + 4 * n * n if gram == "mixed" and m == n else 0  # float16 K̃, float32 W̃
            if (stop + 1 - start) * ((n * r + 3 * m * m) * itemsize + mixed_bytes) > memory_budget:
                break
            stop += 1
        index = order[start:stop]
        n_max = _padded_rows(counts_sorted[stop - 1], weights.shape[1])
        m = r if reduce is not None else min(n_max, r)
        chunk_solver = solver
        if solver == "auto":
            # GPU: subspace iteration above 32 rows on both backends. Measured (H100, 1,000 regions at d = 512,
            # m = 512): 0.30 s, against 0.51 s for the extension's batched Xsyev; torch's batched dense eigh loops
            # over the batch above 32 rows (benchmarks/NOTES.md items 7 and 16).
            dense_max = 256 if weights.device.type == "cpu" else 32
            chunk_solver = "dense" if m <= max(dense_max, 2 * k) else "iterative"
        values, directions, residuals, bound, its = _solve_chunk(basis, weights[index], k, tau, normalize,
                                                                 chunk_solver, tol, backend, reduce, share, gram)
        out_values[index], out_directions[index], out_residuals[index] = values, directions, residuals
        out_bound[index] = bound.to(out_bound.device)
        iterations.append(its)
        bar.update(stop - start)
        start = stop
    bar.close()
    info = {"path": "bulk", "ops": "cuda extension (batched Xsyev)" if backend == "cuda" else "torch",
            "rank": basis.rank, "dtype": str(basis.JV.dtype).replace("torch.", ""),
            "applications": iterations, "truncation_bound": out_bound, "gram": gram}
    return Solution(out_values, out_directions, out_residuals, info)
