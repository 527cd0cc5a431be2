"""BigGAN through the main job (issue 9): the class index is a user argument, the BigGAN presets work by name, and
mining / editing / reports run from the command line as for StyleGAN2 (tiny BigGAN, CPU, subprocesses)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import resefa_fast as rf
from resefa_fast.jacobian import readouts
from resefa_fast.models import build_biggan, save_biggan
from resefa_fast.pipeline import open_model

CLASS = 3


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "resefa_fast.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def biggan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("biggan") / "tiny_biggan.pth"
    save_biggan(build_biggan("biggan-tiny", seed=2), path)
    return path


@pytest.mark.parametrize("space", ["z", "z+embedding"])
def test_mine_a_biggan_class_equals_factorize_on_its_jacobian(biggan_file, tmp_path, space):
    done = cli("mine", biggan_file, "--class", CLASS, "--seeds", "0-1", "--space", space, "--truncation-psi", "0.5",
               "--regions", "biggan/center1", "--k", "3", "--readout", "rgb", "--device", "cpu", "--quiet",
               "--locality-top", "1", "--out", tmp_path / "s")
    assert done.returncode == 0, done.stderr
    results = rf.load_results(str(tmp_path / "s"))
    assert results.manifest["source"]["class_index"] == CLASS and results.names == ["biggan/center1"]
    # independently: the generator's own Jacobian call at seed 1's z (truncated normal x 0.5) and class 3
    G = open_model(biggan_file, "cpu", class_index=CLASS, truncation=0.5).generator
    z = G.sample_z(1, 0.5, seed=1)
    fn, latent = G.jacobian_inputs(z, classes=CLASS, truncation=0.5, space=space)
    J = rf.jacobian(fn, latent, readout=readouts.rgb(), progress=False)
    R = G.img_resolution
    direct = rf.factorize(J, "biggan/center1", k=3, grid=(3, R, R), backend="reference")
    mined = results.get(1)["directions"][0]
    assert mined.shape == (3, G.z_dim + (G.embed_dim if space == "z+embedding" else 0))
    assert np.all(np.abs((mined * direct.directions.numpy()).sum(-1)) > 1 - 1e-8)
    assert results.get(1)["locality_inside"].shape == (1, 1)


def test_biggan_edit_and_report(biggan_file, tmp_path):
    common = ["--class", CLASS, "--device", "cpu"]
    assert cli("mine", biggan_file, *common, "--seeds", "0", "--regions", "biggan/center0", "--k", "2",
               "--readout", "rgb", "--quiet", "--out", tmp_path / "s").returncode == 0
    done = cli("edit", biggan_file, *common, "--store", tmp_path / "s", "--region", "biggan/center0",
               "--directions", "0-1", "--steps", "3", "--start", "-2", "--end", "2", "--out", tmp_path / "e")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "e")) == ["latent0_biggan_center0.png",
                                                  "latent0_biggan_center0_direction000.gif",
                                                  "latent0_biggan_center0_direction001.gif"]
    done = cli("report", tmp_path / "s", "--quiet", "--strengths=-2,0,2")
    assert done.returncode == 0, done.stderr
    assert "biggan/center0" in (tmp_path / "s" / "report.html").read_text()


def test_a_biggan_needs_its_class(biggan_file, tmp_path):
    done = cli("mine", biggan_file, "--seeds", "0", "--regions", "biggan/center0", "--device", "cpu",
               "--out", tmp_path / "s")
    assert done.returncode == 2 and "class_index" in done.stderr and "Traceback" not in done.stderr
    done = cli("mine", biggan_file, "--class", "5000", "--seeds", "0", "--regions", "biggan/center0", "--device",
               "cpu", "--out", tmp_path / "s")
    assert done.returncode == 2 and "class_index" in done.stderr
    done = cli("mine", biggan_file, "--class", "1", "--space", "wp", "--seeds", "0", "--regions", "biggan/center0",
               "--device", "cpu", "--out", tmp_path / "s")
    assert done.returncode == 2 and "space" in done.stderr


def test_edits_of_a_biggan_code_move_z_or_z_and_embedding(biggan_file):
    model = open_model(biggan_file, "cpu", class_index=CLASS)
    code = model.latents([4])[0]
    z_dim = model.generator.z_dim
    z_direction = torch.randn(1, z_dim)
    codes = rf.editing.edit_codes(code, z_direction, [2.0], model=model)
    assert torch.allclose(codes[0, 0, :z_dim], code[:z_dim] + 2 * z_direction[0])
    assert torch.equal(codes[0, 0, z_dim:], code[z_dim:])  # the class embedding is held
    full = torch.randn(1, code.numel())
    assert torch.allclose(rf.editing.edit_codes(code, full, [0.5], model=model)[0, 0], code + 0.5 * full[0])
