"""The results store: one directory per mining run, written atomically and resumable.

Layout::

    store/
      manifest.json          settings (τ, k, normalisation, ...), source (model / Jacobian file, size, hash, readout,
                             space, seeds), region names, version
      regions.npy            the region weights on the Jacobian's grid [R, H, W]
      latents.npy            the W+ codes [N, num_ws, w_dim] (when the source knows them: a model or Jacobian store)
      latent_00000.npz       directions [R, k, d], eigenvalues [R, k], residuals [R, k] for latent code 0, and
                             locality_inside / locality_outside [R, top] when locality was measured
      latent_00001.npz       ...

Every file is written to a temporary name in the same directory and renamed into place (``os.replace`` is atomic
on POSIX), so an interrupted run leaves only complete files; a rerun skips the latent codes whose file exists.
A store made with other settings or from another source is refused, never mixed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np

from .errors import ResefaError

MANIFEST = "manifest.json"
LATENTS = "latents.npy"
REGIONS = "regions.npy"
FORMAT_VERSION = 1


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and rename the result to ``path``; on any failure (disk full included) the
    temporary file is removed and ``path`` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """``data`` into ``path`` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomic(path, write)


def file_fingerprint(path: str, chunk: int = 1 << 20) -> Dict:
    """Size and a SHA-256 of the first and last MiB of a (possibly multi-GB) file: enough to tell two Jacobian
    files or checkpoints apart without reading them whole."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            digest.update(f.read(chunk))
    return {"path": os.path.abspath(path), "size": size, "sha256_head_tail": digest.hexdigest()}


def latent_file(index: int) -> str:
    return f"latent_{index:05d}.npz"


class ResultsStore:
    """A store directory being written. ``settings`` must match an existing store's exactly (else
    :class:`ResefaError`); ``done(n)`` says whether latent code n is already stored."""

    def __init__(self, path: str, manifest: Dict):
        self.path = path
        os.makedirs(path, exist_ok=True)
        manifest = dict(manifest, format_version=FORMAT_VERSION)
        manifest_path = os.path.join(path, MANIFEST)
        if os.path.exists(manifest_path):
            with open(manifest_path) as f:
                existing = json.load(f)
            keys = ("format_version", "settings", "source", "regions")
            different = [key for key in keys if existing.get(key) != manifest.get(key)]
            if different:
                raise ResefaError(
                    f"`out` must be a new directory or a store of the same run: {path!r} was made with other "
                    f"{', '.join(different)} ({', '.join(f'{k}: {existing.get(k)!r}' for k in different)[:400]}); "
                    "refusing to mix results")
        else:
            write_atomic(manifest_path, lambda tmp: _write_json(tmp, manifest))
        self.manifest = manifest

    def done(self, index: int) -> bool:
        return os.path.exists(os.path.join(self.path, latent_file(index)))

    def write(self, index: int, **arrays: np.ndarray) -> None:
        """Latent code ``index``'s arrays (``directions``, ``eigenvalues``, ``residuals``, ...) in one file."""
        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        write_atomic(os.path.join(self.path, latent_file(index)), save)

    def write_latents(self, ws: np.ndarray) -> None:
        _write_array(os.path.join(self.path, LATENTS), ws)

    def write_regions(self, weights: np.ndarray) -> None:
        _write_array(os.path.join(self.path, REGIONS), weights)


def _write_array(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes(path, buffer.getvalue())


def _write_json(path: str, data: Dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


@dataclass
class Results:
    """A store read back. ``manifest``; ``names`` (one per region); ``latents`` (indices stored);
    ``get(n)`` -> dict of ``directions [R, k, d]``, ``eigenvalues [R, k]``, ``residuals [R, k]`` (and
    ``locality_inside`` / ``locality_outside`` ``[R, top]`` when measured); ``codes()`` the W+ codes, ``regions()``
    the region weights."""

    path: str
    manifest: Dict
    names: List[str]
    latents: List[int]

    def get(self, index: int) -> Dict[str, np.ndarray]:
        if index not in self.latents:
            raise ResefaError(f"`index` must be a stored latent code ({self.latents[:10]}...); got {index}")
        with np.load(os.path.join(self.path, latent_file(index))) as data:
            return {key: data[key] for key in data.files}

    def codes(self) -> np.ndarray:
        """The W+ codes ``[N, num_ws, w_dim]`` the directions were mined at (stores made from a model)."""
        path = os.path.join(self.path, LATENTS)
        if not os.path.isfile(path):
            raise ResefaError(f"{self.path!r} holds no latent codes: it was mined from a bare Jacobian; mine from a "
                              "model or a Jacobian store to edit with its codes")
        return np.load(path)

    def regions(self) -> np.ndarray:
        """Region weights ``[R, H, W]`` on the Jacobian's grid (``[R, P]`` when the grid is unknown)."""
        return np.load(os.path.join(self.path, REGIONS))

    def export_original(self, directory: str, name: str = "resefa") -> List[str]:
        """Write every (latent, region) as the original code names it, ``image_{n:02d}_region_{region}_name_{name}
        .npy``: directions as rows sorted by eigenvalue, largest first (``[k, d]``: the top k of the original's
        ``[d, d]``). Returns the paths written."""
        os.makedirs(directory, exist_ok=True)
        written = []
        for n in self.latents:
            directions = self.get(n)["directions"]
            for r, region in enumerate(self.names):
                path = os.path.join(directory, f"image_{n:02d}_region_{region}_name_{name}.npy")
                write_atomic(path, lambda tmp, rows=directions[r]: np.save(open(tmp, "wb"), rows))
                written.append(path)
        return written


def load_results(path: str) -> Results:
    """Read a results store written by :func:`resefa_fast.mine` / ``resefa-fast mine``."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise ResefaError(f"`path` must be a results store with a {MANIFEST}; none in {path!r}")
    with open(manifest_path) as f:
        manifest = json.load(f)
    latents = sorted(int(name[7:12]) for name in os.listdir(path)
                     if name.startswith("latent_") and name.endswith(".npz"))
    return Results(path=path, manifest=manifest, names=list(manifest["regions"]["names"]), latents=latents)
