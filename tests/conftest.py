"""Shared test matrix, tolerances and helpers (pytorch_scatter's testing.py pattern)."""
import os

import pytest
import torch

from resefa_fast.testing import random_jacobian

#: Devices every solver test runs on.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: Accuracy targets of DESIGN.md §6, one row per compute dtype, each with its reason.
TOLERANCES = {
    # float32 paths: relative eigenvalue error 1e-4 (DESIGN.md §6); |cos| 0.9999 where the relative gap >= 1e-2.
    torch.float32: {"eigenvalue_rtol": 1e-4, "min_abs_cos": 0.9999, "min_relative_gap": 1e-2,
                    "max_residual": 1e-4},
    # float64 paths: relative eigenvalue error 1e-10 (DESIGN.md §6).
    torch.float64: {"eigenvalue_rtol": 1e-10, "min_abs_cos": 1 - 1e-10, "min_relative_gap": 1e-2,
                    "max_residual": 1e-10},
}


def relative_gaps(eigenvalues):
    """Relative gap of each eigenvalue to its neighbours ``[..., k]`` (the last one: to the one above only)."""
    lam = eigenvalues.double()
    gap = torch.full_like(lam, float("inf"))
    diff = (lam[..., :-1] - lam[..., 1:]).abs()
    gap[..., :-1] = torch.minimum(gap[..., :-1], diff)
    gap[..., 1:] = torch.minimum(gap[..., 1:], diff)
    return gap / lam.abs()


def assert_matches_reference(result_values, result_directions, ref_values, ref_directions, dtype,
                             reference_next=None, require_checked=True):
    """Compare a fast path's top-k with the reference by DESIGN.md §6 (eigenvectors up to sign, only where the
    relative eigengap allows). ``reference_next``: the reference's (k+1)-th eigenvalue, for the last gap."""
    tol = TOLERANCES[dtype]
    values = result_values.double().cpu()
    ref_values = ref_values.double().cpu()
    rel = (values - ref_values).abs() / ref_values.abs()
    assert bool(torch.isfinite(values).all())
    assert float(rel.max()) <= tol["eigenvalue_rtol"], f"eigenvalue rel. error {float(rel.max()):.3g}"
    cos = (result_directions.double().cpu() * ref_directions.double().cpu()).sum(-1).abs()
    gaps = relative_gaps(ref_values)
    if reference_next is not None:
        last = (ref_values[..., -1] - reference_next.double().cpu()).abs() / ref_values[..., -1].abs()
        gaps[..., -1] = torch.minimum(gaps[..., -1], last)
    else:
        gaps[..., -1] = 0  # unknown gap to the (k+1)-th: not checked
    checked = gaps >= tol["min_relative_gap"]
    if not bool(checked.any()):
        assert not require_checked, "no direction had a gap large enough to be checked: pick another test problem"
        return
    worst = float(cos[checked].min())
    assert worst >= tol["min_abs_cos"], f"|cos| with the reference {worst:.8f} < {tol['min_abs_cos']}"


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def make_jacobian():
    """``make_jacobian(grid, d, seed=..., **kw)`` -> a generator-like ``[H, W, d]`` (or ``[C, H, W, d]``) Jacobian."""
    def make(grid, dim, channels=1, dtype=torch.float32, device="cpu", **kwargs):
        J = random_jacobian(grid, dim, channels=channels, dtype=dtype, device=device, **kwargs)
        shape = (channels,) + tuple(grid) if channels > 1 else tuple(grid)
        return J.reshape(*shape, dim)
    return make
