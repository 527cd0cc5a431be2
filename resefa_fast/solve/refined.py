"""Refined route of the general path: a low-precision preconditioner, then float64 refinement on the exact pencil.

The float64 route (``general.py``, ``"cholesky"``) spends almost all of its time on one product: the background
Gram ``A = J_bᵀ J_b`` (``P·d²`` FLOPs, about 130 ms at P = 65,536, d = 9,216 on an H100 in float64). Here that
Gram is formed only approximately — float16 operands with float32 accumulation on CUDA (tensor cores, about 8× the
float64 rate), float32 on a CPU — and used for two things that tolerate its error:

1. an initial search space: the top-q generalised eigenvectors of the *approximate* pencil ``(M_f, M̃_b)``
   (Cholesky of M̃_b, the foreground rows' small eigenproblem, as in the float64 route);
2. a preconditioner ``T = M̃_b⁻¹`` for the residuals of the *exact* pencil.

The refinement is a block preconditioned eigensolver (LOBPCG without the momentum block): Rayleigh–Ritz on
``[X, T R]``, where every exact quantity comes from the Jacobian's rows in float64 — ``Y = J Z`` (row images), the
projected pencil ``c_f Yᵀ diag(m) Y`` / ``c_b Yᵀ diag(m_b) Y + a ZᵀZ`` (sums of squares: no cancellation), and
``M_f Z = c_f Jᵀ(m ∘ Y)``, ``M_b Z = c_b Jᵀ(m_b ∘ Y) + a Z`` for the residuals. One pass over J per iteration
(``4·P·d·q`` FLOPs, a few ms); everything else follows by linearity. The preconditioner's quality sets the rate:
``‖M̃_b − M_b‖ / a`` is about 1e-2 for float16 operands at τ = 1e-3, so each iteration gains about two digits
and the result meets the float64 route's residual tolerance, not the approximation's.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ResefaError
from ..gram import approximate_gram, row_energies_float64
from .common import default_tolerance, relative_residuals, scale_constants, topk_eigh

#: Bytes of float64 Jacobian rows converted at once by :func:`exact_products` (a reused chunk, not a copy of J).
CHUNK_BYTES = 1 << 29


def exact_products(J: torch.Tensor, Z: torch.Tensor, foreground: Optional[torch.Tensor], background: torch.Tensor,
                   chunk_bytes: int = CHUNK_BYTES):
    """``(J Z [P, s], Jᵀ(m ∘ J Z) [d, s], Jᵀ(m_b ∘ J Z) [d, s])`` in float64 for ``J`` ``[P, d]`` of any float
    dtype: row chunks of J are converted to float64 as they are used (one pass over J). ``foreground`` None: the
    middle product is not formed (None; the caller has the foreground rows on their own)."""
    P, d = J.shape
    s = Z.shape[1]
    rows = max(1, chunk_bytes // (8 * d))
    weights = [background] if foreground is None else [foreground, background]
    images = torch.empty(P, s, dtype=torch.float64, device=J.device)
    weighted = torch.zeros(d, len(weights) * s, dtype=torch.float64, device=J.device)
    for start in range(0, P, rows):
        chunk = J[start:start + rows].to(torch.float64)
        Y = chunk @ Z
        images[start:start + rows] = Y
        scaled = torch.cat([Y * w[start:start + rows, None] for w in weights], 1)
        weighted.addmm_(chunk.transpose(0, 1), scaled)
    if foreground is None:
        return images, None, weighted
    return images, weighted[:, :s], weighted[:, s:]


def _float64_rows(J: torch.Tensor) -> torch.Tensor:
    """J in float64 once when it fits in a quarter of the free GPU memory (each later pass then reads it directly:
    3.5 instead of 6.9 ms per pass at P = 65,536, d = 9,216 on an H100); else J itself, converted chunk by chunk in
    every pass."""
    if J.dtype == torch.float64 or J.device.type != "cuda":
        return J
    free, _ = torch.cuda.mem_get_info(J.device)
    return J.to(torch.float64) if J.numel() * 8 <= free // 4 else J


class _Pencil:
    """The exact pencil of one region, applied through the Jacobian's rows in float64."""

    def __init__(self, J, foreground, background, c_f, c_b, a):
        self.J, self.m, self.b = J, foreground, background
        self.c_f, self.c_b, self.a = c_f, c_b, a
        # A region's foreground rows are few (a box: 2,300 of 65,536): their float64 copy is kept, and M_f Z is
        # formed from them alone instead of from every row (a third of each pass's FLOPs at P = 65,536).
        self.rows = torch.nonzero(foreground).flatten()
        self.J_f = None
        if self.rows.numel() * J.shape[1] * 8 <= CHUNK_BYTES:
            self.J_f = J.index_select(0, self.rows).to(torch.float64)

    def images(self, Z):
        """``(J Z, M_f Z, M_b Z)`` for a float64 block ``Z`` ``[d, s]``."""
        if self.J_f is None:
            Y, F, B = exact_products(self.J, Z, self.m, self.b)
        else:
            Y, _, B = exact_products(self.J, Z, None, self.b)
            F = self.J_f.transpose(0, 1) @ (Y.index_select(0, self.rows) * self.m[self.rows, None])
        return Y, self.c_f * F, self.c_b * B + self.a * Z

    def projected(self, Z, Y):
        """``(Zᵀ M_f Z, Zᵀ M_b Z)`` from the row images ``Y = J Z``: weighted sums of squares over rows."""
        Hf = self.c_f * (Y.transpose(0, 1) @ (Y * self.m[:, None]))
        Hb = self.c_b * (Y.transpose(0, 1) @ (Y * self.b[:, None])) + self.a * (Z.transpose(0, 1) @ Z)
        return 0.5 * (Hf + Hf.transpose(0, 1)), 0.5 * (Hb + Hb.transpose(0, 1))


