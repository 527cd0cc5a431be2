"""Which backend runs, and why.

- ``"reference"``: the float64 oracle (:mod:`resefa_fast.reference`), any device. Slow on purpose.
- ``"torch"``: the fast algorithms of :mod:`resefa_fast.solve` in torch ops, any device.
- ``"cuda"``: the same algorithms with the extension ``resefa_fast._C`` (custom kernels, cuSOLVER) where it has
  an op that wins (measured: the bulk path's dense small eigenproblems go to cuSOLVER's batched Xsyev, which is 32×
  torch's batched eigh at 100 × 512²; since 2026-12-07 the bulk path's default on a GPU is the subspace iteration,
  faster still, so Xsyev serves the "dense" solver and the iteration's stragglers; the rest is torch ops, as each
  result's ``info["ops"]`` says); raises if the extension is not built or the data is
  not on a GPU.
- ``"auto"``: ``"cuda"`` when the extension is loaded and the Jacobian is on a GPU, else ``"torch"``; the reason is
  recorded in the result's ``info["backend_reason"]`` and by :func:`backend_info`. It never picks the reference.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .errors import check

BACKENDS = ("auto", "torch", "cuda", "reference")


def extension_status() -> Dict:
    """``{"available": bool, "reason": str, ...}`` for the CUDA extension, loading it lazily on first call."""
    try:
        from . import _ext
    except ImportError:  # the extension's loader has not landed in this tree
        return {"available": False, "reason": "resefa_fast was installed without the CUDA extension loader"}
    return _ext.extension_status()


def resolve_backend(backend: str, device: torch.device) -> Tuple[str, str]:
    """``(backend that runs, why)`` for a requested ``backend`` and the Jacobian's ``device``."""
    check(backend in BACKENDS, "backend", f"one of {BACKENDS}", repr(backend))
    if backend in ("torch", "reference"):
        return backend, "requested"
    status = extension_status() if device.type == "cuda" else None
    if backend == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"backend='cuda' needs the Jacobian on a CUDA device; it is on {device}")
        if not status["available"]:
            raise RuntimeError(f"backend='cuda' is unavailable: {status['reason']}")
        return "cuda", "requested"
    if device.type != "cuda":
        return "torch", f"auto: the Jacobian is on {device.type}"
    if not status["available"]:
        return "torch", f"auto: CUDA extension unavailable ({status['reason']})"
    return "cuda", "auto: CUDA extension loaded and the Jacobian is on a GPU"


def backend_info() -> Dict:
    """What can run here: torch version and device, the CUDA extension's status (with its build or load error)."""
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "extension": extension_status(),
    }
