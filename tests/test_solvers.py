"""Every solver path against the float64 reference, on generator-like random Jacobians."""
import numpy as np
import pytest
import torch

import resefa_fast as rf
from resefa_fast import reference
from resefa_fast.regions import as_regions, box_mask
from resefa_fast.gram import approximate_gram, gram
from resefa_fast.solve.common import Solution, canonical_directions, default_tolerance
from resefa_fast.solve.general import solve_general, woodbury_inverse
from resefa_fast.solve.refined import BlockedCholesky, exact_products, solve_refined
from resefa_fast.testing import random_jacobian

from conftest import assert_matches_reference, naive_float32

K = 6

# (grid, d, region): odd sizes (flash-attention's habit), a 1-pixel-wide region, a half-image region.
CASES = [
    ((7, 9), 8, (3, 4, 3, 3)),
    ((16, 16), 17, (8, 8, 6, 10)),
    ((24, 20), 96, (10, 9, 8, 7)),
    ((32, 32), 512, (16, 16, 30, 14)),
]


def _reference(J, region, k, **kwargs):
    """The oracle with one more eigenpair than asked, to know the gap after the k-th."""
    out = rf.factorize(J, region, k=k + 1, backend="reference", **kwargs)
    return out.eigenvalues[..., :k], out.directions[..., :k, :], out.eigenvalues[..., k]


