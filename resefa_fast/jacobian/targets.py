"""Where J goes. The engine produces J by column chunks (one JVP per latent dimension): ``block`` ``[k, P]`` holds
the columns ``cols`` (k ints) of latent code ``n``. A target receives the blocks and builds the result:

- :class:`DeviceTarget` ("device"): a ``[N, P, d]`` tensor on the generator's device;
- :class:`HostTarget` ("host" / "pinned"): a ``[N, P, d]`` CPU tensor (pinned when CUDA is there), filled chunk
  by chunk, for Jacobians larger than the GPU;
- :class:`TensorTarget`: a tensor you allocated (``[P, d]`` or ``[N, P, d]``, any device);
- :class:`Memmap`: a float32 ``.npy`` memory map in the original layout ``[N, H, W, 1, d]`` (one channel) or
  ``[N, C, H, W, 1, d]``, or ``[N, P, d]`` ("flat"); written under a temporary name and renamed into place, so a
  crash never leaves a half-written file at the final path;
- :class:`Grams`: masked Grams ``Jᵀ diag(w_r) J`` for fixed region weights, without keeping J.

Why :class:`Grams` keeps the rows it needs: a Gram block ``G[a, b] = J[:, a]ᵀ diag(w) J[:, b]`` needs column chunks
a *and* b, so column-wise streaming cannot finish any block before every chunk has arrived. What can be dropped
are the rows no region reads: the target keeps only the pixels with a non-zero weight in some region (``[N, S, d]``,
S = size of the union of the supports, e.g. 2,300 of 65,536 pixels for the "eyes" box) and calls
``resefa_fast.gram.masked_grams`` on them at the end. A complement background (weights non-zero everywhere) needs
every row, i.e. all of J; then use "device" or "host" and the bulk solver.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Tuple

import numpy as np
import torch

from ..errors import ResefaError, check

__all__ = ["Target", "DeviceTarget", "HostTarget", "TensorTarget", "Memmap", "Grams", "make_target"]


def _as_slice(cols: torch.Tensor):
    """``cols`` as a slice when it is a contiguous ascending range (the usual case), else None."""
    first, k = int(cols[0]), cols.numel()
    if int(cols[-1]) - first == k - 1 and (k < 3 or bool((cols[1:] - cols[:-1] == 1).all())):
        return slice(first, first + k)
    return None


class Target:
    """Receives J by column blocks. ``begin`` once, ``write`` per block, then ``finish`` (result) or ``abort``."""

    def begin(self, latents: int, grid: Tuple[int, int, int], dim: int, device: torch.device,
              dtype: torch.dtype) -> None:
        self.latents, self.grid, self.dim, self.device, self.dtype = latents, grid, dim, device, dtype

    def write(self, n: int, cols: torch.Tensor, block: torch.Tensor) -> None:  # block [k, P]
        raise NotImplementedError

    def finish(self, squeeze: bool):
        raise NotImplementedError

    def abort(self) -> None:
        pass


class TensorTarget(Target):
    """Fill ``tensor`` (``[P, d]`` for one latent code, ``[N, P, d]`` for several; any device and dtype)."""

    def __init__(self, tensor: Optional[torch.Tensor] = None):
        self.tensor = tensor

    def begin(self, latents, grid, dim, device, dtype):
        super().begin(latents, grid, dim, device, dtype)
        P = int(np.prod(grid))
        t = self.tensor
        check(t is None or tuple(t.shape) in ((latents, P, dim),) + (((P, dim),) if latents == 1 else ()), "out",
              f"a tensor of shape [{latents}, {P}, {dim}]" + (f" or [{P}, {dim}]" if latents == 1 else ""),
              None if t is None else tuple(t.shape))
        if t is not None:
            check(t.is_contiguous(), "out", "a contiguous tensor")
            self.view = t.reshape(latents, P, dim)

    def write(self, n, cols, block):
        part = block.to(device=self.view.device, dtype=self.view.dtype).transpose(0, 1)  # [P, k]
        where = _as_slice(cols)
        if where is not None:
            self.view[n, :, where] = part
        else:
            self.view[n].index_copy_(1, cols.to(self.view.device), part)

    def finish(self, squeeze):
        return self.view[0] if squeeze else self.view


class DeviceTarget(TensorTarget):
    """A new ``[N, P, d]`` tensor (``[P, d]`` for one code) on the generator's device."""

    def begin(self, latents, grid, dim, device, dtype):
        self.tensor = torch.empty(latents, int(np.prod(grid)), dim, device=device, dtype=dtype)
        super().begin(latents, grid, dim, device, dtype)


