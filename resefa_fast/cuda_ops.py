"""Thin Python wrappers over the CUDA extension ``resefa_fast._C`` (csrc/), with the argument checks.

Every op checks its arguments here, once, and raises :class:`~resefa_fast.errors.ResefaError` (a ``ValueError``)
naming the argument; failures inside CUDA / cuBLAS / cuSOLVER raise :class:`CudaOpError` (a ``RuntimeError``).
A generalised problem whose B is not positive definite raises ``ResefaError`` (an ill-posed input, not a crash).
The torch twins with the same signatures are in :mod:`resefa_fast.gram` (``masked_grams``, ``row_energies``).

Symbols: P pixels (rows of J), d latent dims, R regions, k directions / columns of JV.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ._ext import require_extension
from .errors import ResefaError, check

PRECISIONS = {"fp32": 0, "tf32": 1, "bf16": 2}


class CudaOpError(RuntimeError):
    """A CUDA, cuBLAS or cuSOLVER call of the extension failed (status or ``info`` code in the message)."""


def _call(name: str, *args):
    """Run ``_C.<name>(*args)``, turning its ValueError / RuntimeError into ResefaError / CudaOpError."""
    extension = require_extension()
    try:
        return getattr(extension, name)(*args)
    except ValueError as error:
        raise ResefaError(f"{name}: {error}") from None
    except RuntimeError as error:
        raise CudaOpError(f"{name}: {error}") from None


def _check_tensor(t, argument: str, dims: int, dtypes=(torch.float32,), cuda: bool = True) -> None:
    check(isinstance(t, torch.Tensor), argument, "a torch.Tensor", type(t).__name__)
    check(t.dim() == dims, argument, f"a {dims}-D tensor", f"shape {tuple(t.shape)}")
    check(t.dtype in dtypes, argument, f"of dtype {' or '.join(map(str, dtypes))}", t.dtype)
    check(t.numel() > 0, argument, "non-empty", f"shape {tuple(t.shape)}")
    check(not cuda or t.is_cuda, argument, "a CUDA tensor", t.device)


def masked_grams(jacobian: torch.Tensor, weights: torch.Tensor, out: Optional[torch.Tensor] = None,
                 accumulate: bool = False, precision: str = "fp32",
                 workspace_bytes: int = 512 << 20) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grams [R, d, d], traces [R])``: ``grams[r] = Jᵀ diag(weights[r]) J``, ``traces[r] = Σ_p w[r,p] ‖J_p‖²``.

    ``jacobian`` ``[P, d]`` and ``weights`` ``[R, P]`` (values in [0, 1]) float32 CUDA. ``accumulate=True`` adds into
    ``out`` (pixel chunks streaming in; ``traces`` are this chunk's). ``precision``: "fp32" (exact float32),
    "tf32" or "bf16" (tensor-core operands, float32 accumulation). Weighted copies of J for a block of masks are
    formed in a workspace of at most ``workspace_bytes`` (torch's caching allocator), then cuBLAS strided-batched
    GEMM; J is read once per pixel block for all masks of the block."""
    check(precision in PRECISIONS, "precision", f"one of {tuple(PRECISIONS)}", repr(precision))
    _check_tensor(jacobian, "jacobian", 2)
    _check_tensor(weights, "weights", 2)
    check(weights.shape[1] == jacobian.shape[0], "weights", f"[R, P] with P = {jacobian.shape[0]} (jacobian rows)",
          tuple(weights.shape))
    check(weights.device == jacobian.device, "weights", f"on {jacobian.device}", weights.device)
    R, d = weights.shape[0], jacobian.shape[1]
    if accumulate:
        check(out is not None, "out", "a [R, d, d] tensor when accumulate=True", None)
    if out is not None:
        _check_tensor(out, "out", 3)
        check(tuple(out.shape) == (R, d, d), "out", f"of shape {(R, d, d)}", tuple(out.shape))
        check(out.is_contiguous() and out.device == jacobian.device, "out", f"contiguous on {jacobian.device}",
              f"contiguous={out.is_contiguous()} on {out.device}")
    check(int(workspace_bytes) > 0, "workspace_bytes", "positive", workspace_bytes)
    return _call("masked_grams", jacobian.contiguous(), weights.contiguous(), out, bool(accumulate),
                 PRECISIONS[precision], int(workspace_bytes))


