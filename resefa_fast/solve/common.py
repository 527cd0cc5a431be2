"""Pieces every solver path shares: the problem's scale constants, the sign convention, the top-k eigensolver.

Glossary (DESIGN.md §1): P pixels (rows of J), d latent dims, R regions, k directions, N latent codes.
``m`` foreground weights, ``m_b`` background weights, ``B = Jᵀ diag(m) J``, ``A = Jᵀ diag(m_b) J``,
``M_f = c_f B``, ``M_b = c_b A + a I`` with ``a = τ · tr(c_b A)``; directions solve ``M_f n = λ M_b n``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch

from ..errors import check

NORMALIZATIONS = ("mean", "sum")


@dataclass
class Solution:
    """Top-k solutions for R regions. ``eigenvalues`` ``[R, k]`` (largest first, on the M_f / M_b scale),
    ``directions`` ``[R, k, d]`` (unit rows, deterministic sign), ``residuals`` ``[R, k]`` (see
    :func:`relative_residuals`), ``info``: what ran (path, method, operator applications, truncation bound...)."""

    eigenvalues: torch.Tensor
    directions: torch.Tensor
    residuals: torch.Tensor
    info: Dict = field(default_factory=dict)


def scale_constants(foreground_sum: torch.Tensor, background_sum: torch.Tensor, normalize: str):
    """``(c_f, c_b)`` per region: ``1/Σm, 1/Σm_b`` for "mean" (the original code), ``1, 1`` for "sum" (the
    paper's literal form). Eigenvectors do not depend on it; eigenvalues do."""
    if normalize == "mean":
        return 1.0 / foreground_sum, 1.0 / background_sum
    return torch.ones_like(foreground_sum), torch.ones_like(background_sum)


def check_common_arguments(k: int, tau: float, normalize: str, dim: int) -> None:
    """Checks shared by every path (the per-region rank check is :func:`check_k_against_regions`)."""
    check(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "k", "a positive integer", repr(k))
    check(k <= dim, "k", f"at most the latent dimension d = {dim}", k)
    check(isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0, "tau", "a finite number >= 0", repr(tau))
    check(normalize in NORMALIZATIONS, "normalize", f"one of {NORMALIZATIONS}", repr(normalize))


def check_k_against_regions(k: int, foreground: torch.Tensor, channels: int = 1) -> None:
    """M_f has rank at most the number of foreground rows: asking for more directions than that would return
    arbitrary vectors of its null space."""
    rows = int((foreground > 0).sum(dim=-1).min())
    check(k <= rows, "k", f"at most the rank bound of the foreground Gram (the smallest region has {rows} "
          "weighted pixel rows)", k)


def canonical_directions(vectors: torch.Tensor) -> torch.Tensor:
    """Unit-normalise directions ``[..., k, d]`` and fix their sign: the largest-magnitude component is positive.

    Eigenvectors are defined up to sign; fixing it makes results comparable across paths, runs and devices."""
    vectors = vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    index = vectors.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(vectors, -1, index))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return vectors * sign


def relative_residuals(foreground_n: torch.Tensor, background_n: torch.Tensor, eigenvalues: torch.Tensor):
    """``‖M_f n − λ M_b n‖ / (‖M_f n‖ + λ‖M_b n‖)`` per direction, from ``M_f n`` and ``M_b n`` ``[..., k, d]``.

    Scale-invariant and computable on every path without forming ‖M_f‖; since ``‖M_f n‖ ≤ ‖M_f‖₂ ‖n‖`` and
    ``λ‖M_b n‖ ≈ ‖M_f n‖`` at a solution, it is at least half of DESIGN.md's ``‖M_f n − λ M_b n‖/(‖M_f‖ ‖n‖)``."""
    lam = eigenvalues.unsqueeze(-1)
    numerator = torch.linalg.vector_norm(foreground_n - lam * background_n, dim=-1)
    denominator = torch.linalg.vector_norm(foreground_n, dim=-1) + eigenvalues.abs() * torch.linalg.vector_norm(
        background_n, dim=-1)
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


