"""The procedural faces: determinism, factor ranges, and that every local factor moves pixels inside its box only."""
import pytest
import torch

from resefa_fast.data import checks, procedural
from resefa_fast.regions import Box, box_mask

GRID = (procedural.RESOLUTION, procedural.RESOLUTION)


def test_shapes_ranges_and_factors():
    images, factors = procedural.sample(16, seed=0)
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert list(factors) == list(procedural.FACTORS)
    for name, value in factors.items():
        assert value.shape == (16,), name
        assert float(value.min()) >= 0 and float(value.max()) <= 1, name
    assert set(procedural.LOCAL_FACTORS) | set(procedural.GLOBAL_FACTORS) == set(procedural.FACTORS)
    assert {procedural.FACTORS[f] for f in procedural.LOCAL_FACTORS} == set(procedural.PART_BOXES)


def test_colours_of_plain_regions():
    """Without lighting, a cheek pixel has the skin colour, a corner the background colour, the eye centre of an
    open eye looking sideways the sclera's (the shapes are opaque inside)."""
    factors = procedural.sample_factors(8, seed=4)
    factors["light_strength"] = torch.zeros(8)
    factors["left_eye_open"], factors["left_eye_gaze"] = torch.ones(8), torch.zeros(8)
    images = (procedural.render(factors) + 1) / 2
    light, dark = torch.tensor(procedural._SKIN_LIGHT), torch.tensor(procedural._SKIN_DARK)
    skin = light + (dark - light) * factors["skin_tone"][:, None]
    assert torch.allclose(images[:, :, 40, 18], skin, atol=1e-5)
    assert torch.allclose(images[:, :, 0, 0], procedural._hsv(factors["background_hue"], 0.45,
                                                              0.35 + 0.5 * factors["background_value"])[:, :, 0, 0],
                          atol=1e-5)
    r, c = procedural._box_centre("left_eye")
    assert torch.allclose(images[:, :, round(r), round(c) + 2], torch.tensor(procedural._SCLERA).expand(8, 3),
                          atol=1e-5)


def test_factors_roughly_uniform():
    factors = procedural.sample_factors(4000, seed=1)
    for name, value in factors.items():
        assert abs(float(value.mean()) - 0.5) < 0.03, name
        assert abs(float(value.var()) - 1 / 12) < 0.01, name


def test_deterministic_from_seed():
    a, fa = procedural.sample(8, seed=5)
    b, fb = procedural.sample(8, seed=5)
    c, _ = procedural.sample(8, seed=6)
    assert torch.equal(a, b)
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert not torch.equal(a, c)
    # a prefix of a larger draw is not promised, but render(sample_factors) is what sample does
    assert torch.equal(procedural.render(procedural.sample_factors(8, seed=5)), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_factors_on_gpu():
    cpu, f_cpu = procedural.sample(8, seed=2)
    gpu, f_gpu = procedural.sample(8, seed=2, device="cuda")
    assert all(torch.equal(f_cpu[k], f_gpu[k].cpu()) for k in f_cpu)
    assert float((cpu - gpu.cpu()).abs().max()) < 1e-4


def test_boxes_follow_the_region_convention():
    boxes = procedural.part_boxes()
    masks = procedural.part_masks()
    assert set(boxes) == set(procedural.PART_BOXES)
    for part, box in boxes.items():
        assert isinstance(box, Box) and box.grid == GRID and box.name == f"procedural/{part}"
        assert (box.center_x, box.center_y, box.height, box.width) == procedural.PART_BOXES[part]
        assert torch.equal(masks[part], box_mask(box, GRID))
        assert float(masks[part].sum()) == box.height * box.width  # inside the grid
    total = sum(masks.values())
    assert float(total.max()) == 1  # disjoint


def _edit(factors, name, value):
    edited = dict(factors)
    edited[name] = torch.full_like(factors[name], value)
    return edited


@pytest.mark.parametrize("name", procedural.LOCAL_FACTORS)
def test_local_factor_changes_only_its_box(name):
    """Setting a local factor to 0 and to 1 changes no pixel outside its box (exactly), changes pixels inside it,
    and leaves the box's border ring unchanged (the part never touches its box, so the hard box mask never cuts
    a shape)."""
    factors = procedural.sample_factors(32, seed=11)
    low, high = procedural.render(_edit(factors, name, 0.0)), procedural.render(_edit(factors, name, 1.0))
    change = (high - low).abs().amax(dim=1)  # [N, H, W]
    box = procedural.part_masks()[procedural.FACTORS[name]].bool()
    assert float(change[:, ~box].max()) == 0.0
    inside = change[:, box].amax(dim=1)  # [N]
    assert float(inside.median()) > 0.1, f"{name}: median change inside the box {float(inside.median()):.3g}"
    outside_nearby = torch.nn.functional.max_pool2d((~box).float()[None, None], 3, 1, 1)[0, 0] > 0
    border = box & outside_nearby  # the box's outermost ring of pixels
    assert int(border.sum()) == 2 * (int(box.sum(0).amax()) + int(box.sum(1).amax())) - 4
    assert float(change[:, border].max()) < 1e-6


@pytest.mark.parametrize("name", procedural.GLOBAL_FACTORS)
def test_global_factor_changes_pixels_outside_the_boxes(name):
    factors = procedural.sample_factors(16, seed=3)
    if name == "light_angle":  # no gradient to turn without strength
        factors["light_strength"] = torch.ones_like(factors["light_strength"])
    # 0 and 0.5: hue and angle are cyclic (0 and 1 are the same)
    change = (procedural.render(_edit(factors, name, 0.5)) - procedural.render(_edit(factors, name, 0.0))).abs()
    outside = ~sum(procedural.part_masks().values()).bool()
    assert float(change.amax(dim=1)[:, outside].amax(dim=1).median()) > 0.05, name


def test_distribution_checks_tell_real_from_fake():
    reference = checks.real_reference(256, seed=100)
    real = checks.compare(procedural.sample(256, seed=7)[0], reference)
    noise = checks.compare(torch.rand(256, 3, 64, 64) * 2 - 1, reference)
    assert real["pfd"] < 3 * real["pfd_real_real"]
    assert noise["pfd"] > 20 * real["pfd"]
    for key in real:
        if key.startswith("part_mean_diff") or key.startswith("channel_") and key.endswith("diff"):
            assert real[key] < noise[key], key


def test_frechet_distance_matches_closed_form():
    # 1-D Gaussians: (μ1 − μ2)² + (σ1 − σ2)²; commuting diagonal covariances likewise per axis
    mean1, mean2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 3.0])
    cov1, cov2 = torch.diag(torch.tensor([4.0, 1.0])), torch.diag(torch.tensor([1.0, 9.0]))
    expected = 1 + 4 + (2 - 1) ** 2 + (1 - 3) ** 2
    assert abs(checks.frechet_distance(mean1.double(), cov1.double(), mean2.double(), cov2.double()) - expected) < 1e-9
