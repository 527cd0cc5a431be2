"""From a generator to directions (DESIGN.md §4, the last step): models by path or ``builtin:`` name, latent codes
from seeds or files, Jacobian stores, mining straight from a checkpoint. The CLI's ``jacobian``, ``mine``,
``edit``, ``report`` and ``demo`` are thin layers over these.

    >>> model = open_model("builtin:faces64")                       # or a checkpoint path in any supported format
    >>> ws = model.latents(seeds=[0, 1, 2])                         # [3, num_ws, w_dim], W+ of each seed
    >>> store = write_jacobian_store(model, ws, "J/", space="w")    # J/jacobians.npy [3, H, W, 1, w_dim] + manifest

A Jacobian store is a directory: ``jacobians.npy`` (the original code's layout, ``[N, H, W, 1, d]`` or
``[N, C, H, W, 1, d]``), ``latents.npy`` (the W+ codes ``[N, num_ws, w_dim]``) and ``jacobian.json`` (model
fingerprint and spec, readout, space, seeds, truncation). Every file is written under a temporary name and renamed.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__
from .errors import ResefaError, check
from .jacobian import Memmap, jacobian, readouts
from .store import file_fingerprint, write_bytes

__all__ = ["Model", "open_model", "parse_seeds", "parse_readout", "SPACES", "LATENT_KINDS", "JACOBIAN_MANIFEST",
           "write_jacobian_store", "read_jacobian_store", "jacobian_latent", "is_jacobian_store"]

#: Latent spaces of a Jacobian: "w" (one w repeated on all layers, as the original) or "wp" (W+, every layer).
SPACES = ("w", "wp")
#: What a latent file holds: z (the original scripts' ``--latent_path``), w ``[N, w_dim]`` or W+ ``[N, L, w_dim]``.
LATENT_KINDS = ("z", "w", "wp")
JACOBIAN_MANIFEST = "jacobian.json"
JACOBIAN_FILE = "jacobians.npy"
LATENTS_FILE = "latents.npy"


@dataclass
class Model:
    """A loaded generator with what identifies it: ``spec`` (what the user gave), ``fingerprint`` (file size and
    hash, recorded in every store made from it), ``metadata`` (from :func:`resefa_fast.models.load`) and
    ``presets`` (region boxes native to this model, e.g. the parts of the built-in model)."""

    generator: torch.nn.Module
    spec: str
    fingerprint: Dict[str, Any]
    metadata: Dict[str, Any] = field(default_factory=dict)
    presets: Dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def num_ws(self) -> int:
        return self.generator.num_ws

    @property
    def w_dim(self) -> int:
        return self.generator.w_dim

    @property
    def resolution(self) -> int:
        return self.generator.img_resolution

    def latents(self, seeds: Sequence[int] = (), codes=None, kind: str = "z", truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        """W+ codes ``[N, num_ws, w_dim]`` on the model's device, from ``seeds`` (z of seed s =
        ``np.random.RandomState(s).randn(z_dim)``, the stylegan2-ada-pytorch convention) or from ``codes`` (an
        array of ``kind`` z ``[N, z_dim]``, w ``[N, w_dim]`` or W+ ``[N, num_ws, w_dim]``). Truncation
        (ψ, cutoff) applies to z and w codes."""
        G = self.generator
        check(kind in LATENT_KINDS, "kind", f"one of {LATENT_KINDS}", repr(kind))
        if codes is None:
            check(len(seeds) > 0 and all(isinstance(s, int) and 0 <= s < 2 ** 32 for s in seeds), "seeds",
                  "at least one int seed in [0, 2**32)", list(seeds)[:8])
            codes = np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds])
            kind = "z"
        codes = torch.as_tensor(np.asarray(codes, dtype=np.float32)).to(self.device)
        expected = {"z": (G.z_dim,), "w": (G.w_dim,), "wp": (G.num_ws, G.w_dim)}[kind]
        check(codes.ndim == len(expected) + 1 and tuple(codes.shape[1:]) == expected and codes.shape[0] > 0,
              "latents", f"{kind} codes [N, {', '.join(map(str, expected))}]", tuple(codes.shape))
        check(bool(torch.isfinite(codes).all()), "latents", "finite values", "NaN or Inf")
        with torch.no_grad():
            if kind == "z":
                return G.map(codes, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
            ws = codes[:, None, :].repeat(1, G.num_ws, 1) if kind == "w" else codes.clone()
            if truncation_psi != 1:
                rows = slice(0, truncation_cutoff if truncation_cutoff is not None else G.num_ws)
                ws[:, rows] = G.w_avg.lerp(ws[:, rows], truncation_psi)
            return ws

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """Images ``[B, C, R, R]`` (about [-1, 1]) of W+ codes ``[B, num_ws, w_dim]``, in batches."""
        ws = ws.to(self.device, torch.float32)
        return torch.cat([self.generator.synthesize(ws[i:i + batch]) for i in range(0, ws.shape[0], batch)])


def open_model(spec: Union[str, os.PathLike, Model], device: Optional[str] = None) -> Model:
    """A :class:`Model` from a checkpoint path (any format :func:`resefa_fast.models.load` reads) or a
    ``builtin:NAME`` model shipped with the package. ``device``: default CUDA when available."""
    from . import models

    if isinstance(spec, Model):
        return spec
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = os.fspath(spec)
    loaded = models.load(spec, device=device)
    path = loaded.metadata.get("path", spec)
    fingerprint = file_fingerprint(path) if os.path.isfile(path) else {"path": path}
    fingerprint.pop("path", None)  # the same file moved or shipped elsewhere is the same model
    fingerprint["spec"] = spec if spec.startswith("builtin:") else os.path.basename(spec)
    return Model(loaded.generator, spec, fingerprint, loaded.metadata, dict(loaded.metadata.get("presets") or {}))


def parse_seeds(text: str) -> List[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    seeds: List[int] = []
    for part in str(text).split(","):
        part = part.strip()
        bounds = part.split("-")
        check(part and len(bounds) in (1, 2) and all(b.isdigit() for b in bounds), "--seeds",
              "comma-separated ints or ranges like 0-9", repr(text))
        low, high = int(bounds[0]), int(bounds[-1])
        check(low <= high, "--seeds", "ranges low-high with low <= high", repr(part))
        seeds.extend(range(low, high + 1))
    check(len(set(seeds)) == len(seeds), "--seeds", "distinct seeds", repr(text))
    return seeds


def parse_readout(spec: str) -> readouts.Readout:
    """A readout by name: ``original`` (the original code's, 256), ``original:SIZE``, ``area:SIZE[:rgb|sum|gray]``,
    ``rgb``, ``gray``, ``sum``."""
    parts = str(spec).split(":")
    name = parts[0]
    try:
        if name == "original" and len(parts) <= 2:
            return readouts.original(int(parts[1])) if len(parts) == 2 else readouts.original()
        if name == "area" and len(parts) in (2, 3):
            return readouts.area(int(parts[1]), *parts[2:])
        if len(parts) == 1 and name in ("rgb", "gray", "sum"):
            return {"rgb": readouts.rgb, "gray": readouts.grayscale, "sum": readouts.channel_sum}[name]()
    except ValueError:
        pass
    raise ResefaError(f"`readout` must be original, original:SIZE, area:SIZE[:rgb|sum|gray], rgb, gray or sum; "
                      f"got {spec!r}")


def jacobian_latent(ws: torch.Tensor, space: str) -> torch.Tensor:
    """The latent the Jacobian is taken with respect to: w ``[w_dim]`` (repeated on every layer, as the original
    code) or W+ ``[num_ws, w_dim]``, from one W+ code ``[num_ws, w_dim]``."""
    check(space in SPACES, "space", f"one of {SPACES}", repr(space))
    if space == "wp":
        return ws
    check(bool((ws == ws[:1]).all()), "space", "'wp' for codes whose W+ rows differ (truncation_cutoff, or W+ "
          "codes); 'w' needs one w on every layer", "'w'")
    return ws[0]


def is_jacobian_store(path) -> bool:
    return os.path.isdir(os.fspath(path)) and os.path.isfile(os.path.join(os.fspath(path), JACOBIAN_MANIFEST))


def write_jacobian_store(model: Model, ws: torch.Tensor, out: str, space: str = "w", readout: str = "original",
                         seeds: Optional[Sequence[int]] = None, precision: str = "float32",
                         chunk_size: Optional[int] = None, progress: bool = True,
                         settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Jacobians of ``model`` at the W+ codes ``ws`` ``[N, num_ws, w_dim]`` into the store directory ``out``.
    Returns the manifest. ``settings``: extra entries recorded (truncation, latent file)."""
    check(space in SPACES, "space", f"one of {SPACES}", repr(space))
    read = parse_readout(readout)
    os.makedirs(out, exist_ok=True)
    latents = [jacobian_latent(w, space) for w in ws]
    array = jacobian(model.generator, latents, readout=read, out=Memmap(os.path.join(out, JACOBIAN_FILE)),
                     precision=precision, chunk_size=chunk_size, progress=progress)
    buffer = io.BytesIO()
    np.save(buffer, ws.cpu().numpy())
    write_bytes(os.path.join(out, LATENTS_FILE), buffer.getvalue())
    manifest = {
        "kind": "resefa_fast.jacobian_store", "package_version": __version__, "model": model.fingerprint,
        "model_spec": model.spec, "readout": readout, "space": space, "precision": precision,
        "seeds": list(seeds) if seeds is not None else None, "shape": list(array.shape),
        "settings": dict(settings or {}),
    }
    write_bytes(os.path.join(out, JACOBIAN_MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def read_jacobian_store(path: str):
    """``(manifest, jacobians memmap, ws [N, num_ws, w_dim] numpy)`` of a Jacobian store."""
    check(is_jacobian_store(path), "jacobian", f"a Jacobian store directory (with {JACOBIAN_MANIFEST})", repr(path))
    with open(os.path.join(path, JACOBIAN_MANIFEST)) as f:
        manifest = json.load(f)
    array = np.load(os.path.join(path, JACOBIAN_FILE), mmap_mode="r")
    ws = np.load(os.path.join(path, LATENTS_FILE))
    return manifest, array, ws
