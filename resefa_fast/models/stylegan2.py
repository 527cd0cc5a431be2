"""StyleGAN2 generator (mapping + synthesis) in plain torch, written for forward mode.

The same function as NVIDIA's stylegan2-ada-pytorch ``training/networks.py`` ``Generator`` for the same weights
(and the same module and parameter names, so an official ``G_ema.state_dict()`` loads as is, less its
``resample_filter`` buffers, which are rebuilt here): equalised learning rate (weights stored unscaled, multiplied
by ``lr_multiplier / sqrt(fan_in)`` at run time), FIR ``[1, 3, 3, 1]`` resampling, biased leaky ReLU with gain √2
and optional clamping, per-layer noise (const / random / none), skip or resnet architecture, truncation (ψ, cutoff),
conditional labels. Inference only, always in the modules' dtype (no float16 path).

Modulated convolutions are in the *non-fused* form (``ops.modulated_conv2d``), so ``torch.func.vmap(jvp)``
tangents are ordinary batched convolutions.

W+ layout (``num_ws`` rows): block ``b4`` reads rows 0 (conv1) and 1 (torgb); block ``b(4·2^k)``, k ≥ 1, reads rows
2k-1 (conv0), 2k (conv1) and 2k+1 (torgb; the skip architecture's toRGB uses the *next* block's first row).

Layer-skip protocol (``resefa_fast.jacobian.StagedGenerator``): one stage per block; ``run_stage(i, state, ws)``
with ``state = (x, img)`` (``img`` absent, so ``state = x``, in the resnet architecture before the last block);
the last stage returns the image ``[B, img_channels, R, R]``. Sampled last stage (the protocol's optional
``run_last_stage_sampled``): the last block computed only at rows / columns ``0, s, 2s, ...`` of the image
(``[B, img_channels, R/s, R/s]``, equal to ``image[..., ::s, ::s]``): conv0 stays full; conv1 is a strided 3×3
convolution of conv0's output with the same modulation / demodulation, its noise sampled ``[::s, ::s]``; bias,
leaky ReLU and clamp are pixel-wise, toRGB is 1×1; the upsampled image and the resnet skip branch run their last
(FIR) convolution strided.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import check
from . import ops

__all__ = ["StyleGAN2Generator", "MappingNetwork", "SynthesisNetwork", "NOISE_MODES", "ARCHITECTURES"]

NOISE_MODES = ("const", "random", "none")
ARCHITECTURES = ("skip", "resnet")


def _row(ws, row: int) -> torch.Tensor:
    """Row ``row`` ``[B, w_dim]`` of W+ given as ``[B, num_ws, w_dim]`` or as a tuple of ``[B, w_dim]`` rows."""
    return ws[row] if isinstance(ws, (tuple, list)) else ws[:, row]


class FullyConnectedLayer(nn.Module):
    """``act(x @ (W · lr/√in)ᵀ + b · lr)``: ``x`` ``[B, in]`` -> ``[B, out]`` (official FullyConnectedLayer)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = None if self.bias is None else self.bias * self.bias_gain
        x = x @ w.T
        return ops.bias_act(x, b, self.activation, gain=ops.LRELU_GAIN if self.activation == "lrelu" else 1.0)

    def linear_tangent(self, dx: torch.Tensor) -> torch.Tensor:
        """The forward-mode tangent ``dx @ (W · lr/√in)ᵀ`` ``[k, out]`` of a linear layer (the styles' affines)."""
        check(self.activation == "linear", "activation", "'linear' for a tangent independent of the primal",
              self.activation)
        return dx @ (self.weight * self.weight_gain).T.to(dx.dtype)


