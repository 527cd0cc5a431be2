"""Restricted unpickling of NVIDIA network pickles (stylegan2-ada-pytorch / stylegan3 ``network-snapshot-*.pkl``).

Those files are plain pickles of ``torch_utils.persistence`` objects: each network object is stored as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {type: 'class', version,
module_src: <the Python source of its module>, class_name, state: <the object's __dict__>}``; loading them the
normal way *executes* ``module_src``. Here no code from the file runs: the unpickler resolves only an allow-list
of globals and maps the persistence call to :class:`PersistentRecord`, an inert record of the class name and state
(``module_src`` is kept as text, never executed). Tensors are rebuilt from their bytes with
``torch.load(weights_only=True)``. Anything else — any other global, e.g. ``os.system`` in a ``__reduce__`` — is
refused with :class:`~resefa_fast.errors.ResefaError`.
"""
from __future__ import annotations

import collections
import io
import pickle
from typing import Any, Dict, Tuple

import torch

from ..errors import ResefaError

__all__ = ["PersistentRecord", "EasyDict", "restricted_load", "TORCH_LEGACY_MAGIC"]

#: The first object of a legacy (non-zip) ``torch.save`` file.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` stands for: ``class_name``, ``state`` (the object's ``__dict__``:
    ``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs`` ... for an ``nn.Module``), ``module_src`` (text,
    never executed)."""

    def __init__(self, meta: Dict[str, Any]):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise ResefaError(f"persistence record of an unknown kind ({type(meta).__name__}); expected a dict with "
                              "type 'class'")
        self.class_name = meta.get("class_name")
        self.version = meta.get("version")
        self.module_src = meta.get("module_src") or ""
        self.state = meta.get("state") or {}

    def __setstate__(self, state):  # a BUILD on the record (not produced by persistence.py): keep it inert
        raise ResefaError("unexpected state on a persistence record")

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name})"


class EasyDict(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _reconstruct_persistent_obj(meta):
    return PersistentRecord(meta)


def _load_storage(data: bytes):
    # torch pickles a storage as torch.save(storage) bytes (legacy format); read them without running code
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    # backward hooks and metadata are dropped: a weight needs neither
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # pickle protocols < 3 store bytes as _codecs.encode(text, "latin1"); no other codec is accepted
    if encoding not in ("latin1", "latin-1"):
        raise ResefaError(f"refused to load: the pickle asks for the codec {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    import importlib

    import numpy as np
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    found = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(module, "_reconstruct")] = multiarray._reconstruct
        found[(module, "scalar")] = multiarray.scalar
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    return found


_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): _latin1_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path
        self.allowed = {**_ALLOWED, **_numpy_globals()}

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise ResefaError(f"{self.path}: refused to load: the pickle calls `{module}.{name}`, which is not on the "
                              "allow-list of a network pickle (persistence records, tensors, dicts); no code from the "
                              "file is run")
        return found

    def persistent_load(self, pid):
        raise ResefaError(f"{self.path}: refused to load: the pickle uses persistent ids ({str(pid)[:40]}); this is "
                          "not a plain network pickle (a torch.save file is read with torch.load(weights_only=True))")


def restricted_load(data: bytes, path: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list above. Raises :class:`ResefaError` naming ``path`` on any refused
    global or a corrupt stream."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except ResefaError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            RuntimeError, UnicodeDecodeError, OverflowError, MemoryError) as error:
        raise ResefaError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None
