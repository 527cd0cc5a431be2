"""StyleGAN3 (alias-free) generator, configs T and R, in plain torch, written for forward mode.

The same function as NVIDIA's stylegan3 ``training/networks_stylegan3.py`` ``Generator`` for the same weights, and
the same module, parameter and buffer names, so an official ``G_ema.state_dict()`` loads as is:

- mapping: the StyleGAN2 mapping network (``num_mapping_layers`` = 2 in the releases), ``w_avg``, truncation;
- ``synthesis.input``: Fourier features. ``affine(w_0)`` gives ``(r_c, r_s, t_x, t_y)``, normalised by
  ``|(r_c, r_s)|``; the frequencies and phases are transformed by ``m_r @ m_t @ transform`` (``transform``: the
  user's *inverse* transform of the image, see :func:`make_transform`), damped above the bandwidth, then
  ``sin(2π(grid · f + φ))`` on a ``size × size`` grid and a learned channel mixing (``weight / √C``);
- ``synthesis.L{i}_{size}_{channels}``, i = 0 .. num_layers (the last one is ToRGB): modulated convolution with
  input gain ``magnitude_ema^-1/2``, then the filtered leaky ReLU: bias, up-sampling by ``up_factor`` with
  ``up_filter``, leaky ReLU (slope 0.2, gain √2; ToRGB: linear, gain 1), clamp, low-pass ``down_filter`` (separable
  Kaiser, or radially symmetric jinc for the non-critically-sampled layers of config R) and down-sampling;
- the image is ``output_scale`` (0.25) times the ToRGB output.

Forward-mode choices (DESIGN.md §3): the modulated convolutions are in the *non-fused* form (input scaled by the
styles, one shared-weight convolution, output scaled by the demodulation coefficients); the filtered leaky ReLU is
the official reference semantics (``_filtered_lrelu_ref``) written with ``conv_transpose2d`` (polyphase
up-sampling, no zero insertion; or zeros inserted then ``conv2d``, :func:`set_upsample_impl`) and strided ``conv2d``
(down-sampling), no custom CUDA op. Inference only, in the
modules' dtype.

One deliberate difference: the official demodulated convolution pre-normalises the styles by their mean square
over the *whole batch* (``s.square().mean()``); here it is per sample. The result differs only through the ε = 1e-8
of the demodulation (relative ~1e-10 or less) and is identical for a batch of one, which is how the official
scripts (gen_images.py) and the original ReSeFa code call it; a sample's image then does not depend on its batch.

W+ layout: ``num_ws = num_layers + 2`` rows; row 0 drives the input's transform, row i + 1 layer ``L{i}``.
Layer-skip protocol: one stage per W+ row (stage 0 = input, stage i + 1 = layer i); ``state`` is the feature map;
the last stage returns the image ``[B, img_channels, R, R]``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check
from .stylegan2 import NOISE_MODES, FullyConnectedLayer, MappingNetwork, StyleGANSurface

__all__ = ["StyleGAN3Generator", "SynthesisInput", "SynthesisLayer", "SynthesisNetwork", "design_lowpass_filter",
           "filtered_lrelu", "input_grid", "layer_plans", "layer_schedule", "make_transform", "modulated_conv2d",
           "set_upsample_impl", "UPSAMPLE_IMPLS"]

#: ε inside the demodulation's rsqrt (official value).
DEMODULATION_EPS = 1e-8


def _row(ws, row: int) -> torch.Tensor:
    """Row ``row`` ``[B, w_dim]`` of W+ given as ``[B, num_ws, w_dim]`` or as a tuple of ``[B, w_dim]`` rows."""
    return ws[row] if isinstance(ws, (tuple, list)) else ws[:, row]


# ---------------------------------------------------------------------------------------------------------------
# filter design and the layer schedule (networks_stylegan3.py, without scipy)


def _kaiser_beta(attenuation: float) -> float:
    # scipy.signal.kaiser_beta
    if attenuation > 50:
        return 0.1102 * (attenuation - 8.7)
    if attenuation > 21:
        return 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    return 0.0


def _kaiser_window(numtaps: int, width: float, fs: float) -> np.ndarray:
    # scipy.signal.kaiser_atten(numtaps, width / (fs / 2)) -> kaiser_beta -> symmetric Kaiser window
    attenuation = 2.285 * (numtaps - 1) * np.pi * (width / (fs / 2)) + 7.95
    return np.kaiser(numtaps, _kaiser_beta(attenuation))


def _bessel_j1(x: np.ndarray) -> np.ndarray:
    """J1(x) = (1/π) ∫_0^π cos(τ - x sin τ) dτ; the trapezoidal rule on this periodic integrand converges
    geometrically (512 nodes: float64 accuracy for |x| < 100)."""
    tau = np.linspace(0, np.pi, 513)
    values = np.cos(tau[:, None] - np.sin(tau)[:, None] * np.asarray(x, dtype=np.float64).reshape(1, -1))
    integral = (values[1:-1].sum(0) + 0.5 * (values[0] + values[-1])) * (np.pi / 512)
    return (integral / np.pi).reshape(np.shape(x))


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> Optional[torch.Tensor]:
    """The official ``SynthesisLayer.design_lowpass_filter``: None for 1 tap; a separable Kaiser-windowed low-pass
    ``[numtaps]`` (``scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)``), or a radially symmetric
    jinc-based one ``[numtaps, numtaps]`` normalised to sum 1; float32 (as the official buffers)."""
    if numtaps == 1:
        return None
    window = _kaiser_window(numtaps, width, fs)
    if not radial:
        m = np.arange(numtaps) - (numtaps - 1) / 2
        c = cutoff / (fs / 2)
        f = c * np.sinc(c * m) * window
        f = f / f.sum()  # firwin's scaling: unit gain at frequency 0
        return torch.as_tensor(f, dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = _bessel_j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    f = f * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


def layer_schedule(img_resolution: int, img_channels: int, channel_base: int, channel_max: int, num_layers: int,
                   num_critical: int, first_cutoff: float, first_stopband: float, last_stopband_rel: float,
                   margin_size: int) -> Dict[str, np.ndarray]:
    """Per-layer cutoffs ``f_c``, stopbands ``f_t``, sampling rates ``s``, transition half-widths ``f_h``, sizes and
    channels (``[num_layers + 1]`` each; index 0 is also the input's), as in the official SynthesisNetwork."""
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return dict(cutoffs=cutoffs, stopbands=stopbands, sampling_rates=sampling_rates, half_widths=half_widths,
                sizes=sizes.astype(np.int64), channels=channels.astype(np.int64))


def make_transform(tx: float = 0.0, ty: float = 0.0, rotate: float = 0.0) -> np.ndarray:
    """The 3×3 matrix the generator's ``transform`` buffer holds to translate the image by ``(tx, ty)`` and rotate
    it by ``rotate`` degrees: ``inv(make_transform(...))`` of stylegan3's gen_images.py (the original ReSeFa's
    ``utils.custom_utils.make_transform`` is the same matrix), float64 ``[3, 3]``."""
    s, c = np.sin(rotate / 360.0 * np.pi * 2), np.cos(rotate / 360.0 * np.pi * 2)
    m = np.array([[c, s, tx], [-s, c, ty], [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)


# ---------------------------------------------------------------------------------------------------------------
# ops


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, padding: int,
                     input_gain: torch.Tensor) -> torch.Tensor:
    """Non-fused modulated convolution of networks_stylegan3.py: ``x`` ``[B, I, H, W]``, ``weight`` ``[O, I, k, k]``,
    ``styles`` ``[B, I]``, ``input_gain`` ``[]`` -> ``[B, O, H + 2p - k + 1, ...]``.

    Demodulated: ``W ← W / rms_{i,k}(W_o)``, ``s ← s / rms(s)`` (per sample), then
    ``y_o = d_o · conv(x · s · g, W)_o`` with ``d_o = (Σ_{i,k} (W_oik s_i)² + ε)^-1/2`` (the official fused weight
    ``W_oik s_i d_o g`` in exact arithmetic)."""
    if demodulate:
        weight = weight * weight.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    x = F.conv2d(x * (styles * input_gain)[:, :, None, None], weight, padding=padding)
    if demodulate:
        d = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).T + DEMODULATION_EPS)  # [B, O]
        x = x * d[:, :, None, None]
    return x


