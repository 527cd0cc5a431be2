"""Study (CPU, float64 emulation): can the bulk path form its per-region Gram ``W = K̃K̃ᵀ`` in TF32 / float16 and
still reach float64 eigenpairs with a few exact products? (benchmarks/NOTES.md item 19; issue 4's d = 9216 target.)

One box region of a generator-like Jacobian; ``K̃ = diag(√m) JV[rows] D_a`` exactly as the bulk path builds it.
``W̃`` = the product of ``K̃`` rounded to TF32 (10 mantissa bits, truncated), bfloat16, or float16 with power-of-two
column scales, accumulated in float32 (what tensor cores do). Its top-b eigenvectors start a refinement in which
every step costs one exact float64 product ``W X = K̃(K̃ᵀX)`` (what a GPU would stream from the float64 K̃):
Rayleigh–Ritz, residual ``R = W X − X Θ``, then the first-order correction ``X += (θ_i − W̃)⁻¹ R`` on the
complement of the block, either from W̃'s full eigendecomposition or from ``M`` terms of its Neumann series
``Σ_m (P W̃ P / θ_i)^m P R / θ_i`` (products with the low-precision W̃ only). Reported per exact product: the
largest relative residual of the top k and the largest relative eigenvalue error against float64 eigh of W.

    python benchmarks/study_mixed_bulk.py            # d = 1024, a 480-row box, k = 16, b = 32 (about 10 s)
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from resefa_fast.regions import as_regions  # noqa: E402
from resefa_fast.solve import bulk  # noqa: E402
from resefa_fast.solve.common import scale_constants, tf32_truncate  # noqa: E402
from resefa_fast.testing import random_jacobian  # noqa: E402


def tf32(x):
    """float32 with the mantissa truncated to TF32's 10 bits."""
    return tf32_truncate(x.float().contiguous())


def bfloat16(x):
    return x.to(torch.bfloat16).float()


def float16_scaled(x):
    """float16 after a power-of-two scale per column (the refined route's operand format)."""
    scale = 2.0 ** torch.floor(torch.log2(x.abs().amax(0).clamp_min(1e-300)))
    return (x / scale).half().float() * scale.float()


def region_rows(d: int, box, grid: int, tau: float = 1e-3):
    """``K̃`` ``[n, r]`` float64 of one box, built as the bulk path builds it."""
    J = random_jacobian((grid, grid), d, seed=1)
    basis = bulk.precompute(J)
    weights = as_regions(box, (1, grid, grid), grid * grid, "cpu").foreground
    rows, w, counts = bulk._gather_rows(weights)
    _, foreground_sum, foreground_energy, P, total_energy = bulk._region_totals(basis, weights, counts, None)
    c_f, c_b = scale_constants(foreground_sum, P - foreground_sum, "mean")
    a = tau * c_b * (total_energy - foreground_energy)
    scale = (c_b[:, None] * basis.sigma[None, :] + a[:, None]).rsqrt()
    return (basis.JV[rows] * w.sqrt()[..., None] * scale[:, None, :])[0]


def refine(K, W_approx, mu, k, b, steps, terms):
    """``[(residual, eigenvalue error)]`` after each exact product; ``terms`` None: the correction from W̃'s full
    eigendecomposition, else that many Neumann terms."""
    values, vectors = torch.linalg.eigh(W_approx)
    values, vectors = values.flip(0), vectors.flip(1)
    X, history = vectors[:, :b].clone(), []
    for _ in range(steps):
        Y = K @ (K.T @ X)  # the one exact product of the step
        theta, Q = torch.linalg.eigh(0.5 * (X.T @ Y + Y.T @ X))
        theta, Q = theta.flip(0), Q.flip(1)
        X, Y = X @ Q, Y @ Q
        R = Y - X * theta
        history.append((float((R[:, :k].norm(dim=0) / theta[0]).max()),
                        float(((theta[:k] - mu[:k]).abs() / mu[:k]).max())))
        if terms is None:
            outside, out_values = vectors[:, b:], values[b:]
            delta = outside @ ((outside.T @ R) / (theta[None, :] - out_values[:, None]))
        else:
            project = lambda V: V - X @ (X.T @ V)  # noqa: E731
            term = project(R) / theta[None, :]
            delta = term.clone()
            for _ in range(terms):
                term = project(W_approx @ term) / theta[None, :]
                delta = delta + term
        X = torch.linalg.qr(X + delta).Q
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--box", type=int, nargs=4, default=[20, 20, 20, 24])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    K = region_rows(args.d, tuple(args.box), args.grid)
    W = K @ K.T
    mu = torch.linalg.eigvalsh(W).flip(0)
    print(f"K̃ {tuple(K.shape)}, μ_1 {mu[0]:.3e}, gap μ_k / μ_b {float(mu[args.k - 1] / mu[args.block - 1]):.1f}")
    print("| W̃ operands | ‖W̃ − W‖/‖W‖ | correction | " + " | ".join(f"after {s + 1}" for s in range(args.steps)) + " |")
    print("|---|---:|---|" + "---:|" * args.steps)
    for name, rounding in (("TF32", tf32), ("bfloat16", bfloat16), ("float16, column scales", float16_scaled)):
        Kq = rounding(K)
        W_approx = (Kq @ Kq.T).double()  # float32 accumulation, then held in float64 for the study
        error = float((W_approx - W).norm() / W.norm())
        for terms in (None, 1, 2):
            history = refine(K, W_approx, mu, args.k, args.block, args.steps, terms)
            label = "full eigenbasis of W̃" if terms is None else f"{terms} Neumann term(s)"
            print(f"| {name} | {error:.1e} | {label} | " + " | ".join(f"{r:.0e} / {e:.0e}" for r, e in history)
                  + " |")
    print("(cells: largest relative residual of the top k / largest relative eigenvalue error, after each exact "
          "float64 product)")


if __name__ == "__main__":
    main()
