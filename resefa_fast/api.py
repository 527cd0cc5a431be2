"""The public entry points: :func:`factorize` (one call) and :class:`Factorizer` (precompute once, many regions).

Shapes of a result (:class:`Directions`): ``directions`` ``[k, d]`` for one region and one latent code; a batch of
R regions adds a leading ``R``; a batched Jacobian with ``latents="per_image"`` adds a leading ``N`` before that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from . import reference
from .backends import resolve_backend
from .errors import check
from .inputs import JacobianInput, as_jacobian
from .regions import Regions, as_regions
from .solve.bulk import BulkBasis, precompute, solve_bulk
from .solve.common import Solution, check_common_arguments, check_k_against_regions
from .solve.general import METHODS, solve_general

LATENT_MODES = ("per_image", "stack")


@dataclass
class Directions:
    """ReSeFa directions. ``directions``: unit rows, sorted by eigenvalue (largest first), sign fixed so the
    largest-magnitude component is positive; ``eigenvalues``: λ of ``M_f n = λ M_b n`` (DESIGN.md §1 scale);
    ``residuals``: ``‖M_f n − λ M_b n‖ / (‖M_f n‖ + λ‖M_b n‖)``; ``names``: one per region; ``info``: what ran."""

    directions: torch.Tensor
    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    names: List[str] = field(default_factory=list)
    info: Dict = field(default_factory=dict)

    def numpy(self) -> "Directions":
        """A copy whose arrays are numpy arrays (for numpy front ends)."""
        def to_numpy(t):
            return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
        return Directions(to_numpy(self.directions), to_numpy(self.eigenvalues), to_numpy(self.residuals),
                          list(self.names), dict(self.info))


def _compute_dtype(dtype) -> torch.dtype:
    """The working precision of Grams, factorisations and eigensolvers. float64 by default: M_b's condition
    number grows like 1/τ and float32 Grams then lose about three digits of λ (DESIGN.md §6 asks for 1e-4); on
    data-centre GPUs (A100, H100) float64 matrix products run at the float32 rate. float32 is for GPUs with slow
    float64."""
    dtype = torch.float64 if dtype is None else dtype
    check(dtype in (torch.float32, torch.float64), "dtype", "torch.float32 or torch.float64", dtype)
    return dtype


def _stacked(jac: JacobianInput, regions: Regions):
    """Stack the N latents' rows into one ``[N·P, d]`` problem (directions shared by all images): each region's
    weights repeat on every image's rows."""
    N = jac.num_latents
    stacked = Regions(foreground=regions.foreground.repeat(1, N),
                      background=None if regions.background is None else regions.background.repeat(1, N),
                      boxes=None, names=regions.names, single=regions.single)
    return jac.values.reshape(1, N * jac.num_pixels, jac.dim), stacked


def _package(solutions: List[Solution], regions: Regions, batched_latents: bool, info: Dict) -> Directions:
    """Stack per-latent solutions ``[R, k, ...]`` into the documented result shape."""
    def stack(name):
        value = torch.stack([getattr(s, name) for s in solutions])  # [N, R, ...]
        if regions.single:
            value = value[:, 0]
        return value if batched_latents else value[0]
    merged = dict(info)
    merged.update({key: value for key, value in solutions[0].info.items() if key not in merged})
    if len(solutions) > 1 and "truncation_bound" in merged:
        merged["truncation_bound"] = torch.stack([s.info["truncation_bound"] for s in solutions])
    return Directions(stack("directions"), stack("eigenvalues"), stack("residuals"), list(regions.names), merged)


#: From this latent dimension on, ``method="auto"`` solves single regions on GPUs by the refined route (float16
#: Gram preconditioner + float64 refinement): measured on an H100 in benchmarks/NOTES.md.
REFINED_MIN_DIM = 2048


def _auto_method(regions: Regions, compute_dtype: torch.dtype, jacobian: Optional[torch.Tensor] = None,
                 tau: Optional[float] = None) -> str:
    """``method="auto"``: bulk for several regions with complement backgrounds in float64; else, for a Jacobian on
    a GPU with d ≥ :data:`REFINED_MIN_DIM` and τ > 0, refined; else cholesky."""
    bulk_fits = len(regions) > 1 and regions.background is None and compute_dtype == torch.float64
    if bulk_fits:
        return "bulk"
    return "refined" if _refined_fits(jacobian, tau) else "cholesky"