def _pad_axis(y: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """``y[..., start : start + length, ...]`` along ``dim`` (-1 or -2), zeros where out of range."""
    before, after = -start, start + length - y.shape[dim]
    pads = [before, after, 0, 0] if dim == -1 else [0, 0, before, after]
    return F.pad(y, pads)


#: How :func:`filtered_lrelu` up-samples: "transpose" (polyphase ``conv_transpose2d``, no zero is multiplied) or
#: "zeros" (zeros inserted, then a depthwise ``conv2d`` per axis, as the official reference). Same function; which
#: is faster depends on the device's convolution kernels (``benchmarks/bench_stylegan3.py --upsample`` times both).
UPSAMPLE_IMPLS = ("transpose", "zeros")
upsample_impl = "transpose"


def set_upsample_impl(impl: str) -> None:
    """Choose the up-sampling implementation of every StyleGAN3 layer (see :data:`UPSAMPLE_IMPLS`)."""
    global upsample_impl
    check(impl in UPSAMPLE_IMPLS, "impl", f"one of {UPSAMPLE_IMPLS}", repr(impl))
    upsample_impl = impl


def _upfirdn_up(x: torch.Tensor, f: Optional[torch.Tensor], up: int, padding: Sequence[int]) -> torch.Tensor:
    """upfirdn2d(x, f, up=up, padding=padding, gain=up²) (official semantics: zero insertion, pad / crop, true
    convolution). "transpose": a polyphase transposed convolution per axis; with ``y = conv_transpose(x, f,
    stride=up)``, output sample m is ``y[m + n - 1 - p0]`` (``n`` taps, ``p0`` the leading pad)."""
    px0, px1, py0, py1 = padding
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = height * up + py0 + py1, width * up + px0 + px1
    if f is None:  # 1×1 identity filter: padding only (up = 1 here)
        return F.pad(x, [px0, px1, py0, py1])
    f = f.to(x.dtype)
    n = f.shape[-1]
    if upsample_impl == "zeros":
        if up > 1:  # zeros after every sample, by reshape and pad (no scatter, so vmap sees plain ops)
            x = F.pad(x.reshape(-1, channels, height, 1, width, 1), [0, up - 1, 0, 0, 0, up - 1])
            x = x.reshape(-1, channels, height * up, width * up)
        x = F.pad(x, [px0, px1, py0, py1])  # negative = crop
        return _depthwise(x, f * (up if f.ndim == 1 else up * up), 1)
    if f.ndim == 1:
        g = f * up  # gain up² split over the two axes
        x = F.conv_transpose2d(x, g.reshape(1, 1, 1, n).expand(channels, 1, 1, n), stride=(1, up), groups=channels)
        x = _pad_axis(x, -1, n - 1 - px0, out_w - n + 1)
        x = F.conv_transpose2d(x, g.reshape(1, 1, n, 1).expand(channels, 1, n, 1), stride=(up, 1), groups=channels)
        return _pad_axis(x, -2, n - 1 - py0, out_h - n + 1)
    x = F.conv_transpose2d(x, (f * up * up)[None, None].expand(channels, 1, n, n), stride=up, groups=channels)
    x = _pad_axis(x, -1, n - 1 - px0, out_w - n + 1)
    return _pad_axis(x, -2, n - 1 - py0, out_h - n + 1)


def _depthwise(x: torch.Tensor, f: torch.Tensor, stride: int) -> torch.Tensor:
    """True convolution (valid part) of every channel with ``f`` (``[n]``: one pass per axis, or ``[n, n]``),
    keeping every ``stride``-th sample."""
    channels, n = x.shape[1], f.shape[-1]
    f = f.flip(list(range(f.ndim)))
    if f.ndim == 1:
        x = F.conv2d(x, f.reshape(1, 1, 1, n).expand(channels, 1, 1, n), stride=(1, stride), groups=channels)
        return F.conv2d(x, f.reshape(1, 1, n, 1).expand(channels, 1, n, 1), stride=(stride, 1), groups=channels)
    return F.conv2d(x, f[None, None].expand(channels, 1, n, n), stride=stride, groups=channels)


def _firdn(x: torch.Tensor, f: Optional[torch.Tensor], down: int) -> torch.Tensor:
    """upfirdn2d(x, f, down=down): true convolution with ``f`` (valid part), keep every ``down``-th sample."""
    if f is None:
        return x[:, :, ::down, ::down] if down > 1 else x
    return _depthwise(x, f.to(x.dtype), down)


def filtered_lrelu(x: torch.Tensor, fu: Optional[torch.Tensor], fd: Optional[torch.Tensor], b: torch.Tensor,
                   up: int, down: int, padding: Sequence[int], gain: float, slope: float,
                   clamp: Optional[float]) -> torch.Tensor:
    """The official filtered leaky ReLU (``_filtered_lrelu_ref``): add bias ``b`` ``[C]``, up-sample by ``up`` with
    ``fu`` (gain up²) and ``padding`` ``(px0, px1, py0, py1)``, ``leaky_relu(·, slope) · gain``, clamp to
    ``±clamp``, low-pass with ``fd`` and keep every ``down``-th sample. ``x`` ``[B, C, H, W]``."""
    x = x + b.reshape(1, -1, 1, 1)
    x = _upfirdn_up(x, fu, up, padding)
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return _firdn(x, fd, down)


# ---------------------------------------------------------------------------------------------------------------
# layers


def input_grid(size: int, sampling_rate: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The input's sample positions ``[size, size, 2]`` (x, y): ``affine_grid`` of ``diag(size / (2 s))`` with
    ``align_corners=False`` (pixel centres), as the official SynthesisInput."""
    theta = torch.zeros(1, 2, 3, dtype=dtype, device=device)
    theta[0, 0, 0] = theta[0, 1, 1] = 0.5 * size / sampling_rate
    return F.affine_grid(theta, [1, 1, size, size], align_corners=False)[0]


class SynthesisInput(nn.Module):
    """Fourier features: ``w`` ``[B, w_dim]`` -> ``[B, channels, size, size]``. Buffers ``transform`` ``[3, 3]``
    (the user's inverse transform), ``freqs`` ``[C, 2]``, ``phases`` ``[C]``; parameters ``weight`` ``[C, C]`` and
    ``affine`` (w -> ``(r_c, r_s, t_x, t_y)``)."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, int(size)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn([channels, 2])  # random frequencies in a disc of radius `bandwidth` (official init)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = torch.rand([channels]) - 0.5
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4)
        with torch.no_grad():  # official init: weight 0, bias (1, 0, 0, 0) = identity transform
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def grid(self, dtype: torch.dtype, device) -> torch.Tensor:
        """Sample positions ``[size, size, 2]`` (see :func:`input_grid`)."""
        return input_grid(self.size, self.sampling_rate, dtype, device)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t = self.affine(w)  # [B, 4] = (r_c, r_s, t_x, t_y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        c, s, tx, ty = t.unbind(1)
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        # m_r @ m_t: inverse rotation, then inverse translation (built without in-place writes, for vmap)
        m = torch.stack([torch.stack([c, -s, -c * tx + s * ty], dim=1),
                         torch.stack([s, c, -s * tx - c * ty], dim=1),
                         torch.stack([zero, zero, one], dim=1)], dim=1)  # [B, 3, 3]
        transforms = m @ self.transform.to(m.dtype)  # then the user's transform
        freqs = self.freqs.to(m.dtype)
        phases = self.phases.to(m.dtype) + (freqs @ transforms[:, :2, 2:]).squeeze(2)  # [B, C]
        freqs = freqs @ transforms[:, :2, :2]  # [B, C, 2]
        # damp frequencies the user's transform pushed above the bandwidth
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)  # [B, C]
        grid = self.grid(m.dtype, m.device)  # [H, W, 2]
        x = torch.einsum("hwk,bck->bhwc", grid, freqs) + phases[:, None, None, :]
        x = torch.sin(x * (2 * np.pi)) * amplitudes[:, None, None, :]  # [B, H, W, C]
        x = x @ (self.weight / math.sqrt(self.channels)).T
        return x.permute(0, 3, 1, 2)  # [B, C, H, W]


def layer_plans(img_resolution: int, img_channels: int = 3, channel_base: int = 32768, channel_max: int = 512,
                num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2, first_stopband: float = 2 ** 2.1,
                last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10, conv_kernel: int = 3,
                filter_size: int = 6, lrelu_upsampling: int = 2, use_radial_filters: bool = False,
                **ignored) -> List[Dict[str, Any]]:
    """Everything that fixes layers ``L0 .. L{num_layers}`` (the last is ToRGB) but their weights, as the official
    SynthesisNetwork / SynthesisLayer compute it: ``name``, channels, sizes, sampling rates, up / down factors and
    taps, whether the down filter is radial, the padding of the up-sampled map, and the filter design arguments
    (``up_design`` / ``down_design`` for :func:`design_lowpass_filter`). Unknown keyword arguments are ignored."""
    sch = layer_schedule(img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
                         first_cutoff, first_stopband, last_stopband_rel, margin_size)
    rates, sizes, channels = sch["sampling_rates"], sch["sizes"], sch["channels"]
    plans = []
    for idx in range(num_layers + 1):
        prev = max(idx - 1, 0)
        is_torgb, critical = idx == num_layers, idx >= num_layers - num_critical
        in_rate, out_rate = int(rates[prev]), int(rates[idx])
        tmp_rate = max(in_rate, out_rate) * (1 if is_torgb else lrelu_upsampling)
        kernel = 1 if is_torgb else conv_kernel
        up, down = int(np.rint(tmp_rate / in_rate)), int(np.rint(tmp_rate / out_rate))
        up_taps = filter_size * up if up > 1 and not is_torgb else 1
        down_taps = filter_size * down if down > 1 and not is_torgb else 1
        radial = use_radial_filters and not critical
        in_size, out_size = int(sizes[prev]), int(sizes[idx])
        # padding of the up-sampled map so that the output has out_size samples, centred (official, Appendix C.3)
        pad_total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2
        plans.append(dict(
            name=f"L{idx}_{out_size}_{int(channels[idx])}", is_torgb=is_torgb, is_critically_sampled=critical,
            in_channels=int(channels[prev]), out_channels=int(channels[idx]), in_size=in_size, out_size=out_size,
            conv_kernel=kernel, up_factor=up, down_factor=down, down_radial=radial,
            padding=[pad_lo, pad_total - pad_lo, pad_lo, pad_total - pad_lo],
            up_design=(up_taps, float(sch["cutoffs"][prev]), float(sch["half_widths"][prev]) * 2, tmp_rate, False),
            down_design=(down_taps, float(sch["cutoffs"][idx]), float(sch["half_widths"][idx]) * 2, tmp_rate,
                         radial)))
    return plans


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU (or ToRGB): ``[B, I, in_size, in_size]``, ``w`` ``[B, w_dim]`` ->
    ``[B, O, out_size, out_size]``. Parameters ``affine``, ``weight`` ``[O, I, k, k]``, ``bias``; buffers
    ``magnitude_ema`` ``[]``, ``up_filter`` ``[taps]`` and ``down_filter`` ``[taps]`` / ``[taps, taps]`` (None for
    one tap). ``plan``: one entry of :func:`layer_plans`."""

    def __init__(self, w_dim: int, plan: Dict[str, Any], conv_clamp: Optional[float] = 256):
        super().__init__()
        self.plan = plan
        self.is_torgb, self.in_channels, self.out_channels = plan["is_torgb"], plan["in_channels"], plan["out_channels"]
        self.in_size, self.out_size, self.conv_kernel = plan["in_size"], plan["out_size"], plan["conv_kernel"]
        self.up_factor, self.down_factor, self.down_radial = plan["up_factor"], plan["down_factor"], plan["down_radial"]
        self.padding, self.conv_clamp = list(plan["padding"]), conv_clamp
        self.affine = FullyConnectedLayer(w_dim, self.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([self.out_channels, self.in_channels, self.conv_kernel,
                                                self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([self.out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer("up_filter", design_lowpass_filter(*plan["up_design"]))
        self.register_buffer("down_filter", design_lowpass_filter(*plan["down_design"]))
        self.gain = 1.0 if self.is_torgb else math.sqrt(2)
        self.slope = 1.0 if self.is_torgb else 0.2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # [B, I]
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb, padding=self.conv_kernel - 1,
                             input_gain=self.magnitude_ema.rsqrt())
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, self.up_factor, self.down_factor,
                              self.padding, self.gain, self.slope, self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}x{self.in_size}, out={self.out_channels}x{self.out_size}, "
                f"up={self.up_factor}, down={self.down_factor}, radial={self.down_radial}, padding={self.padding}")


class SynthesisNetwork(nn.Module):
    """W+ ``[B, num_layers + 2, w_dim]`` -> image ``[B, img_channels, R, R]``: ``input`` then layers
    ``L{i}_{size}_{channels}`` (names in ``layer_names``), times ``output_scale``."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                 first_stopband: float = 2 ** 2.1, last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10,
                 output_scale: float = 0.25, **layer_kwargs):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_layers, self.num_ws, self.output_scale = num_layers, num_layers + 2, output_scale
        sch = layer_schedule(img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
                             first_cutoff, first_stopband, last_stopband_rel, margin_size)
        self.input = SynthesisInput(w_dim, int(sch["channels"][0]), int(sch["sizes"][0]), sch["sampling_rates"][0],
                                    sch["cutoffs"][0])
        plans = layer_plans(img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
                            first_cutoff, first_stopband, last_stopband_rel, margin_size, **layer_kwargs)
        conv_clamp = layer_kwargs.get("conv_clamp", 256)
        self.layer_names: List[str] = [plan["name"] for plan in plans]
        for plan in plans:
            setattr(self, plan["name"], SynthesisLayer(w_dim, plan, conv_clamp))

    @property
    def layers(self) -> List[SynthesisLayer]:
        return [getattr(self, name) for name in self.layer_names]

    @property
    def num_stages(self) -> int:
        return self.num_ws

    def stage_ws_rows(self, i: int) -> Tuple[int, int]:
        """Stage i reads W+ row i only."""
        return i, i + 1

    def run_stage(self, i: int, state: Any, ws) -> torch.Tensor:
        """Stage 0: the input (``state`` None); stage i ≥ 1: layer ``L{i-1}`` on ``state`` ``[B, C, H, W]``. The last
        stage returns the image (times ``output_scale``)."""
        if i == 0:
            return self.input(_row(ws, 0))
        x = getattr(self, self.layer_names[i - 1])(state, _row(ws, i))
        if i == self.num_stages - 1 and self.output_scale != 1:
            x = x * self.output_scale
        return x

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        state = None
        for i in range(self.num_stages):
            state = self.run_stage(i, state, ws)
        return state


