"""Scale out with torch.distributed: several GPUs (NCCL) or processes (gloo), launched with ``torchrun``.

Three ways to spread the work, each giving the one-process answer (to the tolerances of DESIGN.md §6):

- :func:`mine`: latent codes sharded round-robin over ranks. Every rank writes its own files into one shared
  results store. A rank that dies leaves only complete files, and a rerun (any number of ranks) completes the store.
- :func:`factorize_sharded`: a Jacobian too large for one device, split by pixel rows across ranks. The masked
  Grams ``B`` and ``A`` (and the weight sums) are all-reduced, and rank 0 solves the d×d pencil and broadcasts,
  so every rank returns identical directions.
- :func:`factorize_stacked`: directions shared by many latent codes (the stacked problem), each rank holding
  some of them. This is the same all-reduce of Grams.

Launch, e.g.: ``torchrun --nproc_per_node=8 -m resefa_fast.distributed mine J.npy --regions eyes --out store``
(keep ``NCCL_NVLS_ENABLE=0`` where the machine asks for it).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from .api import Directions
from .errors import check
from .gram import masked_grams
from .solve.common import canonical_directions, check_common_arguments, relative_residuals, scale_constants
from .solve.general import solve_pencil


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world size)`` of the default process group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when there is a GPU for every local rank, else the CPU (NCCL cannot
    put two ranks on one GPU)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def shard_rows(num_rows: int, rank: int, world: int) -> slice:
    """The contiguous block of rows rank ``rank`` holds when ``num_rows`` are split as evenly as possible."""
    return slice(num_rows * rank // world, num_rows * (rank + 1) // world)


def mine(jacobian, regions, out: str, **kwargs):
    """:func:`resefa_fast.mine` with this rank's share of the latent codes; waits for every rank at the end and
    returns the store. If a rank died, the barrier fails: rerun the same command to complete the store."""
    from .mining import mine as mine_one

    rank, world = rank_and_world()
    kwargs.setdefault("device", str(local_device()))
    kwargs.setdefault("progress", rank == 0)
    results = mine_one(jacobian, regions, out, shard=(rank, world), **kwargs)
    if world > 1:
        dist.barrier()
    from .store import load_results

    return load_results(out) if world > 1 else results


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def factorize_sharded(jacobian_rows: torch.Tensor, foreground_rows: torch.Tensor,
                      background_rows: Optional[torch.Tensor] = None, k: int = 16, tau: float = 1e-3,
                      normalize: str = "mean", dtype: torch.dtype = torch.float64) -> Directions:
    """Top-k directions of one region whose Jacobian rows are spread over the ranks.

    Each rank passes its rows ``jacobian_rows`` ``[P_r, d]`` and their weights ``foreground_rows`` ``[P_r]`` (and
    optionally explicit ``background_rows``; default the complement). Every rank returns the same result."""
    check(jacobian_rows.dim() == 2, "jacobian_rows", "a 2-D block of rows [P_r, d]", tuple(jacobian_rows.shape))
    check(foreground_rows.shape == jacobian_rows.shape[:1], "foreground_rows", f"weights [{jacobian_rows.shape[0]}]",
          tuple(foreground_rows.shape))
    d = jacobian_rows.shape[1]
    check_common_arguments(k, tau, normalize, d)
    foreground = foreground_rows.to(jacobian_rows.device, torch.float64)
    background = (1.0 - foreground if background_rows is None
                  else background_rows.to(jacobian_rows.device, torch.float64))
    grams, _ = masked_grams(jacobian_rows, torch.stack([foreground, background]), dtype=dtype)
    sums = torch.stack([foreground.sum(), background.sum(), (foreground > 0).sum().double()]).to(dtype)
    _all_reduce(grams)
    _all_reduce(sums)
    check(float(sums[0]) > 0 and float(sums[1]) > 0, "foreground_rows", "a region with both foreground and "
          "background rows across all ranks")
    check(k <= int(sums[2]), "k", f"at most the number of foreground rows ({int(sums[2])})", k)
    c_f, c_b = scale_constants(sums[0], sums[1], normalize)
    M_f, M_b = c_f * grams[0], c_b * grams[1]
    a = tau * torch.diagonal(M_b).sum()
    M_b.diagonal().add_(a)
    values = torch.empty(k, dtype=dtype, device=M_b.device)
    directions = torch.empty(k, d, dtype=dtype, device=M_b.device)
    rank, world = rank_and_world()
    if rank == 0:  # one rank solves, so every rank returns bit-identical directions
        values, n, _, _ = solve_pencil(M_f, M_b, a, k, tau, jacobian_rows.dtype)
        directions = canonical_directions(n)
    if world > 1:
        dist.broadcast(values, src=0)
        dist.broadcast(directions, src=0)
    residuals = relative_residuals(directions @ M_f, directions @ M_b, values)
    return Directions(directions, values, residuals, ["region"],
                      {"path": "general (sharded rows)", "world_size": world, "dtype": str(dtype)})


def factorize_stacked(jacobians: torch.Tensor, foreground: torch.Tensor, k: int = 16, tau: float = 1e-3,
                      normalize: str = "mean", dtype: torch.dtype = torch.float64) -> Directions:
    """Directions shared by all latent codes when each rank holds some of them: ``jacobians`` ``[N_r, P, d]``
    (this rank's latent codes, possibly none), ``foreground`` ``[P]`` the region's weights on one image. Equals
    ``resefa_fast.factorize(all_jacobians, region, latents="stack")``."""
    check(jacobians.dim() == 3, "jacobians", "this rank's latent codes [N_r, P, d]", tuple(jacobians.shape))
    rows = jacobians.reshape(-1, jacobians.shape[-1])
    return factorize_sharded(rows, foreground.to(rows.device).repeat(jacobians.shape[0]), k=k, tau=tau,
                             normalize=normalize, dtype=dtype)


def main(argv=None) -> int:
    """``torchrun ... -m resefa_fast.distributed mine ...``: the ``resefa-fast mine`` arguments, sharded."""
    from .cli import build_parser, cmd_mine
    from .errors import ResefaError

    parser = build_parser()
    args = parser.parse_args(argv)
    check(args.command == "mine", "command", "'mine' (the sharded subcommand)", args.command)
    device = local_device()
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = rank_and_world()
    args.device = args.device or str(device)
    try:
        code = cmd_mine(args, shard=(rank, world))
        if world > 1:
            dist.barrier()
            if rank == 0 and args.export_original:
                from .store import load_results

                load_results(args.out).export_original(args.export_original)
        return code
    except ResefaError as error:
        print(f"resefa-fast mine (rank {rank}): error: {error}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
