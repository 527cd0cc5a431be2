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

__all__ = ["BigGANModel", "Model", "open_model", "parse_seeds", "parse_readout", "SPACES", "LATENT_KINDS",
           "JACOBIAN_MANIFEST", "write_jacobian_store", "read_jacobian_store", "jacobian_latent", "is_jacobian_store"]

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
        """Images ``[B, C, R, R]`` (about [-1, 1]) of codes ``[B, *code_shape]``, in batches."""
        ws = ws.to(self.device, torch.float32)
        return torch.cat([self._synthesize(ws[i:i + batch]) for i in range(0, ws.shape[0], batch)])

    # ---- what differs between generator families (StyleGAN here; BigGANModel below) -----------------------------
    #: Latent spaces a Jacobian can be taken in, and the default.
    spaces = SPACES

    @property
    def code_shape(self):
        """Shape of one stored code: W+ ``(num_ws, w_dim)``."""
        return (self.num_ws, self.w_dim)

    def _synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesize(codes)

    def jacobian_call(self, code: torch.Tensor, space: str):
        """``(fn, latent)`` for :func:`resefa_fast.jacobian` at one code, in ``space``."""
        check(space in self.spaces, "space", f"one of {self.spaces} for this model", repr(space))
        return self.generator, jacobian_latent(code, space)

    def edit_codes(self, code: torch.Tensor, directions: torch.Tensor, strengths: torch.Tensor, layers=None):
        """Codes ``[k, S, *code_shape]``: ``code`` moved along ``directions`` ``[k, d]`` by ``strengths`` ``[S]``
        (:func:`edit_wplus`)."""
        return edit_wplus(code, directions, strengths, layers)


def edit_wplus(code: torch.Tensor, directions: torch.Tensor, strengths: torch.Tensor, layers=None) -> torch.Tensor:
    """W+ codes ``[k, S, num_ws, w_dim]``: ``code`` ``[num_ws, w_dim]`` moved as the original manipulate script
    does, a w direction (d = w_dim) on each edited row, a W+ direction (d = num_ws·w_dim) on its own rows;
    ``layers``: the edited rows (default all)."""
    num_ws, w_dim = code.shape
    check(directions.shape[1] in (w_dim, num_ws * w_dim), "directions",
          f"[k, {w_dim}] (w) or [k, {num_ws * w_dim}] (W+) rows", tuple(directions.shape))
    rows = torch.zeros(num_ws, dtype=torch.bool, device=code.device)
    if layers is None:
        rows[:] = True
    else:
        layers = list(layers)
        check(len(layers) > 0 and all(isinstance(i, int) and 0 <= i < num_ws for i in layers), "layers",
              f"W+ rows in [0, {num_ws})", layers)
        rows[layers] = True
    k = directions.shape[0]
    step = directions.reshape(k, -1, w_dim) * rows[None, :, None]  # nothing added on rows not edited
    return code[None, None] + strengths[None, :, None, None] * step[:, None]


