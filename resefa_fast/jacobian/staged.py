"""The layer-skip protocol: a generator whose synthesis is a sequence of stages, each reading some rows of W+.

A tangent on W+ row l is zero in every stage before ``s(l)``, the first stage whose row range contains l (those
stages do not read row l), so its JVP can start at stage s(l) from the cached primal state with a zero state
tangent. The engine caches the primal state entering every stage once per latent, groups the tangents by s(l)
and runs each group from its own stage: the saving is the cost of the skipped stages.
"""
from __future__ import annotations

from typing import Any, List, Optional, Protocol, Tuple, runtime_checkable

import torch

__all__ = ["StagedGenerator", "is_staged", "samples_last_stage", "synthesize", "first_stages", "primal_states",
           "ws_row"]


@runtime_checkable
class StagedGenerator(Protocol):
    """What a generator implements to get W+ layer skip (``resefa_fast.models`` implements it for StyleGAN2).

    - ``num_ws``, ``w_dim``: W+ is ``[num_ws, w_dim]``.
    - ``num_stages``; ``stage_ws_rows(i) -> (first, stop)``: stage i reads W+ rows ``first .. stop-1`` (ranges
      may overlap; every row must be read by some stage).
    - ``run_stage(i, state, ws) -> state``: ``ws`` ``[B, num_ws, w_dim]`` is the full W+; ``state`` is None for
      i == 0, else what stage i-1 returned (a tensor or a tuple of tensors); the last stage returns the image
      ``[B, C, H, W]``. A stage must depend on W+ only through rows ``first .. stop-1``, and on nothing random.
    - optional ``accepts_ws_rows = True``: ``run_stage`` also accepts ``ws`` as a tuple of ``num_ws`` rows
      ``[B, w_dim]`` (read row l with :func:`ws_row`); the engine then perturbs one row at a time and every layer
      that does not read it runs without a tangent (layer skip at layer, not stage, granularity).
    - optional ``image_shape`` ``(C, H, W)`` and ``run_last_stage_sampled(state, ws, stride) -> image`` (the last
      stage producing the image only at rows / columns ``0, stride, 2·stride, ...``: ``[B, C, H/stride,
      W/stride]``, equal to ``run_stage(num_stages - 1, state, ws)[..., ::stride, ::stride]``, for any stride > 1
      dividing H and W; ``ws`` as for ``run_stage``): the engine uses it when the readout reads only those pixels
      (``readouts.Readout.sampling``), so the last stage computes only what the readout looks at.
    - optional ``rows_jvp(rows, start, state, ws, dw, stride=1) -> (image [1, ...], tangents [k, ...])``: the image
      from stage ``start`` (``state`` entering it, ``ws`` one code as a tensor or a tuple of rows) and its
      forward-mode tangents for the tangents ``dw`` ``[k, w_dim]`` given to every W+ row in ``rows``, propagated by
      the generator itself (``stride`` as for ``run_last_stage_sampled``). The engine uses it instead of
      ``vmap(jvp)`` for w latents (all rows) and on the row-wise layer-skip path (one row); it must equal
      ``torch.func.jvp`` to float rounding (StyleGAN2: ``models.ops.modulated_conv2d_jvp``, fewer passes over the
      tangents).
    """

    num_ws: int
    w_dim: int
    num_stages: int

    def stage_ws_rows(self, i: int) -> Tuple[int, int]: ...

    def run_stage(self, i: int, state: Any, ws: torch.Tensor) -> Any: ...


def ws_row(ws, row: int) -> torch.Tensor:
    """Row ``row`` ``[B, w_dim]`` of W+ given as a ``[B, num_ws, w_dim]`` tensor or a tuple of rows."""
    return ws[row] if isinstance(ws, (tuple, list)) else ws[:, row]


def is_staged(fn) -> bool:
    """Whether ``fn`` implements :class:`StagedGenerator`."""
    return all(hasattr(fn, name) for name in ("num_ws", "w_dim", "num_stages", "stage_ws_rows", "run_stage"))


def samples_last_stage(generator) -> bool:
    """Whether the staged ``generator`` can run its last stage sampled at a stride (``image_shape`` and
    ``run_last_stage_sampled``, see :class:`StagedGenerator`)."""
    return hasattr(generator, "image_shape") and callable(getattr(generator, "run_last_stage_sampled", None))


def synthesize(generator, ws: torch.Tensor, start: int = 0, state: Any = None, stride: int = 1) -> torch.Tensor:
    """Run stages ``start ..`` of ``generator`` on ``ws`` ``[B, num_ws, w_dim]`` from ``state`` (the state
    entering stage ``start``); returns the image ``[B, C, H, W]``, or with ``stride`` > 1 (a generator with
    ``run_last_stage_sampled``) its rows / columns ``0, stride, ...`` only, ``[B, C, H/stride, W/stride]``."""
    last = generator.num_stages - 1
    for i in range(start, generator.num_stages):
        if i == last and stride > 1:
            state = generator.run_last_stage_sampled(state, ws, stride)
        else:
            state = generator.run_stage(i, state, ws)
    return state


def first_stages(generator) -> List[int]:
    """``s(l)`` for every W+ row l: the first stage whose row range contains l. ``[num_ws]`` ints."""
    first = [None] * generator.num_ws
    for i in range(generator.num_stages):
        lo, hi = generator.stage_ws_rows(i)
        for row in range(max(lo, 0), min(hi, generator.num_ws)):
            if first[row] is None:
                first[row] = i
    missing = [row for row, s in enumerate(first) if s is None]
    if missing:
        from ..errors import ResefaError
        raise ResefaError(f"`fn` (a staged generator) must read every W+ row in some stage; rows {missing} are "
                          "read by none")
    return first


def primal_states(generator, ws: torch.Tensor, stages: List[int]) -> dict:
    """The primal state entering each stage in ``stages`` (``{stage: state}``), computed once without autograd.
    ``ws`` ``[1, num_ws, w_dim]``."""
    wanted = set(stages)
    cache: dict = {}
    state: Optional[Any] = None
    with torch.no_grad():
        for i in range(generator.num_stages):
            if i in wanted:
                cache[i] = state
            if i == max(wanted):
                break
            state = generator.run_stage(i, state, ws)
    return cache