def row_energies(jacobian: torch.Tensor) -> torch.Tensor:
    """``e_p = ‖J_p‖²`` ``[P]`` for ``jacobian`` ``[P, d]`` float32 CUDA (one warp per row)."""
    _check_tensor(jacobian, "jacobian", 2)
    return _call("row_energies", jacobian.contiguous())


def check_refined_operands_arguments(jacobian, column_scale, row_scale) -> None:
    """Argument checks of :func:`prepare_refined_operands` that need no device (CPU-testable)."""
    _check_tensor(jacobian, "jacobian", 2, cuda=False)
    _check_tensor(column_scale, "column_scale", 1, cuda=False)
    _check_tensor(row_scale, "row_scale", 1, dtypes=(torch.float16,), cuda=False)
    P, d = jacobian.shape
    check(column_scale.shape[0] == d, "column_scale", f"[d] with d = {d} (jacobian columns)", tuple(column_scale.shape))
    check(row_scale.shape[0] == P, "row_scale", f"[P] with P = {P} (jacobian rows)", tuple(row_scale.shape))


def prepare_refined_operands(jacobian: torch.Tensor, column_scale: torch.Tensor, row_scale: torch.Tensor,
                             float64: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """``(half [P, d] float16, exact [P, d] float64 or None, energies [P] float64)``: the refined one-region route's
    operands (:mod:`resefa_fast.solve.refined`, :func:`resefa_fast.gram.approximate_gram`) in one pass over J.

    ``half`` is bit for bit what ``torch.mul(jacobian, column_scale, out=half); half.mul_(row_scale[:, None])``
    gives (float32 product rounded to float16, then the float16 product with the row scale rounded once),
    ``exact = jacobian.double()`` (skipped, ``None``, when ``float64=False``) and ``energies[p] = Σ_j J[p, j]²``
    accumulated in float64 (a fixed order: deterministic). ``jacobian`` ``[P, d]`` float32, ``column_scale``
    ``[d]`` float32, ``row_scale`` ``[P]`` float16, CUDA tensors on one device. Why: the three torch passes (scaled
    float16 copy, ``J.to(float64)``, float64 row energies) take 7.6 ms at P = 65,536, d = 9,216 on an H100; one
    kernel that reads J once (2.4 GB) and writes the float16 (1.2 GB) and float64 (4.8 GB) copies should take about
    2.6 ms at the bandwidth bound (an estimate, not yet measured)."""
    check_refined_operands_arguments(jacobian, column_scale, row_scale)
    check(jacobian.is_cuda, "jacobian", "a CUDA tensor", jacobian.device)
    for name, t in (("column_scale", column_scale), ("row_scale", row_scale)):
        check(t.device == jacobian.device, name, f"on {jacobian.device} (jacobian's device)", t.device)
    check(isinstance(float64, bool), "float64", "a bool", type(float64).__name__)
    half, exact, energies = _call("prepare_refined_operands", jacobian.contiguous(), column_scale.contiguous(),
                                  row_scale.contiguous(), float64)
    return half, exact, energies


def check_gather_arguments(jv, scale, boxes, masks, grid) -> Tuple[int, int, int]:
    """Argument checks of :func:`gather_scaled_rows` (device-independent, CPU-testable); returns ``(C, H, W)``."""
    _check_tensor(jv, "jv", 2, cuda=False)
    _check_tensor(scale, "scale", 2, cuda=False)
    check(scale.shape[1] == jv.shape[1], "scale", f"[R, {jv.shape[1]}] (one scale per column of jv)",
          tuple(scale.shape))
    check((boxes is None) != (masks is None), "boxes / masks", "exactly one of them given",
          f"boxes={'set' if boxes is not None else None}, masks={'set' if masks is not None else None}")
    check(isinstance(grid, (tuple, list)) and len(grid) == 2 and all(int(g) > 0 for g in grid), "grid",
          "(H, W) with positive sizes", grid)
    H, W = int(grid[0]), int(grid[1])
    check(jv.shape[0] % (H * W) == 0, "jv", f"[C*H*W, k] rows with H*W = {H * W}", tuple(jv.shape))
    R = scale.shape[0]
    check(R <= 65535, "scale", "at most 65535 regions per call", R)
    if boxes is not None:
        _check_tensor(boxes, "boxes", 2, dtypes=(torch.int32, torch.int64), cuda=False)
        check(tuple(boxes.shape) == (R, 4), "boxes", f"[R, 4] = {(R, 4)} ([center_x, center_y, height, width])",
              tuple(boxes.shape))
        check(bool((boxes[:, 2:] >= 0).all()), "boxes", "non-negative heights and widths", boxes[:, 2:].min().item())
    else:
        _check_tensor(masks, "masks", 3, cuda=False)
        check(tuple(masks.shape) == (R, H, W), "masks", f"of shape {(R, H, W)}", tuple(masks.shape))
        check(bool(((masks >= 0) & (masks <= 1)).all()), "masks", "weights in [0, 1]", None)
    return jv.shape[0] // (H * W), H, W


def gather_scaled_rows(jv: torch.Tensor, scale: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                       masks: Optional[torch.Tensor] = None,
                       grid: Sequence[int] = (256, 256)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bulk-path operands ``K̃_r = diag(√m_r) · JV[rows of region r] · diag(scale[r])`` for all regions at once.

    ``jv`` ``[P, k]`` with P = C·H·W (pixel index c·H·W + h·W + w), ``scale`` ``[R, k]``; regions as ``boxes``
    ``[R, 4]`` (original convention ``[center_x, center_y, height, width]``, x indexes rows, clipped to the grid;
    no mask is materialised) or dense ``masks`` ``[R, H, W]`` (rows with m > 0). Returns ``(out [R, max_rows, k],
    counts [R] int32)``: region r's rows in increasing pixel order, zero rows beyond ``counts[r]``."""
    C, H, W = check_gather_arguments(jv, scale, boxes, masks, grid)
    check(jv.is_cuda and scale.device == jv.device, "jv / scale", "CUDA tensors on one device",
          f"{jv.device} / {scale.device}")
    if boxes is not None:
        boxes = boxes.to(device=jv.device, dtype=torch.int32).contiguous()
    else:
        masks = masks.to(device=jv.device, dtype=torch.float32).contiguous()
    return _call("gather_scaled_rows", jv.contiguous(), scale.contiguous(), boxes, masks, C, H, W)


def _check_square(a, argument: str, batched: bool = False) -> None:
    _check_tensor(a, argument, 3 if batched else 2, dtypes=(torch.float32, torch.float64), cuda=False)
    check(a.shape[-1] == a.shape[-2], argument, "square", tuple(a.shape))
    check(a.is_cuda, argument, "a CUDA tensor", a.device)


def syevdx_topk(a: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of the symmetric ``a`` ``[n, n]`` (float32 / float64; cuSOLVER Xsyevdx by index range,
    lower triangle read): ``(values [k] descending, vectors [n, k])`` with column ``j`` the eigenvector of
    ``values[j]`` (torch.linalg.eigh's layout, largest first)."""
    _check_square(a, "a")
    check(isinstance(k, int) and 1 <= k <= a.shape[0], "k", f"an int in [1, {a.shape[0]}]", k)
    values, rows = _call("syevdx_topk", a.contiguous(), k)
    return values, rows.mT


def sygvdx_topk(a: torch.Tensor, b: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``a x = λ b x`` (``b`` SPD; cuSOLVER sygvdx): ``(values [k] descending, vectors [n, k])``,
    vectors ``b``-orthonormal (``xᵀ b x = 1``), not unit length. ``ResefaError`` when ``b`` is not positive
    definite (its Cholesky factorisation fails)."""
    _check_square(a, "a")
    _check_square(b, "b")
    check(b.shape == a.shape and b.dtype == a.dtype and b.device == a.device, "b",
          f"of a's shape {tuple(a.shape)}, dtype {a.dtype}, device {a.device}",
          f"{tuple(b.shape)} {b.dtype} {b.device}")
    check(isinstance(k, int) and 1 <= k <= a.shape[0], "k", f"an int in [1, {a.shape[0]}]", k)
    values, rows = _call("sygvdx_topk", a.contiguous(), b.contiguous(), k)
    return values, rows.mT


def syevj_batched(a: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """All eigenpairs of many symmetric matrices ``a`` ``[B, n, n]`` at once (cuSOLVER Xsyev batched):
    ``(values [B, n] ascending, vectors [B, n, n])`` in torch.linalg.eigh's layout (columns)."""
    _check_square(a, "a", batched=True)
    values, rows = _call("syev_batched", a.contiguous())
    return values, rows.mT


def truncated_svd(a: torch.Tensor, k: int, oversample: int = 10, niters: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` singular values ``s [k]`` (descending) and right singular vectors ``v [n, k]`` (columns) of
    ``a`` ``[m, n]`` by cuSOLVER's randomised Xgesvdr (``oversample`` extra columns, ``niters`` power
    iterations; needs ``k + oversample <= min(m, n)``)."""
    _check_tensor(a, "a", 2, dtypes=(torch.float32, torch.float64))
    small = min(a.shape)
    check(isinstance(k, int) and k >= 1, "k", "a positive int", k)
    check(isinstance(oversample, int) and oversample >= 0 and k + oversample <= small, "oversample",
          f"a non-negative int with k + oversample <= min(m, n) = {small}", oversample)
    check(isinstance(niters, int) and niters >= 0, "niters", "a non-negative int", niters)
    s, rows = _call("gesvdr_topk", a.contiguous(), k, oversample, niters)
    return s, rows.mT


#: Tangent dtypes :func:`tangent_affine` takes.
TANGENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tangent_affine(base: torch.Tensor, A: Optional[torch.Tensor] = None, B: Optional[torch.Tensor] = None,
                   e: Optional[torch.Tensor] = None, X: Optional[torch.Tensor] = None,
                   f: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out[t, c, q] = base[t, c, q] · A[c, q] + B[c, q] · e[t, c] + X[c, q] · f[t, c]`` in one pass over the k
    tangents (``resefa_fast.models.ops.affine_tangents`` uses it between two convolutions of the explicit
    tangents). ``base`` ``[k, C, ...]`` float32 / float16 / bfloat16 CUDA, ``out`` alike; ``A``, ``B``, ``X``
    float32 with ``C·Q`` elements (Q = the product of base's trailing sizes; A None: 1); ``e``, ``f`` float32
    ``[k, C]``, given with B and X respectively. Arithmetic in float32, one rounding to base's dtype."""
    _check_tensor(base, "base", base.dim(), dtypes=TANGENT_DTYPES)
    check(base.dim() >= 2, "base", "[k, C, ...]", tuple(base.shape))
    k, C = base.shape[:2]
    Q = base[0, 0].numel()
    for name, t in (("A", A), ("B", B), ("X", X)):
        if t is not None:
            _check_tensor(t, name, t.dim())
            check(t.numel() == C * Q and t.device == base.device, name,
                  f"{C * Q} float32 elements (C·Q) on {base.device}", f"{t.numel()} on {t.device}")
    for name, t, partner in (("e", e, B), ("f", f, X)):
        check((t is None) == (partner is None), name, "given exactly when its primal term (B / X) is", t is None)
        if t is not None:
            _check_tensor(t, name, 2)
            check(tuple(t.shape) == (k, C) and t.device == base.device, name, f"[{k}, {C}] on {base.device}",
                  f"{tuple(t.shape)} on {t.device}")
    contiguous = [None if t is None else t.contiguous() for t in (A, B, e, X, f)]
    return _call("tangent_affine", base.contiguous(), *contiguous)
