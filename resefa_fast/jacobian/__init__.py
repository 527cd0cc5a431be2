"""Forward-mode Jacobians of generators (DESIGN.md §3): ``jacobian(fn, latent, readout=..., out=...)``.

    >>> from resefa_fast.jacobian import jacobian, readouts, Grams
    >>> J = jacobian(G, ws, readout=readouts.original())                 # [P, d], W+ with layer skip
    >>> jacobian(G, [w0, w1], readout=readouts.original(), out="J.npy")  # [2, 256, 256, 1, 512] file
    >>> grams, traces = jacobian(G, ws, out=Grams(masks))              # [R, d, d], [R], J never stored
"""
from . import readouts
from .engine import PRECISIONS, JacobianInfo, jacobian, jvp_columns
from .staged import StagedGenerator, is_staged, synthesize
from .targets import DeviceTarget, Grams, HostTarget, Memmap, Target, TensorTarget

__all__ = [
    "DeviceTarget", "Grams", "HostTarget", "JacobianInfo", "Memmap", "PRECISIONS", "StagedGenerator", "Target",
    "TensorTarget", "is_staged", "jacobian", "jvp_columns", "readouts", "synthesize",
]