@pytest.mark.parametrize("grid,dim,box", CASES)
@pytest.mark.parametrize("method", ["cholesky", "woodbury", "refined", "bulk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paths_match_reference_on_boxes(make_jacobian, device, grid, dim, box, method, dtype):
    J = make_jacobian(grid, dim, seed=hash((grid, dim)) % 1000, device=device, rank=min(30, dim))
    k = min(K, dim - 1)
    if method == "bulk" and dtype == torch.float32:
        with pytest.raises(rf.ResefaError, match="float64 for the bulk path"):
            rf.factorize(J, [box], k=k, method=method, dtype=dtype)
        return
    ref_values, ref_directions, ref_next = _reference(J, box, k)
    out = rf.factorize(J, [box], k=k, method=method, dtype=dtype)
    assert out.directions.shape == (1, k, dim) and out.directions.device.type == device
    assert out.directions.dtype == dtype
    naive = naive_float32(J, rf.box_mask(box, grid), k)
    assert_matches_reference(out.eigenvalues[0], out.directions[0], ref_values, ref_directions, dtype, ref_next,
                             naive=naive)
    assert float(out.residuals.max()) <= 100 * default_tolerance(dtype)


@pytest.mark.parametrize("method", ["cholesky", "woodbury", "refined", "bulk"])
def test_soft_masks_and_channels(make_jacobian, device, method):
    """Soft (float) masks on a 3-channel Jacobian: the spatial mask applies to every channel."""
    J = make_jacobian((20, 18), 40, channels=3, seed=5, device=device)
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(18.0), indexing="ij")
    masks = torch.stack([torch.exp(-((yy - 8) ** 2 + (xx - 6) ** 2) / 20.0),
                         torch.sigmoid(xx - 12.0)])  # [2, 20, 18] soft regions
    ref_values, ref_directions, ref_next = _reference(J, masks, K)
    out = rf.factorize(J, masks, k=K, method=method)
    for r in range(2):
        assert_matches_reference(out.eigenvalues[r], out.directions[r], ref_values[r], ref_directions[r],
                                 torch.float64, ref_next[r])


@pytest.mark.parametrize("method", ["cholesky", "woodbury", "refined"])
def test_explicit_background(make_jacobian, device, method):
    J = make_jacobian((16, 16), 48, seed=11, device=device)
    background = torch.zeros(16, 16)
    background[:, 12:] = 1  # only the right strip counts as background
    ref_values, ref_directions, ref_next = _reference(J, (8, 5, 6, 6), K, background=background)
    out = rf.factorize(J, (8, 5, 6, 6), k=K, background=background, method=method)
    assert_matches_reference(out.eigenvalues, out.directions, ref_values, ref_directions, torch.float64, ref_next)
    # and it is a different problem from the complement background
    complement = rf.factorize(J, (8, 5, 6, 6), k=K, backend="reference")
    assert float((complement.eigenvalues - ref_values).abs().max()) > 1e-3 * float(ref_values.abs().max())


@pytest.mark.parametrize("d", [64, 256])
def test_bulk_equals_general_on_many_regions(make_jacobian, device, d):
    """60 boxes of 4-121 rows in one chunk, padded to the largest: at d = 64 in the column form (W = K̃ᵀK̃, most
    regions have more rows than d), at d = 256 in the row form (W = K̃K̃ᵀ); the padding rows must count as zero."""
    J = make_jacobian((32, 32), d, seed=3, device=device)
    rng = np.random.default_rng(0)
    boxes = np.stack([rng.integers(4, 28, 60), rng.integers(4, 28, 60), rng.integers(2, 12, 60),
                      rng.integers(2, 12, 60)], axis=1)
    k = 3
    bulk = rf.Factorizer(J).factorize_many(boxes, k=k)
    general = rf.factorize(J, boxes, k=k, method="cholesky")
    ref = rf.factorize(J, boxes, k=k + 1, backend="reference")
    assert bulk.directions.shape == (60, k, d)
    for r in range(60):
        for out in (bulk, general):
            assert_matches_reference(out.eigenvalues[r], out.directions[r], ref.eigenvalues[r, :k],
                                     ref.directions[r, :k], torch.float64, ref.eigenvalues[r, k])


@pytest.mark.parametrize("weights", ["boxes", "soft boxes", "no iterations left", "k = 16"])
def test_bulk_mixed_gram_matches_reference(make_jacobian, device, monkeypatch, weights):
    """gram="mixed" (benchmarks/NOTES.md items 19-20): the per-region Gram K̃K̃ᵀ from float16 operands, float64
    eigenpairs from a few exact products; with no products left (MIXED_MAX_PRODUCTS = 1) every region falls back to
    its float64 Gram. 60 boxes of 4-121 rows at d = 256: the row form, where the route applies. With k = 16 the
    block (32) is wider than the 20-row boxes (their W̃ is rank-deficient): they must still come out right."""
    from resefa_fast.solve import bulk

    if weights == "no iterations left":
        monkeypatch.setattr(bulk, "MIXED_MAX_PRODUCTS", 1)
    J = make_jacobian((32, 32), 256, seed=3, device=device)
    rng = np.random.default_rng(0)
    boxes = np.stack([rng.integers(4, 28, 60), rng.integers(4, 28, 60), rng.integers(2, 12, 60),
                      rng.integers(2, 12, 60)], axis=1)
    k = 3
    if weights == "k = 16":
        boxes, k = boxes[boxes[:, 2] * boxes[:, 3] >= 20], 16
    regions = as_regions(boxes, (1, 32, 32), 1024, device)
    if weights == "soft boxes":
        soft = torch.rand(regions.foreground.shape, generator=torch.Generator().manual_seed(1)).to(device)
        regions = type(regions)(regions.foreground * (0.2 + 0.8 * soft), None)
    # the fallback's own solver iterative, so that its operator applications show in the count
    out = bulk.solve_bulk(bulk.precompute(J.reshape(1024, 256)), regions, k, 1e-3, "mean", solver="iterative",
                          gram="mixed")
    assert out.info["gram"] == "mixed"
    applications = out.info["applications"][0]
    if weights in ("boxes", "soft boxes"):
        assert applications <= bulk.MIXED_MAX_PRODUCTS  # no fallback needed
    elif weights == "no iterations left":
        assert applications > 1  # every region went on in float64
    R = len(boxes)
    ref = rf.factorize(J, regions.foreground.reshape(R, 32, 32).cpu(), k=k + 1, backend="reference")
    for r in range(R):
        assert_matches_reference(out.eigenvalues[r], out.directions[r], ref.eigenvalues[r, :k],
                                 ref.directions[r, :k], torch.float64, ref.eigenvalues[r, k])


def test_bulk_mixed_gram_with_large_eigenvalues(device):
    """The mixed route where λ c_b / c_f reaches 1e8 (ten latent dims move one box only): the transformed pencil
    needs the Gram itself, which the route then forms in float64; the result meets the reference."""
    from resefa_fast.solve import bulk

    box = (12, 12, 9, 9)  # 81 rows < d = 128: the row form
    J = random_jacobian((24, 24), 128, seed=13, rank=40, noise=1e-6, device=device).reshape(24, 24, 128)
    inside = rf.box_mask(box, (24, 24)).bool().to(device)
    J[inside, :10] += 30 * torch.randn(81, 10, generator=torch.Generator().manual_seed(0)).to(device)
    ref = rf.factorize(J, box, k=7, tau=1e-6, backend="reference")
    assert float(ref.eigenvalues[0]) > 1e4
    out = bulk.solve_bulk(bulk.precompute(J.reshape(576, 128)), as_regions(box, (1, 24, 24), 576, device), 6, 1e-6,
                          "mean", gram="mixed")
    assert_matches_reference(out.eigenvalues[0], out.directions[0], ref.eigenvalues[:6], ref.directions[:6],
                             torch.float64, ref.eigenvalues[6])


def test_bulk_rejects_an_unknown_gram(make_jacobian):
    from resefa_fast.solve import bulk

    J = make_jacobian((8, 8), 16, seed=1)
    with pytest.raises(Exception, match="`gram`"):
        bulk.solve_bulk(bulk.precompute(J.reshape(64, 16)), as_regions((2, 2, 3, 3), (1, 8, 8), 64, "cpu"), 2, 1e-3,
                        "mean", gram="float32")


def test_large_dimension_cpu(make_jacobian):
    """d = 2048 on the CPU (the largest size the issue asks for there), bulk and general."""
    J = make_jacobian((48, 48), 2048, seed=21, rank=60)
    ref_values, ref_directions, ref_next = _reference(J, (20, 24, 10, 16), 8)
    for method in ("cholesky", "bulk"):
        out = rf.factorize(J, [(20, 24, 10, 16)], k=8, method=method)
        assert_matches_reference(out.eigenvalues[0], out.directions[0], ref_values, ref_directions, torch.float64,
                                 ref_next)


def test_truncated_basis_within_bound(make_jacobian):
    """Truncating the eigenbasis moves √μ by at most the reported bound; with a rank-30 J a rank-40 basis is
    nearly exact."""
    J = make_jacobian((24, 24), 120, seed=8, rank=30, noise=1e-4)
    box = (12, 12, 8, 8)
    full = rf.Factorizer(J, dtype=torch.float64).factorize(box, k=4)
    for rank in (10, 40):
        cut = rf.Factorizer(J, rank=rank, dtype=torch.float64).factorize(box, k=4)
        P = 24 * 24
        regions = as_regions(box, (1, 24, 24), P)
        m = regions.foreground[0].double()
        c_f, c_b = 1 / m.sum(), 1 / (P - m.sum())
        sqrt_mu = lambda lam: (lam / (c_f + lam * c_b)).sqrt()  # noqa: E731
        error = (sqrt_mu(cut.eigenvalues) - sqrt_mu(full.eigenvalues)).abs().max()
        bound = float(cut.info["truncation_bound"][0])
        assert bound > 0 and float(error) <= bound * (1 + 1e-6)
    assert float(error) < 1e-3 * float(sqrt_mu(full.eigenvalues).max())


def test_original_port_agrees_when_regularised(make_jacobian):
    """DESIGN.md §1: with --full_rank the original's top directions equal the float64 solution (|cos| >= 0.9997)
    on a rank-30 + 1e-3 noise J at d = 96; the same call through our paths is the reference's answer."""
    J = make_jacobian((32, 32), 96, seed=2, rank=30)
    regions = as_regions((16, 12, 8, 10), (1, 32, 32), 1024)
    ref = reference.solve(J.reshape(-1, 96), regions, 8, 1e-3, "mean")
    port = reference.solve_original(J.reshape(-1, 96), regions, 8, tau=1e-3, full_rank=True)
    cos = (port.directions * ref.directions).sum(-1).abs()
    assert float(cos.min()) >= 0.9997
    assert float(((port.eigenvalues - ref.eigenvalues).abs() / ref.eigenvalues).max()) < 1e-2


def test_original_port_without_regularisation_drifts(make_jacobian):
    """Without --full_rank the original inverts an ill-conditioned M_b; its directions are measurably not the
    τ-regularised answer, while ours are (the reference with tau -> ours with the same tau)."""
    J = make_jacobian((32, 32), 96, seed=2, rank=30)
    regions = as_regions((16, 12, 8, 10), (1, 32, 32), 1024)
    ref = reference.solve(J.reshape(-1, 96), regions, 8, 1e-3, "mean")
    port = reference.solve_original(J.reshape(-1, 96), regions, 8, full_rank=False)
    cos = (port.directions * ref.directions).sum(-1).abs()
    assert float(cos[0, 1:].min()) < 0.99


def test_eq12_correct_woodbury_and_the_papers_error():
    """(V D² Vᵀ + a I)⁻¹ = (1/a)(I − V D̃ Vᵀ), D̃ = D(aI + D²)⁻¹D; the paper's aI − V D̃ Vᵀ is not the inverse."""
    generator = torch.Generator().manual_seed(0)
    d, r, a = 40, 7, 0.3
    V = torch.linalg.qr(torch.randn(d, r, generator=generator, dtype=torch.float64)).Q
    D = torch.rand(r, generator=generator, dtype=torch.float64) * 3 + 0.1
    C = (V * D.square()) @ V.T + a * torch.eye(d, dtype=torch.float64)
    exact = torch.linalg.inv(C)
    assert torch.allclose(woodbury_inverse(V, D, a), exact, rtol=1e-12, atol=1e-12)
    d_tilde = D.square() / (a + D.square())
    papers = a * torch.eye(d, dtype=torch.float64) - (V * d_tilde) @ V.T
    assert float((papers - exact).abs().max()) > 0.1


def test_scaling_and_permutation_invariance(make_jacobian):
    """Scaling J leaves directions and λ unchanged (M_f, M_b and a all scale by s²); permuting pixels together
    with the mask changes nothing."""
    J = make_jacobian((16, 16), 30, seed=4, dtype=torch.float64).reshape(256, 30)
    mask = box_mask((8, 8, 5, 7), (16, 16)).flatten()
    base = rf.factorize(J, mask, k=4, grid=(16, 16), dtype=torch.float64)
    scaled = rf.factorize(J * 1e3, mask, k=4, grid=(16, 16), dtype=torch.float64)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(1))
    permuted = rf.factorize(J[perm], mask[perm], k=4, dtype=torch.float64)
    for other in (scaled, permuted):
        assert torch.allclose(other.eigenvalues, base.eigenvalues, rtol=1e-9)
        assert torch.allclose(other.directions, base.directions, atol=1e-8)


