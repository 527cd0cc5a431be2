"""The README is a tested surface: its main-job command and its Python example run as written."""
import os
import re
import subprocess
import sys

import numpy as np
import torch

import resefa_fast
from resefa_fast.testing import random_jacobian

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# subprocesses find the package from any folder, installed or not
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
README = open(os.path.join(ROOT, "README.md")).read()


def test_main_job_command_runs_as_written(tmp_path):
    setup_lines = [line for line in README.splitlines() if line.startswith("pip install")]
    assert len(setup_lines) == 2, "the README must show two commands: the main job and the tests"
    main_job = setup_lines[0].split("&&")[-1].strip()
    assert main_job == "resefa-fast demo"
    done = subprocess.run([sys.executable, "-m", "resefa_fast.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    results = resefa_fast.load_results(str(tmp_path / "demo" / "store"))
    assert results.names == ["left_eye", "right_eye", "nose", "mouth"] and results.latents == [0, 1, 2, 3]
    for n in results.latents:  # the built-in model's part directions are local: more change inside than out
        data = results.get(n)
        assert np.all(data["locality_inside"][:, 0] > data["locality_outside"][:, 0])
    for name in ("report.html", "edits/seed0_mouth.png", "edits/seed0_mouth_direction000.gif"):
        assert (tmp_path / "demo" / name).exists(), name
    assert "report:" in done.stdout


def test_solver_demo_runs(tmp_path):
    """`python -m resefa_fast`, the quick solver-only run the README mentions."""
    assert "`python -m resefa_fast`" in README
    done = subprocess.run([sys.executable, "-m", "resefa_fast", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    directions = np.load(tmp_path / "directions.npy")
    assert directions.shape == (7, 8, 512)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=-1), 1.0, atol=1e-10)
    assert "check of 'chin' against the float64 reference" in done.stdout


def test_model_example_runs(tmp_path, monkeypatch):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "rf.mine(" in b)
    monkeypatch.chdir(tmp_path)
    namespace = {"rf": resefa_fast}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["images"].shape == (2, 3, 3, 64, 64)
    assert namespace["store"].get(1)["locality_inside"].shape == (2, 2)


def test_model_cli_examples_run_as_written(tmp_path):
    import shlex

    block = next(b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "resefa-fast jacobian" in b)
    commands = [line for line in block.splitlines() if line.startswith("resefa-fast ")]
    assert [c.split()[1] for c in commands] == ["jacobian", "mine", "edit", "report"]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "resefa_fast.cli"] + shlex.split(command)[1:], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env=ENV)
        assert done.returncode == 0, command + "\n" + done.stderr
    assert resefa_fast.load_results(str(tmp_path / "faces_mined")).names == ["procedural/mouth", "procedural/nose"]
    assert (tmp_path / "faces_mined" / "report.html").exists()
    assert (tmp_path / "faces_edits" / "latent0_procedural_mouth.png").exists()


def test_python_example_runs(tmp_path, monkeypatch):
    example = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    # the original's file layout [N, 256, 256, 1, d], with a small d to keep the test fast
    J = torch.stack([random_jacobian((256, 256), 16, rank=12, seed=s) for s in range(2)])
    np.save(tmp_path / "jacobians.npy", J.reshape(2, 256, 256, 1, 16).numpy())
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["one"].directions.shape == (16, 16)
    assert namespace["bulk"].directions.shape == (2, 16, 16)
    assert namespace["shared"].directions.shape == (16, 16)
    assert namespace["original"].info["backend"] == "reference"


def test_cli_examples_run_as_written(tmp_path):
    import shlex
    import shutil

    block = re.search(r"```bash\n(resefa-fast .*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line.startswith("resefa-fast ")]
    assert len(commands) == 2
    J = torch.stack([random_jacobian((256, 256), 16, rank=12, seed=s) for s in range(2)])
    np.save(tmp_path / "jacobians.npy", J.reshape(2, 256, 256, 1, 16).numpy())
    entry = shutil.which("resefa-fast")
    prefix = [entry] if entry else [sys.executable, "-m", "resefa_fast.cli"]
    for command in commands:
        done = subprocess.run(prefix + shlex.split(command)[1:] + ["--device", "cpu"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env=ENV)
        assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "eyes.npz")["directions"].shape == (2, 16, 16)
    assert resefa_fast.load_results(str(tmp_path / "store")).latents == [0, 1]


def test_torchrun_example_runs_with_two_processes(tmp_path):
    """The README's torchrun line, with 2 processes instead of 8 (this machine has 2 cores) on gloo."""
    import shlex

    line = next(line for line in README.splitlines() if line.startswith("torchrun "))
    words = shlex.split(line)
    assert words[1] == "--nproc_per_node=8"
    J = torch.stack([random_jacobian((256, 256), 12, rank=8, seed=s) for s in range(3)])
    np.save(tmp_path / "jacobians.npy", J.reshape(3, 256, 256, 1, 12).numpy())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
               "--rdzv_endpoint=127.0.0.1:0"] + words[2:] + ["--k", "4", "--quiet"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(ENV, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr[-2000:]
    results = resefa_fast.load_results(str(tmp_path / "store"))
    assert results.latents == [0, 1, 2] and results.names == ["eyes", "nose"]


def test_torchrun_pixel_shard_example_runs(tmp_path):
    """The README's --pixel-shard line, with 2 processes instead of 8, equals `resefa-fast directions`."""
    import shlex

    line = next(line for line in README.splitlines() if line.startswith("torchrun ") and "--pixel-shard" in line)
    words = shlex.split(line)
    assert words[1] == "--nproc_per_node=8"
    J = torch.stack([random_jacobian((256, 256), 12, rank=8, seed=s) for s in range(2)])
    np.save(tmp_path / "jacobians.npy", J.reshape(2, 256, 256, 1, 12).numpy())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
               "--rdzv_endpoint=127.0.0.1:0"] + words[2:] + ["--k", "4"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(ENV, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr[-2000:]
    sharded = np.load(tmp_path / "eyes.npz")
    one = resefa_fast.factorize(J.reshape(2, 256, 256, 1, 12), "eyes", k=4)
    assert sharded["directions"].shape == (2, 4, 12)
    np.testing.assert_allclose(sharded["eigenvalues"], one.eigenvalues.numpy(), rtol=1e-10)


def test_jacobian_example_runs():
    """The README's Jacobian line, with a small generator of the engine's stage protocol as G."""
    from resefa_fast.jacobian.toy import ToyGenerator

    block = re.findall(r"```python\n(.*?)```", README, re.S)[1]
    assert "rf.jacobian(" in block
    G = ToyGenerator(resolution=16, w_dim=8)
    namespace = {"rf": resefa_fast, "G": G, "ws": torch.randn(G.num_ws, 8, generator=torch.Generator().manual_seed(0))}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["J"].shape == (3 * 16 * 16, G.num_ws * 8)  # at most 256 pixels: the image as it is, RGB
