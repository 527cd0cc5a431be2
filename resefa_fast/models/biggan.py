"""BigGAN generators in plain torch, written for forward mode (the paper's second generator family).

Two architectures, each the same function as its public PyTorch implementation for the same weights (in eval mode):

- :class:`BigGANGenerator`: BigGAN (ajbrock BigGAN-PyTorch ``BigGAN.py`` / ``layers.py``; the TF-Hub biggan-128/256/512
  models converted by its ``TFHub/converter.py``): shared class embedding, hierarchical z (one chunk for the first
  linear layer, one per residual block, each concatenated to the class embedding), class-conditional batch norm
  with the stored statistics, one self-attention block, nearest up-sampling, a final batch norm, ReLU, 3×3 conv and
  tanh.
- :class:`BigGANDeepGenerator`: BigGAN-deep as in huggingface ``pytorch-pretrained-biggan`` (the only architecture
  that package has): the whole ``[z, class embedding]`` conditions every batch norm, bottleneck blocks, channel
  drop on the skip path, batch-norm statistics chosen by the truncation value (51 precomputed sets, interpolated
  the way that package does).

Spectral normalisation is folded into the weights when a checkpoint is loaded (``biggan_loaders``): the modules
hold plain weights ``W / σ``, so no power iteration and no buffer update ever runs, and batch norm only reads its
stored statistics. Every op is a plain out-of-place torch op, so ``torch.func.vmap(jvp)`` tangents are ordinary
batches.

Latent spaces (``jacobian_inputs``): ``"z"`` (the class fixed; z as given to the network, i.e. already scaled by the
truncation, as both public codes expect) and ``"z+embedding"`` (``[z, e]`` with ``e`` the shared class embedding;
directions found there can be applied to any class). For :class:`BigGANGenerator` with hierarchical z the z space
comes as a layer-skip generator (``resefa_fast.jacobian.StagedGenerator``): W+ row k is z chunk k, stage 0 the first
linear layer, stage k the k-th residual block; a tangent on chunk k starts at the block that reads it. BigGAN-deep
feeds the whole z to every block, so no stage can be skipped there and its z space is a plain callable.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ResefaError, check

__all__ = ["BigGANGenerator", "BigGANDeepGenerator", "BigGANStaged", "IMAGENET_CLASSES", "BIGGAN_CONFIGS",
           "BIGGAN_TINY", "BIGGAN_DEEP_TINY", "biggan_config", "build_biggan", "random_biggan", "truncated_z",
           "LATENT_SPACES", "attention", "conditional_bn"]

#: ImageNet class count of the public BigGAN models.
IMAGENET_CLASSES = 1000
#: Latent spaces of :meth:`BigGANGenerator.jacobian_inputs`.
LATENT_SPACES = ("z", "z+embedding")
#: Resolution -> (input, output) channel multipliers of BigGAN-PyTorch's ``G_arch`` (all blocks up-sample ×2).
BIGGAN_ARCH = {
    32: ([4, 4, 4], [4, 4, 4]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
}
#: BigGAN-PyTorch's final (unconditional) batch norm: ``layers.bn`` is built without an eps, so its default 1e-5
#: holds whatever ``BN_eps`` the conditional batch norms use.
OUTPUT_BN_EPS = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# shared ops


def conditional_bn(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float, gain: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """Inference batch norm with per-sample affine: ``(x - mean) / sqrt(var + eps) * gain + bias``; ``x``
    ``[B, C, H, W]``, ``mean``/``var`` ``[C]``, ``gain``/``bias`` ``[B, C]`` or ``[C]``."""
    scale = torch.rsqrt(var + eps)
    x = (x - mean[:, None, None]) * scale[:, None, None]
    return x * gain[..., None, None] + bias[..., None, None]


def attention(x: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, o: torch.Tensor,
              gamma: torch.Tensor) -> torch.Tensor:
    """SA-GAN self-attention as BigGAN uses it (1×1 convs without bias; phi and g max-pooled 2×2):
    ``x + γ · o(g · softmax(θᵀφ)ᵀ)``; ``x`` ``[B, C, H, W]``; θ, φ ``[C/8, C, 1, 1]``, g ``[C/2, C, 1, 1]``,
    o ``[C, C/2, 1, 1]``."""
    batch, channels, height, width = x.shape
    t = F.conv2d(x, theta).reshape(batch, -1, height * width)  # [B, C/8, HW]
    p = F.max_pool2d(F.conv2d(x, phi), 2).reshape(batch, -1, height * width // 4)  # [B, C/8, HW/4]
    v = F.max_pool2d(F.conv2d(x, g), 2).reshape(batch, -1, height * width // 4)  # [B, C/2, HW/4]
    beta = F.softmax(torch.bmm(t.transpose(1, 2), p), dim=-1)  # [B, HW, HW/4]
    out = torch.bmm(v, beta.transpose(1, 2)).reshape(batch, -1, height, width)  # [B, C/2, H, W]
    return x + gamma * F.conv2d(out, o)


def truncated_z(batch: int, z_dim: int, truncation: float = 1.0, seed: Optional[int] = 0,
                generator: Optional[torch.Generator] = None, dtype=torch.float32) -> torch.Tensor:
    """``[batch, z_dim]`` samples of a standard normal truncated to [-2, 2], times ``truncation`` (the BigGAN
    convention: TF-Hub and pytorch-pretrained-biggan's ``truncated_noise_sample`` draw ``truncnorm(-2, 2)``; their
    samplers differ from this one, so the numbers differ for a given seed)."""
    check(isinstance(truncation, (int, float)) and 0 < truncation <= 1, "truncation", "a number in (0, 1]",
          truncation)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    z = torch.randn(batch, z_dim, generator=generator, dtype=torch.float64)
    while True:  # redraw the samples outside [-2, 2]
        outside = z.abs() > 2
        if not bool(outside.any()):
            break
        z[outside] = torch.randn(int(outside.sum()), generator=generator, dtype=torch.float64)
    return (z * truncation).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# modules (our parameter names follow the public codes, without the spectral-norm buffers)


class _Linear(nn.Module):
    """``x @ Wᵀ (+ b)`` with a plain (already spectrally normalised) weight ``[out, in]``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Conv(nn.Module):
    """Same-padded convolution with a plain weight ``[out, in, k, k]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size)
                                   / math.sqrt(in_channels * kernel_size ** 2))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2)


class _Attention(nn.Module):
    """Self-attention block (BigGAN-PyTorch ``layers.Attention`` names: theta, phi, g, o, gamma)."""

    def __init__(self, channels: int, names: Tuple[str, str, str, str] = ("theta", "phi", "g", "o"),
                 gamma_shape: Tuple[int, ...] = ()):
        super().__init__()
        self.names = names
        for name, (cin, cout) in zip(names, [(channels, channels // 8), (channels, channels // 8),
                                             (channels, channels // 2), (channels // 2, channels)], strict=True):
            setattr(self, name, _Conv(cin, cout, kernel_size=1, bias=False))
        self.gamma = nn.Parameter(torch.full(gamma_shape, 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta, phi, g, o = (getattr(self, n).weight for n in self.names)
        return attention(x, theta, phi, g, o, self.gamma)


class _CondBN(nn.Module):
    """BigGAN-PyTorch ``ccbn``: ``gain = 1 + y @ W_gᵀ``, ``bias = y @ W_bᵀ`` (linear layers without bias, spectrally
    normalised), batch norm with ``stored_mean`` / ``stored_var``."""

    def __init__(self, channels: int, cond_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.gain = _Linear(cond_dim, channels, bias=False)
        self.bias = _Linear(cond_dim, channels, bias=False)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return conditional_bn(x, self.stored_mean, self.stored_var, self.eps, 1 + self.gain(y), self.bias(y))


class _GBlock(nn.Module):
    """BigGAN-PyTorch ``GBlock`` with up-sampling: ``h = conv2(relu(bn2(conv1(up(relu(bn1(x, y)))), y)))``,
    ``out = h + conv_sc(up(x))``. The 1×1 shortcut runs before the nearest up-sampling (they commute, exactly)."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, eps: float):
        super().__init__()
        self.conv1 = _Conv(in_channels, out_channels)
        self.conv2 = _Conv(out_channels, out_channels)
        self.conv_sc = _Conv(in_channels, out_channels, kernel_size=1)
        self.bn1 = _CondBN(in_channels, cond_dim, eps)
        self.bn2 = _CondBN(out_channels, cond_dim, eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + F.interpolate(self.conv_sc(x), scale_factor=2, mode="nearest")


class _OutputBN(nn.Module):
    """BigGAN-PyTorch ``layers.bn`` (unconditional, ``gain``/``bias``/``stored_mean``/``stored_var``)."""

    def __init__(self, channels: int, eps: float = OUTPUT_BN_EPS):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conditional_bn(x, self.stored_mean, self.stored_var, self.eps, self.gain, self.bias)


class _Identity(nn.Module):
    def forward(self, x):
        return x


# ---------------------------------------------------------------------------------------------------------------
# the common surface


class _BigGANBase(nn.Module):
    """What both architectures share: class handling, the public calls and the latent spaces."""

    z_dim: int
    embed_dim: int
    num_classes: int
    img_resolution: int
    img_channels = 3
    init_kwargs: Dict[str, Any]

    # ---- classes -----------------------------------------------------------------------------------------------
    def class_weight(self) -> torch.Tensor:
        """The class embedding table ``[num_classes, embed_dim]``."""
        raise NotImplementedError

    def embed(self, classes, batch: Optional[int] = None) -> torch.Tensor:
        """The shared class embedding ``[B, embed_dim]`` of ``classes``: an int, a sequence of ints or an integer
        tensor ``[B]`` (class indices in [0, num_classes)), or a float tensor ``[B, num_classes]`` of class vectors
        (one-hot or mixtures, as pytorch-pretrained-biggan takes them). One class is repeated ``batch`` times."""
        weight = self.class_weight()
        if isinstance(classes, torch.Tensor) and classes.is_floating_point():
            check(classes.ndim == 2 and classes.shape[1] == self.num_classes, "classes",
                  f"class vectors [B, {self.num_classes}] when given as a float tensor", tuple(classes.shape))
            return classes.to(weight.dtype) @ weight
        if isinstance(classes, int) and not isinstance(classes, bool):
            index = torch.tensor([classes])
        elif isinstance(classes, (list, tuple)) and classes and all(
                isinstance(c, int) and not isinstance(c, bool) for c in classes):
            index = torch.tensor(classes)
        elif isinstance(classes, torch.Tensor) and not classes.is_floating_point() and classes.ndim <= 1 \
                and classes.dtype != torch.bool:
            index = classes.reshape(-1).cpu().long()
        else:
            raise ResefaError("`classes` must be a class index (int), a sequence or integer tensor [B] of class "
                              f"indices, or float class vectors [B, {self.num_classes}]; got "
                              f"{getattr(classes, 'shape', type(classes).__name__)}")
        where = " (ImageNet classes)" if self.num_classes == IMAGENET_CLASSES else ""
        bad = [int(c) for c in index if not 0 <= int(c) < self.num_classes]
        check(not bad, "classes", f"class indices in [0, {self.num_classes - 1}]{where}", bad[:8])
        if batch is not None and index.numel() == 1:
            index = index.expand(batch)
        return weight[index.to(weight.device)]

    def _embedding(self, classes, embedding, batch: int) -> torch.Tensor:
        check((classes is None) != (embedding is None), "classes / embedding", "exactly one of the two given")
        if embedding is None:
            y = self.embed(classes, batch)
        else:
            check(isinstance(embedding, torch.Tensor) and embedding.ndim == 2 and embedding.shape[1] == self.embed_dim,
                  "embedding", f"a tensor [B, {self.embed_dim}] (the shared class embedding)",
                  getattr(embedding, "shape", type(embedding).__name__))
            y = embedding
        check(y.shape[0] in (1, batch), "classes", f"1 or {batch} classes (one per z)", y.shape[0])
        return y.expand(batch, -1).to(self.class_weight().dtype)

    # ---- public calls ------------------------------------------------------------------------------------------
    def _check_z(self, z) -> None:
        check(isinstance(z, torch.Tensor) and z.ndim == 2 and z.shape[1] == self.z_dim and z.is_floating_point(),
              "z", f"a float tensor [B, {self.z_dim}]", getattr(z, "shape", type(z).__name__))

    def _check_truncation(self, truncation) -> float:
        check(isinstance(truncation, (int, float)) and not isinstance(truncation, bool) and 0 < truncation <= 1,
              "truncation", "a number in (0, 1]", truncation)
        return float(truncation)

    def synthesize(self, z: torch.Tensor, classes=None, truncation: float = 1.0,
                   embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image ``[B, 3, R, R]`` (in [-1, 1]) of ``z`` ``[B, z_dim]`` (as given to the network: sample it with
        :meth:`sample_z`, which applies the truncation) and ``classes`` (see :meth:`embed`) or the class
        ``embedding`` ``[B or 1, embed_dim]``. ``truncation`` in (0, 1] is the value z was sampled with."""
        self._check_z(z)
        truncation = self._check_truncation(truncation)
        y = self._embedding(classes, embedding, z.shape[0])
        return self._forward(z.to(y.dtype), y, truncation)

    forward = synthesize

    def sample_z(self, batch: int = 1, truncation: float = 1.0, seed: Optional[int] = 0,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[batch, z_dim]`` truncated-normal samples times ``truncation`` (:func:`truncated_z`), on this device."""
        weight = self.class_weight()
        return truncated_z(batch, self.z_dim, truncation, seed, generator, weight.dtype).to(weight.device)

    def _forward(self, z: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- latent spaces for resefa_fast.jacobian ----------------------------------------------------------------
    def jacobian_inputs(self, z: torch.Tensor, classes=None, truncation: float = 1.0, space: str = "z",
                        embedding: Optional[torch.Tensor] = None, staged: bool = True):
        """``(fn, latent)`` for ``resefa_fast.jacobian(fn, latent, ...)`` at one code.

        ``z`` ``[z_dim]`` or ``[1, z_dim]``; one class (``classes``: an index or a class vector ``[1, num_classes]``)
        or one ``embedding`` ``[1, embed_dim]``. ``space``:

        - ``"z"``: d = z_dim, J's columns in z's order. :class:`BigGANGenerator` with hierarchical z (and
          ``staged``) returns a :class:`BigGANStaged` and ``latent`` = z as ``[num_chunks, chunk]`` (layer skip);
          otherwise ``fn`` maps ``[z_dim] -> [1, 3, R, R]``.
        - ``"z+embedding"``: ``latent = [z, e]`` ``[z_dim + embed_dim]``, ``fn`` maps it to the image; the class
          only gives the point ``e`` at which J is taken, so directions apply across classes.
        """
        check(space in LATENT_SPACES, "space", f"one of {LATENT_SPACES}", repr(space))
        check(isinstance(z, torch.Tensor) and z.numel() == self.z_dim and z.ndim in (1, 2), "z",
              f"one code [{self.z_dim}] or [1, {self.z_dim}]", getattr(z, "shape", type(z).__name__))
        z = z.reshape(1, self.z_dim).to(self.class_weight().dtype)
        truncation = self._check_truncation(truncation)
        y = self._embedding(classes, embedding, 1).detach()
        if space == "z+embedding":
            def fn(x):
                return self._forward(x[None, :self.z_dim], x[None, self.z_dim:], truncation)
            return fn, torch.cat([z[0], y[0]])
        if staged and getattr(self, "hier", False):
            view = BigGANStaged(self, y, truncation)
            return view, z.reshape(view.num_ws, view.w_dim)

        def fn_z(x):
            return self._forward(x[None], y, truncation)
        return fn_z, z[0]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.init_kwargs.items())


# ---------------------------------------------------------------------------------------------------------------
# BigGAN (BigGAN-PyTorch / TF-Hub biggan)


class BigGANGenerator(_BigGANBase):
    """BigGAN generator (BigGAN-PyTorch ``Generator`` with ``G_shared``; parameter names as its state dict, less the
    spectral-norm ``u0`` / ``sv0`` buffers).

    Args (recorded in ``init_kwargs``):
        img_resolution: 32, 64, 128, 256 or 512 (BigGAN-PyTorch's ``G_arch``; every block up-samples ×2 from 4×4).
        ch: channel width (``G_ch``; 96 in the public models); block channels are ``ch`` × the arch multipliers.
        z_dim: latent size; with ``hier`` split into ``num_blocks + 1`` equal chunks (must divide).
        embed_dim: shared class embedding size (``shared_dim``, 128).
        num_classes: classes of the embedding (1000 for ImageNet).
        hier: hierarchical z (chunk 0 -> the first linear layer, chunk k -> block k-1's batch norms).
        attention: resolutions with a self-attention block after the residual block (``G_attn``, e.g. "64";
            "" or "0" for none).
        bn_eps: eps of the conditional batch norms (``BN_eps``; 1e-4 in TF-Hub conversions, 1e-5 by default);
            the final batch norm always uses 1e-5 (:data:`OUTPUT_BN_EPS`).
        bottom_width: spatial size of the first feature map (4).

    Shapes: ``synthesize(z [B, z_dim], classes) -> [B, 3, R, R]``.
    """

    def __init__(self, img_resolution: int = 128, ch: int = 96, z_dim: int = 120, embed_dim: int = 128,
                 num_classes: int = IMAGENET_CLASSES, hier: bool = True, attention: str = "64",
                 bn_eps: float = 1e-5, bottom_width: int = 4):
        super().__init__()
        check(img_resolution in BIGGAN_ARCH, "img_resolution", f"one of {sorted(BIGGAN_ARCH)}", img_resolution)
        for name, value in (("ch", ch), ("z_dim", z_dim), ("embed_dim", embed_dim), ("num_classes", num_classes),
                            ("bottom_width", bottom_width)):
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "an int >= 1", value)
        check(isinstance(bn_eps, (int, float)) and bn_eps > 0, "bn_eps", "a positive number", bn_eps)
        attention = str(attention)
        try:
            attn = {int(a) for a in attention.split("_") if a.strip()}
        except ValueError:
            raise ResefaError(f"`attention` must be resolutions joined by '_' (e.g. '64'); got {attention!r}") from None
        ins, outs = BIGGAN_ARCH[img_resolution]
        resolutions = [bottom_width * 2 ** (i + 1) for i in range(len(ins))]
        check(bottom_width * 2 ** len(ins) == img_resolution, "bottom_width", f"4 for resolution {img_resolution}",
              bottom_width)
        num_slots = len(ins) + 1 if hier else 1
        check(not hier or z_dim % num_slots == 0, "z_dim",
              f"a multiple of the {num_slots} z chunks (hierarchical z)", z_dim)
        check(all(ch * o >= 8 for o, r in zip(outs, resolutions, strict=True) if r in attn), "ch",
              "large enough for 8 channels at the attention block (its theta/phi have channels // 8)", ch)
        self.init_kwargs = dict(img_resolution=img_resolution, ch=ch, z_dim=z_dim, embed_dim=embed_dim,
                                num_classes=num_classes, hier=bool(hier), attention=attention, bn_eps=float(bn_eps),
                                bottom_width=bottom_width)
        self.img_resolution, self.z_dim, self.embed_dim = img_resolution, z_dim, embed_dim
        self.num_classes = num_classes
        self.hier, self.bottom_width = bool(hier), bottom_width
        self.num_slots = num_slots
        self.z_chunk = z_dim // num_slots
        self.num_blocks = len(ins)
        self.channels = [(ch * i, ch * o) for i, o in zip(ins, outs, strict=True)]
        self.attention_at = [r in attn for r in resolutions]
        cond_dim = embed_dim + (self.z_chunk if hier else 0)
        self.shared = nn.Embedding(num_classes, embed_dim)
        self.linear = _Linear(self.z_chunk, ch * ins[0] * bottom_width ** 2)
        self.blocks = nn.ModuleList()
        for (cin, cout), with_attention in zip(self.channels, self.attention_at, strict=True):
            block = [_GBlock(cin, cout, cond_dim, float(bn_eps))]
            if with_attention:
                block.append(_Attention(cout))
            self.blocks.append(nn.ModuleList(block))
        self.output_layer = nn.Sequential(_OutputBN(ch * outs[-1]), _Identity(), _Conv(ch * outs[-1], 3))

    def class_weight(self) -> torch.Tensor:
        return self.shared.weight

    # ---- stages (layer-skip protocol through BigGANStaged) -----------------------------------------------------
    @property
    def num_stages(self) -> int:
        return 1 + self.num_blocks

    def stage_rows(self, i: int) -> Tuple[int, int]:
        """z chunks read by stage i: the first linear layer reads chunk 0, block k chunk k + 1 (hierarchical z)."""
        if i == 0:
            return (0, 1)
        return (i, i + 1) if self.hier else (1, 1)

    def run_stage(self, i: int, state: Optional[torch.Tensor], rows, y: torch.Tensor) -> torch.Tensor:
        """Stage i on the z chunks ``rows`` (``[B, num_slots, chunk]`` or a tuple of ``[B, chunk]``) and the class
        embedding ``y`` ``[B, embed_dim]``: 0 = linear + reshape, k = block k-1 (+ attention), the last also the
        output layer; returns the features or (last) the image."""
        if i == 0:
            h = self.linear(_chunk(rows, 0))
            return h.reshape(h.shape[0], -1, self.bottom_width, self.bottom_width)
        cond = torch.cat([y.expand(state.shape[0], -1), _chunk(rows, i)], dim=1) if self.hier else y
        h = state
        for layer in self.blocks[i - 1]:
            h = layer(h, cond) if isinstance(layer, _GBlock) else layer(h)
        if i == self.num_blocks:
            h = torch.tanh(self.output_layer[2](F.relu(self.output_layer[0](h))))
        return h

    def _forward(self, z: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
        rows = z.reshape(z.shape[0], self.num_slots, self.z_chunk)
        h = None
        for i in range(self.num_stages):
            h = self.run_stage(i, h, rows, y)
        return h


def _chunk(rows, k: int) -> torch.Tensor:
    return rows[k] if isinstance(rows, (tuple, list)) else rows[:, k]


class BigGANStaged:
    """The z space of a hierarchical :class:`BigGANGenerator` at a fixed class, as a
    ``resefa_fast.jacobian.StagedGenerator``: W+ = z as ``[num_ws = z chunks, w_dim = chunk size]``; stage 0 reads
    chunk 0 (first linear layer), stage k reads chunk k (block k-1). Calling it maps ``[B, num_ws, w_dim]`` to the
    image."""

    accepts_ws_rows = True

    def __init__(self, generator: BigGANGenerator, embedding: torch.Tensor, truncation: float = 1.0):
        self.generator, self.embedding, self.truncation = generator, embedding, truncation
        self.num_ws, self.w_dim, self.num_stages = generator.num_slots, generator.z_chunk, generator.num_stages

    def stage_ws_rows(self, i: int) -> Tuple[int, int]:
        return self.generator.stage_rows(i)

    def run_stage(self, i: int, state: Any, ws) -> Any:
        return self.generator.run_stage(i, state, ws, self.embedding)

    def __call__(self, ws: torch.Tensor) -> torch.Tensor:
        state = None
        for i in range(self.num_stages):
            state = self.run_stage(i, state, ws)
        return state


# ---------------------------------------------------------------------------------------------------------------
# BigGAN-deep (pytorch-pretrained-biggan)


class _DeepBN(nn.Module):
    """pytorch-pretrained-biggan ``BigGANBatchNorm``: statistics ``running_means``/``running_vars``
    ``[n_stats, C]`` for truncations 0, 1/(n-1), ..., 1; conditional (``scale``/``offset`` linear without bias,
    ``weight = 1 + scale(cond)``) or not (``weight``/``bias``)."""

    def __init__(self, channels: int, cond_dim: Optional[int], n_stats: int, eps: float):
        super().__init__()
        self.eps, self.conditional, self.n_stats = eps, cond_dim is not None, n_stats
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        if self.conditional:
            self.scale = _Linear(cond_dim, channels, bias=False)
            self.offset = _Linear(cond_dim, channels, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def statistics(self, truncation: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """The package's selection, kept as it is: ``coef, i = modf(truncation / step)``; when ``coef != 0`` it
        blends ``stats[i] · coef + stats[i + 1] · (1 - coef)`` (the reverse of a linear interpolation's weights:
        with 51 sets, 0.415 gives 0.75 · stats[20] + 0.25 · stats[21]; multiples of the step take stats[i])."""
        coef, start = math.modf(truncation / (1.0 / (self.n_stats - 1)))
        start = int(start)
        if coef != 0.0:
            mean = self.running_means[start] * coef + self.running_means[start + 1] * (1 - coef)
            var = self.running_vars[start] * coef + self.running_vars[start + 1] * (1 - coef)
            return mean, var
        return self.running_means[start], self.running_vars[start]

    def forward(self, x: torch.Tensor, truncation: float, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        mean, var = self.statistics(truncation)
        if self.conditional:
            return conditional_bn(x, mean, var, self.eps, 1 + self.scale(cond), self.offset(cond))
        return conditional_bn(x, mean, var, self.eps, self.weight, self.bias)


class _DeepBlock(nn.Module):
    """pytorch-pretrained-biggan ``GenBlock``: bn-relu-conv 1×1 (to in/4), bn-relu-[up]-conv 3×3, bn-relu-conv 3×3,
    bn-relu-conv 1×1 (to out); skip: the first ``out`` channels of x, up-sampled."""

    def __init__(self, in_size: int, out_size: int, cond_dim: int, up_sample: bool, n_stats: int, eps: float):
        super().__init__()
        middle = in_size // 4
        self.up_sample, self.out_size = up_sample, out_size
        self.bn_0 = _DeepBN(in_size, cond_dim, n_stats, eps)
        self.conv_0 = _Conv(in_size, middle, kernel_size=1)
        self.bn_1 = _DeepBN(middle, cond_dim, n_stats, eps)
        self.conv_1 = _Conv(middle, middle)
        self.bn_2 = _DeepBN(middle, cond_dim, n_stats, eps)
        self.conv_2 = _Conv(middle, middle)
        self.bn_3 = _DeepBN(middle, cond_dim, n_stats, eps)
        self.conv_3 = _Conv(middle, out_size, kernel_size=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, truncation, cond)))
        h = F.relu(self.bn_1(h, truncation, cond))
        if self.up_sample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, truncation, cond)))
        h = self.conv_3(F.relu(self.bn_3(h, truncation, cond)))
        skip = x[:, :self.out_size] if self.out_size != x.shape[1] else x
        if self.up_sample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class _DeepGenerator(nn.Module):
    """pytorch-pretrained-biggan ``Generator`` (``gen_z``, ``layers``, ``bn``, ``conv_to_rgb``); ``conv_to_rgb``
    keeps only the 3 output channels the package keeps (it computes ``channel_width`` and slices)."""

    def __init__(self, ch: int, z_dim: int, layers, attention_layer_position: int, n_stats: int, eps: float):
        super().__init__()
        self.ch = ch
        cond_dim = 2 * z_dim
        self.gen_z = _Linear(cond_dim, 4 * 4 * 16 * ch)
        modules: List[nn.Module] = []
        for i, (up, cin, cout) in enumerate(layers):
            if i == attention_layer_position:
                modules.append(_Attention(ch * cin, names=("snconv1x1_theta", "snconv1x1_phi", "snconv1x1_g",
                                                           "snconv1x1_o_conv"), gamma_shape=(1,)))
            modules.append(_DeepBlock(ch * cin, ch * cout, cond_dim, bool(up), n_stats, eps))
        self.layers = nn.ModuleList(modules)
        self.bn = _DeepBN(ch, None, n_stats, eps)
        self.conv_to_rgb = _Conv(ch, 3)


