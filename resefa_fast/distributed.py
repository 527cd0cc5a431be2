"""Scale out with torch.distributed: several GPUs (NCCL) or processes (gloo), launched with ``torchrun``.

Three ways to spread the work, each giving the one-process answer (to the tolerances of DESIGN.md §6):

- :func:`mine`: latent codes sharded round-robin over ranks. Every rank writes its own files into one shared
  results store. A rank that dies leaves only complete files, and a rerun (any number of ranks) completes the store.
- Pixel-sharded Jacobians, too large for one device: each rank holds rows ``[start, stop)`` of J
  (:func:`shard_rows`), regions are given on the full grid and each rank slices its rows.
  :func:`factorize_pixel_sharded` is :func:`resefa_fast.factorize` and :class:`PixelShardedFactorizer` is
  :class:`resefa_fast.Factorizer` for such a J. Every sum over pixel rows is all-reduced (SUM), nothing else moves:
  general path: the masked Grams ``B``, ``A`` ``[d, d]`` and weight sums (:func:`sharded_grams`), then every rank
  solves the same pencil; bulk path: ``G = JᵀJ`` in float64, eigh on rank 0 and ``V`` broadcast, each rank keeps
  its rows of ``JV``; per chunk of regions the totals, ``W = K̃ᵀK̃`` ``[R, r, r]`` and the products with foreground
  / background rows of the Rayleigh–Ritz step (the ``reduce`` hook of :mod:`resefa_fast.solve.bulk`); the small
  eigenproblems of W are split over the ranks and their results all-gathered (the ``share`` hook).
  :func:`factorize_sharded` is the one-region form with per-rank weights.
- :func:`factorize_stacked`: directions shared by many latent codes (the stacked problem), each rank holding
  some of them. This is the same all-reduce of Grams.

Every rank returns the same result: the all-reduced sums are identical on every rank and what follows is
deterministic.

Launch, e.g.: ``torchrun --nproc_per_node=8 -m resefa_fast.distributed mine J.npy --regions eyes --out store``
(keep ``NCCL_NVLS_ENABLE=0`` where the machine asks for it).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist

from .api import Directions, _auto_method, _compute_dtype, _package
from .backends import resolve_backend
from .errors import ResefaError, check
from .gram import gram, masked_grams
from .regions import Regions, as_regions
from .solve.bulk import BulkBasis, check_bulk_dtype, gram_eigenbasis, project_rows, solve_bulk
from .solve.common import check_common_arguments, check_k_against_regions
from .solve.general import METHODS, solve_general


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


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (the ``reduce`` hook of the solvers); a no-op with one process."""
    if rank_and_world()[1] > 1:
        if tensor.is_contiguous():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:  # collectives move raw memory: a strided view would be summed element-for-element out of place
            tensor.copy_(all_reduce_sum(tensor.contiguous()))
    return tensor


