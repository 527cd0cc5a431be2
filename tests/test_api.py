"""The public API: result shapes and conventions, several latents, backends, argument errors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import resefa_fast as rf
from resefa_fast.testing import random_jacobian

from conftest import assert_matches_reference


def test_result_conventions(make_jacobian):
    J = make_jacobian((16, 16), 20, seed=1)
    out = rf.factorize(J, (8, 8, 5, 5), k=5)
    assert out.directions.shape == (5, 20) and out.eigenvalues.shape == (5,) and out.residuals.shape == (5,)
    assert out.directions.dtype == torch.float64  # the default working precision
    assert torch.allclose(out.directions.norm(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert bool((out.eigenvalues[:-1] >= out.eigenvalues[1:]).all())
    largest = out.directions.gather(1, out.directions.abs().argmax(1, keepdim=True))
    assert bool((largest > 0).all())
    assert out.info["backend"] == "torch" and "cpu" in out.info["backend_reason"]


def test_batched_latents_per_image_and_stacked():
    J = torch.stack([random_jacobian((12, 12), 16, seed=s) for s in range(3)]).reshape(3, 12, 12, 1, 16)
    per_image = rf.factorize(J, [(6, 6, 4, 4), (3, 3, 2, 2)], k=3)
    assert per_image.directions.shape == (3, 2, 3, 16)
    for n in range(3):
        alone = rf.factorize(J[n], [(6, 6, 4, 4), (3, 3, 2, 2)], k=3)
        assert torch.allclose(per_image.directions[n], alone.directions, atol=1e-5)
    stacked = rf.factorize(J, (6, 6, 4, 4), k=3, latents="stack")
    assert stacked.directions.shape == (3, 16)
    # stacking = one problem whose rows are all images' rows, the region repeated on each image
    rows = J.reshape(3 * 144, 16)
    mask = rf.box_mask((6, 6, 4, 4), (12, 12)).flatten().repeat(3)
    ref = rf.factorize(rows, mask, k=4, backend="reference")
    assert_matches_reference(stacked.eigenvalues, stacked.directions, ref.eigenvalues[:3], ref.directions[:3],
                             torch.float64, ref.eigenvalues[3])
    fz = rf.Factorizer(J, latents="stack").factorize((6, 6, 4, 4), k=3)
    assert torch.allclose(fz.eigenvalues, stacked.eigenvalues, rtol=1e-4)


def test_factorizer_matches_factorize_and_handles_explicit_backgrounds(make_jacobian):
    J = make_jacobian((16, 16), 24, seed=9)
    fz = rf.Factorizer(J)
    one = fz.factorize((8, 8, 4, 6), k=4)
    assert one.directions.shape == (4, 24) and one.info["path"] == "bulk"
    bg = fz.factorize((8, 8, 4, 6), k=4, background=(2, 2, 4, 4))
    assert bg.info["path"] == "general"
    ref = rf.factorize(J, (8, 8, 4, 6), k=5, background=(2, 2, 4, 4), backend="reference")
    assert_matches_reference(bg.eigenvalues, bg.directions, ref.eigenvalues[:4], ref.directions[:4], torch.float64,
                             ref.eigenvalues[4])


@given(seed=st.integers(0, 10_000), h=st.integers(6, 20), w=st.integers(6, 20), d=st.integers(4, 40),
       data=st.data())
@settings(max_examples=25, deadline=None)
def test_property_bulk_matches_reference_on_fresh_inputs(seed, h, w, d, data):
    """Fresh random generator-like Jacobians and boxes: the bulk path agrees with the oracle (DESIGN.md §6)."""
    J = random_jacobian((h, w), d, rank=min(d, 12), seed=seed).reshape(h, w, d)
    bh, bw = data.draw(st.integers(1, h - 1)), data.draw(st.integers(1, w - 1))
    box = (data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1)), bh, bw)
    rows = rf.box_mask(box, (h, w)).sum()
    if rows < 2:
        return
    k = int(min(3, rows - 1, d - 1))
    ref = rf.factorize(J, box, k=k + 1, backend="reference")
    out = rf.Factorizer(J, dtype=torch.float64).factorize(box, k=k)
    assert_matches_reference(out.eigenvalues, out.directions, ref.eigenvalues[:k], ref.directions[:k],
                             torch.float64, ref.eigenvalues[k], require_checked=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 0}, "`k`"),
    ({"k": 25}, "latent dimension"),
    ({"k": 2.5}, "`k`"),
    ({"tau": -1e-3}, "`tau`"),
    ({"tau": float("nan")}, "`tau`"),
    ({"normalize": "max"}, "`normalize`"),
    ({"backend": "gpu"}, "`backend`"),
    ({"method": "eig"}, "`method`"),
    ({"latents": "all"}, "`latents`"),
    ({"dtype": torch.float16}, "`dtype`"),
])
def test_bad_arguments_are_clear_errors(make_jacobian, kwargs, match):
    J = make_jacobian((16, 16), 24, seed=0)
    with pytest.raises(rf.ResefaError, match=match):
        rf.factorize(J, (8, 8, 4, 4), **kwargs)


def test_k_larger_than_the_region_rank_is_an_error(make_jacobian):
    J = make_jacobian((16, 16), 24, seed=0)
    with pytest.raises(rf.ResefaError, match="rank bound"):
        rf.factorize(J, (8, 8, 1, 3), k=4)  # 3 rows -> M_f has rank <= 3
    with pytest.raises(rf.ResefaError, match="rank bound"):
        rf.Factorizer(J).factorize_many([(8, 8, 4, 4), (2, 2, 1, 2)], k=3)


def test_mask_size_mismatch_is_an_error(make_jacobian):
    J = make_jacobian((16, 16), 24, seed=0).reshape(256, 24)
    with pytest.raises(rf.ResefaError, match="grid"):
        rf.factorize(J, np.ones((4, 4)) * 0.5, k=2)  # a spatial mask, but [P, d] gives no grid
    with pytest.raises(rf.ResefaError, match="P = 256"):
        rf.factorize(J, np.ones(100) * 0.5, k=2)


def test_cuda_backend_without_gpu_data_raises(make_jacobian):
    J = make_jacobian((8, 8), 6, seed=0)
    with pytest.raises(RuntimeError, match="cuda"):
        rf.factorize(J, (4, 4, 2, 2), k=2, backend="cuda")


def test_backend_info_reports_the_extension():
    info = rf.backend_info()
    assert {"torch", "cuda_available", "extension"} <= set(info)
    assert isinstance(info["extension"]["available"], bool) and info["extension"]["reason"]


def test_reference_module_public_entry_points(make_jacobian):
    J = make_jacobian((16, 16), 12, seed=3)
    oracle = rf.reference.factorize(J, (8, 8, 6, 6), k=4)
    assert oracle.info["backend"] == "reference" and oracle.directions.shape == (4, 12)
    port = rf.reference.factorize_original(J, (8, 8, 6, 6), full_rank=True)
    assert port.directions.shape == (12, 12)  # all d directions, like the original's directions file
    cos = (port.directions[:4] * oracle.directions).sum(-1).abs()
    assert float(cos.min()) > 0.999


def test_auto_method_picks_refined_for_large_d_on_gpus_only(device):
    """method="auto" for one region: the refined route on a GPU at d >= REFINED_MIN_DIM (and τ > 0), cholesky
    otherwise; either way the float64 reference's answer."""
    from resefa_fast.api import REFINED_MIN_DIM

    d = REFINED_MIN_DIM
    J = random_jacobian((32, 32), d, seed=31, device=device).reshape(32, 32, d)
    out = rf.factorize(J, (14, 16, 8, 12), k=8)
    assert out.info["method"] == ("refined" if device == "cuda" else "cholesky")
    ref = rf.factorize(J, (14, 16, 8, 12), k=9, backend="reference")
    assert_matches_reference(out.eigenvalues, out.directions, ref.eigenvalues[:8], ref.directions[:8],
                             torch.float64, ref.eigenvalues[8])
    small = rf.factorize(J[..., :d // 4].contiguous(), (14, 16, 8, 12), k=8)
    assert small.info["method"] == "cholesky"