class BigGANDeepGenerator(_BigGANBase):
    """BigGAN-deep generator of huggingface ``pytorch-pretrained-biggan`` (its ``BigGAN`` module: ``embeddings`` +
    ``generator``; parameter names as its state dict, spectral norm folded, ``conv_to_rgb`` cut to 3 channels).

    Args (its ``BigGANConfig``, recorded in ``init_kwargs``): ``img_resolution`` (``output_dim``), ``z_dim`` (the
    class embedding has the same size), ``ch`` (``channel_width``), ``num_classes``, ``layers`` (``(up_sample,
    in_mult, out_mult)`` per block, starting at 16 and ending at 1; channels change only by halving),
    ``attention_layer_position``, ``eps`` (batch norm, 1e-4), ``n_stats`` (51).
    """

    def __init__(self, img_resolution: int = 128, z_dim: int = 128, ch: int = 128,
                 num_classes: int = IMAGENET_CLASSES, layers: Sequence[Sequence] = (),
                 attention_layer_position: int = 8, eps: float = 1e-4, n_stats: int = 51):
        super().__init__()
        layers = [tuple(layer) for layer in (layers or DEEP_LAYERS[img_resolution if img_resolution in DEEP_LAYERS
                                                                   else 128])]
        for name, value in (("z_dim", z_dim), ("ch", ch), ("num_classes", num_classes)):
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "an int >= 1", value)
        check(isinstance(n_stats, int) and n_stats >= 2, "n_stats", "an int >= 2", n_stats)
        check(all(len(layer) == 3 for layer in layers) and layers[0][1] == 16 and layers[-1][2] == 1,
              "layers", "(up_sample, in_mult, out_mult) triples from multiplier 16 down to 1", layers)
        check(all(cout in (cin, cin / 2) for _, cin, cout in layers)
              and all(a[2] == b[1] for a, b in zip(layers, layers[1:])), "layers",
              "consecutive blocks whose channels stay or halve", layers)
        check(ch >= 3, "ch", ">= 3 (conv_to_rgb keeps 3 of its channels)", ch)
        check(4 * 2 ** sum(bool(u) for u, _, _ in layers) == img_resolution, "img_resolution",
              f"4 · 2^(up-sampling blocks) = {4 * 2 ** sum(bool(u) for u, _, _ in layers)}", img_resolution)
        check(isinstance(attention_layer_position, int) and 0 <= attention_layer_position < len(layers),
              "attention_layer_position", f"an int in [0, {len(layers)})", attention_layer_position)
        self.init_kwargs = dict(img_resolution=img_resolution, z_dim=z_dim, ch=ch, num_classes=num_classes,
                                layers=[list(layer) for layer in layers],
                                attention_layer_position=attention_layer_position, eps=float(eps), n_stats=n_stats)
        self.img_resolution, self.z_dim, self.embed_dim, self.num_classes = img_resolution, z_dim, z_dim, num_classes
        self.embeddings = _Linear(num_classes, z_dim, bias=False)
        self.generator = _DeepGenerator(ch, z_dim, layers, attention_layer_position, n_stats, float(eps))

    def class_weight(self) -> torch.Tensor:
        return self.embeddings.weight.T  # [num_classes, z_dim]

    def _forward(self, z: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
        G = self.generator
        cond = torch.cat([z, y], dim=1)  # [B, 2 z_dim]
        # the package reshapes gen_z's output as TF's [B, 4, 4, C] and moves channels first
        h = G.gen_z(cond).reshape(-1, 4, 4, 16 * G.ch).permute(0, 3, 1, 2)
        for layer in G.layers:
            h = layer(h, cond, truncation) if isinstance(layer, _DeepBlock) else layer(h)
        h = F.relu(G.bn(h, truncation))
        return torch.tanh(G.conv_to_rgb(h))


#: pytorch-pretrained-biggan's ``convert_tf_to_pytorch.py`` layer lists (BigGAN128 / 256 / 512).
_DEEP_128 = [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
             (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)]
DEEP_LAYERS = {
    128: _DEEP_128,
    256: _DEEP_128[:5] + [(True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2),
                          (True, 2, 1)],
}
DEEP_LAYERS[512] = DEEP_LAYERS[256] + [(False, 1, 1), (True, 1, 1)]


# ---------------------------------------------------------------------------------------------------------------
# registry


def _tfhub(resolution: int, z_dim: int, attention: str) -> Dict[str, Any]:
    return dict(img_resolution=resolution, ch=96, z_dim=z_dim, embed_dim=128, num_classes=IMAGENET_CLASSES,
                hier=True, attention=attention, bn_eps=1e-4, bottom_width=4)


def _deep(resolution: int) -> Dict[str, Any]:
    return dict(img_resolution=resolution, z_dim=128, ch=128, num_classes=IMAGENET_CLASSES,
                layers=[list(layer) for layer in DEEP_LAYERS[resolution]], attention_layer_position=8, eps=1e-4,
                n_stats=51)


_TFHUB = "TF-Hub biggan-{}/2 as converted by BigGAN-PyTorch TFHub/converter.py (BN_eps 1e-4)"
_HF = "pytorch-pretrained-biggan biggan-deep-{} (convert_tf_to_pytorch.py BigGAN{})"

#: name -> (class name, init kwargs, source). The BigGAN-PyTorch 128 model trained by its own scripts
#: (``launch_BigGAN_bs256x8.sh``) has the biggan-128 shape with ``bn_eps`` 1e-5.
BIGGAN_CONFIGS: Dict[str, Tuple[str, Dict[str, Any], str]] = {
    "biggan-128": ("BigGANGenerator", _tfhub(128, 120, "64"), _TFHUB.format(128)),
    "biggan-256": ("BigGANGenerator", _tfhub(256, 140, "128"), _TFHUB.format(256)),
    "biggan-512": ("BigGANGenerator", _tfhub(512, 128, "64"), _TFHUB.format(512)),
    "biggan-pytorch-128": ("BigGANGenerator", dict(_tfhub(128, 120, "64"), bn_eps=1e-5),
                           "BigGAN-PyTorch's own ImageNet-128 model (launch_BigGAN_bs256x8.sh: BN_eps 1e-5)"),
    "biggan-deep-128": ("BigGANDeepGenerator", _deep(128), _HF.format(128, 128)),
    "biggan-deep-256": ("BigGANDeepGenerator", _deep(256), _HF.format(256, 256)),
    "biggan-deep-512": ("BigGANDeepGenerator", _deep(512), _HF.format(512, 512)),
}
#: Tiny configurations for tests: 32×32 BigGAN (channels 16, attention at 16, z 8 = 4 chunks of 2, 5 classes) and a
#: 16×16 BigGAN-deep (channels 64 -> 4, up-sampling on every second block as in the released lists, attention
#: before block 2, z 6, 5 classes).
BIGGAN_TINY = dict(img_resolution=32, ch=4, z_dim=8, embed_dim=6, num_classes=5, hier=True, attention="16",
                   bn_eps=1e-4, bottom_width=4)
BIGGAN_DEEP_TINY = dict(img_resolution=16, z_dim=6, ch=4, num_classes=5,
                        layers=[[False, 16, 16], [True, 16, 8], [False, 8, 4], [True, 4, 2], [False, 2, 1]],
                        attention_layer_position=2, eps=1e-4, n_stats=5)
BIGGAN_CONFIGS["biggan-tiny"] = ("BigGANGenerator", BIGGAN_TINY, "tests")
BIGGAN_CONFIGS["biggan-deep-tiny"] = ("BigGANDeepGenerator", BIGGAN_DEEP_TINY, "tests")

CLASSES = {"BigGANGenerator": BigGANGenerator, "BigGANDeepGenerator": BigGANDeepGenerator}


def biggan_config(name: str) -> Tuple[str, Dict[str, Any], str]:
    """``(class name, init kwargs, source)`` of the registered configuration ``name``."""
    if name not in BIGGAN_CONFIGS:
        raise ResefaError(f"`config` must be one of {sorted(BIGGAN_CONFIGS)}; got {name!r}")
    cls, kwargs, source = BIGGAN_CONFIGS[name]
    return cls, {k: (list(map(list, v)) if k == "layers" else v) for k, v in kwargs.items()}, source


def build_biggan(name: str, seed: int = 0, **overrides) -> _BigGANBase:
    """A generator of the registered configuration ``name`` with random weights (statistics made plausible:
    positive variances, attention γ non-zero), in eval mode without gradients."""
    cls, kwargs, _ = biggan_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = CLASSES[cls](**{**kwargs, **overrides})
        with torch.no_grad():
            for key, buffer in G.named_buffers():
                if key.endswith(("var", "vars")):
                    buffer.uniform_(0.5, 1.5)
                else:
                    buffer.normal_(0, 0.1)
    return G.eval().requires_grad_(False)


def random_biggan(resolution: int = 256, deep: bool = False, small: bool = False, seed: int = 0) -> _BigGANBase:
    """A BigGAN (or BigGAN-deep) of the public ``resolution`` shape with random weights; ``small`` divides the
    channel width by 8 (CPU smoke runs)."""
    name = f"biggan-{'deep-' if deep else ''}{resolution}"
    cls, kwargs, _ = biggan_config(name)
    return build_biggan(name, seed=seed, ch=kwargs["ch"] // 8 if small else kwargs["ch"])
