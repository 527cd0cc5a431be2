"""The original scripts' drop-in replacements write the original files, computed correctly."""
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import resefa_fast as rf
from resefa_fast.regions import PRESETS
from resefa_fast.testing import random_jacobian


def test_compute_direction_writes_the_original_files(tmp_path):
    J = torch.stack([random_jacobian((256, 256), 24, rank=16, seed=s) for s in range(2)]).reshape(2, 256, 256, 1, 24)
    np.save(tmp_path / "jaco.npy", J.numpy())
    done = subprocess.run([sys.executable, "-m", "resefa_fast.compat.compute_direction", str(tmp_path / "jaco.npy"),
                           "--region", "eyes", "--data_name", "ffhq", "--full_rank",
                           "--save_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [
        "image_00_region_eyes_name_resefa.npy", "image_00_region_eyes_name_resefa_mask.png",
        "image_01_region_eyes_name_resefa.npy", "image_01_region_eyes_name_resefa_mask.png"]
    directions = np.load(tmp_path / "out" / "image_01_region_eyes_name_resefa.npy")
    assert directions.shape == (24, 24) and directions.dtype == np.float32
    # the original's get_mask: the preset box drawn on the Jacobian's own grid
    box = rf.Box(*PRESETS["ffhq"]["eyes"])
    expected = rf.factorize(J[1], box, k=8, tau=1e-3, backend="reference")
    cos = np.abs((directions[:8] * expected.directions.numpy()).sum(-1))
    assert cos.min() > 1 - 1e-6
    mask = np.asarray(Image.open(tmp_path / "out" / "image_00_region_eyes_name_resefa_mask.png"))
    assert mask.shape == (256, 256, 3) and (mask[..., 0] > 0).sum() == 20 * 115


def test_compute_direction_without_full_rank_asks_for_it(tmp_path):
    generator = torch.Generator().manual_seed(0)
    low_rank = (torch.randn(1, 256 * 256, 5, generator=generator) @ torch.randn(5, 12, generator=generator))
    np.save(tmp_path / "jaco.npy", low_rank.reshape(1, 256, 256, 1, 12).numpy())
    done = subprocess.run([sys.executable, "-m", "resefa_fast.compat.compute_direction", str(tmp_path / "jaco.npy"),
                           "--region", "nose", "--save_dir", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "--full_rank" in done.stderr
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".npy")]