def default_tolerance(dtype: torch.dtype) -> float:
    """Residual tolerance of :func:`topk_eigh`, relative to the largest eigenvalue: ``0.1·sqrt(eps)`` (float32
    3.5e-5, float64 1.5e-9). A residual r moves an eigenvalue by about ``r²/gap`` and a direction by ``r/gap``, so
    with relative gaps >= 1e-2 this meets DESIGN.md §6 (eigenvalues 1e-4 / 1e-10, |cos| >= 0.9999) with margin."""
    return 0.1 * torch.finfo(dtype).eps ** 0.5


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """float32 matrix products on TF32 tensor cores inside the block (flag restored after; never turns a user's
    TF32 off)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled or saved
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def tf32_truncate(A: torch.Tensor) -> torch.Tensor:
    """``A`` (float32, contiguous) with the 13 low mantissa bits cleared: exactly representable in TF32, i.e. the
    value a TF32 tensor core reads, rounded toward zero."""
    return (A.view(torch.int32) & -8192).view(torch.float32)


#: Largest symmetric matrix that :func:`small_eigh` sends to the host when it comes from a GPU on its own.
HOST_EIGH_MAX = 128


def small_eigh(H: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of the symmetric part of ``H`` ``[*batch, b, b]`` (ascending), on the host for one
    matrix of at most :data:`HOST_EIGH_MAX` rows from a GPU: cuSOLVER's syevd takes about 0.8 ms at 64² on an
    H100 (many small launches), the host about 0.3 ms; the copy's synchronisation is one the caller's convergence
    test makes anyway. Batches stay on the device (one batched launch). float32 matrices are solved in float64
    (they are b×b: the cost is nil) and the pairs returned in float32: LAPACK's float32 eigh fails or returns NaN on
    the Rayleigh quotients of rank-deficient blocks, whose entries reach float32's subnormal range."""
    H = 0.5 * (H + H.transpose(-1, -2))
    work = H.double() if H.dtype == torch.float32 else H
    if H.device.type != "cuda" or H.dim() != 2 or H.shape[0] > HOST_EIGH_MAX:
        values, vectors = torch.linalg.eigh(work)
    else:
        values, vectors = torch.linalg.eigh(work.cpu())
    return values.to(H.device, H.dtype), vectors.to(H.device, H.dtype)


