"""Built-in models shipped with the package, loaded by ``resefa_fast.models.load("builtin:NAME")``.

``faces64``: a small StyleGAN2 (64×64) trained by ``python -m resefa_fast.train`` on the procedural faces of
:mod:`resefa_fast.data.procedural`, whose parts (eyes, nose, mouth) sit in known boxes: the default model of
``resefa-fast demo``. Its part boxes are region presets ``procedural/<part>`` (``resefa_fast.regions.PRESETS``).
The training log and statistics are in ``benchmarks/results/``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Tuple

from ..errors import ResefaError
from ..regions import PRESET_GRID, PRESETS

__all__ = ["BUILTINS", "Builtin", "builtin_path", "PREFIX"]

PREFIX = "builtin:"
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin_weights")


@dataclass(frozen=True)
class Builtin:
    name: str
    file: str
    description: str
    preset_family: str
    presets: Dict[str, Tuple[int, int, int, int]]  # on the model's image grid


def _procedural_presets() -> Dict[str, Tuple[int, int, int, int]]:
    from ..data.procedural import PART_BOXES

    return dict(PART_BOXES)


BUILTINS: Dict[str, Builtin] = {b.name: b for b in [
    Builtin("faces64", "faces64.pt", "StyleGAN2 64x64 trained on resefa_fast.data.procedural faces", "procedural",
            _procedural_presets()),
]}

# The part boxes are presets on the 256 grid of resefa_fast.regions, scaled exactly (64 -> 256 is a factor 4).
PRESETS.setdefault("procedural", {
    part: tuple(v * PRESET_GRID[0] // 64 for v in box) for part, box in BUILTINS["faces64"].presets.items()})


def builtin_path(spec: str) -> Tuple[str, Builtin]:
    """``(weights file, Builtin)`` of ``builtin:NAME``; a clear error for unknown names or missing weights."""
    name = spec[len(PREFIX):]
    if name not in BUILTINS:
        raise ResefaError(f"`path` names no built-in model: {spec!r}; built-in models: "
                          f"{', '.join(PREFIX + n for n in BUILTINS)}")
    builtin = BUILTINS[name]
    path = os.path.join(HERE, builtin.file)
    if not os.path.isfile(path):
        raise ResefaError(f"{spec}: the weights file {path} is missing from this installation (reinstall "
                          "resefa_fast, or train it with `python -m resefa_fast.train`)")
    return path, builtin