def test_normalisation_changes_eigenvalues_not_directions(make_jacobian):
    J = make_jacobian((16, 16), 24, seed=6)
    mean = rf.factorize(J, (8, 8, 4, 4), k=4, normalize="mean", tau=0.0, dtype=torch.float64)
    total = rf.factorize(J, (8, 8, 4, 4), k=4, normalize="sum", tau=0.0, dtype=torch.float64)
    assert torch.allclose(mean.directions, total.directions, atol=1e-8)
    # with tau = 0: λ_sum = λ_mean · (Σm / Σm_b)
    assert torch.allclose(total.eigenvalues, mean.eigenvalues * 16 / 240, rtol=1e-9)


@pytest.mark.parametrize("method", ["cholesky", "refined", "bulk"])
def test_tau_zero_singular_background_is_a_clear_error(method):
    """A rank-5 Jacobian with d = 12: M_b is singular without regularisation."""
    generator = torch.Generator().manual_seed(0)
    J = (torch.randn(100, 5, generator=generator) @ torch.randn(5, 12, generator=generator)).reshape(10, 10, 12)
    with pytest.raises(rf.ResefaError, match="tau"):
        rf.factorize(J, [(5, 5, 3, 3)], k=2, tau=0.0, method=method, dtype=torch.float64)
    out = rf.factorize(J, [(5, 5, 3, 3)], k=2, tau=1e-3, method=method, dtype=torch.float64)
    assert bool(torch.isfinite(out.eigenvalues).all())


def _local_jacobian(device):
    """A Jacobian with ten latent dims that move one box only: local directions with λ up to 5e8 at small τ."""
    box = (12, 12, 9, 9)
    J = random_jacobian((24, 24), 64, seed=13, rank=40, noise=1e-6, device=device).reshape(24, 24, 64)
    inside = rf.box_mask(box, (24, 24)).bool().to(device)
    J[inside, :10] += 30 * torch.randn(81, 10, generator=torch.Generator().manual_seed(0)).to(device)
    return J, box


@pytest.mark.parametrize("method,solver,dtype,tau", [
    ("bulk", "dense", torch.float64, 1e-3), ("bulk", "iterative", torch.float64, 1e-3),
    ("bulk", "dense", torch.float64, 1e-6), ("bulk", "iterative", torch.float64, 1e-6),
    ("cholesky", None, torch.float32, 1e-3), ("cholesky", None, torch.float64, 1e-6),
    ("refined", "float16", torch.float32, 1e-3), ("refined", "float16", torch.float64, 1e-6),
    ("refined", "float32", torch.float64, 1e-6),
])
def test_local_directions_with_large_eigenvalues(device, method, solver, dtype, tau):
    """λ c_b / c_f up to 1e8: μ = λ/(c_f + λ c_b) bunches just below 1/c_b, and every background quantity formed
    as JᵀJ − B would cancel up to 8 digits. Both paths must still meet DESIGN.md §6."""
    from resefa_fast.solve.bulk import precompute, solve_bulk

    J, box = _local_jacobian(device)
    ref = rf.factorize(J, box, k=7, tau=tau, backend="reference")
    assert float(ref.eigenvalues[0]) > 1e4  # the regime this test is about
    regions = as_regions(box, (1, 24, 24), 576, device)
    if method == "bulk":
        out = solve_bulk(precompute(J.reshape(576, 64)), regions, 6, tau, "mean", solver=solver)
    elif method == "refined":  # solver: the preconditioner's operand precision
        values, n, residuals, _ = solve_refined(J.reshape(576, 64), regions.foreground[0],
                                                regions.background_weights(torch.float64)[0], 6, tau, "mean",
                                                precision=solver)
        out = Solution(values[None].to(dtype), canonical_directions(n)[None].to(dtype), residuals[None], {})
    else:
        out = solve_general(J.reshape(576, 64), regions, 6, tau, "mean", dtype=dtype)
    naive = naive_float32(J, rf.box_mask(box, (24, 24)), 6, tau=tau)
    assert_matches_reference(out.eigenvalues[0], out.directions[0], ref.eigenvalues[:6], ref.directions[:6], dtype,
                             ref.eigenvalues[6], naive=naive)
    assert float(out.residuals.max()) <= 100 * default_tolerance(dtype)