def topk_eigh(
    apply: Callable[[torch.Tensor], torch.Tensor],
    size: int,
    k: int,
    *,
    batch: Tuple[int, ...] = (),
    dtype: torch.dtype = torch.float32,
    device="cpu",
    block: Optional[int] = None,
    tol: Optional[float] = None,
    degree: int = 8,
    max_applications: int = 4000,
    seed: int = 0,
    return_block: bool = False,
):
    """Top-k eigenpairs of symmetric positive semi-definite operators given only as ``X -> apply(X)``.

    Chebyshev-filtered subspace iteration (Zhou & Saad): a block X ``[*batch, size, b]`` (b ≥ k) gets a Rayleigh–
    Ritz step, then a degree-``degree`` Chebyshev polynomial of the operator that damps ``[0, θ_b]`` (θ_b the
    smallest Ritz value of the block) and grows what lies above it, then is re-orthonormalised. For clustered
    spectra this needs several times fewer operator applications than plain subspace iteration. A pair has
    converged when ``‖A x − θ x‖ ≤ tol · θ_1``; each of the ``batch`` problems is independent and the loop stops
    when all have converged (or after ``max_applications``). Every problem of the batch starts from the same random
    block (drawn from ``seed`` on the CPU in float64), where a per-matrix call would start it: with the same number
    of applications, batched and per-matrix calls agree to rounding.

    Returns ``(eigenvalues [*batch, k] descending, eigenvectors [*batch, size, k], residuals [*batch, k],
    applications, converged [*batch])``; with ``return_block`` the eigenvalues and vectors of the whole block
    (``b`` ≥ k columns, a better-than-k-dimensional search space for a later Rayleigh–Ritz step).
    """
    tol = default_tolerance(dtype) if tol is None else tol
    b = min(size, block or max(2 * k, k + 8))
    # One start block for the whole batch: a block per problem drawn on the host is serial (~25 ns a sample; 0.43 s
    # for 1,000 × 512 × 32 on a 2-core host, where the whole d = 512 bulk solve took 0.67 s on an H100).
    generator = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(size, b, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    X = orthonormalize(start).expand(*batch, size, b)
    tiny = torch.finfo(dtype).tiny
    applications = 0
    while True:
        Y = apply(X)  # [*batch, size, b]
        applications += 1
        H = X.transpose(-1, -2) @ Y
        theta, W = small_eigh(H)  # ascending
        theta, W = theta.flip(-1), W.flip(-1)
        X, Y = X @ W, Y @ W  # Ritz vectors and their images
        residual = torch.linalg.vector_norm(Y[..., :k] - X[..., :k] * theta[..., None, :k], dim=-2)
        scale = theta[..., :1].abs().clamp_min(tiny)
        residual = residual / scale
        converged = (residual <= tol).all(dim=-1)
        if bool(converged.all()) or applications >= max_applications:
            break
        # Chebyshev filter on [0, e], e = θ_b: T_j(2x/e − 1) by the three-term recurrence, starting from X and
        # the already computed Y = A X; columns are rescaled together in both terms to stay in range.
        e = theta[..., -1:].clamp_min(scale * 1e-3)[..., None, :]  # [*batch, 1, 1]
        previous, current = X, (2.0 * Y - e * X) / e
        for _ in range(degree - 1):
            following = 2.0 * (2.0 * apply(current) - e * current) / e - previous
            applications += 1
            norm = torch.linalg.vector_norm(following, dim=-2, keepdim=True).clamp_min(tiny)
            previous, current = current / norm, following / norm
        X = orthonormalize(current)
    keep = theta.shape[-1] if return_block else k
    return theta[..., :keep], X[..., :keep], residual, applications, converged


def top_eigenpairs(S: torch.Tensor, k: int, tol: Optional[float], dense_max: int = 512):
    """Top-k eigenpairs of a small symmetric PSD matrix: dense eigh up to ``dense_max`` rows, else subspace
    iteration. Returns ``(values [k], vectors [m, k], operator applications)``."""
    if S.shape[0] <= dense_max:
        values, vectors = torch.linalg.eigh(0.5 * (S + S.transpose(0, 1)))
        return values.flip(0)[:k], vectors.flip(1)[:, :k], 0
    values, vectors, _, its, converged = topk_eigh(lambda X: S @ X, S.shape[0], k, dtype=S.dtype, device=S.device,
                                                   tol=tol)
    if not bool(converged.all()):  # finish exactly rather than return unconverged pairs
        return top_eigenpairs(S, k, tol, dense_max=S.shape[0])
    return values, vectors, its


#: Shifted Cholesky QR passes :func:`orthonormalize` may spend on one block before it calls the block deficient.
SHIFTED_PASSES = 2


def orthonormalize(Z: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of ``Z`` ``[*batch, m, b]`` by Cholesky QR: a few batched GEMMs and b×b
    factorisations, fast on GPUs, where batched Householder QR loops over the batch (one geqr2 launch per matrix:
    0.11 s of the 0.25 s a 1,000-region bulk solve at d = 512 spends in kernels, benchmarks/NOTES.md item 22).

    Two passes (CholQR2) for blocks whose Gram factors. A block whose Gram does not (condition number beyond
    about u^-½, which Chebyshev-filtered blocks reach) is factored with shifted Cholesky QR's shift
    ``11 (m b + b (b + 1)) u ‖Z‖_F²`` instead (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa, SIAM J. Sci.
    Comput. 2020), which divides the condition number by about ``(11 (m b + b (b + 1)) u)^-½`` (≈ 1e5 for 300 × 24
    blocks); then two plain passes again (CholQR3), and a second shifted pass if the first did not reach far enough
    (up to :data:`SHIFTED_PASSES`). Householder QR remains for the blocks that are numerically rank-deficient even
    so (a factorisation still fails, or a shifted block's result is not orthonormal to 64·b·ε), and only for those.

    Blocks of lower precision are orthonormalised in float64 and rounded back: their Gram squares the condition
    number past what a float32 Cholesky factors (κ ≈ 3e3), and a shifted pass in float32 divides κ by only 5–15 for
    blocks of thousands of rows, so float32 Chebyshev-filtered blocks all went to the Householder loop (0.58 s of
    device time per 1,000 regions in the mixed bulk route's float32 start at d = 9216, benchmarks/NOTES.md item 24);
    in float64 they take Cholesky QR, for the price of two conversions of a tall-skinny block."""
    if Z.dtype != torch.float64:
        return orthonormalize(Z.double()).to(Z.dtype)
    m, b = Z.shape[-2], Z.shape[-1]
    eye = torch.eye(b, dtype=Z.dtype, device=Z.device)
    shift_scale = 11 * (m * b + b * (b + 1)) * torch.finfo(Z.dtype).eps / 2
    deficient = torch.zeros(Z.shape[:-2], dtype=torch.bool, device=Z.device)
    X, plain, shifted = Z, 0, 0
    while plain < 2:
        G = X.transpose(-1, -2) @ X
        L, info = torch.linalg.cholesky_ex(G)
        failed = (info != 0) & ~deficient
        if bool(failed.any()):
            plain = 0
            if shifted == SHIFTED_PASSES:
                deficient = deficient | failed
            else:
                shift = torch.where(failed, shift_scale * G.diagonal(dim1=-2, dim2=-1).sum(-1), 0.0)
                L, info = torch.linalg.cholesky_ex(G + shift[..., None, None] * eye)
                deficient = deficient | (info != 0)
                shifted += 1
        else:
            plain += 1
        L = torch.where(deficient[..., None, None], eye, L)  # those pass through here and are replaced below
        X = torch.linalg.solve_triangular(L.transpose(-1, -2), X, upper=True, left=False)  # X L⁻ᵀ
    if shifted:  # rank-deficient blocks can come through with a rounding-noise column: checked, not assumed
        error = (X.transpose(-1, -2) @ X - eye).abs().amax(dim=(-2, -1))
        deficient = deficient | ~(error <= 64 * b * torch.finfo(Z.dtype).eps)
    if bool(deficient.any()):
        if Z.dim() == 2:
            return torch.linalg.qr(Z).Q
        X = X.reshape(-1, m, b).clone()
        which = torch.nonzero(deficient.reshape(-1)).flatten()
        X[which] = torch.linalg.qr(Z.reshape(-1, m, b)[which]).Q
        X = X.reshape(Z.shape)
    return X


def block_krylov_svd(K: torch.Tensor, k: int, iterations: int, block: Optional[int] = None, seed: int = 0):
    """Top-k singular triplets of ``K`` ``[m, n]`` or ``[*batch, m, n]`` by randomized block Krylov (Musco & Musco,
    "Randomized block Krylov methods for stronger and faster approximate SVD", 2015).

    A Gaussian start block Ω ``[n, b]`` (b = ``block`` or k + 8; drawn from ``seed`` on the CPU in float64, the
    same for every matrix of a batch, so a batched call equals per-matrix calls) spans, with ``iterations`` = q,
    the Krylov space ``[K Ω, (K Kᵀ) K Ω, ..., (K Kᵀ)^q K Ω]`` of dimension s = (q + 1) b (capped at min(m, n)). Its
    basis Q is built block by block, each new block ``K (Kᵀ Q_j)`` made orthogonal to the previous ones by block
    classical Gram–Schmidt run twice (BCGS2) with :func:`orthonormalize` (CholQR2, Householder fallback) inside,
    which keeps Q orthonormal to working precision although the raw power blocks are nearly parallel. Rayleigh–Ritz:
    the SVD of the small ``B = Qᵀ K`` ``[s, n]``; its top-k are the Ritz triplets. Returns ``(U [*, m, k], s [*, k]
    descending, V [*, n, k])`` in ``K``'s dtype and device, ``K ≈ U diag(s) Vᵀ`` on the top-k part (the order of
    ``torch.svd_lowrank``'s outputs).

    Error: the k-th Ritz value's relative error falls roughly like ``exp(-2 (2q + 1) sqrt(γ))`` with
    ``γ = σ_k / σ_{b+1} - 1`` (Chebyshev acceleration), where subspace (power) iteration with the same products
    falls like ``(σ_{b+1} / σ_k)^(2 (2q + 1))``: for slowly decaying spectra several times fewer products of K.

    Cost in GEMMs (only torch matmuls besides b × b Choleskys and the small SVD, so cuBLAS on a GPU): products with
    K: ``K Ω``, then per iteration ``Kᵀ Q_j`` and ``K (Kᵀ Q_j)``, and a last ``Kᵀ Q_q``; B's blocks are the
    transposed ``Kᵀ Q_j`` already computed, so 2q + 2 GEMMs of ``[m, n] × [·, b]``, 4 m n b (q + 1) FLOPs in all.
    Orthogonalisation of block j (j b columns before it): 2 × (2 GEMMs of 2 m j b² + CholQR2 ≈ 6 m b²), so
    ``4 m b² q (q + 1) + 12 m b² (q + 1)`` FLOPs over all blocks; and the small SVD, O(s² n). For m = 3600, n = 512,
    b = 24: 177 MFLOP of K products per iteration, ~17 j + 25 MFLOP of orthogonalisation for block j.
    """
    check(isinstance(K, torch.Tensor) and K.dim() >= 2 and K.is_floating_point(), "K",
          "a floating-point tensor [..., m, n]", getattr(K, "shape", type(K)))
    m, n = K.shape[-2:]
    small = min(m, n)
    check(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= small, "k",
          f"an integer in [1, min(m, n) = {small}]", repr(k))
    check(isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 0, "iterations",
          "an integer >= 0", repr(iterations))
    check(block is None or (isinstance(block, int) and not isinstance(block, bool) and block >= k), "block",
          f"None or an integer >= k = {k}", repr(block))
    b = min(small, block if block is not None else k + 8)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(n, b, generator=generator, dtype=torch.float64).to(device=K.device, dtype=K.dtype)
    Kt = K.transpose(-1, -2)
    Z = K @ omega  # [*, m, b]
    basis, images = [], []  # Q_j [*, m, b_j] and Kᵀ Q_j [*, n, b_j]
    size = 0
    for j in range(iterations + 1):
        if j:
            Z = K @ images[-1]
        Z = Z[..., : min(Z.shape[-1], small - size)]  # no more than min(m, n) directions exist
        if basis:
            Q = torch.cat(basis, dim=-1)
            for _ in range(2):  # BCGS2: project, orthonormalise, twice
                Z = orthonormalize(Z - Q @ (Q.transpose(-1, -2) @ Z))
        else:
            Z = orthonormalize(Z)
        basis.append(Z)
        images.append(Kt @ Z)
        size += Z.shape[-1]
        if size >= small:
            break
    Q = torch.cat(basis, dim=-1)  # [*, m, s]
    B = torch.cat(images, dim=-1).transpose(-1, -2)  # Qᵀ K [*, s, n]
    W, s, Vh = torch.linalg.svd(B, full_matrices=False)
    return Q @ W[..., :k], s[..., :k], Vh[..., :k, :].transpose(-1, -2)
