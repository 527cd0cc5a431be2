"""Lazy loading of the CUDA extension ``resefa_fast._C`` (built from ``csrc/`` by setup.py).

``import resefa_fast`` never imports or compiles it; the first :func:`load_extension` does, once, and remembers the
outcome. The CUDA version the extension was compiled with is compared with torch's at load (major and minor
must match: a 12.x extension under a 13.x torch fails at the first kernel with an obscure error otherwise).
:func:`extension_status` is what ``resefa_fast.backend_info()`` reports.
"""
from __future__ import annotations

import importlib
from typing import Dict, Optional

import torch

_STATE: Optional[Dict] = None
_MODULE = None


def _version_text(code: int) -> str:
    """CUDART_VERSION (e.g. 13000) -> "13.0"."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def _load() -> Dict:
    global _MODULE
    state = {"available": False, "reason": "", "cuda_version": None, "torch_cuda": torch.version.cuda, "path": None}
    try:
        module = importlib.import_module("resefa_fast._C")
    except ImportError as error:  # not built, or a library it links is missing
        state["reason"] = f"resefa_fast._C could not be imported: {error}"
        return state
    state["path"] = getattr(module, "__file__", None)
    built = _version_text(int(module.cuda_version))
    state["cuda_version"] = built
    if torch.version.cuda is None:
        state["reason"] = f"torch {torch.__version__} has no CUDA; the extension was built for CUDA {built}"
        return state
    if built.split(".")[:2] != torch.version.cuda.split(".")[:2]:
        state["reason"] = (f"resefa_fast._C was built with CUDA {built} but torch uses CUDA {torch.version.cuda}; "
                           "rebuild it (pip install --no-build-isolation -e .) against this torch")
        return state
    if not torch.cuda.is_available():
        state["reason"] = "built, but no CUDA device is visible to torch"
        _MODULE = module  # loadable (argument checks and CPU-side tests can use it)
        return state
    _MODULE = module
    state["available"] = True
    state["reason"] = f"loaded (CUDA {built})"
    return state


def extension_status() -> Dict:
    """``{"available", "reason", "cuda_version", "torch_cuda", "path"}``; ``available`` means usable on a GPU now."""
    global _STATE
    if _STATE is None:
        _STATE = _load()
    return dict(_STATE)


def load_extension():
    """The ``resefa_fast._C`` module when it imports and matches torch's CUDA version, else ``None``
    (:func:`extension_status` says why)."""
    extension_status()
    return _MODULE


def require_extension():
    """The extension module, or a ``RuntimeError`` with the reason it is unavailable."""
    status = extension_status()
    if not status["available"]:
        raise RuntimeError(f"the CUDA extension resefa_fast._C is unavailable: {status['reason']}")
    return _MODULE