def share_regions(fn, batched: tuple, *args) -> tuple:
    """``fn(*batched, *args)`` for a function independent per region (dim 0 of the ``batched`` tensors), each rank
    computing a contiguous block of the regions and all-gathering the results, so every rank returns the whole
    batch (the ``share`` hook of :mod:`resefa_fast.solve.bulk`: the small per-region eigenproblems are split over
    the ranks instead of repeated on each). Tensor outputs are gathered along dim 0, integers take the ranks' max.
    A :class:`~resefa_fast.errors.ResefaError` on any rank is raised on every rank (none is left waiting)."""
    rank, world = rank_and_world()
    if world == 1:
        return fn(*batched, *args)
    count, device = batched[0].shape[0], batched[0].device
    block = -(-count // world)
    # every rank gets a block of the same size (the last one padded with copies of the last region): equal shapes
    index = torch.arange(rank * block, (rank + 1) * block, device=device).clamp_max(count - 1)
    failure, out = None, ()
    try:
        out = fn(*(t[index] for t in batched), *args)
    except ResefaError as error:
        failure = error
    failed = torch.tensor([failure is not None], dtype=torch.int64, device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if int(failed):
        raise ResefaError("the bulk path failed on another rank for some regions of this chunk (see its error)")
    gathered = []
    for value in out:
        if isinstance(value, torch.Tensor):
            value = value.contiguous()
            parts = [torch.empty_like(value) for _ in range(world)]
            dist.all_gather(parts, value)
            gathered.append(torch.cat(parts)[:count])
        else:
            most = torch.tensor([int(value)], dtype=torch.int64, device=device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            gathered.append(int(most))
    return tuple(gathered)


def sharded_grams(jacobian_rows: torch.Tensor, weights_rows: Optional[torch.Tensor] = None,
                  dtype: torch.dtype = torch.float64):
    """Grams of the whole J from each rank's rows ``jacobian_rows`` ``[P_r, d]``, accumulated in ``dtype`` and
    all-reduced. With ``weights_rows`` ``[R, P_r]`` (this rank's slice of the masks): ``(grams [R, d, d],
    traces [R])`` as :func:`resefa_fast.gram.masked_grams` of the full J; without: ``JᵀJ`` ``[d, d]``."""
    if weights_rows is None:
        return all_reduce_sum(gram(jacobian_rows, dtype=dtype))
    grams, traces = masked_grams(jacobian_rows, weights_rows, dtype=dtype)
    return all_reduce_sum(grams), all_reduce_sum(traces)


def factorize_sharded(jacobian_rows: torch.Tensor, foreground_rows: torch.Tensor,
                      background_rows: Optional[torch.Tensor] = None, k: int = 16, tau: float = 1e-3,
                      normalize: str = "mean", dtype: torch.dtype = torch.float64) -> Directions:
    """Top-k directions of one region whose Jacobian rows are spread over the ranks.

    Each rank passes its rows ``jacobian_rows`` ``[P_r, d]`` and their weights ``foreground_rows`` ``[P_r]`` (and
    optionally explicit ``background_rows``; default the complement). Every rank returns the same result."""
    check(jacobian_rows.dim() == 2, "jacobian_rows", "a 2-D block of rows [P_r, d]", tuple(jacobian_rows.shape))
    check(foreground_rows.shape == jacobian_rows.shape[:1], "foreground_rows", f"weights [{jacobian_rows.shape[0]}]",
          tuple(foreground_rows.shape))
    check_common_arguments(k, tau, normalize, jacobian_rows.shape[1])
    regions = Regions(foreground=foreground_rows.to(jacobian_rows.device)[None], names=["region"], single=True,
                      background=None if background_rows is None else background_rows.to(jacobian_rows.device)[None])
    background = regions.background_weights(torch.float64)[0]
    sums = all_reduce_sum(torch.stack([regions.foreground[0].double().sum(), background.sum(),
                                       (regions.foreground[0] > 0).sum().double()]))
    check(float(sums[0]) > 0 and float(sums[1]) > 0, "foreground_rows", "a region with both foreground and "
          "background rows across all ranks")
    check(k <= int(sums[2]), "k", f"at most the number of foreground rows ({int(sums[2])})", k)
    solution = solve_general(jacobian_rows, regions, k, tau, normalize, dtype=dtype, reduce=all_reduce_sum)
    return Directions(solution.directions[0], solution.eigenvalues[0], solution.residuals[0], ["region"],
                      {"path": "general (sharded rows)", "world_size": rank_and_world()[1], "dtype": str(dtype)})


def _row_block(row_range, local_rows: int, num_rows: int, device) -> slice:
    """This rank's rows as a slice, checked: ``[start, stop)`` holds ``local_rows`` rows inside ``[0, P)``, and the
    ranks' blocks tile ``[0, P)`` exactly (a gap or an overlap would silently change every Gram)."""
    start, stop = (row_range.start, row_range.stop) if isinstance(row_range, slice) else tuple(row_range)
    check(isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= num_rows
          and stop - start == local_rows, "row_range",
          f"(start, stop) inside [0, {num_rows}] with stop - start = {local_rows} (the rows of jacobian_rows)",
          (start, stop))
    world = rank_and_world()[1]
    if world > 1:
        blocks = [torch.empty(2, dtype=torch.int64, device=device) for _ in range(world)]
        dist.all_gather(blocks, torch.tensor([start, stop], dtype=torch.int64, device=device))
        edges = sorted(tuple(b.tolist()) for b in blocks)
        tiled = edges[0][0] == 0 and edges[-1][1] == num_rows and all(
            edges[i][1] == edges[i + 1][0] for i in range(world - 1))
        check(tiled, "row_range", f"blocks of the ranks that tile [0, {num_rows}) without gaps or overlaps", edges)
    return slice(start, stop)


def _full_grid(grid, num_rows: Optional[int]):
    """``(grid (C, H, W) or None, P)`` of the whole Jacobian from ``grid`` (``(H, W)`` / ``(C, H, W)``) and/or
    ``num_rows``."""
    check(grid is not None or num_rows is not None, "grid", "the full Jacobian's (H, W) or (C, H, W), or num_rows")
    if grid is not None:
        grid = tuple(int(g) for g in grid)
        check(len(grid) in (2, 3), "grid", "(H, W) or (C, H, W)", grid)
        grid = (1,) + grid if len(grid) == 2 else grid
        rows = grid[0] * grid[1] * grid[2]
        check(num_rows is None or num_rows == rows, "num_rows", f"C*H*W = {rows} of `grid`", num_rows)
        num_rows = rows
    return grid, int(num_rows)


def _agreed_memory_budget(memory_budget: Optional[int], device: torch.device) -> int:
    """The bulk path's chunk budget, the same on every rank (they must cut the same chunks): the smallest free
    GPU memory / 4 over the ranks, or 512 MiB on the CPU."""
    if memory_budget is None:
        memory_budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else 512 << 20
    budget = torch.tensor([int(memory_budget)], dtype=torch.int64, device=device)
    if rank_and_world()[1] > 1:
        dist.all_reduce(budget, op=dist.ReduceOp.MIN)
    return int(budget)


def precompute_sharded(jacobian_rows: torch.Tensor, rank: Optional[int] = None, energy: Optional[float] = None,
                       dtype: torch.dtype = torch.float64, row_block: int = 8192) -> BulkBasis:
    """:func:`resefa_fast.solve.bulk.precompute` for rows spread over the ranks: ``G = JᵀJ`` all-reduced in float64,
    its eigh on rank 0 and broadcast (one ``[d, r]`` message; every rank then uses the same V to the bit), each rank
    keeping its own rows of ``JV`` and of the row energies. ``rank`` / ``energy``: truncation, as there."""
    check_bulk_dtype(dtype)
    G = sharded_grams(jacobian_rows, dtype=torch.float64)  # [d, d]
    process, world = rank_and_world()
    d, device = G.shape[0], G.device
    if process == 0:
        sigma, V, discarded = gram_eigenbasis(G, rank, energy, dtype)
        V = V.contiguous()  # eigh's vectors are column-major; a broadcast sends raw memory
        header = torch.tensor([V.shape[1], discarded], dtype=torch.float64, device=device)
    else:
        header = torch.empty(2, dtype=torch.float64, device=device)
    if world > 1:
        dist.broadcast(header, src=0)
        if process != 0:
            keep = int(header[0])
            sigma = torch.empty(keep, dtype=torch.float64, device=device)
            V = torch.empty(d, keep, dtype=dtype, device=device)
        dist.broadcast(sigma, src=0)
        dist.broadcast(V, src=0)
    del G
    JV, energies = project_rows(jacobian_rows, V, dtype, row_block)
    return BulkBasis(V=V, sigma=sigma, JV=JV, energies=energies, discarded=float(header[1]),
                     data_eps=torch.finfo(jacobian_rows.dtype).eps)


def factorize_stacked(jacobians: torch.Tensor, foreground: torch.Tensor, k: int = 16, tau: float = 1e-3,
                      normalize: str = "mean", dtype: torch.dtype = torch.float64) -> Directions:
    """Directions shared by all latent codes when each rank holds some of them: ``jacobians`` ``[N_r, P, d]``
    (this rank's latent codes, possibly none), ``foreground`` ``[P]`` the region's weights on one image. Equals
    ``resefa_fast.factorize(all_jacobians, region, latents="stack")``."""
    check(jacobians.dim() == 3, "jacobians", "this rank's latent codes [N_r, P, d]", tuple(jacobians.shape))
    rows = jacobians.reshape(-1, jacobians.shape[-1])
    return factorize_sharded(rows, foreground.to(rows.device).repeat(jacobians.shape[0]), k=k, tau=tau,
                             normalize=normalize, dtype=dtype)


class PixelShardedFactorizer:
    """:class:`resefa_fast.Factorizer` for a Jacobian whose rows are split across the ranks (call it on every rank,
    with the same arguments except the rows; every rank returns the same :class:`Directions`).

    ``jacobian_rows`` ``[P_r, d]``: this rank's rows ``row_range = (start, stop)`` (or a slice) of the full
    ``[P, d]`` Jacobian, rows in ``c, h, w`` order; ``grid``: the full Jacobian's ``(H, W)`` or ``(C, H, W)`` (for
    boxes, presets and spatial masks), or ``num_rows`` = P when regions are flat weights ``[P]`` / ``[R, P]``.
    The bulk precompute (:func:`precompute_sharded`, collective) runs at construction, or with
    ``precompute=False`` at the first call that needs it. Every call is collective.
    """

    def __init__(self, jacobian_rows: torch.Tensor, row_range: Union[Tuple[int, int], slice], grid=None, *,
                 num_rows: Optional[int] = None, tau: float = 1e-3, normalize: str = "mean", backend: str = "auto",
                 rank: Optional[int] = None, energy: Optional[float] = None, dtype: Optional[torch.dtype] = None,
                 tol: Optional[float] = None, memory_budget: Optional[int] = None, precompute: bool = True):
        check(isinstance(jacobian_rows, torch.Tensor) and jacobian_rows.dim() == 2
              and jacobian_rows.is_floating_point(), "jacobian_rows", "a floating tensor of rows [P_r, d]",
              getattr(jacobian_rows, "shape", type(jacobian_rows)))
        self.grid, self.num_rows = _full_grid(grid, num_rows)
        self.rows = _row_block(row_range, jacobian_rows.shape[0], self.num_rows, jacobian_rows.device)
        self.jacobian_rows, self.dim = jacobian_rows, jacobian_rows.shape[1]
        self.dtype = _compute_dtype(dtype)
        check(backend in ("auto", "torch", "cuda"), "backend", "'auto', 'torch' or 'cuda' (the float64 reference "
              "needs the whole Jacobian in one process)", repr(backend))
        self.backend, self.backend_reason = resolve_backend(backend, jacobian_rows.device)
        check_common_arguments(1, tau, normalize, self.dim)
        check(rank is None or (isinstance(rank, int) and 1 <= rank <= self.dim), "rank",
              f"None or an integer in [1, {self.dim}]", repr(rank))
        check(energy is None or (0 < energy <= 1), "energy", "None or a fraction in (0, 1]", repr(energy))
        self.tau, self.normalize, self.tol, self.truncation = tau, normalize, tol, (rank, energy)
        self.memory_budget = memory_budget  # None: agreed over the ranks at each call, from the free memory then
        self._basis: Optional[BulkBasis] = None
        if precompute:
            self.basis  # noqa: B018 (collective: every rank builds its part now)

    @property
    def basis(self) -> BulkBasis:
        """The sharded bulk precompute (``JV`` and ``energies``: this rank's rows)."""
        if self._basis is None:
            check_bulk_dtype(self.dtype)
            self._basis = precompute_sharded(self.jacobian_rows, *self.truncation, dtype=self.dtype)
        return self._basis

    def regions(self, region, background=None) -> Tuple[Regions, Regions]:
        """``(regions on all P rows, this rank's slice of them)``, validated on the full grid."""
        full = as_regions(region, self.grid, self.num_rows, self.jacobian_rows.device, background)
        local = Regions(foreground=full.foreground[:, self.rows],
                        background=None if full.background is None else full.background[:, self.rows],
                        names=full.names, single=full.single)
        return full, local

    def factorize_many(self, regions, k: int = 16, tau: Optional[float] = None, background=None,
                       progress: Optional[bool] = None, method: str = "bulk") -> Directions:
        """Directions for a batch of regions on the full grid: ``[R, k, d]`` (``[k, d]`` for one region), as
        :meth:`resefa_fast.Factorizer.factorize_many` of the full J. ``method``: "bulk" (explicit backgrounds
        still go through the general path, as there), "auto" (as :func:`resefa_fast.factorize`), "cholesky" or
        "woodbury" (the general path: all-reduced masked Grams per region)."""
        tau = self.tau if tau is None else tau
        check_common_arguments(k, tau, self.normalize, self.dim)
        check(method in ("auto", "bulk") + METHODS, "method", f"one of {('auto', 'bulk') + METHODS}", repr(method))
        full, local = self.regions(regions, background)
        check_k_against_regions(k, full.foreground)
        if method == "auto":
            method = _auto_method(full, self.dtype)
        if method == "bulk" and full.background is None:
            progress = bool(progress) and rank_and_world()[0] == 0
            budget = _agreed_memory_budget(self.memory_budget, self.jacobian_rows.device)
            solution = solve_bulk(self.basis, local, k, tau, self.normalize, tol=self.tol, progress=progress,
                                  memory_budget=budget, backend=self.backend, reduce=all_reduce_sum,
                                  share=share_regions)
        else:
            solution = solve_general(self.jacobian_rows, local, k, tau, self.normalize,
                                     method="cholesky" if method == "bulk" else method, tol=self.tol,
                                     dtype=self.dtype, reduce=all_reduce_sum)
        info = {"backend": self.backend, "backend_reason": self.backend_reason, "tau": tau,
                "normalize": self.normalize, "latents": "per_image", "world_size": rank_and_world()[1],
                "pixel_rows": (self.rows.start, self.rows.stop, self.num_rows)}
        return _package([solution], full, False, info)

    def factorize(self, region, k: int = 16, tau: Optional[float] = None, background=None) -> Directions:
        """Directions for one region (``[k, d]``)."""
        return self.factorize_many(region, k=k, tau=tau, background=background)


def factorize_pixel_sharded(jacobian_rows: torch.Tensor, row_range: Union[Tuple[int, int], slice], region,
                            k: int = 16, tau: float = 1e-3, background=None, normalize: str = "mean",
                            backend: str = "auto", *, method: str = "auto", grid=None, num_rows: Optional[int] = None,
                            dtype: Optional[torch.dtype] = None, tol: Optional[float] = None) -> Directions:
    """:func:`resefa_fast.factorize` of the full ``[P, d]`` Jacobian when each rank holds only its rows
    ``jacobian_rows`` ``[P_r, d]`` = J[start:stop] (``row_range``; :func:`shard_rows` splits evenly). ``region`` /
    ``background`` as there, on the full grid (``grid`` = the full (H, W) or (C, H, W); or ``num_rows`` = P for
    flat weights). Call on every rank with the same arguments except the rows; every rank returns the same result.

    ``method``: "auto" (bulk for several regions with complement backgrounds in float64, else cholesky), "bulk",
    "cholesky" or "woodbury": the single-process paths, with every sum over pixel rows all-reduced."""
    check(method in ("auto", "bulk") + METHODS, "method", f"one of {('auto', 'bulk') + METHODS}", repr(method))
    check(not (method == "bulk" and background is not None), "method",
          "'cholesky' or 'woodbury' with an explicit background (the bulk path needs complement backgrounds)",
          repr(method))
    factorizer = PixelShardedFactorizer(jacobian_rows, row_range, grid, num_rows=num_rows, tau=tau,
                                        normalize=normalize, backend=backend, dtype=dtype, tol=tol, precompute=False)
    return factorizer.factorize_many(region, k=k, background=background, progress=False, method=method)


def directions_pixel_sharded(args) -> int:
    """``resefa-fast directions ... --pixel-shard`` under torchrun: each rank reads only its rows of each latent code
    from the memory-mapped ``.npy`` (so no process holds a whole Jacobian) and the ranks solve together
    (:func:`factorize_pixel_sharded`; with ``--latents stack`` the rows of all latent codes are split). Rank 0 writes
    the same ``.npz`` as ``resefa-fast directions``."""
    import numpy as np

    from .cli import _grid, parse_region, save_directions
    from .inputs import _parse_single

    check(str(args.jacobian).endswith(".npy") and os.path.isfile(args.jacobian), "jacobian",
          "an existing .npy file with --pixel-shard (its rows are read memory-mapped)", repr(args.jacobian))
    array = np.load(args.jacobian, mmap_mode="r")
    shape = tuple(array.shape)
    batched = len(shape) == 6 or (len(shape) == 5 and shape[3] == 1)  # as resefa_fast.inputs infers it
    N = shape[0] if batched else 1
    P, d, grid = _parse_single(shape[1:] if batched else shape, _grid(args))
    rows_of_all = np.reshape(array, (N * P, d))  # a view of the map: nothing is read yet
    rank, world = rank_and_world()
    device = torch.device(args.device)
    region = parse_region(args.region)
    options = {"k": args.k, "tau": args.tau, "normalize": args.normalize}

    def read(rows: slice) -> torch.Tensor:  # only these rows leave the disk
        return torch.from_numpy(np.ascontiguousarray(rows_of_all[rows])).to(device)

    if args.latents == "stack" and N > 1:  # one problem on N·P rows; the region's weights repeat on every image
        weights = as_regions(region, grid, P, "cpu").foreground[0].repeat(N)  # [N·P]
        rows = shard_rows(N * P, rank, world)
        results = [factorize_pixel_sharded(read(rows), rows, weights, num_rows=N * P, **options)]
    else:
        rows = shard_rows(P, rank, world)
        results = [factorize_pixel_sharded(read(slice(n * P + rows.start, n * P + rows.stop)), rows, region,
                                           grid=grid, num_rows=P, **options) for n in range(N)]
    if rank == 0:
        keys = ("directions", "eigenvalues", "residuals")
        arrays = {key: torch.stack([getattr(r, key) for r in results]).cpu().numpy() for key in keys}
        if not (batched and args.latents == "per_image"):
            arrays = {key: value[0] for key, value in arrays.items()}
        save_directions(args, arrays, f"{results[0].info['path']}, pixel rows split over {world} ranks")
    return 0


def main(argv=None) -> int:
    """``torchrun ... -m resefa_fast.distributed mine ...``: the ``resefa-fast mine`` arguments, latent codes
    sharded; ``... directions ... --pixel-shard``: one Jacobian's pixel rows sharded (:func:`directions_pixel_sharded`).
    """
    from .cli import build_parser, cmd_mine
    from .errors import ResefaError

    argv = list(sys.argv[1:] if argv is None else argv)
    pixel_shard = "--pixel-shard" in argv
    argv = [a for a in argv if a != "--pixel-shard"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if pixel_shard:
        check(args.command == "directions", "--pixel-shard", "the 'directions' subcommand (latent codes, not "
              "pixels, are what 'mine' shards)", args.command)
    else:
        check(args.command == "mine", "command", "'mine' (or 'directions ... --pixel-shard')", args.command)
    device = local_device()
    if args.device == "cpu":
        device = torch.device("cpu")
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = rank_and_world()
    args.device = str(device) if pixel_shard else (args.device or str(device))
    try:
        if pixel_shard:
            return directions_pixel_sharded(args)
        code = cmd_mine(args, shard=(rank, world))
        if world > 1:
            dist.barrier()
            if rank == 0 and args.export_original:
                from .store import load_results

                load_results(args.out).export_original(args.export_original)
        return code
    except ResefaError as error:
        print(f"resefa-fast {args.command} (rank {rank}): error: {error}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
