"""Bulk mining: many regions × many latent codes into a resumable results store.

``mine(source, regions, out=...)`` takes a stored Jacobian, a Jacobian store or a model with seeds, runs the bulk
path (one :class:`~resefa_fast.Factorizer` per latent code) and writes one store file per latent code; rerunning
with the same arguments skips what is done.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .api import Factorizer
from .editing import DEFAULT_STRENGTH
from .errors import ResefaError, check
from .inputs import as_jacobian, as_tensor
from .jacobian import jacobian
from .regions import as_regions
from .store import Results, ResultsStore, file_fingerprint, load_results


def open_jacobian(source, batched: Optional[bool] = None):
    """``(array, fingerprint)`` for a Jacobian given as an array, a ``.npy`` path or a Jacobian store directory
    (memory-mapped: latent codes are read one at a time, so files larger than memory work)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "jacobians.npy")):
            path = os.path.join(path, "jacobians.npy")  # a Jacobian store (resefa-fast jacobian)
        check(os.path.isfile(path), "jacobian", "an existing .npy file, a Jacobian store or an array", repr(path))
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


def mine(source, regions, out: str, k: int = 16, tau: float = 1e-3, normalize: str = "mean",
         batched: Optional[bool] = None, grid=None, device: Optional[str] = None, progress: bool = True,
         shard: Tuple[int, int] = (0, 1), seeds: Optional[Sequence[int]] = None, latents=None,
         latent_kind: str = "z", truncation_psi: float = 1.0, space: str = "w", readout: str = "original",
         precision: str = "float32", chunk_size: Optional[int] = None, class_index: Optional[int] = None,
         locality_top: int = 0,
         locality_strengths: Sequence[float] = (-DEFAULT_STRENGTH, DEFAULT_STRENGTH)) -> Results:
    """Directions for every region × every latent code into the results store ``out``; resumable.

    ``source``, one of:

    - a Jacobian: an array or a ``.npy`` path in any layout of :mod:`resefa_fast.inputs` (a leading N is the latent
      codes; the original's ``[N, H, W, 1, d]`` files work as they are), memory-mapped one latent code at a time;
    - a Jacobian store directory (``resefa-fast jacobian``): its model, codes, readout and space are recorded;
    - a model (a checkpoint path, ``builtin:NAME`` or a :class:`~resefa_fast.pipeline.Model`) with ``seeds`` or
      ``latents`` (codes of ``latent_kind``, truncated by ``truncation_psi``; a BigGAN needs ``class_index`` and
      takes ``truncation_psi`` as its sampling truncation): each latent code's Jacobian
      (``space``, ``readout``, ``precision``, ``chunk_size`` tangents per call) is computed on the device, used
      and dropped.

    ``regions``: anything :func:`resefa_fast.regions.as_regions` takes (a list of presets, ``[R, 4]`` boxes,
    ``[R, H, W]`` masks). ``device``: where to compute (default: CUDA if available). ``locality_top``: for the top
    this many directions of every region, the in/out pixel change of finite edits at ``locality_strengths``
    (:func:`resefa_fast.editing.in_out_change`; needs the model). ``shard=(rank, world)``: do only the latent codes
    ``n ≡ rank (mod world)`` (:mod:`resefa_fast.distributed` sets it; every rank writes its own files into the same
    store). Returns :func:`~resefa_fast.load_results` of ``out``.
    """
    from .pipeline import Model, is_jacobian_store, open_model, parse_readout, read_jacobian_store

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check(isinstance(locality_top, int) and 0 <= locality_top <= k, "locality_top", f"an int in [0, k={k}]",
          locality_top)
    model, ws, described, model_spec = None, None, {}, None
    if _is_model(source):
        model = open_model(source, device, class_index=class_index, truncation=truncation_psi) \
            if not isinstance(source, Model) else source
        check(seeds is not None or latents is not None, "seeds", "seeds or latents when mining from a model",
              "neither")
        ws = model.latents(seeds or (), codes=latents, kind=latent_kind, truncation_psi=truncation_psi)
        read = parse_readout(readout)
        N = ws.shape[0]
        with torch.no_grad():  # the grid: one image through the readout
            pixels = read(model.synthesize(ws[:1]))
        grid_chw, dim = tuple(pixels.shape[1:]), model.jacobian_call(ws[0], space)[1].numel()
        num_pixels = int(np.prod(grid_chw))
        shape = (N, num_pixels, dim)
        described = {"model": model.fingerprint, "space": space, "readout": readout, "precision": precision,
                     "seeds": list(seeds) if seeds is not None else None, "truncation_psi": truncation_psi,
                     "class_index": getattr(model, "class_index", None),
                     "latents_sha256": hashlib.sha256(ws.cpu().numpy().tobytes()).hexdigest()}

        def latent(n):
            fn, at = model.jacobian_call(ws[n], space)
            return jacobian(fn, at, readout=read, precision=precision, chunk_size=chunk_size,
                            progress=False).reshape(shape[1:])
    else:
        if isinstance(source, (str, os.PathLike)) and is_jacobian_store(source):
            store_manifest, array, codes = read_jacobian_store(os.fspath(source))
            described = {key: store_manifest.get(key) for key in ("model", "space", "readout", "precision", "seeds",
                                                                  "class_index")}
            described["truncation_psi"] = store_manifest.get("settings", {}).get("truncation_psi", 1.0)
            model_spec = store_manifest.get("model_spec")
            ws = torch.as_tensor(codes)
            source_fingerprint = file_fingerprint(os.path.join(os.fspath(source), "jacobians.npy"))
            if locality_top:
                model = open_model(model_spec, device, class_index=described["class_index"],
                                   truncation=described["truncation_psi"])
                check(model.fingerprint == store_manifest["model"], "source",
                      "a Jacobian store whose model file is unchanged (locality edits need the same model)",
                      store_manifest["model_spec"])
        else:
            array, source_fingerprint = open_jacobian(source, batched)
            check(not locality_top, "locality_top", "0 for a bare Jacobian (no model to edit with)", locality_top)
        described["jacobian"] = source_fingerprint
        shape = tuple(array.shape)
        N, batched, first = first_latent(array, batched, grid)
        grid_chw, dim, num_pixels = first.grid, first.dim, first.num_pixels

        def latent(n):  # one latent code read from the (memory-mapped) file
            return torch.as_tensor(np.array(array[n] if batched else array)).to(device)

    parsed = as_regions(regions, grid_chw, num_pixels, "cpu")
    check(parsed.background is None, "regions", "regions with complement backgrounds for mining")
    region_digest = hashlib.sha256(parsed.foreground.numpy().tobytes()).hexdigest()
    settings = {"k": k, "tau": tau, "normalize": normalize, "dtype": "float64"}
    if locality_top:
        settings["locality"] = {"top": locality_top, "strengths": [float(a) for a in locality_strengths]}
    manifest = {
        "settings": settings,
        "source": described,
        "regions": {"names": parsed.names, "weights_sha256": region_digest},
        "jacobian": {"shape": list(shape), "latents": N, "grid": list(grid_chw or []), "dim": dim},
        "model_spec": model.spec if model is not None else model_spec,
        "package_version": __version__,
    }
    store = ResultsStore(out, manifest)
    if ws is not None:
        store.write_latents(ws.cpu().numpy())
    store.write_regions(_region_maps(parsed, grid_chw).numpy())
    rank, world = shard
    mine_ = [n for n in range(N) if n % world == rank]
    todo = [n for n in mine_ if not store.done(n)]
    bar = tqdm(total=len(mine_), initial=len(mine_) - len(todo), desc="latent codes", unit="latent",
               disable=not progress)
    for n in todo:
        start = time.perf_counter()
        result = Factorizer(latent(n), tau=tau, normalize=normalize, batched=False, grid=grid).factorize_many(
            parsed.foreground.to(device), k=k, progress=False)
        arrays = {key: getattr(result, key).cpu().numpy() for key in ("directions", "eigenvalues", "residuals")}
        if locality_top:
            arrays.update(_locality(model, ws[n], result.directions[:, :locality_top], _region_maps(parsed, grid_chw),
                                    locality_strengths))
        store.write(n, **arrays)
        bar.set_postfix(seconds_per_latent=f"{time.perf_counter() - start:.2f}")
        bar.update(1)
    bar.close()
    return load_results(out)


def _is_model(source) -> bool:
    from .pipeline import Model

    if isinstance(source, Model):
        return True
    if not isinstance(source, (str, os.PathLike)):
        return False
    path = os.fspath(source)
    return path.startswith("builtin:") or (os.path.isfile(path) and not path.endswith(".npy"))


def _region_maps(parsed, grid_chw) -> torch.Tensor:
    """Region weights ``[R, H, W]`` on the pixel grid (one channel: regions weigh every channel alike), or
    ``[R, P]`` when the grid is unknown."""
    if not grid_chw:
        return parsed.foreground
    return parsed.foreground.reshape(-1, *grid_chw)[:, 0]


def _locality(model, ws, directions, region_maps, strengths):
    """``locality_inside`` / ``locality_outside`` ``[R, top]``: in/out change of each region's top directions."""
    from .editing import in_out_change

    inside, outside = [], []
    for r in range(directions.shape[0]):
        change = in_out_change(model, ws, directions[r], region_maps[r], strengths)
        inside.append(change["inside"].numpy())
        outside.append(change["outside"].numpy())
    return {"locality_inside": np.stack(inside), "locality_outside": np.stack(outside)}
