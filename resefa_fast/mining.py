"""Bulk mining from stored Jacobians: many regions × many latent codes into a resumable results store.

``mine(jacobian, regions, out=...)`` runs the bulk path (one :class:`~resefa_fast.Factorizer` per latent code)
and writes one store file per latent code; rerunning with the same arguments skips what is done.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .api import Factorizer
from .errors import ResefaError, check
from .inputs import as_jacobian, as_tensor
from .regions import as_regions
from .store import Results, ResultsStore, file_fingerprint, load_results


def open_jacobian(source, batched: Optional[bool] = None):
    """``(array, fingerprint)`` for a Jacobian given as an array or a ``.npy`` path (memory-mapped: latent codes
    are read one at a time, so files larger than memory work)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        check(os.path.isfile(path), "jacobian", "an existing .npy file or an array", repr(path))
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise ResefaError(f"`jacobian` must be a readable .npy file; {path!r}: {error}") from error
        return array, file_fingerprint(path)
    tensor = as_tensor(source, "jacobian")
    digest = hashlib.sha256(tensor.detach().reshape(-1)[:1 << 16].cpu().numpy().tobytes()).hexdigest()
    return source, {"array_shape": list(tensor.shape), "sha256_first_values": digest}


def first_latent(array, batched: Optional[bool] = None, grid=None):
    """``(N, batched, JacobianInput of latent code 0)`` of a (possibly memory-mapped) Jacobian array, reading
    only that latent code."""
    shape = tuple(array.shape)
    if batched is None:  # as resefa_fast.inputs infers it: the original files [N, H, W, 1, d], [N, C, H, W, 1, d]
        batched = len(shape) == 6 or (len(shape) == 5 and shape[3] == 1)
    first = array[0] if batched else array
    if isinstance(first, np.ndarray):
        first = np.array(first)  # one latent code read into memory (a memory map is read-only)
    return (shape[0] if batched else 1), batched, as_jacobian(first, batched=False, grid=grid, check_finite=False)


def mine(jacobian, regions, out: str, k: int = 16, tau: float = 1e-3, normalize: str = "mean",
         batched: Optional[bool] = None, grid=None, device: Optional[str] = None, progress: bool = True,
         shard: Tuple[int, int] = (0, 1)) -> Results:
    """Directions for every region × every latent code of ``jacobian`` into the results store ``out``.

    ``jacobian``: an array or a ``.npy`` path in any layout of :mod:`resefa_fast.inputs` (a leading N is the latent
    codes; the original's ``[N, H, W, 1, d]`` files work as they are). ``regions``: anything
    :func:`resefa_fast.regions.as_regions` takes (a list of presets, ``[R, 4]`` boxes, ``[R, H, W]`` masks).
    ``device``: where to compute (default: CUDA if available). ``shard=(rank, world)``: do only the latent codes
    ``n ≡ rank (mod world)`` (:mod:`resefa_fast.distributed` sets it; every rank writes its own files into the same
    store, and identical manifests written concurrently are harmless since each write is an atomic rename).
    Returns :func:`~resefa_fast.load_results` of ``out``.
    """
    array, source = open_jacobian(jacobian, batched)
    shape = tuple(array.shape)
    N, batched, first = first_latent(array, batched, grid)

    def latent(n):
        return array[n] if batched else array

    parsed = as_regions(regions, first.grid, first.num_pixels, "cpu")
    check(parsed.background is None, "regions", "regions with complement backgrounds for mining")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    region_digest = hashlib.sha256(parsed.foreground.numpy().tobytes()).hexdigest()
    manifest = {
        "settings": {"k": k, "tau": tau, "normalize": normalize, "dtype": "float64"},
        "source": source,
        "regions": {"names": parsed.names, "weights_sha256": region_digest},
        "jacobian": {"shape": list(shape), "latents": N, "grid": list(first.grid or []), "dim": first.dim},
        "package_version": __version__,
    }
    store = ResultsStore(out, manifest)
    rank, world = shard
    mine_ = [n for n in range(N) if n % world == rank]
    todo = [n for n in mine_ if not store.done(n)]
    bar = tqdm(total=len(mine_), initial=len(mine_) - len(todo), desc="latent codes", unit="latent",
               disable=not progress)
    for n in todo:
        start = time.perf_counter()
        J = torch.as_tensor(np.array(latent(n))).to(device)  # one latent code read from the (memory-mapped) file
        result = Factorizer(J, tau=tau, normalize=normalize, batched=False, grid=grid).factorize_many(
            parsed.foreground.to(device), k=k, progress=False)
        store.write(n, result.directions.cpu().numpy(), result.eigenvalues.cpu().numpy(),
                    result.residuals.cpu().numpy())
        bar.set_postfix(seconds_per_latent=f"{time.perf_counter() - start:.2f}")
        bar.update(1)
    bar.close()
    return load_results(out)
