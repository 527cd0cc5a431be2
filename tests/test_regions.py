"""Regions: the original box convention, presets, masks from every source, resampling, label maps, errors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import resefa_fast as rf
from resefa_fast.regions import PRESETS, as_regions, box_mask, load_mask_file, masks_from_labels, resample_mask


def original_box_mask(box, size):
    """The original code's formula, written out independently (numpy slicing, start clipped at 0 as we do)."""
    cx, cy, h, w = box
    mask = np.zeros(size, dtype=np.float32)
    mask[max(cx - h // 2, 0):cx - h // 2 + h, max(cy - w // 2, 0):cy - w // 2 + w] = 1
    return mask


@given(cx=st.integers(0, 40), cy=st.integers(0, 40), h=st.integers(1, 30), w=st.integers(1, 30))
@settings(max_examples=60, deadline=None)
def test_box_convention_matches_original(cx, cy, h, w):
    ours = box_mask((cx, cy, h, w), (37, 41)).numpy()
    np.testing.assert_array_equal(ours, original_box_mask((cx, cy, h, w), (37, 41)))


def test_presets_are_the_original_boxes():
    mask = box_mask(rf.preset("eyes"), (256, 256))
    assert mask.sum() == 20 * 115 and mask[110:130, 71:186].all()
    assert rf.preset("biggan/center0") .height == 80
    assert set(PRESETS["ffhq"]) == {"left_eye", "right_eye", "eyes", "nose", "mouth", "chin", "eyebrow"}
    with pytest.raises(rf.ResefaError, match="no known preset"):
        rf.preset("ears")


def test_preset_resampled_to_a_smaller_grid_keeps_area_fraction():
    regions = as_regions("mouth", (1, 64, 64), 64 * 64)
    # area averaging keeps the covered fraction of the grid: 30*70 / 256² of 64² pixels
    assert regions.foreground.sum().item() == pytest.approx(30 * 70 / 16, rel=1e-6)
    assert regions.boxes is None  # not a box on the Jacobian's own grid any more
    exact = as_regions("mouth", (1, 256, 256), 256 * 256)
    assert exact.boxes.tolist() == [[169, 199, 92, 162]]


def test_mask_sources_agree(tmp_path):
    from PIL import Image

    mask = np.zeros((16, 12), dtype=bool)
    mask[3:9, 2:7] = True
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", mask.astype(np.float32))
    expected = torch.from_numpy(mask.astype(np.float32)).flatten()
    for source in (mask, torch.from_numpy(mask), mask.astype(np.float64), str(tmp_path / "m.png"),
                   tmp_path / "m.npy", (6, 4, 6, 5)):
        regions = as_regions(source, (1, 16, 12), 16 * 12)
        assert regions.single and torch.equal(regions.foreground[0], expected), type(source)


def test_masks_broadcast_over_channels_and_resample():
    regions = as_regions(np.ones((4, 4)) * 0.5, (3, 8, 8), 3 * 64)
    assert regions.foreground.shape == (1, 192) and torch.allclose(regions.foreground, torch.full((1, 192), 0.5))
    up = resample_mask(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), (4, 4))
    assert torch.equal(up[:2, :2], torch.ones(2, 2)) and up.sum() == 4


def test_batches_of_masks_and_boxes():
    stack = torch.zeros(3, 10, 10)
    stack[0, :2], stack[1, 5:], stack[2, :, :1] = 1, 1, 1
    regions = as_regions(stack, (1, 10, 10), 100)
    assert len(regions) == 3 and not regions.single
    boxes = as_regions(np.array([[2, 2, 2, 2], [7, 7, 3, 3]]), (1, 10, 10), 100)
    assert boxes.foreground.sum(1).tolist() == [4, 9] and boxes.boxes.shape == (2, 4)
    mixed = as_regions(["eyes", (100, 100, 10, 10), np.ones((256, 256)) * 0.1], (1, 256, 256), 256 * 256)
    assert mixed.names[0] == "eyes" and len(mixed) == 3


def test_label_maps():
    labels = torch.tensor([[0, 0, 1], [2, 2, 1], [2, 5, 5]])
    masks, values = masks_from_labels(labels)
    assert values == [0, 1, 2, 5] and masks.shape == (4, 3, 3)
    assert torch.equal(masks.sum(0), torch.ones(3, 3))
    picked, _ = masks_from_labels(labels.numpy(), labels=[5, 1])
    assert picked[0].sum() == 2 and picked[1].sum() == 2
    with pytest.raises(rf.ResefaError, match="labels"):
        masks_from_labels(labels, labels=[7])


def test_background_forms():
    regions = as_regions((2, 2, 2, 2), (1, 8, 8), 64, background=(6, 6, 2, 2))
    assert regions.background.sum() == 4
    assert torch.equal(as_regions((2, 2, 2, 2), (1, 8, 8), 64).background_weights(),
                       1 - as_regions((2, 2, 2, 2), (1, 8, 8), 64).foreground)


@pytest.mark.parametrize("region,background,match", [
    (np.zeros((8, 8)), None, "at least one pixel"),
    (np.ones((8, 8)), None, "leaves some background"),
    ((50, 50, 3, 3), None, "at least one pixel"),
    (np.full((8, 8), 1.5), None, r"\[0, 1\]"),
    (np.full((8, 8), np.nan), None, "finite"),
    ((2, 2, 0, 3), None, "positive height"),
    ((2, 2, 2, 2), np.zeros((8, 8)), "background"),
    (np.ones((2, 2, 2, 2)), None, "mask"),
])
def test_bad_regions_are_clear_errors(region, background, match):
    with pytest.raises(rf.ResefaError, match=match):
        as_regions(region, (1, 8, 8), 64, background=background)


def test_missing_mask_file_is_a_clear_error(tmp_path):
    with pytest.raises(rf.ResefaError, match="existing mask file"):
        load_mask_file(tmp_path / "nope.png")
