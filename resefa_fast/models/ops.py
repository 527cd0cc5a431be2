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

import functools
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .. import cuda_ops
from .._ext import load_extension
from ..errors import check

__all__ = ["setup_filter", "upfirdn2d", "upsample2d", "conv2d_resample", "bias_act", "bias_act_jvp",
           "modulated_conv2d", "modulated_conv2d_jvp", "normalize_2nd_moment", "LRELU_GAIN", "DEMODULATION_EPS",
           "PendingTangent", "affine_tangents", "resolve", "FUSED_TANGENTS"]

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
    # true convolution = correlation with the flipped filter; one filter per channel (depthwise)
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip([0, 1])
    f = f[None, None].expand(channels, 1, *f.shape)
    if min(padding) >= 0 and px0 == px1 and py0 == py1:  # the convolution pads: no padded copy of x
        return F.conv2d(x, f, groups=channels, stride=stride, padding=(py0, px0))
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    return F.conv2d(x, f, groups=channels, stride=stride)


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


#: Run :func:`affine_tangents` as one CUDA kernel (``resefa_fast._C.tangent_affine``) where it applies (CUDA
#: tangents, a float32 primal, the extension loaded); False: always torch's passes (the same values to rounding).
FUSED_TANGENTS = True


class PendingTangent(NamedTuple):
    """Tangents ``base · scale + primal ⊗ coeff`` ``[k, C, H, W]`` not yet formed: a modulated layer's output
    (``du + u · δd``) and its activation mask wait for the next layer's modulation, so that the three run as one
    pass over the tangents (:func:`affine_tangents`) instead of four. ``scale`` and ``primal`` are primal-sized
    (broadcastable to ``[1, C, H, W]``, the primal's dtype; None: 1 and no term), ``coeff`` ``[k, C]``."""
    base: torch.Tensor
    scale: Optional[torch.Tensor] = None
    primal: Optional[torch.Tensor] = None
    coeff: Optional[torch.Tensor] = None


Tangent = Union[torch.Tensor, PendingTangent]


