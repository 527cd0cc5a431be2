"""Plain-torch ops of the StyleGAN2 generator (the ``impl='ref'`` semantics of stylegan2-ada-pytorch's
``torch_utils/ops``), written so that ``torch.func.vmap(jvp)`` sees only ordinary batched tensor ops.

Conventions (those of the official code):
- a FIR filter ``f`` is ``[fh, fw]``; padding is ``(px0, px1, py0, py1)`` (left, right, top, bottom);
- ``upfirdn2d`` convolves with the *flipped* filter (true convolution) and multiplies by ``gain ** (f.ndim / 2)``
  (``gain`` once per spatial axis), so an up-sampling by 2 with gain 4 keeps the mean value;
- a modulated convolution is in the *non-fused* form: scale the input channels by the styles ``s_i``, convolve with
  the shared weight ``W_oik``, scale output channel o by ``d_o = (Σ_{i,k} (W_oik s_i)² + 1e-8)^{-1/2}``. It equals
  the official fused (grouped) form ``conv(x, W_oik s_i d_o)`` in exact arithmetic; a tangent batch is then one
  batched convolution with one weight.
- ``stride`` (``upfirdn2d``, ``upsample2d``, ``conv2d_resample``, ``modulated_conv2d``): compute the output only at
  rows / columns ``0, stride, 2·stride, ...``, i.e. ``op(...)[..., ::stride, ::stride]``, as a strided final
  convolution (the same products and sums per output pixel; the Jacobian engine's sampled last stage).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["setup_filter", "upfirdn2d", "upsample2d", "conv2d_resample", "bias_act", "modulated_conv2d",
           "normalize_2nd_moment", "LRELU_GAIN", "DEMODULATION_EPS"]

#: Gain of the leaky ReLU (slope 0.2) in StyleGAN2: √2 keeps the activations' second moment.
LRELU_GAIN = math.sqrt(2.0)
#: ε inside the demodulation's rsqrt (official value).
DEMODULATION_EPS = 1e-8


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """The 2-D FIR filter ``[k, k]`` of 1-D ``taps``: outer product, normalised to sum 1 (float32)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, padding: Tuple[int, int, int, int] = (0, 0, 0, 0),
              gain: float = 1.0, stride: int = 1) -> torch.Tensor:
    """Up-sample (insert ``up - 1`` zeros after every sample), pad (negative = crop), convolve with ``f`` ``[fh, fw]``.

    ``x`` ``[B, C, H, W]`` -> ``[B, C, H·up + py0 + py1 - fh + 1, W·up + px0 + px1 - fw + 1]`` (x = columns);
    ``stride`` > 1: only every ``stride``-th row and column of that, from 0 (``[..., ::stride, ::stride]``).
    """
    batch, channels, height, width = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # true convolution = correlation with the flipped filter; one filter per channel (depthwise)
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip([0, 1])
    return F.conv2d(x, f[None, None].expand(channels, 1, *f.shape), groups=channels, stride=stride)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, stride: int = 1) -> torch.Tensor:
    """Up-sample ``x`` ``[B, C, H, W]`` by ``up`` with the FIR filter ``f`` -> ``[B, C, H·up, W·up]`` (the skip
    architecture's image path); ``stride`` > 1: ``[..., ::stride, ::stride]`` of that."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up, stride=stride)


def conv2d_resample(x: torch.Tensor, weight: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                    padding: int = 0, stride: int = 1) -> torch.Tensor:
    """Convolution ``x`` ``[B, I, H, W]`` * ``weight`` ``[O, I, k, k]`` -> ``[B, O, H·up, W·up]`` (same padding).

    ``up = 2``: a stride-2 transposed convolution (weight not flipped, the official ``flip_weight=False``) followed
    by the FIR filter ``f`` with gain ``up²`` and the official padding. ``stride`` > 1: only the output rows /
    columns ``0, stride, ...`` (``[..., ::stride, ::stride]``): the last convolution (the 3×3 one, or the FIR
    filter after the transposed convolution, which stays full) runs strided.
    """
    if up == 1:
        return F.conv2d(x, weight, padding=padding, stride=stride)
    kw, fw = weight.shape[-1], f.shape[-1]
    p0 = padding + (fw + up - 1) // 2 - (kw - 1)
    p1 = padding + (fw - up) // 2 - (kw - up)
    t = max(min(-p0, -p1), 0)  # part of the padding the transposed convolution can take (crop)
    x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=up, padding=t)
    return upfirdn2d(x, f, padding=(p0 + t, p1 + t, p0 + t, p1 + t), gain=up * up, stride=stride)


def bias_act(x: torch.Tensor, bias: Optional[torch.Tensor], activation: str = "linear", gain: float = 1.0,
             clamp: Optional[float] = None) -> torch.Tensor:
    """``clamp(act(x + bias) · gain, -clamp, clamp)``; ``bias`` ``[C]`` on dim 1; ``activation`` "linear" or
    "lrelu" (slope 0.2). The order is the official one."""
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: int = 1, f: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                     stride: int = 1) -> torch.Tensor:
    """Non-fused modulated convolution: ``x`` ``[B, I, H, W]``, ``weight`` ``[O, I, k, k]``, ``styles`` ``[B, I]``,
    ``noise`` broadcastable to the output (added after demodulation) -> ``[B, O, H·up, W·up]``.

    ``stride`` > 1: the output only at rows / columns ``0, stride, ...`` (``[B, O, H·up/stride, W·up/stride]``,
    equal to ``[..., ::stride, ::stride]`` of the full output): the modulation scales input channels and the
    demodulation output channels, so only the convolution is strided. ``noise`` must then be sampled alike
    (e.g. ``noise[..., ::stride, ::stride]``)."""
    x = conv2d_resample(x * styles[:, :, None, None], weight, f=f, up=up, padding=weight.shape[-1] // 2,
                        stride=stride)
    if demodulate:
        # d_o = (Σ_i s_i² Σ_k W_oik² + ε)^-1/2: the norm of the modulated weight without forming it per sample
        d = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).T + DEMODULATION_EPS)  # [B, O]
        x = x * d[:, :, None, None]
    if noise is not None:
        x = x + noise
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x², dim=1) + eps)`` for ``x`` ``[B, F]`` (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()
