"""The built-in model (issue 8): the shipped weights load, make images like the procedural data, and ReSeFa finds
directions for its parts that are more local than random and SeFa directions."""
import pytest
import torch

import resefa_fast as rf
from resefa_fast.baselines import random_directions, sefa_directions
from resefa_fast.data import checks, procedural
from resefa_fast.jacobian import readouts
from resefa_fast.models import StyleGAN2Generator

#: Edit strengths: about ±8 standard deviations of w along a unit direction for this model (σ ≈ 0.7).
STRENGTHS = (-6.0, 6.0)


@pytest.fixture(scope="module")
def model():
    return rf.open_model("builtin:faces64", "cpu")


def test_builtin_loads_with_its_part_presets(model):
    assert isinstance(model.generator, StyleGAN2Generator) and model.resolution == procedural.RESOLUTION
    assert {k: tuple(v) for k, v in model.presets.items()} == procedural.PART_BOXES
    assert rf.preset("procedural/mouth").bounds((256, 256)) == tuple(
        4 * v for v in procedural.part_boxes()["mouth"].bounds((64, 64)))


def test_builtin_images_look_like_the_data(model):
    """The trained generator is far closer to the data (pFD of a fixed random feature net, channel statistics)
    than the same network with random weights."""
    torch.manual_seed(0)
    reference = checks.real_reference(1024, seed=11)
    z = torch.randn(1024, model.generator.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = model.generator(z)
        untrained = StyleGAN2Generator(**model.generator.init_kwargs).eval()(z)
    ours, baseline = checks.compare(trained, reference), checks.compare(untrained, reference)
    assert ours["pfd"] < 0.05 * baseline["pfd"]
    assert ours["channel_mean_diff"] < 0.25 * baseline["channel_mean_diff"] + 0.02
    for part in procedural.PART_BOXES:  # the parts are where the data has them
        assert ours[f"part_mean_diff/{part}"] < baseline[f"part_mean_diff/{part}"]


@pytest.mark.parametrize("part", ["mouth", "left_eye"])
def test_resefa_directions_are_more_local_than_random_and_sefa(model, part):
    ws = model.latents([0])[0]
    J = rf.jacobian(model.generator, ws[0], readout=readouts.rgb(), progress=False)
    box = procedural.part_boxes()[part]
    resefa = rf.factorize(J, box, k=2, grid=(3, 64, 64)).directions
    ratio = {name: rf.in_out_change(model, ws, directions, box, STRENGTHS)["ratio"]
             for name, directions in (("resefa", resefa), ("random", random_directions(8, model.w_dim)),
                                      ("sefa", sefa_directions(model.generator, 8)))}
    assert float(ratio["resefa"][0]) > 3 * float(ratio["random"].max())
    assert float(ratio["resefa"][0]) > 3 * float(ratio["sefa"].max())
    assert float(ratio["resefa"][0]) > 2  # more change inside the part's box than outside, per pixel