class MappingNetwork(nn.Module):
    """z ``[B, z_dim]`` (+ label c ``[B, c_dim]``) -> W+ ``[B, num_ws, w_dim]`` (w repeated on every row, then
    truncated). Holds ``w_avg`` ``[w_dim]``."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        dtype = self.w_avg.dtype
        x = ops.normalize_2nd_moment(z.to(dtype)) if self.z_dim else None
        if self.c_dim:
            y = ops.normalize_2nd_moment(self.embed(c.to(dtype)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        ws = x[:, None, :].repeat(1, self.num_ws, 1)  # [B, num_ws, w_dim]
        if truncation_psi != 1:
            # w ← w_avg + ψ (w − w_avg) on rows [0, cutoff)
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([truncated, ws[:, cutoff:]], dim=1)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv (optionally up ×2) + noise + bias + leaky ReLU·√2 (+ clamp): ``x`` ``[B, I, r/up, r/up]``,
    ``w`` ``[B, w_dim]`` -> ``[B, O, r, r]``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter), persistent=False)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1.0,
                stride: int = 1) -> torch.Tensor:
        """``stride`` > 1: the output only at rows / columns ``0, stride, ...`` (``[..., ::stride, ::stride]``)."""
        return self.forward_jvp(x, w, None, None, noise_mode, gain, stride)[0]

    def forward_jvp(self, x: torch.Tensor, w: torch.Tensor, dx: Optional[torch.Tensor], dw: Optional[torch.Tensor],
                    noise_mode: str = "const", gain: float = 1.0, stride: int = 1):
        """``(y, dy)``: the layer at one primal (``x`` ``[1, I, ...]``, ``w`` ``[1, w_dim]``) and the forward-mode
        tangents ``dy`` ``[k, O, ...]`` of tangents ``dx`` ``[k, I, ...]`` and ``dw`` ``[k, w_dim]`` (None: zero;
        both None: ``dy`` None and the primal computed exactly as :meth:`forward`)."""
        styles = self.affine(w)  # [B, I]
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], dtype=x.dtype,
                                device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        if noise is not None and stride > 1:
            noise = noise[..., ::stride, ::stride]
        dstyles = None if dw is None else self.affine.linear_tangent(dw)
        x, dx = ops.modulated_conv2d_jvp(x, dx, self.weight, styles, dstyles, demodulate=True, up=self.up,
                                         f=self.resample_filter, noise=noise, stride=stride, pending=True)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return ops.bias_act_jvp(x, dx, self.bias, "lrelu", gain=ops.LRELU_GAIN * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1×1 conv without demodulation + bias (+ clamp): ``[B, C, r, r]`` -> ``[B, img_channels, r, r]``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.forward_jvp(x, w, None, None)[0]

    def forward_jvp(self, x: torch.Tensor, w: torch.Tensor, dx: Optional[torch.Tensor], dw: Optional[torch.Tensor]):
        """``(y, dy)`` as :meth:`SynthesisLayer.forward_jvp`."""
        styles = self.affine(w) * self.weight_gain
        dstyles = None if dw is None else self.affine.linear_tangent(dw) * self.weight_gain
        x, dx = ops.modulated_conv2d_jvp(x, dx, self.weight, styles, dstyles, demodulate=False)
        return ops.bias_act_jvp(x, dx, self.bias, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """The resnet architecture's skip branch: 1×1 conv without bias, up ×2, linear: ``[B, I, r/2, r/2]`` ->
    ``[B, O, r, r]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, up: int = 2,
                 resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.up = up
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter), persistent=False)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, gain: float = 1.0, stride: int = 1) -> torch.Tensor:
        x = ops.conv2d_resample(x, (self.weight * self.weight_gain).to(x.dtype), f=self.resample_filter, up=self.up,
                                padding=self.weight.shape[-1] // 2, stride=stride)
        return x * gain if gain != 1 else x


class SynthesisBlock(nn.Module):
    """One resolution: [const] or [conv0 (up ×2)], conv1, [toRGB], [resnet skip]. Reads ``num_conv + num_torgb``
    W+ rows starting at its first."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_noise: bool = True):
        super().__init__()
        self.in_channels, self.resolution, self.is_last, self.architecture = (in_channels, resolution, is_last,
                                                                             architecture)
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter), persistent=False)
        self.num_conv = self.num_torgb = 0
        layer = dict(w_dim=w_dim, resolution=resolution, resample_filter=resample_filter, conv_clamp=conv_clamp,
                     use_noise=use_noise)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, up=2, resample_filter=resample_filter)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws, first: int,
                noise_mode: str = "const", stride: int = 1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``ws``: W+ (tensor or tuple of rows); this block reads rows ``first ..``. Returns ``(x, img)``.
        ``stride`` > 1 (``resolution`` divisible by it): both only at rows / columns ``0, stride, ...`` (conv0 runs
        full; conv1, the skip branches and toRGB sampled), i.e. ``[..., ::stride, ::stride]`` of the full result."""
        return self.forward_jvp(x, img, ws, first, noise_mode, stride)[:2]

    def forward_jvp(self, x, img, ws, first: int, noise_mode: str = "const", stride: int = 1, dx=None, dimg=None,
                    rows: frozenset = frozenset(), dw: Optional[torch.Tensor] = None):
        """``(x, img, dx, dimg)``: :meth:`forward` at one primal and the forward-mode tangents of its outputs, for
        tangents ``dx``, ``dimg`` of its inputs and ``dw`` ``[k, w_dim]`` of each W+ row in ``rows`` (None: zero).
        ``dx`` in and out may be an ``ops.PendingTangent`` (formed by the next modulated layer's single pass)."""
        def row_tangent(r):
            return dw if r in rows else None

        r = first
        if self.in_channels == 0:
            w = _row(ws, r)
            x = self.const[None].expand(w.shape[0], -1, -1, -1).to(w.dtype)
            x, dx = self.conv1.forward_jvp(x, w, None, row_tangent(r), noise_mode, stride=stride)
            r += 1
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5), stride=stride)
            dx = ops.resolve(dx)
            dy = None if dx is None else self.skip(dx, gain=math.sqrt(0.5), stride=stride)
            x, dx = self.conv0.forward_jvp(x, _row(ws, r), dx, row_tangent(r), noise_mode)
            x, dx = self.conv1.forward_jvp(x, _row(ws, r + 1), dx, row_tangent(r + 1), noise_mode,
                                           gain=math.sqrt(0.5), stride=stride)
            x, dx = y + x, _add(dy, ops.resolve(dx))
            r += 2
        else:
            x, dx = self.conv0.forward_jvp(x, _row(ws, r), dx, row_tangent(r), noise_mode)
            x, dx = self.conv1.forward_jvp(x, _row(ws, r + 1), dx, row_tangent(r + 1), noise_mode, stride=stride)
            r += 2
        if img is not None:
            img = ops.upsample2d(img, self.resample_filter, stride=stride)
            dimg = None if dimg is None else ops.upsample2d(dimg, self.resample_filter, stride=stride)
        if self.num_torgb:
            y, dy = self.torgb.forward_jvp(x, _row(ws, r), dx, row_tangent(r))
            img, dimg = (y, dy) if img is None else (img + y, _add(dimg, dy))
        return x, img, dx, dimg


