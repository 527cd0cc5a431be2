"""StyleGAN2 discriminator (resnet architecture) in plain torch, for training the project's own generators.

The same function as stylegan2-ada-pytorch's ``training/networks.py`` ``Discriminator`` (architecture "resnet",
unconditional, float32) and the same module and parameter names: equalised learning rate (weights stored
unscaled, multiplied by ``1/sqrt(fan_in)`` at run time), FIR ``[1, 3, 3, 1]`` down-sampling, leaky ReLU with gain
√2, resnet skips with gain √0.5, and an epilogue with the minibatch standard deviation layer, a 3x3 conv and two
fully connected layers.

Layout for an image ``[B, C, R, R]``: block ``b{R}`` starts with ``fromrgb`` (1x1) and every block ``b{r}``
(r = R .. 8) maps ``[B, ch(r), r, r]`` -> ``[B, ch(r/2), r/2, r/2]``; ``b4`` is the epilogue -> logits ``[B, 1]``.
Channels ``ch(r) = min(channel_base // r, channel_max)``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import check
from . import ops
from .stylegan2 import FullyConnectedLayer

__all__ = ["Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue", "MinibatchStdLayer", "Conv2dLayer"]


def downsample_conv2d(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Convolution with ``weight`` ``[O, I, k, k]`` and down-sampling by 2 (official ``conv2d_resample(down=2)``):
    ``x`` ``[B, I, H, W]`` -> ``[B, O, H/2, W/2]``. k > 1: FIR with padding ``k//2 + 1`` then a stride-2 conv;
    k = 1: FIR, keep every second sample, then the 1x1 conv."""
    k, fw = weight.shape[-1], f.shape[-1]
    pad0, pad1 = k // 2 + (fw - 1) // 2, k // 2 + (fw - 2) // 2  # official px0 / px1 for down = 2
    if k == 1:
        x = ops.upfirdn2d(x, f, padding=(pad0, pad1, pad0, pad1))[:, :, ::2, ::2]
        return torch.nn.functional.conv2d(x, weight)
    x = ops.upfirdn2d(x, f, padding=(pad0, pad1, pad0, pad1))
    return torch.nn.functional.conv2d(x, weight, stride=2)


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution (optionally down ×2) + bias + activation (+ clamp): ``[B, I, H, W]`` ->
    ``[B, O, H/down, W/down]`` (official ``Conv2dLayer``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter), persistent=False)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = ops.LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        if self.down == 2:
            x = downsample_conv2d(x, w.to(x.dtype), self.resample_filter)
        else:
            x = torch.nn.functional.conv2d(x, w.to(x.dtype), padding=w.shape[-1] // 2)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return ops.bias_act(x, bias, self.activation, gain=self.act_gain * gain, clamp=clamp)


class DiscriminatorBlock(nn.Module):
    """One resolution r: [fromrgb], conv0 (3x3), conv1 (3x3, down ×2), resnet skip (1x1, down ×2, no bias).
    ``(x [B, tmp, r, r] or None, img [B, C, r, r])`` -> ``x [B, out, r/2, r/2]``."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels = in_channels
        layer = dict(resample_filter=resample_filter, conv_clamp=conv_clamp)
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", **layer)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", **layer)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, **layer)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: Optional[torch.Tensor], img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation over groups of ``group_size`` samples, averaged over channels (in
    ``num_channels`` slices) and pixels, as ``num_channels`` constant feature maps: ``[B, C, H, W]`` ->
    ``[B, C + num_channels, H, W]``. The group size is ``gcd(group_size, B)`` (the official code needs B to be a
    multiple of it)."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g, f = math.gcd(self.group_size, n), self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)           # [G, n/G, F, c/F, H, W]: sample i is in group i mod n/G
        y = (y - y.mean(dim=0)).square().mean(dim=0)    # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])       # [n/G, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)   # [n, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """Resolution 4: minibatch std, 3x3 conv, fc (lrelu), fc -> logits: ``[B, C, 4, 4]`` -> ``[B, 1]``."""

    def __init__(self, in_channels: int, resolution: int = 4, mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution * resolution, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


class Discriminator(nn.Module):
    """StyleGAN2 resnet discriminator: images ``[B, img_channels, R, R]`` (about [-1, 1]) -> logits ``[B, 1]``.

    Args (recorded in ``init_kwargs``): img_resolution (a power of two ≥ 8), img_channels, channel_base,
    channel_max, mbstd_group_size, mbstd_num_channels (0: no minibatch std layer), conv_clamp (stylegan2-ada
    trains with 256)."""

    def __init__(self, img_resolution: int = 64, img_channels: int = 3, channel_base: int = 4096,
                 channel_max: int = 256, mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
                 conv_clamp: Optional[float] = None, resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        check(isinstance(img_resolution, int) and img_resolution >= 8 and img_resolution & (img_resolution - 1) == 0,
              "img_resolution", "a power of two >= 8", img_resolution)
        check(channel_base // img_resolution >= 1, "channel_base", f">= img_resolution ({img_resolution})",
              channel_base)
        self.init_kwargs: Dict[str, Any] = dict(
            img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base,
            channel_max=channel_max, mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp, resample_filter=tuple(resample_filter))
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(int(np.log2(img_resolution)), 2, -1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        for r in self.block_resolutions:
            block = DiscriminatorBlock(channels[r] if r < img_resolution else 0, channels[r], channels[r // 2],
                                       img_channels, resample_filter=resample_filter, conv_clamp=conv_clamp)
            setattr(self, f"b{r}", block)
        self.b4 = DiscriminatorEpilogue(channels[4], mbstd_group_size=mbstd_group_size,
                                        mbstd_num_channels=mbstd_num_channels, conv_clamp=conv_clamp)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = None
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x, img)
        return self.b4(x)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.init_kwargs.items())
