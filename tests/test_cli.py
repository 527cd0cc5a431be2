"""The resefa-fast command line driven as a user would (subprocesses, temporary folders), and the results store."""
import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import resefa_fast as rf
from resefa_fast.store import ResultsStore, write_atomic
from resefa_fast.testing import random_jacobian


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "resefa_fast.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def jacobian_file(tmp_path_factory):
    """The original file layout [N, H, W, 1, d]: 3 latent codes, 48x48 grid, d = 20."""
    path = tmp_path_factory.mktemp("jac") / "jacobians.npy"
    J = torch.stack([random_jacobian((48, 48), 20, rank=12, seed=s) for s in range(3)])
    np.save(path, J.reshape(3, 48, 48, 1, 20).numpy())
    return path


def test_help_lists_subcommands():
    done = run_cli("--help")
    assert done.returncode == 0 and "directions" in done.stdout and "mine" in done.stdout
    assert run_cli("mine", "--help").returncode == 0


def test_directions_matches_the_api(jacobian_file, tmp_path):
    out = tmp_path / "d.npz"
    done = run_cli("directions", jacobian_file, "--region", "24,20,8,10", "--k", "4", "--out", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    saved = np.load(out)
    expected = rf.factorize(np.load(jacobian_file), (24, 20, 8, 10), k=4)
    assert saved["directions"].shape == (3, 4, 20)
    np.testing.assert_allclose(saved["directions"], expected.directions.numpy(), atol=1e-10)


def test_mine_all_region_sources_and_export(jacobian_file, tmp_path):
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[5:15, 30:44] = 255
    Image.fromarray(mask).save(masks / "corner.png")
    (tmp_path / "boxes.txt").write_text("# cx cy h w name\n24 24 10 10 center\n10,10,6,6\n")
    store = tmp_path / "store"
    done = run_cli("mine", jacobian_file, "--regions", "eyes,mouth", "--boxes", tmp_path / "boxes.txt",
                   "--masks", masks, "--box-grid", "24", "--stride", "1", "--k", "3", "--out", store, "--device", "cpu",
                   "--quiet", "--export-original", tmp_path / "original")
    assert done.returncode == 0, done.stderr
    results = rf.load_results(str(store))
    assert results.names[:5] == ["eyes", "mouth", "center", "box3", "corner.png"] and len(results.names) == 9
    assert results.latents == [0, 1, 2]
    stored = results.get(1)
    assert stored["directions"].shape == (9, 3, 20)
    J = np.load(jacobian_file)
    check = rf.factorize(J[1], "mouth", k=3)
    np.testing.assert_allclose(stored["directions"][1], check.directions.numpy(), atol=1e-9)
    exported = np.load(tmp_path / "original" / "image_01_region_mouth_name_resefa.npy")
    np.testing.assert_array_equal(exported, stored["directions"][1])
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["settings"]["k"] == 3 and manifest["source"]["jacobian"]["size"] == os.path.getsize(jacobian_file)


def test_mine_resumes_after_being_killed(tmp_path):
    path = tmp_path / "J.npy"
    J = torch.stack([random_jacobian((40, 40), 96, rank=20, seed=s) for s in range(16)])
    np.save(path, J.reshape(16, 40, 40, 1, 96).numpy())
    args = ["mine", path, "--box-grid", "8,16", "--k", "4", "--device", "cpu", "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "resefa_fast.cli", *map(str, args), "--out", tmp_path / "a"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "a" / "latent_00001.npz").exists():
        time.sleep(0.05)
    process.kill()
    process.wait()
    leftovers = [name for name in os.listdir(tmp_path / "a")
                 if not name.endswith(".npz") and name not in ("manifest.json", "regions.npy", "latents.npy")]
    partial = rf.load_results(str(tmp_path / "a")).latents
    assert len(partial) < 16, "the run finished before it could be interrupted"
    assert run_cli(*args, "--out", tmp_path / "a").returncode == 0  # resume
    assert run_cli(*args, "--out", tmp_path / "b").returncode == 0  # uninterrupted
    resumed, fresh = rf.load_results(str(tmp_path / "a")), rf.load_results(str(tmp_path / "b"))
    assert resumed.latents == fresh.latents == list(range(16))
    for n in range(16):
        np.testing.assert_allclose(resumed.get(n)["directions"], fresh.get(n)["directions"], atol=1e-12)
    assert all(name.startswith(".tmp-") for name in leftovers)  # only temporaries, never a half-written result


def test_store_refuses_other_settings(jacobian_file, tmp_path):
    args = ["mine", jacobian_file, "--regions", "eyes", "--device", "cpu", "--quiet", "--out", tmp_path / "s"]
    assert run_cli(*args, "--k", "3").returncode == 0
    done = run_cli(*args, "--k", "5")
    assert done.returncode == 2 and "refusing to mix" in done.stderr


@pytest.mark.parametrize("args,match", [
    (["--regions", "ears"], "no known preset"),
    (["--box", "200,200,4,4"], "at least one pixel"),
    (["--box-grid", "500"], "--box-grid"),
])
def test_bad_cli_input_is_one_clear_line(jacobian_file, tmp_path, args, match):
    done = run_cli("mine", jacobian_file, *args, "--out", tmp_path / "s", "--device", "cpu", "--quiet")
    assert done.returncode == 2 and match in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback, no warnings


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(str(tmp_path / "x.npz"), failing)
    assert os.listdir(tmp_path) == []
    store = ResultsStore(str(tmp_path / "s"), {"settings": {}, "source": {}, "regions": {"names": []}})
    assert not store.done(0)


def test_a_full_disk_mid_run_fails_cleanly_and_a_rerun_completes(jacobian_file, tmp_path, monkeypatch, capsys):
    """The disk fills after the first latent code's file: exit 3 with one line, the first file complete and kept,
    no temporaries; the rerun (space freed) completes the store as an uninterrupted run would."""
    from resefa_fast import cli, store

    real, calls = store.write_atomic, []

    def filling(path, write):
        if os.path.basename(path).startswith("latent_"):
            calls.append(path)
            if len(calls) == 2:
                def full(tmp):
                    with open(tmp, "wb") as f:
                        f.write(b"half")
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(path, full)
        return real(path, write)

    args = ["mine", str(jacobian_file), "--regions", "eyes", "--k", "2", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "s")]
    monkeypatch.setattr(store, "write_atomic", filling)
    assert cli.main(args) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left" in err and "rerun to resume" in err
    assert rf.load_results(str(tmp_path / "s")).latents == [0]
    assert not [name for name in os.listdir(tmp_path / "s") if name.startswith(".tmp-")]
    monkeypatch.setattr(store, "write_atomic", real)
    assert cli.main(args) == 0
    assert rf.load_results(str(tmp_path / "s")).latents == [0, 1, 2]