def _refined_fits(jacobian: Optional[torch.Tensor], tau: Optional[float]) -> bool:
    return (jacobian is not None and jacobian.device.type == "cuda" and jacobian.shape[-1] >= REFINED_MIN_DIM
            and tau is not None and tau > 0)


def _prepare(jacobian, batched, grid, latents, backend, dtype):
    check(latents in LATENT_MODES, "latents", f"one of {LATENT_MODES}", repr(latents))
    jac = as_jacobian(jacobian, batched=batched, grid=grid)
    compute_dtype = _compute_dtype(dtype)
    ran, reason = resolve_backend(backend, jac.values.device)
    return jac, compute_dtype, ran, reason


def factorize(
    jacobian,
    region,
    k: int = 16,
    tau: float = 1e-3,
    background=None,
    normalize: str = "mean",
    backend: str = "auto",
    *,
    method: str = "auto",
    latents: str = "per_image",
    dtype: Optional[torch.dtype] = None,
    batched: Optional[bool] = None,
    grid=None,
    tol: Optional[float] = None,
) -> Directions:
    """Top-k ReSeFa directions of ``region`` for a Jacobian: the top-k generalised eigenpairs of
    ``M_f n = λ M_b n`` with ``M_f = c_f Jᵀ diag(m) J`` and ``M_b = c_b Jᵀ diag(m_b) J + a I``,
    ``a = τ · tr(c_b Jᵀ diag(m_b) J)`` (DESIGN.md §1).

    Args:
        jacobian: ``[P, d]``, ``[H, W, d]``, ``[C, H, W, d]``, the original's ``[H, W, 1, d]`` / ``[N, H, W, 1, d]``
            / ``[N, C, H, W, 1, d]`` (torch, numpy or cupy; see :mod:`resefa_fast.inputs`).
        region: a preset name, a box ``(cx, cy, h, w)``, a mask, a mask file, or a batch of them
            (:mod:`resefa_fast.regions`).
        k: directions per region.
        tau: regularisation ``τ`` of eq. 10 (0 allowed if M_b is then positive definite).
        background: explicit background mask(s); default the complement ``1 − m``.
        normalize: ``"mean"`` (``c = 1/Σweights``, the original code) or ``"sum"`` (``c = 1``, the paper).
        backend: ``"auto"``, ``"torch"``, ``"cuda"`` or ``"reference"`` (:mod:`resefa_fast.backends`).
        method: ``"auto"``, ``"cholesky"`` / ``"woodbury"`` / ``"refined"`` (general path, one region at a time)
            or ``"bulk"`` (shared eigenbasis; complement backgrounds; float64 only). Auto: bulk for several regions
            with complement backgrounds in float64; else refined on a GPU for d ≥ 2048 and τ > 0 (a float16 Gram
            as preconditioner, float64 refinement: the float64 route's accuracy in half its time); else cholesky.
        latents: for a batched Jacobian, ``"per_image"`` (one result per latent code) or ``"stack"`` (directions
            shared by all images: the N Jacobians' rows stacked into one problem).
        dtype: working precision (default float64, see ``_compute_dtype``; the Jacobian itself may be float32).
        batched, grid: layout hints for :func:`resefa_fast.inputs.as_jacobian`.
        tol: residual tolerance of the iterative top-k solver (default: a few hundred ulps of ``dtype``).
    """
    jac, compute_dtype, ran, reason = _prepare(jacobian, batched, grid, latents, backend, dtype)
    check_common_arguments(k, tau, normalize, jac.dim)
    check(method in ("auto", "bulk") + METHODS, "method", f"one of {('auto', 'bulk') + METHODS}", repr(method))
    regions = as_regions(region, jac.grid, jac.num_pixels, jac.values.device, background)
    check_k_against_regions(k, regions.foreground)
    check(not (method == "bulk" and regions.background is not None), "method",
          "'cholesky' or 'woodbury' with an explicit background (the bulk path needs complement backgrounds)",
          repr(method))
    values, solve_regions = jac.values, regions
    if latents == "stack" and jac.num_latents > 1:
        values, solve_regions = _stacked(jac, regions)
    if ran == "reference":
        chosen = "reference"
    elif method == "auto":
        chosen = _auto_method(regions, compute_dtype, values, tau)
    else:
        chosen = method
    solutions = []
    for J in values:  # one latent code (or the stack) at a time
        if chosen == "reference":
            solutions.append(reference.solve(J, solve_regions, k, tau, normalize))
        elif chosen == "bulk":
            basis = precompute(J, dtype=compute_dtype)
            solutions.append(solve_bulk(basis, solve_regions, k, tau, normalize, tol=tol, backend=ran))
        else:
            solutions.append(solve_general(J, solve_regions, k, tau, normalize, method=chosen, tol=tol,
                                           dtype=compute_dtype))
    info = {"backend": ran, "backend_reason": reason, "tau": tau, "normalize": normalize, "latents": latents}
    return _package(solutions, regions, jac.batched and latents == "per_image", info)


