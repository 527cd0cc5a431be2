"""Pixel-sharded Jacobians over N processes (torch.distributed) against one process: Gram and mining throughput.

For each world size N in --worlds (each a fresh process group: NCCL, one GPU per rank, on GPUs; gloo on CPU):

- **Gram** ``JᵀJ`` in float64 of a float32 Jacobian split by rows (:func:`resefa_fast.distributed.sharded_grams`:
  local SYRK + all-reduce of the ``[d, d]`` result), timed whole and split into compute and all-reduce.
  *weak* scaling: every rank holds --gram-rows rows (the Jacobian grows with N: the case of a J too large for one
  GPU); *strong*: --gram-rows rows in all, split over the ranks. Rate: rows/s; efficiency = rate_N / (N · rate_1).
- **Mining, latent codes sharded** (issue 10 item 1's :func:`~resefa_fast.distributed.mine`, weak scaling):
  --latents-per-rank codes on every rank, each mined by a one-process Factorizer. Rate: latent codes/s.
- **Mining, pixel rows sharded** (strong scaling): one ``[P, d]`` Jacobian (P = grid², --mine-dim) split over the
  ranks, the sharded bulk precompute (:class:`~resefa_fast.distributed.PixelShardedFactorizer`: JᵀJ all-reduced,
  eigh on rank 0, V broadcast, local rows of JV), then --regions face-part-sized boxes (``factorize_many``). Rate:
  regions/s; efficiency against the one-process :class:`resefa_fast.Factorizer` (which may use the row form K̃K̃ᵀ,
  not available to sharded rows) and against the sharded path on one process.

Before timing, every N checks its sharded masked Grams and its mined directions against one process (relative
Gram error; eigenvalue rel. error and min |cos| where the relative eigengap is >= 1e-2). Times are the slowest
rank's, median of --repeats after a warm-up, each repeat starting at a barrier.

    NCCL_NVLS_ENABLE=0 python benchmarks/bench_distributed.py --json $OUT/distributed.json      # all local GPUs
    python benchmarks/bench_distributed.py --small --json /tmp/distributed.json                   # CPU, gloo
    torchrun --nproc_per_node=8 benchmarks/bench_distributed.py     # one world size, e.g. several nodes

Launched plainly it spawns one process group per world size itself (torch.multiprocessing); under torchrun it
measures that one world (no efficiency column without an N = 1 run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_jacobian import git_commit  # noqa: E402  (one commit stamp for all benchmarks)

import resefa_fast as rf  # noqa: E402
from bench_solvers import accuracy, random_boxes  # noqa: E402
from resefa_fast import distributed  # noqa: E402
from resefa_fast.gram import gram, masked_grams  # noqa: E402
from resefa_fast.testing import random_jacobian  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_collective(fn, device, repeats):
    """Median over ``repeats`` (after one warm-up) of the slowest rank's wall time of ``fn()``; each repeat starts
    at a barrier. Returns ``(seconds, last result)``."""
    result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        dist.barrier()
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    slowest = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return statistics.median(slowest.tolist()), result


def gram_rows(args, world, rank, device, scaling):
    """Rows of the Gram benchmark for one scaling mode (on rank 0; other ranks return [])."""
    total = args.gram_rows * world if scaling == "weak" else args.gram_rows
    local = distributed.shard_rows(total, rank, world)
    count = local.stop - local.start
    J = random_jacobian((1, count), args.gram_dim, rank=30, seed=1000 + rank, device=device)  # this rank's rows
    seconds, _ = timed_collective(lambda: distributed.sharded_grams(J), device, args.repeats)
    compute, G = timed_collective(lambda: gram(J, dtype=torch.float64), device, args.repeats)
    reduce, _ = timed_collective(lambda: distributed.all_reduce_sum(G), device, args.repeats)
    d = args.gram_dim
    return [{"what": "gram", "scaling": scaling, "world": world, "d": d, "rows_per_rank": total // world,
             "rows_total": total, "seconds": seconds, "compute_s": compute, "allreduce_s": reduce,
             "rate": total / seconds, "unit": "rows/s", "tflops": total * d * d / seconds / 1e12}]


def mining_rows(args, world, rank, device):
    """Correctness checks, then the mining benchmark (strong scaling); rows on rank 0."""
    grid, d, k = args.grid, args.mine_dim, args.k
    J = random_jacobian((grid, grid), d, rank=30, noise=1e-3, seed=7, device=device)  # every rank builds J ...
    rows = distributed.shard_rows(J.shape[0], rank, world)
    mine = J[rows].clone()  # ... and keeps its rows
    boxes = random_boxes(args.regions, grid)
    masks = torch.stack([rf.box_mask(tuple(int(v) for v in b), (grid, grid)).flatten() for b in boxes[:8]])
    masks = masks.to(device=device, dtype=torch.float64)
    sharded = distributed.sharded_grams(mine, masks[:, rows])[0]
    out = {}
    check_count = min(args.regions, args.check_regions)
    pre, factorizer = timed_collective(lambda: distributed.PixelShardedFactorizer(mine, rows, (grid, grid)),
                                       device, max(1, args.repeats // 2))
    solve, result = timed_collective(lambda: factorizer.factorize_many(boxes, k=k), device, 1)
    if rank == 0:
        one = masked_grams(J, masks, dtype=torch.float64)[0]
        out["gram_rel_err"] = float((sharded - one).norm() / one.norm())
        check = rf.Factorizer(J, grid=(grid, grid)).factorize_many(boxes[:check_count], k=k)
        worst_rel, worst_cos = 0.0, 1.0
        for r in range(check_count):
            rel, cos = accuracy(result.eigenvalues[r], result.directions[r], check.eigenvalues[r],
                                check.directions[r])
            worst_rel = max(worst_rel, rel)
            worst_cos = min(worst_cos, cos) if cos == cos else worst_cos
        # DESIGN.md §6 for float64 paths (tests/conftest.py TOLERANCES); the Gram: sums in another order only
        passed = out["gram_rel_err"] <= 1e-12 and worst_rel <= 1e-10 and worst_cos >= 1 - 1e-10
        out.update(eig_rel_err=worst_rel, min_cos=worst_cos, check="ok" if passed else "FAILED")
        if not passed:
            print(f"  N={world} CHECK FAILED: {out}", flush=True)
    base = {"what": "mining", "world": world, "d": d, "P": J.shape[0], "regions": args.regions, "k": k}
    table = [dict(base, step="sharded precompute", seconds=pre, rate=float("nan"), unit=""),
             dict(base, step="sharded regions", seconds=solve, rate=args.regions / solve, unit="regions/s", **out)]
    if world == 1:  # the one-process baseline: the plain Factorizer on the whole J
        one_pre, one = timed_collective(lambda: rf.Factorizer(J, grid=(grid, grid)), device,
                                        max(1, args.repeats // 2))
        one_solve, _ = timed_collective(lambda: one.factorize_many(boxes, k=k), device, 1)
        table += [dict(base, step="one process: precompute", seconds=one_pre, rate=float("nan"), unit=""),
                  dict(base, step="one process: regions", seconds=one_solve, rate=args.regions / one_solve,
                       unit="regions/s")]
    return table


def latent_mining_rows(args, world, rank, device):
    """Latent codes sharded over the ranks (the compute of :func:`resefa_fast.distributed.mine`, without the
    store's file I/O): --latents-per-rank codes per rank, each a one-process Factorizer + ``factorize_many`` of
    the boxes; nothing is communicated but the timing barriers. Rows on rank 0."""
    grid, d, k = args.grid, args.mine_dim, args.k
    boxes = random_boxes(args.regions, grid)
    codes = [rank + world * i for i in range(args.latents_per_rank)]  # round-robin, as mine() shards them
    jacobians = [random_jacobian((grid, grid), d, rank=30, noise=1e-3, seed=100 + n, device=device) for n in codes]
    seconds, _ = timed_collective(
        lambda: [rf.Factorizer(J, grid=(grid, grid)).factorize_many(boxes, k=k) for J in jacobians], device, 1)
    total = world * args.latents_per_rank
    return [{"what": "latent mining", "world": world, "d": d, "P": grid * grid, "regions": args.regions,
             "latents": total, "seconds": seconds, "rate": total / seconds, "unit": "latents/s"}]


def run_world(rank, world, args, init_method, out_path):
    """One rank of one world size: both benchmarks; rank 0 writes its rows to ``out_path`` (JSON)."""
    torch.set_num_threads(max(1, args.threads))
    device = torch.device("cpu")
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if init_method is None:
        dist.init_process_group(backend)  # torchrun's environment
    else:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    try:
        rows = []
        for scaling in args.scaling:
            rows += gram_rows(args, world, rank, device, scaling)  # its tensors are freed on return
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if rank == 0:
                r = rows[-1]
                print(f"  N={world} gram {scaling:6s} {r['rows_total']:>8d} rows: {r['seconds'] * 1e3:9.2f} ms "
                      f"(compute {r['compute_s'] * 1e3:.2f}, all-reduce {r['allreduce_s'] * 1e3:.2f})", flush=True)
        if args.regions > 0 and args.latents_per_rank > 0:
            rows += latent_mining_rows(args, world, rank, device)
            if rank == 0:
                r = rows[-1]
                print(f"  N={world} latent-sharded mining {r['latents']} latent codes: {r['seconds']:.3f} s",
                      flush=True)
        if args.regions > 0:
            rows += mining_rows(args, world, rank, device)
            if rank == 0:
                for r in rows[-4:]:
                    if r["what"] == "mining":
                        print(f"  N={world} mining {r['step']:<26s} {r['seconds']:9.3f} s", flush=True)
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(rows, f)
        dist.barrier()  # rank 0's checks done before any rank leaves the group
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def efficiencies(rows):
    """Scaling efficiency of each row: rate_N / (N · rate_1) against the N = 1 row of the same kind (and, for
    mining, against the one-process Factorizer too)."""
    def rate_of(pred):
        found = [r["rate"] for r in rows if pred(r)]
        return found[0] if found else None

    for r in rows:
        if r["what"] == "latent mining":
            one = rate_of(lambda o: o["what"] == "latent mining" and o["world"] == 1)
            r["efficiency"] = r["rate"] / (r["world"] * one) if one else None
        elif r["what"] == "gram":
            one = rate_of(lambda o: o["what"] == "gram" and o["scaling"] == r["scaling"] and o["world"] == 1)
            r["efficiency"] = r["rate"] / (r["world"] * one) if one else None
        elif r.get("step") == "sharded regions":
            one = rate_of(lambda o: o.get("step") == "sharded regions" and o["world"] == 1)
            plain = rate_of(lambda o: o.get("step") == "one process: regions")
            r["efficiency"] = r["rate"] / (r["world"] * one) if one else None
            r["efficiency_vs_one_process"] = r["rate"] / (r["world"] * plain) if plain else None
    return rows


def markdown(rows, meta):
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.0f} %"

    lines = [f"Device: {meta['device']} x N ({meta['backend']}); torch {meta['torch']}; NCCL_NVLS_ENABLE="
             f"{meta['nccl_nvls_enable']}; commit {meta['commit']}; {meta['date']}", "",
             "Gram JᵀJ (float64 of a float32 J, all-reduced):", "",
             "| N | scaling | d | rows total | time | compute | all-reduce | rows/s | TFLOP/s | efficiency |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["what"] == "gram":
            lines.append(f"| {r['world']} | {r['scaling']} | {r['d']} | {r['rows_total']} | "
                         f"{r['seconds'] * 1e3:.1f} ms | {r['compute_s'] * 1e3:.1f} ms | "
                         f"{r['allreduce_s'] * 1e3:.1f} ms | {r['rate']:.3g} | {r['tflops']:.2f} | "
                         f"{pct(r.get('efficiency'))} |")
    lines += ["", "Mining, latent codes sharded (weak scaling: latent codes per rank fixed; no file I/O):", "",
              "| N | d | P | regions | latent codes | time | latent codes/s | efficiency |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["what"] == "latent mining":
            lines.append(f"| {r['world']} | {r['d']} | {r['P']} | {r['regions']} | {r['latents']} | "
                         f"{r['seconds']:.3f} s | {r['rate']:.2f} | {pct(r.get('efficiency'))} |")
    lines += ["", "Mining, one Jacobian's pixel rows sharded (bulk path, strong scaling):", "",
              "| N | step | d | P | regions | time | regions/s | efficiency (vs sharded N=1) | "
              "efficiency (vs one-process Factorizer) | Gram rel. err | eig. rel. err | min \\|cos\\| |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["what"] == "mining":
            rate = f"{r['rate']:.1f}" if r["unit"] else ""
            checks = (f"{r['gram_rel_err']:.1e} | {r['eig_rel_err']:.1e} | {r['min_cos']:.10f} ({r['check']})"
                      if "eig_rel_err" in r else " | | ")
            lines.append(f"| {r['world']} | {r['step']} | {r['d']} | {r['P']} | {r['regions']} | "
                         f"{r['seconds']:.3f} s | {rate} | {pct(r.get('efficiency'))} | "
                         f"{pct(r.get('efficiency_vs_one_process'))} | {checks} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worlds", type=int, nargs="+", default=None,
                        help="world sizes (default: 1 2 4 8 up to the GPU count; 1 2 on the CPU)")
    parser.add_argument("--scaling", nargs="+", choices=("weak", "strong"), default=["weak", "strong"])
    parser.add_argument("--gram-rows", type=int, default=65536, help="rows per rank (weak) or in all (strong)")
    parser.add_argument("--gram-dim", type=int, default=9216)
    parser.add_argument("--grid", type=int, default=256, help="mining: H = W of the Jacobian's grid (P = grid²)")
    parser.add_argument("--mine-dim", type=int, default=512)
    parser.add_argument("--regions", type=int, default=1000, help="mining: boxes per run (0: no mining)")
    parser.add_argument("--latents-per-rank", type=int, default=4,
                        help="latent-sharded mining: latent codes per rank (0: skip)")
    parser.add_argument("--check-regions", type=int, default=32, help="regions checked against one process")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (CPU)")
    parser.add_argument("--small", action="store_true",
                        help="CPU-sized (gloo): worlds 1 2, Gram 4096 rows x d 256, mining grid 48, d 32, 64 boxes")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.small:  # CPU-sized defaults; options given explicitly win
        small = {"device": "cpu", "gram_rows": 4096, "gram_dim": 256, "grid": 48, "mine_dim": 32, "regions": 64,
                 "k": 8, "worlds": [1, 2], "latents_per_rank": 2}
        for name, value in small.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off (the lent multi-GPU machines ask for it)
    if args.device == "cuda":
        gpus = torch.cuda.device_count()
        args.worlds = [w for w in (args.worlds or [1, 2, 4, 8]) if w <= gpus] or [1]
    else:
        args.worlds = args.worlds or [1, 2]
    commit = git_commit()
    meta = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
            "backend": "nccl" if args.device == "cuda" else "gloo", "torch": torch.__version__,
            "cuda": torch.version.cuda, "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "args": vars(args)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "WORLD_SIZE" in os.environ:  # under torchrun: this one world
            world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
            args.threads = args.threads or 1
            run_world(rank, world, args, None, os.path.join(tmp, "rows.json"))
            if rank != 0:
                return
            rows = json.load(open(os.path.join(tmp, "rows.json")))
        else:
            for world in args.worlds:
                args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.worlds))
                path = os.path.join(tmp, f"rows{world}.json")
                mp.spawn(run_world, args=(world, args, f"tcp://127.0.0.1:{free_port()}", path), nprocs=world,
                         join=True)
                rows += json.load(open(path))
    rows = efficiencies(rows)
    table = markdown(rows, meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    print(table)


if __name__ == "__main__":
    main()
