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

from conftest import assert_matches_reference, naive_float32

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


# Pixel-sharded Jacobians: 3 ranks holding uneven row blocks (not aligned with image rows) of one [480, 40] J.
GRID = (24, 20)
EDGES = [0, 130, 301, 480]
BOXES = [(2, 10, 4, 6),  # pixels 7-72: inside rank 0's block
         (10, 8, 6, 7),  # pixels 145-251: inside rank 1's block
         (14, 10, 12, 8),  # pixels 166-393: spans ranks 1 and 2
         (12, 10, 16, 10)]  # pixels 85-394: spans all three
PIXEL_K = 5


def _pixel_jacobian():
    """Generator-like J with six latent dims that move the third box only: its λ c_b / c_f reaches 1e5, so the bulk
    path's exact-pencil Rayleigh–Ritz refinement (products with background rows) runs on sharded rows."""
    J = random_jacobian(GRID, 40, rank=20, noise=1e-5, seed=5).reshape(*GRID, 40)
    inside = rf.box_mask(BOXES[2], GRID).bool()
    J[inside, :6] += 30 * torch.randn(int(inside.sum()), 6, generator=torch.Generator().manual_seed(1))
    return J.reshape(-1, 40)


def _pixel_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    _init(rank, world, init_file)
    rows = slice(EDGES[rank], EDGES[rank + 1])
    J = _pixel_jacobian()[rows]  # every rank builds the same J, then keeps only its rows
    run = {}
    run["bulk"] = distributed.factorize_pixel_sharded(J, rows, BOXES, k=PIXEL_K, grid=GRID)
    run["bulk_unrefined"] = distributed.PixelShardedFactorizer(J, (rows.start, rows.stop), GRID).factorize_many(
        BOXES[:2], k=PIXEL_K)
    for method in ("cholesky", "woodbury"):
        run[method] = distributed.factorize_pixel_sharded(J, rows, BOXES, k=PIXEL_K, grid=GRID, method=method)
    run["one_region"] = distributed.factorize_pixel_sharded(J, rows, BOXES[3], k=PIXEL_K, grid=GRID)
    run["float32"] = distributed.factorize_pixel_sharded(J, rows, BOXES[3], k=PIXEL_K, grid=GRID, dtype=torch.float32)
    run["background"] = distributed.factorize_pixel_sharded(J, rows, BOXES[1], k=PIXEL_K, grid=GRID,
                                                            background=BOXES[3])
    try:  # the refined route needs every row of J in one process: a clear error, not a partial answer
        distributed.factorize_pixel_sharded(J, rows, BOXES[3], k=PIXEL_K, grid=GRID, method="refined")
        run["refined_error"] = None
    except rf.ResefaError as error:
        run["refined_error"] = str(error)
    torch.save(run, os.path.join(out_dir, f"pixel{rank}.pt"))
    dist.destroy_process_group()


def _assert_same_answer(out, one, ref):
    """``out`` (sharded) against the one-process result ``one`` and the float64 oracle ``ref`` (one more pair)."""
    values, directions = out.eigenvalues.reshape(-1, PIXEL_K), out.directions.reshape(-1, PIXEL_K, 40)
    one_values, one_directions = one.eigenvalues.reshape(-1, PIXEL_K), one.directions.reshape(-1, PIXEL_K, 40)
    ref_values, ref_directions = ref.eigenvalues.reshape(-1, PIXEL_K + 1), ref.directions.reshape(-1, PIXEL_K + 1, 40)
    for r in range(values.shape[0]):
        assert_matches_reference(values[r], directions[r], ref_values[r, :-1], ref_directions[r, :-1], torch.float64,
                                 ref_values[r, -1])
        assert_matches_reference(values[r], directions[r], one_values[r], one_directions[r], torch.float64,
                                 ref_values[r, -1])