class StyleGAN3Generator(StyleGANSurface, nn.Module):
    """StyleGAN3 generator (configs T and R): ``mapping`` (z, c -> W+) and ``synthesis`` (W+ -> image), official
    parameter and buffer names.

    Args (recorded in ``init_kwargs``; ``StyleGAN3Generator(**init_kwargs)`` rebuilds the network):
        z_dim, w_dim, c_dim, img_resolution, img_channels: as in StyleGAN2 (R a power of two ≥ 8 here).
        channel_base, channel_max: channels ``rint(min(channel_base / 2 / f_c, channel_max))`` per layer
            (T: 32768, 512; R: 65536, 1024; the 256² releases halve channel_base).
        num_mapping_layers: 2 in the releases.
        num_layers, num_critical, first_cutoff, first_stopband, last_stopband_rel, margin_size, output_scale: the
            synthesis schedule (official defaults 14, 2, 2, 2^2.1, 2^0.3, 10, 0.25).
        conv_kernel: 3 (T) or 1 (R); use_radial_filters: False (T) or True (R); filter_size (6) and
            lrelu_upsampling (2): the filtered leaky ReLU's; conv_clamp: 256 (official default; None for --fp32 runs).
        mapping_lr_multiplier: 0.01.

    Shapes: ``mapping(z [B, z_dim], c [B, c_dim]) -> ws [B, num_layers + 2, w_dim]``; ``synthesis(ws) ->
    [B, C, R, R]``. :meth:`set_transform` translates / rotates the output (the input's ``transform`` buffer).
    """

    accepts_ws_rows = True  # run_stage also takes W+ as a tuple of num_ws rows [B, w_dim] (StagedGenerator)

    def __init__(self, z_dim: int = 512, w_dim: int = 512, c_dim: int = 0, img_resolution: int = 1024,
                 img_channels: int = 3, channel_base: int = 32768, channel_max: int = 512,
                 num_mapping_layers: int = 2, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                 first_stopband: float = 2 ** 2.1, last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10,
                 output_scale: float = 0.25, conv_kernel: int = 3, filter_size: int = 6, lrelu_upsampling: int = 2,
                 use_radial_filters: bool = False, conv_clamp: Optional[float] = 256,
                 mapping_lr_multiplier: float = 0.01):
        super().__init__()
        for name, value in (("z_dim", z_dim), ("w_dim", w_dim), ("img_channels", img_channels),
                            ("channel_base", channel_base), ("channel_max", channel_max),
                            ("num_mapping_layers", num_mapping_layers), ("conv_kernel", conv_kernel),
                            ("filter_size", filter_size), ("lrelu_upsampling", lrelu_upsampling)):
            check(isinstance(value, (int, np.integer)) and value >= 1, name, "an int >= 1", value)
        check(isinstance(c_dim, (int, np.integer)) and c_dim >= 0, "c_dim", "an int >= 0", c_dim)
        check(isinstance(img_resolution, (int, np.integer)) and img_resolution >= 8
              and img_resolution & (img_resolution - 1) == 0, "img_resolution", "a power of two >= 8", img_resolution)
        check(isinstance(num_layers, (int, np.integer)) and isinstance(num_critical, (int, np.integer))
              and 0 <= num_critical < num_layers, "num_layers, num_critical", "ints with 0 <= num_critical < "
              "num_layers", (num_layers, num_critical))
        check(isinstance(margin_size, (int, np.integer)) and margin_size >= 0, "margin_size", "an int >= 0",
              margin_size)
        sch = layer_schedule(int(img_resolution), int(img_channels), channel_base, channel_max, int(num_layers),
                             int(num_critical), first_cutoff, first_stopband, last_stopband_rel, int(margin_size))
        check(int(sch["channels"].min()) >= 1, "channel_base",
              f"large enough for at least one channel per layer at img_resolution {img_resolution} (layer channels "
              f"{sch['channels'].tolist()})", channel_base)
        self.init_kwargs: Dict[str, Any] = dict(
            z_dim=int(z_dim), w_dim=int(w_dim), c_dim=int(c_dim), img_resolution=int(img_resolution),
            img_channels=int(img_channels), channel_base=int(channel_base), channel_max=int(channel_max),
            num_mapping_layers=int(num_mapping_layers), num_layers=int(num_layers), num_critical=int(num_critical),
            first_cutoff=float(first_cutoff), first_stopband=float(first_stopband),
            last_stopband_rel=float(last_stopband_rel), margin_size=int(margin_size),
            output_scale=float(output_scale), conv_kernel=int(conv_kernel), filter_size=int(filter_size),
            lrelu_upsampling=int(lrelu_upsampling), use_radial_filters=bool(use_radial_filters),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            mapping_lr_multiplier=float(mapping_lr_multiplier))
        kw = self.init_kwargs
        self.z_dim, self.w_dim, self.c_dim = kw["z_dim"], kw["w_dim"], kw["c_dim"]
        self.img_resolution, self.img_channels = kw["img_resolution"], kw["img_channels"]
        self.synthesis = SynthesisNetwork(
            self.w_dim, self.img_resolution, self.img_channels, channel_base=kw["channel_base"],
            channel_max=kw["channel_max"], num_layers=kw["num_layers"], num_critical=kw["num_critical"],
            first_cutoff=kw["first_cutoff"], first_stopband=kw["first_stopband"],
            last_stopband_rel=kw["last_stopband_rel"], margin_size=kw["margin_size"],
            output_scale=kw["output_scale"], conv_kernel=kw["conv_kernel"], filter_size=kw["filter_size"],
            lrelu_upsampling=kw["lrelu_upsampling"], use_radial_filters=kw["use_radial_filters"],
            conv_clamp=kw["conv_clamp"])
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(self.z_dim, self.c_dim, self.w_dim, self.num_ws,
                                      num_layers=kw["num_mapping_layers"], lr_multiplier=kw["mapping_lr_multiplier"])

    # ---- convenience -------------------------------------------------------------------------------------------
    @property
    def transform(self) -> torch.Tensor:
        """The input's ``transform`` buffer ``[3, 3]`` (inverse of the image transform; identity by default)."""
        return self.synthesis.input.transform

    def set_transform(self, tx: float = 0.0, ty: float = 0.0, rotate: float = 0.0) -> "StyleGAN3Generator":
        """Translate the output by ``(tx, ty)`` and rotate it by ``rotate`` degrees, as gen_images.py
        ``--translate tx,ty --rotate`` and the original ReSeFa ``--tx --ty --rotate`` do (see
        :func:`make_transform`). ``set_transform()`` restores the identity. Returns ``self``."""
        for name, value in (("tx", tx), ("ty", ty), ("rotate", rotate)):
            check(isinstance(value, (int, float)) and math.isfinite(value), name, "a finite number", value)
        m = torch.from_numpy(make_transform(float(tx), float(ty), float(rotate)))
        with torch.no_grad():
            self.synthesis.input.transform.copy_(m.to(self.transform.dtype))
        return self

    # ---- public calls ------------------------------------------------------------------------------------------
    def synthesize(self, ws: torch.Tensor, noise_mode: Optional[str] = None) -> torch.Tensor:
        """Checked ``synthesis``: W+ ``[B, num_ws, w_dim]`` -> image ``[B, img_channels, R, R]`` (about [-1, 1]).
        ``noise_mode`` is accepted for the StyleGAN2 call signature and ignored (StyleGAN3 has no noise inputs,
        as in the official code)."""
        self._check_ws(ws)
        if noise_mode is not None:
            check(noise_mode in NOISE_MODES, "noise_mode", f"one of {NOISE_MODES}", repr(noise_mode))
        return self.synthesis(ws)