def affine_tangents(base: torch.Tensor, scale: Optional[torch.Tensor] = None, primal: Optional[torch.Tensor] = None,
                    coeff: Optional[torch.Tensor] = None, x: Optional[torch.Tensor] = None,
                    dstyles: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``base · scale + primal ⊗ coeff + x ⊗ dstyles`` for tangents ``base`` ``[k, C, H, W]`` (their dtype kept):
    ``scale``, ``primal``, ``x`` broadcastable to ``[1, C, H, W]`` (None: 1, no term, no term), ``coeff`` and
    ``dstyles`` ``[k, C]``. Computed in the primal's precision and rounded once to the tangents' dtype; on CUDA one
    kernel reads ``base`` once and writes the result once (``FUSED_TANGENTS``)."""
    terms = [(p, c) for p, c in ((primal, coeff), (x, dstyles)) if p is not None]
    primal_dtype = next((t.dtype for t in (scale, primal, x) if t is not None), base.dtype)
    if (FUSED_TANGENTS and base.is_cuda and primal_dtype == torch.float32 and base.dtype in cuda_ops.TANGENT_DTYPES
            and load_extension() is not None):
        shape = (1,) + tuple(base.shape[1:])
        grid = [None if t is None else t.expand(shape).float() for t in (scale, primal, x)]
        return cuda_ops.tangent_affine(base, grid[0], grid[1], None if coeff is None else coeff.float(), grid[2],
                                       None if dstyles is None else dstyles.float())
    out = base if scale is None else base * scale
    for p, c in terms:
        c = c.to(primal_dtype)[:, :, None, None]
        out = torch.addcmul(out, p, c) if out is base else out.addcmul_(p, c)
    return out.to(base.dtype)


def resolve(tangent: Optional[Tangent]) -> Optional[torch.Tensor]:
    """The tangents a :class:`PendingTangent` stands for, formed (one pass); a tensor or None as it is."""
    if isinstance(tangent, PendingTangent):
        if tangent.scale is None and tangent.primal is None:
            return tangent.base
        return affine_tangents(*tangent)
    return tangent


def bias_act(x: torch.Tensor, bias: Optional[torch.Tensor], activation: str = "linear", gain: float = 1.0,
             clamp: Optional[float] = None) -> torch.Tensor:
    """``clamp(act(x + bias) · gain, -clamp, clamp)``; ``bias`` ``[C]`` on dim 1; ``activation`` "linear" or
    "lrelu" (slope 0.2). The order is the official one."""
    return bias_act_jvp(x, None, bias, activation, gain, clamp)[0]


@functools.lru_cache(maxsize=None)
def _clamp_passes_bounds() -> bool:
    """Whether torch's derivative of ``clamp`` is 1 at the bounds themselves (torch 2.14: 0); asked once, so that
    :func:`bias_act_jvp` agrees with ``torch.func.jvp`` everywhere, not only almost everywhere."""
    at_bounds = torch.tensor([-1.0, 1.0])
    return bool(torch.func.jvp(lambda v: v.clamp(-1.0, 1.0), (at_bounds,), (torch.ones(2),))[1].all())


def bias_act_jvp(x: torch.Tensor, dx: Optional[Tangent], bias: Optional[torch.Tensor],
                 activation: str = "linear", gain: float = 1.0, clamp: Optional[float] = None):
    """:func:`bias_act` of a primal ``x`` ``[1, C, H, W]`` and its forward-mode tangents ``dx`` ``[k, C, H, W]``
    (None: no tangent): ``(y, dy)``. ``dy = dx · M`` with one mask ``M`` from the primal (leaky ReLU slope, gain,
    clamp), the derivatives torch's own forward-mode rules use (slope 0.2 at 0; at the clamp's bounds
    whatever torch's version does). A :class:`PendingTangent` ``dx`` gives a pending ``dy``: the mask joins its
    scale, no pass over the tangents."""
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    slope = None
    if activation == "lrelu":
        if dx is not None:
            slope = torch.full_like(x, 0.2).masked_fill_(x > 0, 1.0)  # in x's dtype (0.2 in float32 is not 0.2)
        x = F.leaky_relu(x, 0.2)
    if gain != 1:
        x = x * gain
    inside = None
    if clamp is not None:
        if dx is not None:
            inside = (x >= -clamp) & (x <= clamp) if _clamp_passes_bounds() else (x > -clamp) & (x < clamp)
        x = x.clamp(-clamp, clamp)
    if dx is None:
        return x, None
    mask = slope  # built at the primal's size, then one pass over the tangents
    if gain != 1:
        mask = gain if mask is None else mask * gain
    if inside is not None:
        window = inside.to(x.dtype)
        mask = window if mask is None else window * mask
    if isinstance(dx, PendingTangent):
        if mask is None:
            return x, dx
        mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
        return x, PendingTangent(dx.base, mask if dx.scale is None else dx.scale * mask,
                                 None if dx.primal is None else dx.primal * mask, dx.coeff)
    if isinstance(mask, torch.Tensor):
        mask = mask.to(dx.dtype)  # tangents keep their own dtype (half ones: reduced precision)
    return x, dx if mask is None else dx * mask


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: int = 1, f: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                     stride: int = 1) -> torch.Tensor:
    """Non-fused modulated convolution: ``x`` ``[B, I, H, W]``, ``weight`` ``[O, I, k, k]``, ``styles`` ``[B, I]``,
    ``noise`` broadcastable to the output (added after demodulation) -> ``[B, O, H·up, W·up]``.

    ``stride`` > 1: the output only at rows / columns ``0, stride, ...`` (``[B, O, H·up/stride, W·up/stride]``,
    equal to ``[..., ::stride, ::stride]`` of the full output): the modulation scales input channels and the
    demodulation output channels, so only the convolution is strided. ``noise`` must then be sampled alike
    (e.g. ``noise[..., ::stride, ::stride]``)."""
    return modulated_conv2d_jvp(x, None, weight, styles, None, demodulate, up, f, noise, stride)[0]


#: cuDNN indexes tensors with 32 bits below this many elements. Above it, a batch can be split by torch, but the
#: channels of a batch of one cannot: cuDNN then runs a 64-bit direct kernel, measured at 3.05 s for the stacked
#: tangent convolution of the 1024² block's up-sampling conv (64 tangents: [1, 2048, 1025, 1025]), where the whole
#: tangent pass of the W+ row before it, the same convolution as a batch of 64 included, takes 0.10 s (H100).
_INT32_ELEMENTS = 2 ** 31


def _spatial_bound(x: torch.Tensor, weight: torch.Tensor, up: int, stride: int) -> int:
    """An upper bound on the pixels per channel of any tensor :func:`conv2d_resample` makes from ``x`` (up-sampling:
    the transposed convolution's full output before the FIR filter; otherwise the strided output)."""
    if up == 1:
        return -(-x.shape[2] // stride) * -(-x.shape[3] // stride)
    return (x.shape[2] * up + weight.shape[2]) * (x.shape[3] * up + weight.shape[3])


def modulated_conv2d_jvp(x: torch.Tensor, dx: Optional[Tangent], weight: torch.Tensor, styles: torch.Tensor,
                         dstyles: Optional[torch.Tensor], demodulate: bool = True, up: int = 1,
                         f: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None, stride: int = 1,
                         pending: bool = False):
    """:func:`modulated_conv2d` of one primal (``x`` ``[1, I, H, W]``, ``styles`` ``[1, I]``) and its forward-mode
    tangents ``dx`` ``[k, I, H, W]`` and ``dstyles`` ``[k, I]`` (either None: zero): ``(y, dy)``.

    Written for many tangents at one primal: the primal styles and demodulation are folded into the weight, so the
    tangent of the input alone costs one convolution of ``dx`` (no per-tangent scaling passes); the tangent of the
    styles alone is ``conv(x · ds)`` -- one convolution of the primal with k stacked weights ``W · ds`` where those
    take less memory than k scaled copies of x (high resolutions, few channels) and the stacked output stays within
    cuDNN's 32-bit indexing, else the copies (a batch torch can split) -- plus the
    demodulation's derivative ``δd = −d³ ((s · ds) Σ_k W²ᵀ)``; both (w space) are summed before one convolution.
    The primal demodulation d is folded into every tangent convolution's weight, so ``dy = du + u · δd``.
    ``dx`` may be a :class:`PendingTangent` (the previous layer's output with its mask); with ``pending=True`` the
    result is one too (``du`` and ``u · δd`` not yet summed): a layer's epilogue, its activation and the next
    layer's modulation ``dx · s + x · ds`` then take one pass over the tangents between two convolutions
    (:func:`affine_tangents`), where torch's passes took four.
    Tangents may be of a dtype of their own (float16 / bfloat16: the engine's reduced-precision modes); the primal
    quantities are cast to it where they meet them, and ``dy`` has it."""
    conv = lambda inputs, w: conv2d_resample(inputs, w, f=f, up=up, padding=w.shape[-1] // 2,  # noqa: E731
                                             stride=stride)
    u = conv(x * styles[:, :, None, None], weight)
    d = None
    if demodulate:
        # d_o = (Σ_i s_i² Σ_k W_oik² + ε)^-1/2: the norm of the modulated weight without forming it per sample
        energy = weight.square().sum(dim=(2, 3))  # [O, I]
        d = torch.rsqrt(styles.square() @ energy.T + DEMODULATION_EPS)  # [B, O]
    y = u if d is None else u * d[:, :, None, None]
    if noise is not None:
        y = y + noise
    if dx is None and dstyles is None:
        return y, None
    check(x.shape[0] == 1, "x", "one primal [1, I, H, W] when tangents are given", tuple(x.shape))
    # the tangents' own dtype (a half one: reduced precision)
    tangent = (dx.base if isinstance(dx, PendingTangent) else dx if dx is not None else dstyles).dtype
    if dstyles is None:  # conv(dx · s) · d = conv(dx, W · s · d): one convolution, no pass over the tangents
        scaled = weight * styles[0][None, :, None, None] * (1.0 if d is None else d[0][:, None, None, None])
        return y, conv(resolve(dx), scaled.to(tangent))
    k, (channels_out, channels_in) = dstyles.shape[0], weight.shape[:2]
    # the demodulation folded into the weight: the convolution returns du · d, no pass over the tangents for it
    demodulated = (weight if d is None else weight * d[0][:, None, None, None]).to(tangent)
    x_t = x.to(tangent)  # the primal where a convolution meets the tangents (one image: no cost)
    if dx is not None:  # both move (w space): one convolution of dx · s + x · ds, built in one pass
        dx = dx if isinstance(dx, PendingTangent) else PendingTangent(dx)
        s_ = styles[:, :, None, None]
        du = conv(affine_tangents(dx.base, s_ if dx.scale is None else dx.scale * s_,
                                  None if dx.primal is None else dx.primal * s_, dx.coeff, x, dstyles), demodulated)
    elif (channels_out * weight[0, 0].numel() <= x[0, 0].numel()  # per tangent, W · ds is no larger than x · ds
          and k * channels_out * _spatial_bound(x, weight, up, stride) < _INT32_ELEMENTS):
        stacked = (demodulated[None] * dstyles[:, None, :, None, None]).reshape(k * channels_out, channels_in,
                                                                               *weight.shape[2:])
        du = conv(x_t, stacked).reshape(k, channels_out, *u.shape[2:])
    else:  # small images and large weights (the low-resolution blocks), or a stacked output too large
        du = conv(x_t * dstyles[:, :, None, None], demodulated)
    if d is None:
        return y, du
    dd = -d.pow(3) * ((styles * dstyles.to(styles.dtype)) @ energy.T)  # [k, O]
    dy = PendingTangent(du, None, u, dd)  # d(u · d) = du · d + u · δd
    return y, dy if pending else resolve(dy)  # pending: summed by the consumer's pass


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x², dim=1) + eps)`` for ``x`` ``[B, F]`` (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()