def test_pixel_sharded_equals_one_process(tmp_path):
    """Bulk and general paths on rows split 130 / 171 / 179 over 3 ranks: regions inside one block, across two,
    across all three; an explicit background; each equals one process (and the oracle) to DESIGN.md §6."""
    mp.spawn(_pixel_worker, args=(3, str(tmp_path / "init"), str(tmp_path)), nprocs=3, join=True)
    outputs = [torch.load(tmp_path / f"pixel{r}.pt", weights_only=False) for r in range(3)]
    for output in outputs:
        message = output.pop("refined_error")
        assert message is not None and "'refined'" in message and "'cholesky'" in message, message
    for name, out in outputs[0].items():  # every rank returns the same result, to the bit
        for other in outputs[1:]:
            assert torch.equal(other[name].directions, out.directions), name
            assert torch.equal(other[name].eigenvalues, out.eigenvalues), name
    J = _pixel_jacobian().reshape(*GRID, 40)
    sharded = outputs[0]
    ref = rf.factorize(J, BOXES, k=PIXEL_K + 1, backend="reference")
    assert sharded["bulk"].info["path"] == "bulk" and sharded["bulk"].directions.shape == (4, PIXEL_K, 40)
    assert sharded["bulk"].info["world_size"] == 3
    _assert_same_answer(sharded["bulk"], rf.Factorizer(J).factorize_many(BOXES, k=PIXEL_K), ref)
    one_two = rf.factorize(J, BOXES[:2], k=PIXEL_K + 1, backend="reference")
    _assert_same_answer(sharded["bulk_unrefined"], rf.factorize(J, BOXES[:2], k=PIXEL_K, method="bulk"), one_two)
    for method in ("cholesky", "woodbury"):
        assert sharded[method].info["path"] == "general"
        _assert_same_answer(sharded[method], rf.factorize(J, BOXES, k=PIXEL_K, method=method), ref)
    assert sharded["one_region"].directions.shape == (PIXEL_K, 40)
    one = rf.factorize(J, BOXES[3], k=PIXEL_K + 1, backend="reference")
    _assert_same_answer(sharded["one_region"], rf.factorize(J, BOXES[3], k=PIXEL_K), one)
    assert sharded["float32"].directions.dtype == torch.float32  # float32 Grams all-reduced: float32 tolerances
    naive = naive_float32(J, rf.box_mask(BOXES[3], GRID), PIXEL_K)
    assert_matches_reference(sharded["float32"].eigenvalues, sharded["float32"].directions, one.eigenvalues[:-1],
                             one.directions[:-1], torch.float32, one.eigenvalues[-1], naive=naive)
    with_background = rf.factorize(J, BOXES[1], k=PIXEL_K + 1, background=BOXES[3], backend="reference")
    _assert_same_answer(sharded["background"], rf.factorize(J, BOXES[1], k=PIXEL_K, background=BOXES[3]),
                        with_background)


def _channels_jacobian():
    return random_jacobian((16, 12), 24, channels=3, rank=16, seed=9)  # [3·16·12, 24], rows in c, h, w order


def _soft_masks():
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="ij")
    return torch.stack([torch.exp(-((yy - 5) ** 2 + (xx - 4) ** 2) / 8.0), torch.sigmoid(xx - 8.0),
                        rf.box_mask((12, 6, 4, 4), (16, 12))])  # [3, 16, 12]


def _channels_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    _init(rank, world, init_file)
    J = _channels_jacobian()
    rows = distributed.shard_rows(J.shape[0], rank, world)
    factorizer = distributed.PixelShardedFactorizer(J[rows], rows, (3, 16, 12), rank=12)  # truncated basis
    run = {"truncated": factorizer.factorize_many(_soft_masks(), k=3)}
    flat = _soft_masks().reshape(3, 1, -1).expand(-1, 3, -1).reshape(3, -1)  # flat weights [R, P]: num_rows only
    run["flat"] = distributed.factorize_pixel_sharded(J[rows], rows, flat, k=3, num_rows=J.shape[0])
    # one region per chunk: every rank must cut the same chunks (sizes from the all-reduced row counts)
    run["chunked"] = distributed.PixelShardedFactorizer(J[rows], rows, (3, 16, 12), memory_budget=1).factorize_many(
        _soft_masks(), k=3)
    try:  # blocks that overlap (and leave rows out) are refused on every rank, not silently summed
        distributed.factorize_pixel_sharded(J[:100], (0, 100), flat, k=3, num_rows=J.shape[0])
    except rf.ResefaError as error:
        run["overlap_error"] = str(error)
    torch.save(run, os.path.join(out_dir, f"channels{rank}.pt"))
    dist.destroy_process_group()


