"""A StyleGAN2-shaped synthesis network with random weights, implementing the layer-skip protocol
(:class:`~resefa_fast.jacobian.StagedGenerator`). For tests (tiny sizes) and benchmarks (``ToyGenerator.config_f``
has the channel counts of StyleGAN2 config-f at 1024², ~30 M synthesis parameters), independent of
``resefa_fast.models`` so the engine's tests do not depend on it.

Per block (stage) of resolution r: [upsample x2 (bilinear) -> modulated 3x3 conv] (not in the 4x4 block) ->
modulated 3x3 conv -> toRGB (modulated 1x1, no demodulation) added to the upsampled image. Each modulated conv is
in the *non-fused* form (scale the input channels by the style, convolve with the shared weight, scale the output
channels by the demodulation coefficients), followed by a constant noise image, bias and leaky ReLU·√2.
W+ rows: block 0 reads rows 0..1, block k ≥ 1 reads rows 2k-1 .. 2k+1 (its conv0, conv1, toRGB).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from .staged import ws_row

__all__ = ["ToyGenerator"]


class ToyGenerator(torch.nn.Module):
    """``ToyGenerator(resolution, w_dim, channels)``: ``channels(r)`` gives the feature channels at resolution r
    (default ``min(16384 // r, 512)``, halved for speed: config-f is ``min(32768 // r, 512)``)."""

    def __init__(self, resolution: int = 16, w_dim: int = 8, channels=None, image_channels: int = 3, seed: int = 0,
                 accepts_ws_rows: bool = False):
        super().__init__()
        self.accepts_ws_rows = accepts_ws_rows  # run_stage takes W+ as a tuple of rows too (see StagedGenerator)
        self.resolution, self.w_dim = resolution, w_dim
        channels = channels or (lambda r: min(16384 // r, 512))
        self.resolutions = [4 * 2 ** i for i in range(int(math.log2(resolution)) - 1)]
        self.num_stages = len(self.resolutions)
        self.num_ws = 2 * self.num_stages
        g = torch.Generator().manual_seed(seed)

        def param(*shape, scale=1.0):
            return torch.nn.Parameter(torch.randn(*shape, generator=g) * scale)

        self.const = param(channels(4), 4, 4)
        self.layers = torch.nn.ModuleList()
        for i, r in enumerate(self.resolutions):
            block = torch.nn.Module()
            c_in, c_out = channels(r // 2) if i else channels(4), channels(r)
            convs = [(c_in, c_out, True)] if i else []
            convs.append((c_out, c_out, False))
            block.convs = torch.nn.ModuleList()
            for cin, cout, up in convs:
                conv = torch.nn.Module()
                conv.up = up
                conv.affine_weight = param(cin, w_dim, scale=1 / math.sqrt(w_dim))
                conv.affine_bias = torch.nn.Parameter(torch.ones(cin))
                conv.weight = param(cout, cin, 3, 3, scale=1 / math.sqrt(cin * 9))
                conv.bias = param(cout, scale=0.1)
                conv.register_buffer("noise", torch.randn(1, 1, r, r, generator=g))
                conv.noise_strength = torch.nn.Parameter(torch.tensor(0.1))
                block.convs.append(conv)
            block.rgb_affine_weight = param(c_out, w_dim, scale=1 / math.sqrt(w_dim))
            block.rgb_affine_bias = torch.nn.Parameter(torch.ones(c_out))
            block.rgb_weight = param(image_channels, c_out, 1, 1, scale=1 / math.sqrt(c_out))
            block.rgb_bias = torch.nn.Parameter(torch.zeros(image_channels))
            self.layers.append(block)

    @classmethod
    def config_f(cls, resolution: int = 1024, w_dim: int = 512, seed: int = 0, **kwargs) -> "ToyGenerator":
        """StyleGAN2 config-f channel counts: ``min(32768 // r, 512)`` (512 up to 64², 32 at 1024²)."""
        return cls(resolution, w_dim, channels=lambda r: min(32768 // r, 512), seed=seed, **kwargs)

    def stage_ws_rows(self, i: int) -> Tuple[int, int]:
        return (0, 2) if i == 0 else (2 * i - 1, 2 * i + 2)

    def run_stage(self, i: int, state, ws: torch.Tensor):
        """``ws`` ``[B, num_ws, w_dim]`` (or a tuple of rows ``[B, w_dim]``); state ``(x [B, C, r/2, r/2],
        image [B, 3, r/2, r/2])`` or None."""
        block = self.layers[i]
        if i == 0:
            x, image = self.const.expand(ws_row(ws, 0).shape[0], -1, -1, -1), None
            rows = [0]
        else:
            x, image = state
            rows = [2 * i - 1, 2 * i]
        for conv, row in zip(block.convs, rows, strict=True):
            if conv.up:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            style = ws_row(ws, row) @ conv.affine_weight.T + conv.affine_bias
            x = modulated_conv(x, conv.weight, style, demodulate=True)
            x = x + conv.noise * conv.noise_strength
            x = F.leaky_relu(x + conv.bias[None, :, None, None], 0.2) * math.sqrt(2)
        style = ws_row(ws, 2 * i + 1) @ block.rgb_affine_weight.T + block.rgb_affine_bias
        rgb = modulated_conv(x, block.rgb_weight, style, demodulate=False) + block.rgb_bias[None, :, None, None]
        image = rgb if image is None else F.interpolate(image, scale_factor=2, mode="bilinear",
                                                        align_corners=False) + rgb
        return image if i == self.num_stages - 1 else (x, image)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        """``ws`` ``[B, num_ws, w_dim]`` -> image ``[B, 3, resolution, resolution]``."""
        state = None
        for i in range(self.num_stages):
            state = self.run_stage(i, state, ws)
        return state


def modulated_conv(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """Non-fused modulated convolution: ``x`` ``[B, Cin, H, W]``, ``weight`` ``[Cout, Cin, kh, kw]``, ``style``
    ``[B, Cin]`` -> ``[B, Cout, H, W]``. Demodulation: ``d_o = (Σ_{i,k} (w_oik s_i)² + 1e-8)^-1/2``."""
    y = F.conv2d(x * style[:, :, None, None], weight, padding=weight.shape[-1] // 2)
    if demodulate:
        d = torch.rsqrt(style.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8)  # [B, Cout]
        y = y * d[:, :, None, None]
    return y