@pytest.mark.skipif(not (torch.cuda.is_available() and rf.backend_info()["extension"]["available"]),
                    reason="needs a GPU and the CUDA extension")
def test_cuda_backend_bulk_matches_reference(make_jacobian):
    """backend="cuda": the API's default route (subspace iteration for these 72-row problems, Xsyev for stragglers)
    and the dense solver, whose small eigenproblems all go through the extension's batched Xsyev."""
    from resefa_fast.solve.bulk import precompute, solve_bulk

    J = make_jacobian((32, 32), 96, seed=17, device="cuda")
    boxes = np.array([[10, 10, 8, 9], [20, 14, 6, 12], [16, 24, 12, 6]])
    out = rf.Factorizer(J, backend="cuda").factorize_many(boxes, k=4)
    assert out.info["backend"] == "cuda" and "Xsyev" in out.info["ops"]
    dense = solve_bulk(precompute(J.reshape(1024, 96)), as_regions(boxes, (1, 32, 32), 1024, "cuda"), 4, 1e-3,
                       "mean", solver="dense", backend="cuda")
    assert dense.info["applications"] == [0]  # no iteration: every eigenproblem went to Xsyev
    ref = rf.factorize(J, boxes, k=5, backend="reference")
    for solution in (out, dense):
        for r in range(3):
            assert_matches_reference(solution.eigenvalues[r], solution.directions[r], ref.eigenvalues[r, :4],
                                     ref.directions[r, :4], torch.float64, ref.eigenvalues[r, 4])


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_refined_converges_from_a_low_precision_preconditioner(make_jacobian, device, precision):
    """The refined route on a larger generator-like problem: float64 accuracy from a float16/float32 Gram, in a
    few passes over J (each pass gains the digits the preconditioner has: about 2-3 for float16 at tau = 1e-3)."""
    J = make_jacobian((48, 48), 640, seed=21, device=device, rank=60, decay=0.7)
    box = (20, 26, 12, 30)
    ref_values, ref_directions, ref_next = _reference(J, box, 16)
    regions = as_regions(box, (1, 48, 48), 48 * 48, device)
    values, n, residuals, info = solve_refined(J.reshape(-1, 640), regions.foreground[0],
                                               regions.background_weights(torch.float64)[0], 16, 1e-3, "mean",
                                               precision=precision)
    assert info["passes_over_J"] <= 6, info
    assert info["residual_history"][-1] == float(residuals.max()) and len(info["residual_history"]) == \
        info["iterations"] + 1
    assert_matches_reference(values, canonical_directions(n), ref_values, ref_directions, torch.float64, ref_next)
    assert float(residuals.max()) <= default_tolerance(torch.float64)


def test_approximate_gram_rounds_only_the_operands(make_jacobian, device):
    """float16 operands (columns scaled by powers of two, which is exact), float32 accumulation: equal to the Gram
    of the rounded operands, and within float16's rounding (2^-11 relative) of the exact Gram."""
    J = make_jacobian((32, 32), 200, seed=4, device=device).reshape(-1, 200) * 1e-3  # small values: scaling matters
    rows = torch.rand(J.shape[0], generator=torch.Generator().manual_seed(1)).to(device)
    exact = gram(J.double(), row_scale=rows.double())
    approx = approximate_gram(J, rows, "float16")
    assert approx.dtype == torch.float32 and approx.shape == (200, 200)
    rel = float((approx.double() - exact).norm() / exact.norm())
    assert 1e-6 < rel < 2.0 ** -10, rel  # rounded (not exact), and by float16's unit roundoff at most
    with pytest.raises(ValueError, match="precision"):
        approximate_gram(J, rows, "bfloat16")


def test_bulk_chunks_pad_rows_to_the_alignment(device):
    """A chunk's row count is rounded up to ROW_ALIGNMENT (16-byte-aligned GEMM operands) but never past P; every
    region's rows come first with their weights, padding rows weigh 0."""
    from resefa_fast.solve import bulk

    weights = torch.zeros(2, 40, dtype=torch.float64, device=device)
    weights[0, [3, 7, 30]] = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64, device=device)
    weights[1, 10:21] = 1.0  # 11 rows
    rows, w, counts = bulk._gather_rows(weights)
    assert rows.shape == (2, 16) and w.shape == (2, 16) and counts.tolist() == [3, 11]
    assert sorted(rows[0, :3].tolist()) == [3, 7, 30] and sorted(rows[1, :11].tolist()) == list(range(10, 21))
    torch.testing.assert_close(w, torch.gather(weights, 1, rows), rtol=0, atol=0)
    assert bool((w[0, 3:] == 0).all()) and bool((w[1, 11:] == 0).all())
    rows, w, counts = bulk._gather_rows(weights[1:, 8:21])  # 11 rows of P = 13: 16 capped at P
    assert rows.shape == (1, 13) and counts.tolist() == [11] and sorted(rows[0, :11].tolist()) == list(range(2, 13))