def _rayleigh_ritz(pencil: _Pencil, Z, Y, FZ, BZ, keep: int):
    """Top-``keep`` Ritz pairs of the exact pencil on span(Z), M_b-orthonormal, with their images by linearity.
    The s×s pencil is solved on the host: a few dozen rows, where GPU solver launches cost more than the work."""
    Hf, Hb = (H.cpu() for H in pencil.projected(Z, Y))
    L, info = torch.linalg.cholesky_ex(Hb)
    if int(info) != 0:  # the search space lost rank: keep its well-conditioned part
        values, vectors = torch.linalg.eigh(Hb)
        good = values > values[-1] * Hb.shape[0] * torch.finfo(Hb.dtype).eps
        basis = vectors[:, good] / values[good].sqrt()
        Hf2 = basis.transpose(0, 1) @ Hf @ basis
        theta, U = torch.linalg.eigh(0.5 * (Hf2 + Hf2.transpose(0, 1)))
        C = basis @ U
    else:
        Linv_Hf = torch.linalg.solve_triangular(L, Hf, upper=False)
        S = torch.linalg.solve_triangular(L, Linv_Hf.transpose(0, 1), upper=False)
        theta, U = torch.linalg.eigh(0.5 * (S + S.transpose(0, 1)))
        C = torch.linalg.solve_triangular(L.transpose(0, 1), U, upper=True)
    theta, C = theta.flip(0)[:keep].to(Z.device), C.flip(1)[:, :keep].to(Z.device)
    return theta, Z @ C, Y @ C, FZ @ C, BZ @ C


class BlockedCholesky:
    """Solves with a Cholesky factor ``L`` ``[d, d]`` through matrix products: the inverses of its diagonal blocks
    are formed once, then each solve is a block substitution of GEMMs.

    cuBLAS's TRSM with a few dozen right-hand sides is latency-bound (two solves at d = 9,216, 32 columns: 5.7 ms
    on an H100); as GEMMs that read each block of L once, they are memory-bound (about 0.5 ms)."""

    def __init__(self, L: torch.Tensor, block: int = 1024):
        self.L = L
        d = L.shape[0]
        self.edges = list(range(0, d, block)) + [d]
        full = d // block  # the equal blocks are inverted in one batched call, a shorter last block on its own
        diagonal = L[:full * block, :full * block].reshape(full, block, full, block).diagonal(dim1=0, dim2=2)
        eye = torch.eye(block, dtype=L.dtype, device=L.device)
        self.inverses = list(torch.linalg.solve_triangular(diagonal.permute(2, 0, 1), eye, upper=False))
        if full * block < d:
            tail = L[full * block:, full * block:]
            self.inverses.append(torch.linalg.solve_triangular(
                tail, torch.eye(d - full * block, dtype=L.dtype, device=L.device), upper=False))

    def solve_lower(self, R: torch.Tensor) -> torch.Tensor:
        """``L⁻¹ R``."""
        X = torch.empty_like(R)
        for i, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            rhs = R[lo:hi] if lo == 0 else torch.addmm(R[lo:hi], self.L[lo:hi, :lo], X[:lo], alpha=-1)
            X[lo:hi] = self.inverses[i] @ rhs
        return X

    def solve_upper(self, R: torch.Tensor) -> torch.Tensor:
        """``L⁻ᵀ R``."""
        X = torch.empty_like(R)
        d = self.L.shape[0]
        for i in reversed(range(len(self.inverses))):
            lo, hi = self.edges[i], self.edges[i + 1]
            rhs = R[lo:hi] if hi == d else torch.addmm(R[lo:hi], self.L[hi:, lo:hi].transpose(0, 1), X[hi:],
                                                       alpha=-1)
            X[lo:hi] = self.inverses[i].transpose(0, 1) @ rhs
        return X

    def solve(self, R: torch.Tensor) -> torch.Tensor:
        """``(L Lᵀ)⁻¹ R``."""
        return self.solve_upper(self.solve_lower(R))


