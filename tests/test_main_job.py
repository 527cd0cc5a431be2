"""The main job end to end on the tiny test model (CPU): Jacobian stores, mining from a model, edits, locality,
the HTML report, the demo, and the original compute_jacobian's files. Driven as a user would (subprocesses)."""
import base64
import html.parser
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import resefa_fast as rf
from resefa_fast import models
from resefa_fast.editing import edit_codes, in_out_change
from resefa_fast.jacobian import readouts
from resefa_fast.pipeline import open_model
from resefa_fast.visualize import OUTLINE

SEEDS = (0, 1)


def run(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def cli(*args, timeout=300):
    return run("resefa_fast.cli", *args, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A tiny StyleGAN2 (16x16, w_dim 8, 6 W+ rows) in our own format."""
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    models.save(models.build("tiny", seed=3), path)
    return path


@pytest.fixture(scope="module")
def model(tiny_file):
    return open_model(tiny_file, "cpu")


def reverse_products(G, w, readout, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ J`` by reverse mode (one backward pass per row of ``rows`` ``[m, P]``), independent of the forward-mode
    engine; J = d readout(synthesis(w on every layer, or W+)) / d w. Returns ``[m, d]``."""
    flat = w.reshape(-1).clone().requires_grad_(True)
    ws = flat.reshape(1, 1, -1).expand(1, G.num_ws, G.w_dim) if flat.numel() == G.w_dim else \
        flat.reshape(1, G.num_ws, G.w_dim)
    pixels = readout(G.synthesize(ws)).reshape(-1)
    return torch.stack([torch.autograd.grad(pixels, flat, row, retain_graph=True)[0] for row in rows])


def assert_jacobian(J: np.ndarray, G, w, readout, seed=0):
    rows = torch.randn(6, J.shape[0], generator=torch.Generator().manual_seed(seed))
    expected = reverse_products(G, w, readout, rows)
    np.testing.assert_allclose(rows.numpy() @ J, expected.numpy(), rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_jacobian_store_holds_the_jacobians_of_the_seeds(tiny_file, model, tmp_path):
    done = cli("jacobian", tiny_file, "--seeds", "0-1", "--space", "wp", "--readout", "rgb", "--out", tmp_path / "J",
               "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    manifest = json.load(open(tmp_path / "J" / "jacobian.json"))
    assert manifest["seeds"] == [0, 1] and manifest["space"] == "wp" and manifest["readout"] == "rgb"
    assert manifest["model"] == model.fingerprint
    J = np.load(tmp_path / "J" / "jacobians.npy")
    ws = np.load(tmp_path / "J" / "latents.npy")
    G = model.generator
    assert J.shape == (2, 3, 16, 16, 1, G.num_ws * G.w_dim)
    for n, seed in enumerate(SEEDS):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim).astype(np.float32))
        expected_ws = G.map(z)[0]
        np.testing.assert_allclose(ws[n], expected_ws.numpy(), rtol=1e-5, atol=1e-6)  # float32, other process
        assert_jacobian(J[n].reshape(-1, J.shape[-1]), G, expected_ws, readouts.rgb(), seed=n)


def test_mining_from_a_model_equals_mining_its_jacobian_store(tiny_file, model, tmp_path):
    common = ["--regions", "eyes,nose", "--box", "4,12,6,6", "--k", "4", "--device", "cpu", "--quiet"]
    done = cli("jacobian", tiny_file, "--seeds", "0-1", "--out", tmp_path / "J", "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    done = cli("mine", tiny_file, "--seeds", "0-1", *common, "--locality-top", "2", "--out", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    done = cli("mine", tmp_path / "J", *common, "--out", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    a, b = rf.load_results(str(tmp_path / "a")), rf.load_results(str(tmp_path / "b"))
    assert a.names == b.names == ["eyes", "nose", "box[4,12,6,6]"] and a.latents == b.latents == [0, 1]
    for n in a.latents:
        cos = np.abs((a.get(n)["directions"] * b.get(n)["directions"]).sum(-1))
        assert np.all(cos > 1 - 1e-9)
        assert a.get(n)["locality_inside"].shape == (3, 2) and "locality_inside" not in b.get(n)
    # the store says which model, codes, readout and space it holds, and its codes are the seeds' W+
    assert a.manifest["source"]["model"] == model.fingerprint and a.manifest["source"]["seeds"] == [0, 1]
    assert a.manifest["model_spec"] == b.manifest["model_spec"] == str(tiny_file)  # a report can find the model
    np.testing.assert_allclose(a.codes(), model.latents(SEEDS).numpy())
    # the directions are those of factorize on the same Jacobian
    J = np.load(tmp_path / "J" / "jacobians.npy")
    direct = rf.factorize(torch.from_numpy(np.array(J[1])), (4, 12, 6, 6), k=4, backend="reference", batched=False)
    assert np.all(np.abs((a.get(1)["directions"][2] * direct.directions.numpy()).sum(-1)) > 1 - 1e-9)


def test_mining_from_a_model_resumes_after_being_killed(tiny_file, tmp_path):
    args = ["mine", tiny_file, "--seeds", "0-7", "--regions", "eyes,mouth", "--k", "3", "--device", "cpu",
            "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "resefa_fast.cli", *map(str, args), "--out", tmp_path / "a"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "a" / "latent_00001.npz").exists():
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert len(rf.load_results(str(tmp_path / "a")).latents) < 8, "the run finished before it was interrupted"
    assert cli(*args, "--out", tmp_path / "a").returncode == 0
    assert cli(*args, "--out", tmp_path / "b").returncode == 0
    resumed, fresh = rf.load_results(str(tmp_path / "a")), rf.load_results(str(tmp_path / "b"))
    assert resumed.latents == fresh.latents == list(range(8))
    for n in range(8):
        np.testing.assert_allclose(resumed.get(n)["directions"], fresh.get(n)["directions"], atol=1e-12)
    assert not [name for name in os.listdir(tmp_path / "a") if name.startswith(".tmp-") and name.endswith(".npy")]


def test_store_of_another_model_is_refused(tiny_file, tmp_path):
    other = tmp_path / "other.pt"
    models.save(models.build("tiny", seed=4), other)
    common = ["--seeds", "0", "--regions", "eyes", "--k", "2", "--device", "cpu", "--quiet", "--out", tmp_path / "s"]
    assert cli("mine", tiny_file, *common).returncode == 0
    done = cli("mine", other, *common)
    assert done.returncode == 2 and "refusing to mix" in done.stderr and "model" in done.stderr


@pytest.mark.parametrize("args,match", [
    (["--regions", "ears"], "known presets"),
    (["--box", "40,40,4,4"], "at least one pixel"),
    (["--regions", "eyes", "--seeds", "x"], "--seeds"),
    (["--regions", "eyes", "--seeds", "0", "--readout", "blur"], "readout"),
])
def test_bad_mining_input_is_one_clear_line(tiny_file, tmp_path, args, match):
    done = cli("mine", tiny_file, *(["--seeds", "0"] if "--seeds" not in args else []), *args, "--device", "cpu",
               "--out", tmp_path / "s")
    assert done.returncode == 2 and match in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "s" / "latent_00000.npz")


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    done = cli("mine", bad, "--seeds", "0", "--regions", "eyes", "--out", tmp_path / "s", "--device", "cpu")
    assert done.returncode == 2 and "broken.pt" in done.stderr and "Traceback" not in done.stderr


def test_in_out_change_is_the_mean_squared_change_inside_and_outside(model):
    ws = model.latents([5])[0]
    directions = torch.nn.functional.normalize(torch.randn(3, model.w_dim, dtype=torch.float64), dim=1)
    strengths = [-2.0, 1.5]
    change = in_out_change(model, ws, directions, (8, 8, 6, 6), strengths)
    base = model.generator.synthesize(ws[None]).double()
    inside = torch.zeros(16, 16, dtype=torch.float64)
    inside[5:11, 5:11] = 1
    for i in range(3):
        values_in, values_out = [], []
        for alpha in strengths:
            edited = model.generator.synthesize((ws + alpha * directions[i].float())[None]).double()
            squared = (edited - base).square().mean(dim=1)[0]
            values_in.append(float((squared * inside).sum() / inside.sum()))
            values_out.append(float((squared * (1 - inside)).sum() / (1 - inside).sum()))
        assert change["inside"][i] == pytest.approx(np.mean(values_in), rel=1e-6)
        assert change["outside"][i] == pytest.approx(np.mean(values_out), rel=1e-6)
    assert torch.allclose(change["ratio"], change["inside"] / change["outside"])


def test_edit_codes_follow_the_original_manipulation(model):
    ws = model.latents([1])[0]
    w_direction = torch.randn(2, model.w_dim)
    codes = edit_codes(ws, w_direction, [-1.0, 2.0], layers=[1, 3])
    assert codes.shape == (2, 2, model.num_ws, model.w_dim)
    assert torch.allclose(codes[1, 1, 3], ws[3] + 2.0 * w_direction[1])
    assert torch.equal(codes[1, 1, 0], ws[0])  # rows not edited stay
    wp_direction = torch.randn(1, model.num_ws * model.w_dim)
    codes = edit_codes(ws, wp_direction, [0.5])
    assert torch.allclose(codes[0, 0], ws + 0.5 * wp_direction.reshape(model.num_ws, model.w_dim))


def test_edit_writes_grids_and_gifs_with_the_region_drawn(tiny_file, tmp_path):
    directions = np.linalg.qr(np.random.RandomState(0).randn(8, 8))[0].T[:4]
    np.save(tmp_path / "dirs.npy", directions)
    done = cli("edit", tiny_file, "--directions-file", tmp_path / "dirs.npy", "--region", "8,8,6,6", "--seeds", "0,3",
               "--directions", "0-1", "--steps", "5", "--out", tmp_path / "e", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    grid = np.asarray(Image.open(tmp_path / "e" / "seed3_dirs.png").convert("RGB"))
    assert grid.shape == (2 * 16 + 2, 5 * 16 + 4 * 2, 3)  # 2 directions x 5 strengths, 2-pixel gaps
    tile = grid[:16, :16]
    red = np.all(tile == OUTLINE, axis=-1)
    assert red[5, 5:11].all() and red[10, 5:11].all() and red[5:11, 5].all() and red[5:11, 10].all()
    assert not red[6:10, 6:10].any() and not red[:5].any()  # only the outline of rows/cols 5..10
    gif = Image.open(tmp_path / "e" / "seed3_dirs_direction001.gif")
    assert gif.size == (16, 16) and gif.n_frames == 2 * 5 - 2
    assert sorted(os.listdir(tmp_path / "e")) == sorted(
        [f"seed{s}_dirs.png" for s in (0, 3)] + [f"seed{s}_dirs_direction{i:03d}.gif" for s in (0, 3) for i in (0, 1)])


class _Sources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.sections, self.open = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag not in ("img", "meta", "br", "link"):  # void elements have no end tag
            self.open.append(tag)
        self.sections += tag == "section"
        self.sources += [value for name, value in attrs if name in ("src", "href")]

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def test_report_is_valid_html_referencing_only_what_exists(tiny_file, tmp_path):
    assert cli("mine", tiny_file, "--seeds", "0-1", "--regions", "eyes,mouth", "--k", "4", "--device", "cpu",
               "--quiet", "--out", tmp_path / "s").returncode == 0
    done = cli("report", tmp_path / "s", "--top", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "s" / "report.html").read_text()
    parser = _Sources()
    parser.feed(page)
    parser.close()
    assert parser.sections == 2 and parser.open == []
    assert len(parser.sources) == 2 * 3
    for source in parser.sources:
        if source.startswith("data:image/png;base64,"):
            image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
            assert image.size[0] > 0
        else:
            assert os.path.exists(tmp_path / "s" / source), source
    assert "eyes" in page and "mouth" in page and "in/out" in page


def test_demo_runs_end_to_end(tiny_file, tmp_path):
    done = cli("demo", "--model", tiny_file, "--out", tmp_path / "demo", "--quiet", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    for path in ("report.html", "store/manifest.json", "jacobians/jacobians.npy", "edits"):
        assert os.path.exists(tmp_path / "demo" / path), path
    assert "report:" in done.stdout


def test_compat_compute_jacobian_writes_the_original_files(tiny_file, model, tmp_path):
    G = model.generator
    done = run("resefa_fast.compat.compute_jacobian", tiny_file, "--stylegan2", "--img_size", "16", "--w_dim", "8",
               "--seed", "7", "--nums", "2", "--save_dir", tmp_path / "j")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "j")) == ["images", "jacobians_w.npy", "latent_codes.npy"]
    assert sorted(os.listdir(tmp_path / "j" / "images")) == ["000000.jpg", "000001.jpg"]
    np.random.seed(7)  # the original: np.random.seed(seed); z = np.random.randn(nums, z_dim)
    z = torch.from_numpy(np.random.randn(2, G.z_dim).astype(np.float32))
    w = G.map(z)[:, 0]
    np.testing.assert_allclose(np.load(tmp_path / "j" / "latent_codes.npy"), w.numpy(), rtol=1e-6)
    J = np.load(tmp_path / "j" / "jacobians_w.npy")
    assert J.shape == (2, 3, 16, 16, 1, 8)  # images of at most 256 pixels keep RGB, as the original's syn2jaco
    assert_jacobian(J[1].reshape(-1, 8), G, w[1], lambda image: image)


def test_compat_compute_jacobian_checks_the_family_and_size(tiny_file, tmp_path):
    done = run("resefa_fast.compat.compute_jacobian", tiny_file, "--stylegan2", "--save_dir", tmp_path / "j")
    assert done.returncode == 2 and "--img_size" in done.stderr
    done = run("resefa_fast.compat.compute_jacobian", tiny_file, "--save_dir", tmp_path / "j")
    assert done.returncode == 2 and "--stylegan2" in done.stderr


def test_models_save_round_trips_every_family(tmp_path):
    """``models.save`` hands StyleGAN3 and BigGAN generators to their families' writers; ``models.load`` reads
    each back to the same images."""
    from resefa_fast.models import build_biggan, build_stylegan3

    sg3 = build_stylegan3("stylegan3-t-tiny", seed=1)
    big = build_biggan("biggan-tiny", seed=1)
    models.save(sg3, tmp_path / "sg3.pt")
    models.save(big, tmp_path / "big.pt")
    ws = sg3.map(torch.randn(1, sg3.z_dim, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert torch.equal(models.load(tmp_path / "sg3.pt").generator.synthesize(ws), sg3.synthesize(ws))
        z = big.sample_z(1, 1.0, seed=0)
        assert torch.equal(models.load(tmp_path / "big.pt").generator.synthesize(z, 2), big.synthesize(z, 2))
    with pytest.raises(rf.ResefaError, match="`generator` must be"):
        models.save(torch.nn.Linear(2, 2), tmp_path / "x.pt")