def _add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``a + b`` for tangents where None is zero."""
    return b if a is None else a if b is None else a + b


class SynthesisNetwork(nn.Module):
    """W+ ``[B, num_ws, w_dim]`` -> image ``[B, img_channels, R, R]``; channels ``min(channel_base // r,
    channel_max)`` at resolution r. One stage per block (layer-skip protocol, see the module docstring)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, architecture: str = "skip", conv_clamp: Optional[float] = None,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), use_noise: bool = True):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
        self.channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.noise_mode = "const"
        self.num_ws = 0
        self._rows = []  # (first, stop) per block
        for r in self.block_resolutions:
            block = SynthesisBlock(self.channels[r // 2] if r > 4 else 0, self.channels[r], w_dim=w_dim,
                                   resolution=r, img_channels=img_channels, is_last=r == img_resolution,
                                   architecture=architecture, resample_filter=resample_filter,
                                   conv_clamp=conv_clamp, use_noise=use_noise)
            self._rows.append((self.num_ws, self.num_ws + block.num_conv + block.num_torgb))
            self.num_ws += block.num_conv
            if r == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{r}", block)

    @property
    def num_stages(self) -> int:
        return len(self.block_resolutions)

    def stage_ws_rows(self, i: int) -> Tuple[int, int]:
        """W+ rows read by stage (block) i: ``first .. stop-1``."""
        return self._rows[i]

    def run_stage(self, i: int, state: Any, ws, noise_mode: Optional[str] = None, stride: int = 1):
        """Block i: ``state`` None (i = 0), ``(x, img)`` or ``x``; ``ws`` ``[B, num_ws, w_dim]`` or a tuple of rows.
        Returns the next state, or the image ``[B, C, R, R]`` after the last block. ``stride`` > 1 (last block only,
        dividing R): the image only at rows / columns ``0, stride, ...``, ``[B, C, R/stride, R/stride]``."""
        noise_mode = self.noise_mode if noise_mode is None else noise_mode
        check(stride == 1 or (i == self.num_stages - 1 and isinstance(stride, int) and stride > 1
                              and self.img_resolution % stride == 0), "stride",
              f"1, or for the last stage an int dividing {self.img_resolution}", stride)
        x, img = state if isinstance(state, tuple) else (state, None)
        x, img = getattr(self, f"b{self.block_resolutions[i]}")(x, img, ws, self._rows[i][0], noise_mode,
                                                                stride=stride)
        if i == self.num_stages - 1:
            return img
        return x if img is None else (x, img)

    def forward(self, ws: torch.Tensor, noise_mode: Optional[str] = None) -> torch.Tensor:
        state = None
        for i in range(self.num_stages):
            state = self.run_stage(i, state, ws, noise_mode)
        return state

    def rows_jvp(self, rows: Sequence[int], start: int, state: Any, ws, dw: torch.Tensor,
                 noise_mode: Optional[str] = None, stride: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(image [1, C, R/stride, R/stride], tangents [k, C, R/stride, R/stride])``: the image from stage
        ``start`` on (``state`` the primal state entering it; ``ws`` one W+ code, a tensor or a tuple of rows) and
        its forward-mode tangents for the tangents ``dw`` ``[k, w_dim]`` given to every W+ row in ``rows`` (one row:
        W+; all rows: w space, where w is repeated), none of which a stage before ``start`` may read.

        The tangents are propagated explicitly, layer by layer, with the primal styles and demodulation folded into
        each convolution's weight (``ops.modulated_conv2d_jvp``) and the activations' derivatives in one mask: the
        values of ``torch.func.jvp`` to float rounding, in fewer passes over the tangents. The tangents keep
        ``dw``'s dtype (float16 / bfloat16: reduced-precision tangents at a float32 primal)."""
        noise_mode = self.noise_mode if noise_mode is None else noise_mode
        rows = frozenset(rows)
        check(len(rows) > 0 and all(0 <= r < self.num_ws for r in rows), "rows",
              f"a non-empty set of W+ rows in [0, {self.num_ws})", sorted(rows))
        check(0 <= start < self.num_stages and (start == 0 or self._rows[start - 1][1] <= min(rows)), "start",
              f"a stage in [0, {self.num_stages}) before which no stage reads W+ rows {sorted(rows)}", start)
        check(isinstance(stride, int) and stride >= 1 and self.img_resolution % stride == 0, "stride",
              f"an int dividing {self.img_resolution}", stride)
        x, img = state if isinstance(state, tuple) else (state, None)
        dx = dimg = None
        for i in range(start, self.num_stages):
            block = getattr(self, f"b{self.block_resolutions[i]}")
            s = stride if i == self.num_stages - 1 else 1
            x, img, dx, dimg = block.forward_jvp(x, img, ws, self._rows[i][0], noise_mode, s, dx, dimg, rows, dw)
        if dimg is None:  # no layer from `start` on reads the rows
            dimg = torch.zeros((dw.shape[0],) + tuple(img.shape[1:]), dtype=dw.dtype, device=img.device)
        return img, dimg


class StyleGANSurface:
    """What the StyleGAN generators (:class:`StyleGAN2Generator`, ``StyleGAN3Generator``) share around their
    ``mapping`` and ``synthesis`` networks: checked ``map``, ``forward``, ``w_avg``, and the Jacobian engine's
    layer-skip protocol delegated to ``synthesis``. Subclasses define ``synthesize``."""

    @property
    def w_avg(self) -> torch.Tensor:
        """The average w ``[w_dim]`` (the mapping network's buffer; truncation's centre)."""
        return self.mapping.w_avg

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- layer-skip protocol (resefa_fast.jacobian.StagedGenerator) --------------------------------------------
    @property
    def num_stages(self) -> int:
        return self.synthesis.num_stages

    def stage_ws_rows(self, i: int) -> Tuple[int, int]:
        return self.synthesis.stage_ws_rows(i)

    def run_stage(self, i: int, state: Any, ws) -> Any:
        """Stage i of the synthesis network (see its ``run_stage``)."""
        return self.synthesis.run_stage(i, state, ws)

    # ---- public calls ------------------------------------------------------------------------------------------
    def _check_ws(self, ws) -> None:
        check(isinstance(ws, torch.Tensor) and ws.ndim == 3 and tuple(ws.shape[1:]) == (self.num_ws, self.w_dim),
              "ws", f"a tensor [B, {self.num_ws}, {self.w_dim}] (W+)", getattr(ws, "shape", type(ws).__name__))

    def map(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
            truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        """Checked ``mapping``: z ``[B, z_dim]``, c ``[B, c_dim]`` (None when c_dim = 0) -> W+
        ``[B, num_ws, w_dim]``; truncation ``w_avg + ψ (w − w_avg)`` on rows ``[0, cutoff)``."""
        check(isinstance(z, torch.Tensor) and z.ndim == 2 and z.shape[1] == self.z_dim, "z",
              f"a tensor [B, {self.z_dim}]", getattr(z, "shape", type(z).__name__))
        if self.c_dim:
            check(isinstance(c, torch.Tensor) and tuple(c.shape) == (z.shape[0], self.c_dim), "c",
                  f"a label tensor [{z.shape[0]}, {self.c_dim}] (this generator is conditional)",
                  getattr(c, "shape", None))
        if truncation_cutoff is not None:
            check(isinstance(truncation_cutoff, int) and 0 <= truncation_cutoff <= self.num_ws, "truncation_cutoff",
                  f"None or an int in [0, {self.num_ws}]", truncation_cutoff)
        return self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, noise_mode: Optional[str] = None) -> torch.Tensor:
        """z ``[B, z_dim]`` (+ c ``[B, c_dim]``) -> image ``[B, img_channels, R, R]``."""
        return self.synthesize(self.map(z, c, truncation_psi, truncation_cutoff), noise_mode)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.init_kwargs.items())


class StyleGAN2Generator(StyleGANSurface, nn.Module):
    """StyleGAN2 generator: ``mapping`` (z, c -> W+) and ``synthesis`` (W+ -> image), official parameter names.

    Args (recorded in ``init_kwargs``, which rebuild the network with ``StyleGAN2Generator(**init_kwargs)``):
        z_dim, w_dim, c_dim: latent, intermediate latent and label sizes (c_dim 0: unconditional).
        img_resolution, img_channels: output ``[img_channels, R, R]``; R a power of two ≥ 4.
        channel_base, channel_max: feature channels ``min(channel_base // r, channel_max)`` at resolution r
            (config-f: 32768, 512).
        num_mapping_layers: fully connected layers of the mapping network (8 in StyleGAN2, 2 in ADA's "auto").
        architecture: "skip" (StyleGAN2 config-e/f) or "resnet".
        conv_clamp: clamp of the conv outputs (stylegan2-ada-pytorch trains with 256; converted TF models: None).
        mapping_lr_multiplier, embed_features, layer_features: the mapping network's (official defaults).
        use_noise: per-layer noise inputs; resample_filter: 1-D FIR taps.

    Shapes: ``mapping(z [B, z_dim], c [B, c_dim]) -> ws [B, num_ws, w_dim]``; ``synthesis(ws) -> [B, C, R, R]``.
    ``noise_mode`` ("const" by default: deterministic, as Jacobians need) is used where a call gives none.
    """

    accepts_ws_rows = True  # run_stage also takes W+ as a tuple of num_ws rows [B, w_dim] (StagedGenerator)

    # ---- sampled last stage (StagedGenerator's optional extension) ---------------------------------------------
    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(img_channels, R, R)``: the shape of one image."""
        return (self.img_channels, self.img_resolution, self.img_resolution)

    def rows_jvp(self, rows: Sequence[int], start: int, state: Any, ws, dw: torch.Tensor,
                 stride: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        """Explicit forward-mode tangents of W+ rows (StagedGenerator's optional extension; see
        ``SynthesisNetwork.rows_jvp``)."""
        return self.synthesis.rows_jvp(rows, start, state, ws, dw, stride=stride)

    def run_last_stage_sampled(self, state: Any, ws, stride: int) -> torch.Tensor:
        """The last stage (block) from ``state`` producing the image only at rows / columns ``0, stride, ...``:
        ``[B, C, R/stride, R/stride]``, equal to ``run_stage(num_stages - 1, state, ws)[..., ::stride, ::stride]``
        (``stride`` must divide R). Its conv1, toRGB and skip branches compute only the sampled pixels."""
        return self.synthesis.run_stage(self.num_stages - 1, state, ws, stride=stride)

    def __init__(self, z_dim: int = 512, w_dim: int = 512, c_dim: int = 0, img_resolution: int = 1024,
                 img_channels: int = 3, channel_base: int = 32768, channel_max: int = 512,
                 num_mapping_layers: int = 8, architecture: str = "skip", conv_clamp: Optional[float] = None,
                 mapping_lr_multiplier: float = 0.01, embed_features: Optional[int] = None,
                 layer_features: Optional[int] = None, use_noise: bool = True,
                 resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        for name, value in (("z_dim", z_dim), ("c_dim", c_dim)):
            check(isinstance(value, int) and value >= 0, name, "an int >= 0", value)
        for name, value in (("w_dim", w_dim), ("img_channels", img_channels), ("channel_base", channel_base),
                            ("channel_max", channel_max), ("num_mapping_layers", num_mapping_layers)):
            check(isinstance(value, int) and value >= 1, name, "an int >= 1", value)
        check(z_dim + c_dim > 0, "z_dim + c_dim", "> 0", z_dim + c_dim)
        check(isinstance(img_resolution, int) and img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0,
              "img_resolution", "a power of two >= 4", img_resolution)
        check(architecture in ARCHITECTURES, "architecture", f"one of {ARCHITECTURES}", repr(architecture))
        check(channel_base // img_resolution >= 1, "channel_base",
              f">= img_resolution ({img_resolution}) so that every block has a channel", channel_base)
        self.init_kwargs: Dict[str, Any] = dict(
            z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
            channel_base=channel_base, channel_max=channel_max, num_mapping_layers=num_mapping_layers,
            architecture=architecture, conv_clamp=conv_clamp, mapping_lr_multiplier=mapping_lr_multiplier,
            embed_features=embed_features, layer_features=layer_features, use_noise=use_noise,
            resample_filter=tuple(resample_filter))
        self.z_dim, self.w_dim, self.c_dim = z_dim, w_dim, c_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base=channel_base,
                                          channel_max=channel_max, architecture=architecture,
                                          conv_clamp=conv_clamp, resample_filter=resample_filter,
                                          use_noise=use_noise)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=num_mapping_layers,
                                      embed_features=embed_features, layer_features=layer_features,
                                      lr_multiplier=mapping_lr_multiplier)

    # ---- convenience -------------------------------------------------------------------------------------------
    @property
    def noise_mode(self) -> str:
        """Noise mode used where a call gives none ("const", "random" or "none")."""
        return self.synthesis.noise_mode

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        check(mode in NOISE_MODES, "noise_mode", f"one of {NOISE_MODES}", repr(mode))
        self.synthesis.noise_mode = mode

    # ---- public calls ------------------------------------------------------------------------------------------
    def synthesize(self, ws: torch.Tensor, noise_mode: Optional[str] = None) -> torch.Tensor:
        """Checked ``synthesis``: W+ ``[B, num_ws, w_dim]`` -> image ``[B, img_channels, R, R]`` (about [-1, 1])."""
        self._check_ws(ws)
        if noise_mode is not None:
            check(noise_mode in NOISE_MODES, "noise_mode", f"one of {NOISE_MODES}", repr(noise_mode))
        return self.synthesis(ws, noise_mode)