def _initial_block(J, foreground, rows, factor: BlockedCholesky, c_f, k: int, q: int) -> torch.Tensor:
    """A starting block ``[d, q]`` (float64): the top generalised eigenvectors of the approximate pencil
    ``(M_f, L Lᵀ)`` in L's dtype, converged loosely (the refinement supplies the accuracy).

    M_f = c_f J_fᵀ diag(m) J_f has rank ≤ n_f: with ``F = L⁻¹ (√m J_f)ᵀ`` the eigenvectors are ``L⁻ᵀ F u`` for the
    top eigenvectors u of ``FᵀF`` (n_f ≤ d), or ``L⁻ᵀ y`` for those of ``F Fᵀ``. Only the top k pairs must
    converge: the rest of the block lies in the spectrum's flat tail, where subspace iteration would crawl."""
    dtype = factor.L.dtype
    Kf = J.index_select(0, rows).to(dtype) * foreground[rows].to(dtype).sqrt()[:, None]
    F = factor.solve_lower(Kf.transpose(0, 1))  # [d, n_f]
    small = F.shape[1] <= F.shape[0]
    S = c_f * (F.transpose(0, 1) @ F if small else F @ F.transpose(0, 1))
    if S.shape[0] <= 512:
        _, U = torch.linalg.eigh(0.5 * (S + S.transpose(0, 1)))
        U = U.flip(1)[:, :q]
    else:
        _, U, _, _, _ = topk_eigh(lambda X: S @ X, S.shape[0], k, block=q, dtype=dtype, device=S.device, tol=1e-4,
                                  max_applications=300, return_block=True)
    Y = F @ U if small else U
    return factor.solve_upper(Y).double()


def solve_refined(J: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor, k: int, tau: float,
                  normalize: str, tol: Optional[float] = None, precision: Optional[str] = None,
                  block: Optional[int] = None, max_iterations: int = 30):
    """Top-k of ``M_f n = λ M_b n`` for one region (weights ``[P]``): approximate Gram, Cholesky preconditioner,
    float64 refinement to ``tol`` (default: the float64 route's). Returns ``(λ [k], n [k, d] unnormalised,
    residuals [k], info)``. ``precision``: the approximate Gram's operands, ``"float16"`` (CUDA default),
    ``"float32"`` (CPU default) or ``"float64"``."""
    if tau <= 0:
        raise ResefaError("method 'refined' needs tau > 0 (its preconditioner is the regularised M_b); use "
                          "method='cholesky' for tau = 0")
    device, d = J.device, J.shape[1]
    precision = precision or ("float16" if device.type == "cuda" else "float32")
    tol = default_tolerance(torch.float64) if tol is None else tol
    m = foreground.to(torch.float64)
    b = background.to(torch.float64)
    c_f, c_b = scale_constants(m.sum(), b.sum(), normalize)
    # Preconditioner: M̃_b = c_b Ã + a I from the approximate background Gram, factorised in float32 (float64 when
    # the Gram is): its error is the Gram's, not the factorisation's.
    factor_dtype = torch.float64 if precision == "float64" else torch.float32
    M = approximate_gram(J, background.to(torch.float32).sqrt(), precision).to(factor_dtype) * c_b.to(factor_dtype)
    exact = _float64_rows(J)
    a = tau * c_b * (b @ row_energies_float64(exact))
    M.diagonal().add_(a.to(factor_dtype))
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0:
        raise ResefaError(f"method 'refined': the approximate background matrix is not positive definite at "
                          f"tau = {tau} (its {precision} rounding exceeds the regularisation); use a larger tau or "
                          "method='cholesky'")
    del M
    factor = BlockedCholesky(L)
    q = min(d, int(block or max(2 * k, k + 8)), int((m > 0).sum()))
    pencil = _Pencil(exact, m, b, c_f, c_b, a)
    Z = _initial_block(J, foreground, pencil.rows, factor, c_f, k, q)
    Y, FZ, BZ = pencil.images(Z)
    theta, X, Y, FX, BX = _rayleigh_ritz(pencil, Z, Y, FZ, BZ, q)
    iterations = 0
    while True:
        R = FX - BX * theta
        residuals = relative_residuals(FX[:, :k].transpose(0, 1), BX[:, :k].transpose(0, 1), theta[:k])
        if bool((residuals <= tol).all()) or iterations >= max_iterations:
            break
        # Preconditioned residuals, M_b-orthogonalised against X (X is M_b-orthonormal, BX = M_b X).
        scale = torch.linalg.vector_norm(R, dim=0).clamp_min(torch.finfo(R.dtype).tiny)
        W = factor.solve((R / scale).to(L.dtype)).double()
        W = W - X @ (BX.transpose(0, 1) @ W)
        W = W / torch.linalg.vector_norm(W, dim=0).clamp_min(torch.finfo(W.dtype).tiny)
        YW, FW, BW = pencil.images(W)
        theta, X, Y, FX, BX = _rayleigh_ritz(pencil, torch.cat([X, W], 1), torch.cat([Y, YW], 1),
                                             torch.cat([FX, FW], 1), torch.cat([BX, BW], 1), q)
        iterations += 1
    if not bool((residuals <= tol).all()):
        raise ResefaError(f"method 'refined' did not converge in {max_iterations} iterations (residuals "
                          f"{float(residuals.max()):.2e} > tol {tol:.1e}); use method='cholesky'")
    info = {"precision": precision, "iterations": iterations, "block": q,
            "passes_over_J": iterations + 1}
    return theta[:k], X[:, :k].transpose(0, 1), residuals, info