class Factorizer:
    """Precompute once per Jacobian, then answer many regions fast (the bulk path of DESIGN.md §2).

    ``Factorizer(J).factorize_many(regions, k)`` costs one eigendecomposition of ``JᵀJ`` plus, per region, a gather
    of the region's rows of ``J V`` and a small eigenproblem. ``rank`` / ``energy`` truncate the eigenbasis (the
    error bound is reported in ``info["truncation_bound"]``). Regions with an explicit ``background`` go through the
    general path on the stored Jacobian (``info["path"]`` says which path ran).
    """

    def __init__(self, jacobian, tau: float = 1e-3, normalize: str = "mean", backend: str = "auto", *,
                 latents: str = "per_image", rank: Optional[int] = None, energy: Optional[float] = None,
                 dtype: Optional[torch.dtype] = None, batched: Optional[bool] = None, grid=None,
                 tol: Optional[float] = None):
        self.jacobian, self.dtype, self.backend, self.backend_reason = _prepare(jacobian, batched, grid, latents,
                                                                               backend, dtype)
        check_common_arguments(1, tau, normalize, self.jacobian.dim)
        check(rank is None or (isinstance(rank, int) and 1 <= rank <= self.jacobian.dim), "rank",
              f"None or an integer in [1, {self.jacobian.dim}]", repr(rank))
        check(energy is None or (0 < energy <= 1), "energy", "None or a fraction in (0, 1]", repr(energy))
        self.tau, self.normalize, self.latents, self.tol = tau, normalize, latents, tol
        values = self.jacobian.values
        if latents == "stack" and self.jacobian.num_latents > 1:
            values = values.reshape(1, -1, self.jacobian.dim)
        self._values = values  # [N', P', d]
        self.bases: List[BulkBasis] = [precompute(J, rank=rank, energy=energy, dtype=self.dtype) for J in values]

    def _regions(self, region, background=None) -> Regions:
        regions = as_regions(region, self.jacobian.grid, self.jacobian.num_pixels, self._values.device, background)
        if self.latents == "stack" and self.jacobian.num_latents > 1:
            regions = _stacked(self.jacobian, regions)[1]
        return regions

    def factorize_many(self, regions, k: int = 16, tau: Optional[float] = None, background=None,
                       progress: Optional[bool] = None) -> Directions:
        """Directions for a batch of regions (a list, ``[R, H, W]`` masks or ``[R, 4]`` boxes): ``[.., R, k, d]``.
        ``progress``: a progress bar over regions (default: for 500 regions or more)."""
        tau = self.tau if tau is None else tau
        check_common_arguments(k, tau, self.normalize, self.jacobian.dim)
        parsed = self._regions(regions, background)
        check_k_against_regions(k, parsed.foreground)
        solutions = []
        for J, basis in zip(self._values, self.bases):
            if parsed.background is None:
                solutions.append(solve_bulk(basis, parsed, k, tau, self.normalize, tol=self.tol, progress=progress,
                                            backend=self.backend))
            else:
                method = "refined" if _refined_fits(J, tau) else "cholesky"
                solutions.append(solve_general(J, parsed, k, tau, self.normalize, method=method, tol=self.tol,
                                               dtype=self.dtype))
        info = {"backend": self.backend, "backend_reason": self.backend_reason, "tau": tau,
                "normalize": self.normalize, "latents": self.latents}
        return _package(solutions, parsed, self.jacobian.batched and self.latents == "per_image", info)

    def factorize(self, region, k: int = 16, tau: Optional[float] = None, background=None) -> Directions:
        """Directions for one region (``[k, d]``, or ``[N, k, d]`` per image)."""
        return self.factorize_many(region, k=k, tau=tau, background=background)