@pytest.mark.parametrize("n, r", [(10, 13), (264, 40), (270, 16)])
def test_bulk_approximate_gram_is_the_gram_of_the_rounded_operands(device, n, r):
    """``W̃`` of the mixed route: the Gram of ``K D_a`` rounded to float16, summed in float32, for any rank r (K̃'s
    columns padded to a multiple of 8 inside) and row count n (blocked, block edges aligned, for n ≥ 256)."""
    from resefa_fast.solve.bulk import _approximate_gram

    generator = torch.Generator().manual_seed(n + r)
    K = torch.randn(3, n, r, generator=generator, dtype=torch.float64).to(device)
    scale = torch.rand(3, r, generator=generator, dtype=torch.float64).to(device) + 0.5
    W = _approximate_gram(K, scale)
    rounded = (K * scale[:, None, :]).half().double()
    expected = rounded @ rounded.transpose(1, 2)
    assert W.dtype == torch.float32 and W.shape == (3, n, n)
    assert float((W.double() - expected).abs().max() / expected.abs().max()) < 1e-6


def test_exact_products_are_float64_whatever_the_chunking(make_jacobian):
    """``J Z``, ``Jᵀ(m ∘ J Z)``, ``Jᵀ(m_b ∘ J Z)`` in float64 from a float32 J, independent of the row chunks."""
    J = make_jacobian((20, 30), 50, seed=8).reshape(-1, 50)
    generator = torch.Generator().manual_seed(2)
    Z = torch.randn(50, 7, generator=generator, dtype=torch.float64)
    m, b = torch.rand(600, generator=generator, dtype=torch.float64), torch.rand(600, generator=generator,
                                                                                  dtype=torch.float64)
    Jd = J.double()
    for chunk_bytes in (8 * 50, 8 * 50 * 7, 1 << 20):  # one row, 7 rows (600 is not a multiple), everything
        Y, F, B = exact_products(J, Z, m, b, chunk_bytes=chunk_bytes)
        assert Y.dtype == torch.float64
        torch.testing.assert_close(Y, Jd @ Z, rtol=1e-13, atol=0)
        torch.testing.assert_close(F, Jd.T @ (m[:, None] * (Jd @ Z)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(B, Jd.T @ (b[:, None] * (Jd @ Z)), rtol=1e-12, atol=1e-12)
        Y_alone, F_alone, B_alone = exact_products(J, Z, None, b, chunk_bytes=chunk_bytes)  # background only
        assert F_alone is None and torch.equal(Y_alone, Y)
        torch.testing.assert_close(B_alone, B, rtol=1e-12, atol=1e-12)  # a narrower GEMM: rounding only
    Y, F, B = exact_products(Jd, Z, m, b)  # a float64 J: whole GEMMs, no chunks
    torch.testing.assert_close(Y, Jd @ Z, rtol=1e-13, atol=0)
    torch.testing.assert_close(F, Jd.T @ (m[:, None] * (Jd @ Z)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(B, Jd.T @ (b[:, None] * (Jd @ Z)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("small_chunks", [False, True])
def test_pencil_products_from_foreground_rows_equal_all_rows(make_jacobian, monkeypatch, small_chunks):
    """M_f Z from the cached foreground rows (a box) equals the all-rows product; when the foreground rows do not
    fit a chunk, all rows are used (the same numbers)."""
    from resefa_fast.solve import refined

    if small_chunks:
        monkeypatch.setattr(refined, "CHUNK_BYTES", 8 * 50 * 7)
    J = make_jacobian((20, 30), 50, seed=9).reshape(-1, 50)
    m = rf.box_mask((8, 12, 6, 9), (20, 30)).reshape(-1).double()
    b = 1 - m
    Z = torch.randn(50, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pencil = refined._Pencil(J, m, b, 1 / m.sum(), 1 / b.sum(), torch.tensor(0.25, dtype=torch.float64),
                             torch.nonzero(m).flatten())
    assert (pencil.J_f is None) == small_chunks
    Y, F, B = pencil.images(Z)
    Jd = J.double()
    torch.testing.assert_close(F, Jd.T @ (m[:, None] * (Jd @ Z)) / m.sum(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(B, Jd.T @ (b[:, None] * (Jd @ Z)) / b.sum() + 0.25 * Z, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("block", [7, 16, 64])
def test_blocked_cholesky_solves_equal_triangular_solves(device, block):
    """Block substitution with inverted diagonal blocks (uneven last block included) equals TRSM."""
    generator = torch.Generator().manual_seed(block)
    A = torch.randn(50, 50, generator=generator, dtype=torch.float64)
    L = torch.linalg.cholesky(A @ A.T + 50 * torch.eye(50, dtype=torch.float64)).to(device)
    R = torch.randn(50, 5, generator=generator, dtype=torch.float64).to(device)
    factor = BlockedCholesky(L, block=block)
    torch.testing.assert_close(factor.solve_lower(R), torch.linalg.solve_triangular(L, R, upper=False))
    torch.testing.assert_close(factor.solve_upper(R), torch.linalg.solve_triangular(L.T, R, upper=True))
    torch.testing.assert_close(factor.solve(R), torch.cholesky_solve(R, L))


def test_tf32_split_is_exact():
    """``hi + lo`` is the input exactly, ``hi`` has TF32's 10-bit mantissa, ``lo`` is below its last bit."""
    from resefa_fast.solve.refined import _tf32_split

    A = torch.randn(64, 50, generator=torch.Generator().manual_seed(4)) * torch.logspace(-20, 20, 50, base=2)
    hi, lo = _tf32_split(A)
    assert torch.equal(hi + lo, A)
    assert int((hi.view(torch.int32) & 0x1FFF).abs().max()) == 0
    assert bool((lo.abs() <= A.abs() * 2.0 ** -10).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 tensor cores are a GPU feature")
def test_split_tf32_products_are_nearly_float32():
    """Three TF32 GEMMs of the split operands: within 1e-5 of the float64 product (one TF32 GEMM: ~1e-3)."""
    from resefa_fast.solve.refined import matmul_split_tf32

    generator = torch.Generator().manual_seed(6)
    A = torch.randn(700, 900, generator=generator, dtype=torch.float64)
    B = torch.randn(900, 300, generator=generator, dtype=torch.float64)
    exact = A @ B
    product = matmul_split_tf32(A.float().cuda(), B.float().cuda()).double().cpu()
    assert float((product - exact).norm() / exact.norm()) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 tensor cores are a GPU feature")
def test_split_tf32_block_substitution_is_nearly_float32():
    generator = torch.Generator().manual_seed(7)
    A = torch.randn(300, 320, generator=generator, dtype=torch.float64)
    L = torch.linalg.cholesky(A @ A.T / 320 + 0.1 * torch.eye(300, dtype=torch.float64))
    R = torch.randn(300, 100, generator=generator, dtype=torch.float64)
    exact = torch.linalg.solve_triangular(L, R, upper=False)
    X = BlockedCholesky(L.float().cuda(), block=64).solve_lower(R.float().cuda(), split_tf32=True).double().cpu()
    assert float((X - exact).norm() / exact.norm()) < 1e-5


@pytest.mark.skipif(not (torch.cuda.is_available() and rf.backend_info()["extension"]["available"]),
                    reason="needs the CUDA extension on a GPU")
def test_refined_operands_from_the_fused_kernel_equal_torch_ops(make_jacobian, monkeypatch):
    """The extension's one-pass operands give the same approximate Gram (bit for bit), float64 rows and energies
    as the torch-ops passes."""
    from resefa_fast.solve import refined

    J = make_jacobian((40, 50), 300, seed=12, device="cuda").reshape(-1, 300) * 1e-3
    root = torch.rand(2000, generator=torch.Generator().manual_seed(2)).cuda()
    root[:700] = 1
    fused = refined._operands(J, root, "float16")
    monkeypatch.setattr(refined, "extension_status", lambda: {"available": False})
    plain = refined._operands(J, root, "float16")
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-13, atol=0)


@pytest.mark.parametrize("decay", [1.02, 1.5])
def test_top_subspace_finds_the_top_eigenvectors(device, decay):
    """Fixed subspace iteration with a QR after each product: the top eigenvectors of a PSD matrix with a slowly or a
    fast decaying spectrum (λ_i = decay^-i, 1.5^-32 ≈ 2e-6: without the QRs float32 powers would lose the tail)."""
    from resefa_fast.solve.refined import _top_subspace

    generator = torch.Generator().manual_seed(3)
    n, q = 600, 32
    Q = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64)).Q
    values = decay ** -torch.arange(n, dtype=torch.float64)
    S = (Q * values) @ Q.T
    U = _top_subspace(S.float().to(device), q).double().cpu()
    assert torch.allclose(U.T @ U, torch.eye(q, dtype=torch.float64), atol=1e-5)
    top = 8 if decay > 1.1 else 4  # those separated from the rest by a gap the 6 powers resolve
    cosines = (Q[:, :top].T @ U[:, :top]).diagonal().abs()
    assert float(cosines.min()) > 0.999, cosines


def _psd_batch(count, n, rank, seed):
    """``count`` PSD matrices ``[count, n, n]`` float64: a rank-``rank`` part with a decaying spectrum plus a 1e-6
    noise floor (the shape of the bulk path's per-region Grams), and the dense eigh of each."""
    generator = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(count, n, n, generator=generator, dtype=torch.float64)).Q
    values = torch.cat([(1.0 + torch.arange(rank, dtype=torch.float64)) ** -1.0,
                        1e-6 * torch.rand(n - rank, generator=generator, dtype=torch.float64)])
    values = values * (1.0 + 0.2 * torch.rand(count, 1, generator=generator, dtype=torch.float64))
    W = (Q * values[:, None, :]) @ Q.transpose(1, 2)
    W = 0.5 * (W + W.transpose(1, 2))
    return W, torch.linalg.eigh(W)


def test_topk_eigh_matches_dense_eigh_on_a_batch(device):
    """The bulk path's iterative solver on a batch of generator-like PSD matrices: top-k eigenvalues and eigenvector
    subspaces equal the dense float64 eigh's, and every problem reports convergence."""
    from resefa_fast.solve.common import topk_eigh

    k = 12
    W, (ref_values, ref_vectors) = _psd_batch(5, 97, 30, seed=4)
    W = W.to(device)
    values, vectors, residuals, applications, converged = topk_eigh(lambda X: W @ X, 97, k, batch=(5,),
                                                                    dtype=torch.float64, device=device)
    assert bool(converged.all()) and applications > 1
    assert float(residuals.max()) <= default_tolerance(torch.float64)
    ref_values, ref_vectors = ref_values.flip(-1)[:, :k], ref_vectors.flip(-1)[:, :, :k]
    assert float(((values.cpu() - ref_values).abs() / ref_values).max()) < 1e-12
    overlap = torch.linalg.svdvals(ref_vectors.transpose(1, 2) @ vectors.cpu())  # cosines of principal angles
    assert float(overlap.min()) > 1 - 1e-10


def test_topk_eigh_batched_equals_per_matrix_calls(device):
    """One start block for the whole batch, the one a per-matrix call draws: Rayleigh–Ritz on the start block alone
    gives the same block batched and per matrix (to rounding; per-problem start blocks would give unrelated ones),
    and the converged top k agree as closely as each agrees with the dense eigh.

    Not compared: the block after a Chebyshev filter with ``tol = 0``. The filtered block is ill-conditioned
    (condition number 1.2e9 here, measured), so its unconverged tail amplifies rounding: on an H100 (2026-12-07) the
    batched call (device GEMMs and eigh) and the per-matrix call (another GEMM kernel, the 16² eigh on the host)
    gave tail Ritz values 1e-9 apart, while on the CPU both follow the same arithmetic."""
    from resefa_fast.solve.common import topk_eigh

    k = 8
    W, (ref_values, ref_vectors) = _psd_batch(3, 64, 20, seed=5)
    W = W.to(device)
    start_only = dict(dtype=torch.float64, device=device, tol=0.0, max_applications=1, return_block=True)
    values, vectors, _, applications, _ = topk_eigh(lambda X: W @ X, 64, k, batch=(3,), **start_only)
    assert applications == 1
    converged_values, converged_vectors, _, _, converged = topk_eigh(lambda X: W @ X, 64, k, batch=(3,),
                                                                     dtype=torch.float64, device=device)
    assert bool(converged.all())
    for i in range(3):
        single_values, single_vectors, _, _, _ = topk_eigh(lambda X: W[i] @ X, 64, k, **start_only)
        torch.testing.assert_close(values[i], single_values, rtol=1e-12, atol=0)
        signs = torch.sign((vectors[i] * single_vectors).sum(0))
        torch.testing.assert_close(vectors[i], single_vectors * signs, rtol=0, atol=1e-10)
        single_values, single_vectors, _, _, single_converged = topk_eigh(lambda X: W[i] @ X, 64, k,
                                                                          dtype=torch.float64, device=device)
        assert bool(single_converged.all())
        reference = ref_values[i].flip(0)[:k]
        for found in (converged_values[i], single_values):
            assert float(((found.cpu() - reference).abs() / reference).max()) < 1e-12
        overlap = torch.linalg.svdvals(converged_vectors[i].transpose(0, 1) @ single_vectors)
        assert float(overlap.min()) > 1 - 1e-10


def _block_with_condition(batch, m, b, condition, seed, dtype=torch.float64):
    """``[batch, m, b]`` blocks with singular values spread log-uniformly over ``condition`` (random bases)."""
    generator = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(batch, m, b, generator=generator, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(batch, b, b, generator=generator, dtype=torch.float64)).Q
    s = torch.logspace(0, -float(np.log10(condition)), b, dtype=torch.float64)
    return ((U * s) @ V.transpose(1, 2)).to(dtype)


@pytest.mark.parametrize("condition", [1e3, 1e9, 1e14])
def test_orthonormalize_ill_conditioned_blocks_without_householder(device, condition, monkeypatch):
    """Blocks as ill-conditioned as Chebyshev-filtered ones (plain Cholesky QR fails beyond ~1e8): orthonormal to
    rounding and spanning the same columns, from batched Cholesky factorisations alone (shifted CholeskyQR3);
    Householder QR (which loops over a batch on GPUs) is not called."""
    from resefa_fast.solve.common import orthonormalize

    Z = _block_with_condition(6, 300, 24, condition, seed=3).to(device)
    if condition > 1e8:
        assert bool((torch.linalg.cholesky_ex(Z.transpose(1, 2) @ Z).info != 0).any())  # plain CholQR would fail

    def no_householder(*args, **kwargs):
        raise AssertionError("Householder QR called")
    monkeypatch.setattr(torch.linalg, "qr", no_householder)
    Q = orthonormalize(Z)
    eye = torch.eye(24, dtype=torch.float64, device=device)
    assert float((Q.transpose(1, 2) @ Q - eye).abs().max()) < 1e-13
    residual = Z - Q @ (Q.transpose(1, 2) @ Z)
    assert float((residual.norm(dim=(1, 2)) / Z.norm(dim=(1, 2))).max()) < 1e-13


@pytest.mark.parametrize("condition", [1e2, 1e5])
def test_orthonormalize_float32_blocks_without_householder(device, condition, monkeypatch):
    """float32 blocks past what a float32 Gram factors (κ ≈ 3e3; a Chebyshev-filtered start block is such a
    block): orthonormal to float32 rounding, spanning the same columns, still float32, from Cholesky factorisations
    alone. Householder QR, which loops over a batch on GPUs, is not called."""
    from resefa_fast.solve.common import orthonormalize

    Z = _block_with_condition(5, 2000, 32, condition, seed=6, dtype=torch.float32).to(device)
    if condition > 1e4:
        assert bool((torch.linalg.cholesky_ex(Z.transpose(1, 2) @ Z).info != 0).any())  # float32 CholQR fails

    def no_householder(*args, **kwargs):
        raise AssertionError("Householder QR called")
    monkeypatch.setattr(torch.linalg, "qr", no_householder)
    Q = orthonormalize(Z)
    assert Q.dtype == torch.float32
    Q, Z = Q.double(), Z.double()
    eye = torch.eye(32, dtype=torch.float64, device=device)
    assert float((Q.transpose(1, 2) @ Q - eye).abs().max()) < 1e-6
    residual = Z - Q @ (Q.transpose(1, 2) @ Z)
    assert float((residual.norm(dim=(1, 2)) / Z.norm(dim=(1, 2))).max()) < 1e-6


def test_orthonormalize_sends_only_rank_deficient_matrices_to_householder(device, monkeypatch):
    """A batch with a rank-deficient block (a zero column): that one alone goes to Householder QR, its neighbours
    keep their Cholesky QR result (to rounding: the batch takes a third pass). A block with two equal columns
    (rank-deficient but for rounding) may come out of Cholesky QR with a rounding-noise column: either way its basis
    is orthonormal and spans the block."""
    from resefa_fast.solve.common import orthonormalize

    Z = _block_with_condition(4, 200, 16, 1e4, seed=4).to(device)
    expected = orthonormalize(Z)
    Z[2, :, 5] = 0.0
    Z[1, :, 7] = Z[1, :, 3]
    calls = []
    householder = torch.linalg.qr

    def counted(A, *args, **kwargs):
        calls.append(A)
        return householder(A, *args, **kwargs)
    monkeypatch.setattr(torch.linalg, "qr", counted)
    Q = orthonormalize(Z)
    assert len(calls) == 1 and calls[0].shape[0] == 1 and torch.equal(calls[0][0], Z[2])  # that block alone
    torch.testing.assert_close(Q[[0, 3]], expected[[0, 3]], rtol=0, atol=1e-14)
    torch.testing.assert_close(Q[2], householder(Z[2]).Q, rtol=0, atol=1e-14)
    eye = torch.eye(16, dtype=torch.float64, device=device)
    assert float((Q[1].transpose(0, 1) @ Q[1] - eye).abs().max()) < 1e-12
    assert float((Z[1] - Q[1] @ (Q[1].transpose(0, 1) @ Z[1])).norm() / Z[1].norm()) < 1e-13


def test_tf32_context_restores_the_flag():
    from resefa_fast.solve.common import tf32_matmuls

    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for before in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = before
            with tf32_matmuls(True):
                assert torch.backends.cuda.matmul.allow_tf32
            assert torch.backends.cuda.matmul.allow_tf32 == before
            with tf32_matmuls(False):  # never turns a user's TF32 off
                assert torch.backends.cuda.matmul.allow_tf32 == before
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("weights", ["box", "soft", "mostly soft", "all ones"])
def test_row_scaling_of_only_the_rows_that_change_is_exact(device, weights):
    """Scaling only the rows whose scale is not 1 (index ops) and scaling every row give the same float16 bits."""
    from resefa_fast.gram import _scale_rows

    generator = torch.Generator().manual_seed(5)
    H = torch.randn(400, 24, generator=generator).to(device=device, dtype=torch.float16)
    scale = torch.ones(400)
    if weights == "box":
        scale[100:160] = 0
    elif weights == "soft":
        scale[50:90] = torch.rand(40, generator=generator)
    elif weights == "mostly soft":  # more than a quarter of the rows: the whole-matrix path
        scale[:300] = torch.rand(300, generator=generator)
    scale = scale.to(device=device, dtype=torch.float16)
    expected = H * scale[:, None]
    _scale_rows(H, scale)
    assert torch.equal(H, expected)


# --- block_krylov_svd: randomized block Krylov truncated SVD (issue 4) ---

def _krylov_operand(dtype, device="cpu", seed=0):
    """A bulk-sized generator-like operand ``[3600, 512]``: rank 40, singular values (1 + i)^-0.7, 1e-3 noise."""
    return random_jacobian((60, 60), 512, rank=40, decay=0.7, seed=seed, dtype=dtype, device=device)


_KRYLOV_REFERENCES = {}


def _krylov_errors(K, k, iterations, **kwargs):
    """(max relative singular-value error, min |cos| of the right vectors with relative gap >= 1e-2) vs float64."""
    from resefa_fast.solve.common import block_krylov_svd
    from conftest import relative_gaps

    U, s, V = block_krylov_svd(K, k, iterations, **kwargs)
    key = (K.dtype, K.shape, float(K.double().sum()))  # the float64 SVD once per operand (seconds on 2 cores)
    if key not in _KRYLOV_REFERENCES:
        _KRYLOV_REFERENCES[key] = torch.linalg.svd(K.double().cpu(), full_matrices=False)[1:]
    ref_s, ref_vh = _KRYLOV_REFERENCES[key]
    gaps = relative_gaps(ref_s[: k + 1])[:k]
    err = float(((s.double().cpu() - ref_s[:k]).abs() / ref_s[:k]).max())
    cos = (V.double().cpu() * ref_vh[:k].T).sum(0).abs()
    checked = gaps >= 1e-2
    assert bool(checked.any()), "the test operand must have gapped singular values"
    return err, float(cos[checked].min()), (U, s, V)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_block_krylov_svd_matches_svdvals(device, dtype, rtol):
    K = _krylov_operand(dtype, device)
    k = 16
    err, worst_cos, (U, s, V) = _krylov_errors(K, k, 4)
    assert U.shape == (3600, k) and s.shape == (k,) and V.shape == (512, k)
    assert U.dtype == s.dtype == V.dtype == dtype and U.device == K.device
    assert err <= rtol, err
    assert worst_cos >= 0.9999, worst_cos
    assert bool((s[:-1] >= s[1:]).all())
    # the triplets are consistent: K V = U diag(s), orthonormal columns
    eps = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(K @ V, U * s, rtol=0, atol=eps * float(s[0]))
    torch.testing.assert_close(U.mT @ U, torch.eye(k, dtype=dtype, device=device), rtol=0, atol=eps)
    torch.testing.assert_close(V.mT @ V, torch.eye(k, dtype=dtype, device=device), rtol=0, atol=eps)


def test_block_krylov_svd_improves_with_iterations():
    K = _krylov_operand(torch.float64)
    errors = [_krylov_errors(K, 16, q)[0] for q in (0, 1, 2, 4)]
    assert errors[1] > errors[3] and errors[0] > errors[3], errors
    assert errors[0] >= errors[1] >= errors[2] >= errors[3] * 0.1, errors  # monotonic up to rounding at the floor
    assert errors[1] > 1e-3  # q = 1 is far from converged here, so the comparison means something


def test_block_krylov_svd_batched_equals_per_matrix(device):
    from resefa_fast.solve.common import block_krylov_svd

    K = torch.stack([random_jacobian((12, 15), 64, rank=20, decay=0.7, seed=seed, dtype=torch.float64,
                                     device=device) for seed in range(3)]).reshape(3, 1, 180, 64)
    U, s, V = block_krylov_svd(K, 5, 3, block=9, seed=7)
    assert U.shape == (3, 1, 180, 5) and s.shape == (3, 1, 5) and V.shape == (3, 1, 64, 5)
    for i in range(3):
        Ui, si, Vi = block_krylov_svd(K[i, 0], 5, 3, block=9, seed=7)
        torch.testing.assert_close(s[i, 0], si, rtol=1e-12, atol=0)
        sign = torch.sign((V[i, 0] * Vi).sum(0))  # singular vectors are defined up to sign
        torch.testing.assert_close(V[i, 0] * sign, Vi, rtol=0, atol=1e-10)
        torch.testing.assert_close(U[i, 0] * sign, Ui, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(40, 30), (30, 40)])
def test_block_krylov_svd_whole_space_is_exact(shape):
    """When (q + 1) b reaches min(m, n) the basis spans everything (the last block is cut): the exact SVD."""
    from resefa_fast.solve.common import block_krylov_svd

    K = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    U, s, V = block_krylov_svd(K, 6, 3, block=8)  # 4 blocks of 8 > 30
    torch.testing.assert_close(s, torch.linalg.svdvals(K)[:6], rtol=1e-12, atol=0)
    torch.testing.assert_close(K @ V, U * s, rtol=0, atol=1e-12)


def test_block_krylov_svd_checks_arguments():
    from resefa_fast.errors import ResefaError
    from resefa_fast.solve.common import block_krylov_svd

    K = torch.randn(20, 10, dtype=torch.float64)
    for kwargs in ({"k": 0, "iterations": 1}, {"k": 11, "iterations": 1}, {"k": 3, "iterations": -1},
                   {"k": 3, "iterations": 1, "block": 2}):
        with pytest.raises(ResefaError):
            block_krylov_svd(K, **kwargs)
