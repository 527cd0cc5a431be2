"""torch.distributed on CPU (gloo, several processes on one machine): sharded results equal one-process results."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import resefa_fast as rf
from resefa_fast import cli, distributed
from resefa_fast.testing import random_jacobian

from conftest import assert_matches_reference

WORLD = 3


def _init(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def _sharded_worker(rank, world, init_file, out_dir):
    _init(rank, world, init_file)
    J = random_jacobian((24, 20), 40, rank=20, seed=5)  # every rank builds the same J, then keeps its rows
    mask = rf.box_mask((10, 8, 6, 7), (24, 20)).flatten()
    rows = distributed.shard_rows(J.shape[0], rank, world)
    result = distributed.factorize_sharded(J[rows], mask[rows], k=5)
    stacked_J = torch.stack([random_jacobian((24, 20), 40, rank=20, seed=s) for s in range(5)])
    mine = stacked_J[rank::world]  # this rank's latent codes (5 over 3 ranks: 2, 2, 1)
    stacked = distributed.factorize_stacked(mine, mask, k=5)
    torch.save({"sharded": result, "stacked": stacked}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_sharded_rows_and_stacked_latents_equal_one_process(tmp_path):
    mp.spawn(_sharded_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    outputs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    J = random_jacobian((24, 20), 40, rank=20, seed=5).reshape(24, 20, 40)
    ref = rf.factorize(J, (10, 8, 6, 7), k=6, backend="reference")
    for out in outputs:  # identical on every rank, and equal to one process
        assert torch.equal(out["sharded"].directions, outputs[0]["sharded"].directions)
        assert_matches_reference(out["sharded"].eigenvalues, out["sharded"].directions, ref.eigenvalues[:5],
                                 ref.directions[:5], torch.float64, ref.eigenvalues[5])
    stacked_J = torch.stack([random_jacobian((24, 20), 40, rank=20, seed=s) for s in range(5)]).reshape(5, 24, 20, 40)
    one = rf.factorize(stacked_J, (10, 8, 6, 7), k=6, latents="stack", batched=True, backend="reference")
    assert_matches_reference(outputs[1]["stacked"].eigenvalues, outputs[1]["stacked"].directions,
                             one.eigenvalues[:5], one.directions[:5], torch.float64, one.eigenvalues[5])


def _torchrun(args, world, env_extra=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                           "--rdzv_endpoint=127.0.0.1:0", "--rdzv_backend=c10d",
                           "-m", "resefa_fast.distributed", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def latent_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "J.npy"
    J = torch.stack([random_jacobian((32, 32), 24, rank=12, seed=s) for s in range(7)])
    np.save(path, J.reshape(7, 32, 32, 1, 24).numpy())
    return path


def test_torchrun_mining_equals_one_process(latent_file, tmp_path):
    args = ["mine", latent_file, "--box-grid", "8,16", "--k", "3", "--quiet"]
    done = _torchrun(args + ["--out", tmp_path / "sharded"], world=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert cli.main([str(a) for a in args] + ["--out", str(tmp_path / "single")]) == 0
    sharded, single = rf.load_results(str(tmp_path / "sharded")), rf.load_results(str(tmp_path / "single"))
    assert sharded.latents == single.latents == list(range(7))
    for n in range(7):
        np.testing.assert_allclose(sharded.get(n)["directions"], single.get(n)["directions"], atol=1e-12)


def test_a_dead_rank_leaves_a_store_that_a_rerun_completes(latent_file, tmp_path):
    store = tmp_path / "store"
    args = ["mine", latent_file, "--box-grid", "8,16", "--k", "3", "--quiet", "--out", store]
    # Rank 1 of 2 "dies" before doing anything: simulate by running rank 0's share alone as a 2-rank shard.
    assert cli.cmd_mine(cli.build_parser().parse_args([str(a) for a in args]), shard=(0, 2)) == 0
    partial = rf.load_results(str(store)).latents
    assert partial == [0, 2, 4, 6]
    done = _torchrun(args, world=2)  # the rerun does only what is missing
    assert done.returncode == 0, done.stderr[-2000:]
    assert rf.load_results(str(store)).latents == list(range(7))