class BigGANModel(Model):
    """A BigGAN (:mod:`resefa_fast.models.biggan`) at one ImageNet class: codes are ``[z, e]``
    ``[z_dim + embed_dim]`` (z sampled truncated-normal × ``truncation``, e the class embedding), so a code fixes
    the class too. Jacobians in ``"z"`` (d = z_dim, the class embedding held) or ``"z+embedding"``
    (d = z_dim + embed_dim: directions that carry over to other classes); edits add a z direction to z, a
    z+embedding direction to both."""

    spaces = ("z", "z+embedding")

    def __init__(self, generator, spec, fingerprint, metadata=None, presets=None, class_index: int = 0,
                 truncation: float = 1.0):
        super().__init__(generator, spec, fingerprint, dict(metadata or {}), dict(presets or {}))
        check(isinstance(class_index, int) and 0 <= class_index < generator.num_classes, "class_index",
              f"a class index in [0, {generator.num_classes})", class_index)
        self.class_index, self.truncation = class_index, generator._check_truncation(truncation)
        self.fingerprint = dict(self.fingerprint, class_index=class_index, truncation=self.truncation)

    @property
    def num_ws(self) -> int:
        return 1

    @property
    def w_dim(self) -> int:
        return self.generator.z_dim

    @property
    def code_shape(self):
        return (self.generator.z_dim + self.generator.embed_dim,)

    def latents(self, seeds: Sequence[int] = (), codes=None, kind: str = "z", truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        """Codes ``[N, z_dim + embed_dim]`` from ``seeds`` (z = ``truncated_z(seed)`` × the model's truncation) or
        ``codes`` (z ``[N, z_dim]``, or full codes with ``kind="z+embedding"``), at the model's class."""
        G = self.generator
        check(kind in ("z", "z+embedding"), "kind", "'z' or 'z+embedding' for a BigGAN", repr(kind))
        if codes is None:
            check(len(seeds) > 0 and all(isinstance(s, int) and s >= 0 for s in seeds), "seeds",
                  "at least one int seed >= 0", list(seeds)[:8])
            z = torch.cat([G.sample_z(1, self.truncation, seed=s) for s in seeds])
        else:
            z = torch.as_tensor(np.asarray(codes, dtype=np.float32)).to(self.device)
            if kind == "z+embedding":
                check(z.ndim == 2 and tuple(z.shape[1:]) == self.code_shape, "latents",
                      f"codes [N, {self.code_shape[0]}]", tuple(z.shape))
                return z
            check(z.ndim == 2 and z.shape[1] == G.z_dim, "latents", f"z codes [N, {G.z_dim}]", tuple(z.shape))
        with torch.no_grad():
            e = G.embed(self.class_index, batch=z.shape[0]).to(z.dtype)
        return torch.cat([z, e], dim=1)

    def _synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        z_dim = self.generator.z_dim
        return self.generator.synthesize(codes[:, :z_dim], truncation=self.truncation, embedding=codes[:, z_dim:])

    def jacobian_call(self, code: torch.Tensor, space: str):
        check(space in self.spaces, "space", f"one of {self.spaces} for a BigGAN", repr(space))
        z_dim = self.generator.z_dim
        return self.generator.jacobian_inputs(code[:z_dim], truncation=self.truncation, space=space,
                                              embedding=code[None, z_dim:])

    def edit_codes(self, code, directions, strengths, layers=None):
        z_dim, full = self.generator.z_dim, self.code_shape[0]
        check(layers is None, "layers", "None for a BigGAN (no W+ rows)", layers)
        check(directions.shape[1] in (z_dim, full), "directions", f"[k, {z_dim}] (z) or [k, {full}] (z+embedding)",
              tuple(directions.shape))
        step = torch.zeros(directions.shape[0], full, dtype=code.dtype, device=code.device)
        step[:, :directions.shape[1]] = directions
        return code[None, None] + strengths[None, :, None] * step[:, None]


def open_model(spec: Union[str, os.PathLike, Model], device: Optional[str] = None, class_index: Optional[int] = None,
               truncation: float = 1.0) -> Model:
    """A :class:`Model` from a checkpoint path (any format :func:`resefa_fast.models.load` reads) or a
    ``builtin:NAME`` model shipped with the package. ``device``: default CUDA when available. A BigGAN needs
    ``class_index`` (its ImageNet class) and takes its sampling ``truncation`` (:class:`BigGANModel`)."""
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
    presets = dict(loaded.metadata.get("presets") or {})
    if isinstance(loaded.generator, models.biggan._BigGANBase):
        check(class_index is not None, "class_index", f"the class to generate for the BigGAN {spec} (an index in "
              f"[0, {loaded.generator.num_classes}))", None)
        return BigGANModel(loaded.generator, spec, fingerprint, loaded.metadata, presets, class_index, truncation)
    check(class_index is None, "class_index", f"None: {spec} is not class-conditional BigGAN", class_index)
    return Model(loaded.generator, spec, fingerprint, loaded.metadata, presets)


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
    """Jacobians of ``model`` at the codes ``ws`` ``[N, *model.code_shape]`` (W+ for a StyleGAN) into the store
    directory ``out``. Returns the manifest. ``settings``: extra entries recorded (truncation, latent file)."""
    read = parse_readout(readout)
    calls = [model.jacobian_call(code, space) for code in ws]
    os.makedirs(out, exist_ok=True)
    target = Memmap(os.path.join(out, JACOBIAN_FILE))
    if isinstance(calls[0][0], torch.nn.Module) or len(calls) == 1:  # one function for every code (StyleGAN)
        array = jacobian(calls[0][0], [latent for _, latent in calls], readout=read, out=target,
                         precision=precision, chunk_size=chunk_size, progress=progress)
    else:  # a function per code (BigGAN: the class embedding is part of the code)
        array = _jacobians_one_by_one(calls, read, target.path, precision, chunk_size, progress)
    buffer = io.BytesIO()
    np.save(buffer, ws.cpu().numpy())
    write_bytes(os.path.join(out, LATENTS_FILE), buffer.getvalue())
    manifest = {
        "kind": "resefa_fast.jacobian_store", "package_version": __version__, "model": model.fingerprint,
        "model_spec": model.spec, "readout": readout, "space": space, "precision": precision,
        "seeds": list(seeds) if seeds is not None else None, "shape": list(array.shape),
        "class_index": getattr(model, "class_index", None),
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


def _jacobians_one_by_one(calls, read, path: str, precision: str, chunk_size, progress: bool) -> np.ndarray:
    """Jacobians of codes that each come with their own function, stacked into one original-layout ``.npy``."""
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        parts = [jacobian(fn, latent, readout=read, out=Memmap(os.path.join(scratch, f"{n}.npy")),
                         precision=precision, chunk_size=chunk_size, progress=progress)
                 for n, (fn, latent) in enumerate(calls)]
        stacked = np.concatenate([np.asarray(part) for part in parts])
        buffer = io.BytesIO()
        np.save(buffer, stacked)
        write_bytes(path, buffer.getvalue())
    return np.load(path, mmap_mode="r")