class HostTarget(TensorTarget):
    """A new ``[N, P, d]`` CPU tensor, pinned when ``pin`` and CUDA is available. Blocks go device -> a pinned
    staging buffer ``[k, P]`` -> the host J (the transpose happens on the CPU)."""

    def __init__(self, pin: bool = True):
        super().__init__(None)
        self.pin = pin and torch.cuda.is_available()

    def begin(self, latents, grid, dim, device, dtype):
        self.tensor = torch.empty(latents, int(np.prod(grid)), dim, dtype=dtype, pin_memory=self.pin)
        super().begin(latents, grid, dim, device, dtype)

    def write(self, n, cols, block):
        super().write(n, cols, block.to("cpu"))


class Memmap(Target):
    """A float32 ``.npy`` at ``path``: ``layout="original"`` gives ``[N, H, W, 1, d]`` when the readout has one
    channel and ``[N, C, H, W, 1, d]`` otherwise (the original compute_jacobian.py files); ``layout="flat"`` gives
    ``[N, P, d]``. Written to a temporary file beside ``path`` and renamed on success (atomic on POSIX).
    ``finish`` returns the file opened read-only with ``np.load(path, mmap_mode="r")``.

    Column blocks are gathered in host memory (``buffer_bytes``, 256 MiB by default) before they go to the map:
    a block of k columns touches every row of the ``[P, d]`` file (one page per row), so writing each small block
    directly would dirty the whole file once per chunk and let the kernel write it back many times."""

    def __init__(self, path: str, layout: str = "original", buffer_bytes: int = 1 << 28):
        check(isinstance(path, (str, os.PathLike)) and str(path).endswith(".npy"), "out",
              "a path ending in .npy", repr(path))
        check(layout in ("original", "flat"), "layout", "'original' or 'flat'", repr(layout))
        check(os.path.isdir(os.path.dirname(os.path.abspath(path))), "out", "a path in an existing directory",
              repr(path))
        check(isinstance(buffer_bytes, int) and buffer_bytes >= 0, "buffer_bytes", "an int >= 0", buffer_bytes)
        self.path, self.layout, self.buffer_bytes = str(path), layout, buffer_bytes
        self.array, self.temporary, self.pending = None, None, []

    def file_shape(self, latents, grid, dim):
        C, H, W = grid
        if self.layout == "flat":
            return (latents, C * H * W, dim)
        return (latents, H, W, 1, dim) if C == 1 else (latents, C, H, W, 1, dim)

    def begin(self, latents, grid, dim, device, dtype):
        super().begin(latents, grid, dim, device, dtype)
        handle, self.temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".npy",
                                                  dir=os.path.dirname(os.path.abspath(self.path)))
        os.close(handle)
        self.array = np.lib.format.open_memmap(self.temporary, mode="w+", dtype=np.float32,
                                               shape=self.file_shape(latents, grid, dim))
        self.pending_columns = max(1, self.buffer_bytes // (4 * int(np.prod(grid))))

    def write(self, n, cols, block):
        if self.pending and self.pending[0][0] != n:
            self.flush()
        self.pending.append((n, cols, block.detach().to("cpu", torch.float32)))
        if sum(c.numel() for _, c, _ in self.pending) >= self.pending_columns:
            self.flush()

    def flush(self):
        """Write the gathered blocks of one latent code: ``[P, k]`` columns in one (sorted) assignment."""
        if not self.pending:
            return
        n = self.pending[0][0]
        cols = torch.cat([c for _, c, _ in self.pending])
        blocks = torch.cat([b for _, _, b in self.pending])  # [k, P]
        order = torch.argsort(cols)
        cols, blocks = cols[order], blocks[order]
        rows = self.array[n].reshape(-1, self.dim)  # a view of the map, [P, d]
        where = _as_slice(cols)
        rows[:, where if where is not None else cols.numpy()] = blocks.numpy().T
        self.pending = []

    def finish(self, squeeze):
        self.flush()
        self.array.flush()
        self.array = None
        os.replace(self.temporary, self.path)
        self.temporary = None
        return np.load(self.path, mmap_mode="r")

    def abort(self):
        self.array, self.pending = None, []
        if self.temporary is not None and os.path.exists(self.temporary):
            os.remove(self.temporary)
        self.temporary = None


class Grams(Target):
    """Masked Grams for fixed regions without keeping J: ``finish`` returns ``(grams, traces)`` with
    ``grams[n, r] = Jₙᵀ diag(weights[r]) Jₙ`` ``[N, R, d, d]`` and ``traces[n, r] = Σ_p weights[r, p] ‖Jₙ,p‖²``
    ``[N, R]`` (N dropped for one latent code), accumulated in ``dtype`` (float64 by default: M_b's conditioning
    needs it, see DESIGN.md §2).

    ``weights``: ``[R, P]`` (P in the readout's row order), ``[R, C, H, W]`` or ``[R, H, W]`` (the same mask on
    every channel). Only the rows with a non-zero weight in some region are kept (module docstring says why)."""

    def __init__(self, weights: torch.Tensor, dtype: torch.dtype = torch.float64):
        check(isinstance(weights, torch.Tensor) and weights.dim() in (2, 3, 4) and weights.is_floating_point(),
              "weights", "a float tensor [R, P], [R, H, W] or [R, C, H, W]",
              getattr(weights, "shape", type(weights).__name__))
        check(bool(torch.isfinite(weights).all()), "weights", "finite")
        self.weights, self.accumulate = weights, dtype

    def begin(self, latents, grid, dim, device, dtype):
        super().begin(latents, grid, dim, device, dtype)
        C, H, W = grid
        w = self.weights
        if w.dim() == 3:
            check(tuple(w.shape[1:]) == (H, W), "weights", f"[R, {H}, {W}] for this readout", tuple(w.shape))
            w = w[:, None].expand(-1, C, -1, -1)
        w = w.reshape(w.shape[0], -1).to(device)
        check(w.shape[1] == C * H * W, "weights", f"[R, {C * H * W}] for this readout ([C, H, W] = {list(grid)})",
              tuple(self.weights.shape))
        self.rows = torch.nonzero((w != 0).any(0)).flatten()  # [S] pixels some region reads
        check(self.rows.numel() > 0, "weights", "non-zero somewhere")
        self.row_weights = w[:, self.rows]  # [R, S]
        self.kept = torch.empty(latents, self.rows.numel(), dim, device=device, dtype=dtype)  # [N, S, d]

    def write(self, n, cols, block):
        part = block.index_select(1, self.rows).transpose(0, 1)  # [S, k]
        where = _as_slice(cols)
        if where is not None:
            self.kept[n, :, where] = part
        else:
            self.kept[n].index_copy_(1, cols.to(self.kept.device), part)

    def finish(self, squeeze):
        from ..gram import masked_grams
        grams, traces = zip(*(masked_grams(self.kept[n], self.row_weights, dtype=self.accumulate)
                              for n in range(self.latents)), strict=True)
        self.kept = None
        grams, traces = torch.stack(grams), torch.stack(traces)
        return (grams[0], traces[0]) if squeeze else (grams, traces)


def make_target(out) -> Target:
    """``out`` as a :class:`Target`: "device", "host" / "pinned", a path ending in .npy (original layout), a
    tensor to fill, or a Target."""
    if isinstance(out, Target):
        return out
    if isinstance(out, torch.Tensor):
        return TensorTarget(out)
    if isinstance(out, (str, os.PathLike)):
        if str(out) == "device":
            return DeviceTarget()
        if str(out) in ("host", "pinned"):
            return HostTarget(pin=True)
        if str(out).endswith(".npy"):
            return Memmap(out)
    raise ResefaError("`out` must be 'device', 'host', 'pinned', a path ending in .npy, a tensor or a "
                      f"resefa_fast.jacobian target (Memmap, Grams, ...); got {out!r}")