def test_pixel_sharded_channels_soft_masks_truncation(tmp_path):
    """2 ranks, a 3-channel Jacobian split inside a channel, soft masks, a truncated eigenbasis (equal to the
    one-process Factorizer with the same rank), flat weights with ``num_rows``, one region per chunk, and a bad
    row tiling."""
    mp.spawn(_channels_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    outputs = [torch.load(tmp_path / f"channels{r}.pt", weights_only=False) for r in range(2)]
    J = _channels_jacobian().reshape(3, 16, 12, 24)
    masks = _soft_masks()
    truncated = rf.Factorizer(J, rank=12).factorize_many(masks, k=3)
    full = rf.factorize(J, masks, k=3, method="bulk")
    ref = rf.factorize(J, masks, k=4, backend="reference")
    for out in outputs:
        assert "tile" in out["overlap_error"]
        assert len(out["chunked"].info["applications"]) == 3  # one entry per chunk
        sharded = out["truncated"]
        assert torch.allclose(sharded.info["truncation_bound"], truncated.info["truncation_bound"], rtol=1e-10)
        for r in range(3):
            assert_matches_reference(sharded.eigenvalues[r], sharded.directions[r], truncated.eigenvalues[r],
                                     truncated.directions[r], torch.float64, ref.eigenvalues[r, 3])
            for name in ("flat", "chunked"):
                assert_matches_reference(out[name].eigenvalues[r], out[name].directions[r], full.eigenvalues[r],
                                         full.directions[r], torch.float64, ref.eigenvalues[r, 3])
            assert_matches_reference(out["flat"].eigenvalues[r], out["flat"].directions[r], ref.eigenvalues[r, :3],
                                     ref.directions[r, :3], torch.float64, ref.eigenvalues[r, 3])


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


@pytest.mark.parametrize("latents", ["per_image", "stack"])
def test_torchrun_pixel_sharded_directions_equal_one_process(tmp_path, latents):
    """``torchrun -m resefa_fast.distributed directions ... --pixel-shard``: 2 ranks each read their rows of the
    memory-mapped original-layout file; the .npz equals ``resefa-fast directions`` on one process."""
    path = tmp_path / "J.npy"
    np.save(path, torch.stack([_pixel_jacobian(), random_jacobian(GRID, 40, rank=20, seed=6)]).reshape(
        2, *GRID, 1, 40).numpy())
    args = ["directions", path, "--region", "14,10,12,8", "--k", "4", "--latents", latents]
    done = _torchrun(args + ["--out", tmp_path / "sharded.npz", "--pixel-shard"], world=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pixel rows split over 2 ranks" in done.stdout
    assert cli.main([str(a) for a in args] + ["--out", str(tmp_path / "one.npz")]) == 0
    sharded, one = np.load(tmp_path / "sharded.npz"), np.load(tmp_path / "one.npz")
    assert sharded["directions"].shape == one["directions"].shape == ((2, 4, 40) if latents == "per_image"
                                                                      else (4, 40))
    ref = rf.factorize(torch.from_numpy(np.load(path)), (14, 10, 12, 8), k=5, latents=latents, backend="reference")
    values, directions = torch.from_numpy(sharded["eigenvalues"]), torch.from_numpy(sharded["directions"])
    for n in range(values.reshape(-1, 4).shape[0]):
        ref_values = ref.eigenvalues.reshape(-1, 5)[n]
        assert_matches_reference(values.reshape(-1, 4)[n], directions.reshape(-1, 4, 40)[n], ref_values[:4],
                                 ref.directions.reshape(-1, 5, 40)[n, :4], torch.float64, ref_values[4])
        assert_matches_reference(values.reshape(-1, 4)[n], directions.reshape(-1, 4, 40)[n],
                                 torch.from_numpy(one["eigenvalues"]).reshape(-1, 4)[n],
                                 torch.from_numpy(one["directions"]).reshape(-1, 4, 40)[n], torch.float64,
                                 ref_values[4])
