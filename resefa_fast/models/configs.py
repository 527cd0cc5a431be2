"""Registry of the standard StyleGAN2 configurations, so that a loaded checkpoint can be named and a generator of
a known shape built with random weights (benchmarks, tests).

Facts from the public releases: NVIDIA's TF StyleGAN2 models are config-f (``fmap_base`` 16384 → channel_base
32768, channel_max 512, 8 mapping layers, no conv clamp); stylegan2-ada-pytorch trains with ``conv_clamp=256``
(``paper256``: channel_base 16384; ``paper512`` / ``paper1024``: 32768; 8 mapping layers). LSUN car images are
512×384: the generator makes 512×512 and the valid rows are 64..447 (``valid_region``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ResefaError

__all__ = ["Config", "CONFIGS", "SHAPE_KEYS", "TINY", "config", "build", "matching_configs", "random_stylegan2"]


@dataclass(frozen=True)
class Config:
    """A named configuration: ``kwargs`` for :class:`StyleGAN2Generator`; ``valid_region`` ``(top, bottom, left,
    right)`` of the image holding data (non-square datasets), None = all; ``source`` says where it comes from."""
    name: str
    kwargs: Dict[str, Any]
    source: str
    valid_region: Optional[Tuple[int, int, int, int]] = None
    aliases: Tuple[str, ...] = field(default=())


def _f(resolution: int, conv_clamp=None, channel_base: int = 32768, **extra) -> Dict[str, Any]:
    return dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=resolution, img_channels=3, channel_base=channel_base,
                channel_max=512, num_mapping_layers=8, architecture="skip", conv_clamp=conv_clamp, **extra)


_TF = "NVIDIA StyleGAN2 (TF, config-f), e.g. converted by stylegan2-ada-pytorch legacy.py, rosinality or Hammer"
_ADA = "stylegan2-ada-pytorch release (conv_clamp 256)"

CONFIGS: Dict[str, Config] = {c.name: c for c in [
    Config("ffhq-1024", _f(1024), _TF, aliases=("stylegan2-ffhq-config-f", "ffhq")),
    Config("ffhq-512", _f(512, conv_clamp=256), _ADA + ", paper512"),
    Config("ffhq-256", _f(256, conv_clamp=256, channel_base=16384), _ADA + ", paper256"),
    Config("lsun-church-256", _f(256), _TF, aliases=("stylegan2-church-config-f", "church")),
    Config("lsun-cat-256", _f(256), _TF, aliases=("stylegan2-cat-config-f", "cat")),
    Config("lsun-horse-256", _f(256), _TF, aliases=("stylegan2-horse-config-f", "horse")),
    Config("lsun-car-512", _f(512), _TF + "; images 512x384", valid_region=(64, 448, 0, 512),
           aliases=("stylegan2-car-config-f", "car")),
    Config("afhq-cat-512", _f(512, conv_clamp=256), _ADA + ", paper512", aliases=("afhqcat",)),
    Config("afhq-dog-512", _f(512, conv_clamp=256), _ADA + ", paper512", aliases=("afhqdog",)),
    Config("afhq-wild-512", _f(512, conv_clamp=256), _ADA + ", paper512", aliases=("afhqwild",)),
    Config("metfaces-1024", _f(1024, conv_clamp=256), _ADA + ", paper1024", aliases=("metfaces",)),
]}

#: A tiny configuration for tests: 16×16 RGB, 8 → 16 channels, w_dim 8 (num_ws 6), 2 mapping layers.
TINY = Config("tiny", dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=16, img_channels=3, channel_base=128,
                           channel_max=16, num_mapping_layers=2, architecture="skip", conv_clamp=None),
              "tests")

SHAPE_KEYS = ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "channel_base", "channel_max",
               "num_mapping_layers", "architecture")


def config(name: str) -> Config:
    """The configuration called ``name`` (or one of its aliases; "tiny" for tests)."""
    if name == "tiny":
        return TINY
    for c in CONFIGS.values():
        if name == c.name or name in c.aliases:
            return c
    raise ResefaError(f"`config` must be one of {sorted(CONFIGS)} or 'tiny'; got {name!r}")


def build(name: str, seed: int = 0, **overrides):
    """A :class:`StyleGAN2Generator` of configuration ``name`` with random (official-init) weights, in eval mode."""
    import torch

    from .stylegan2 import StyleGAN2Generator
    kwargs = {**config(name).kwargs, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StyleGAN2Generator(**kwargs).eval().requires_grad_(False)


def matching_configs(kwargs: Dict[str, Any], hint: str = "", compare_clamp: bool = False) -> List[Config]:
    """The registered configurations whose network shape equals ``kwargs``'s (shape keys, and ``conv_clamp`` when
    ``compare_clamp``: a state dict does not show it). Names or aliases found in ``hint`` (e.g. the file name) come
    first."""
    keys = SHAPE_KEYS + (("conv_clamp",) if compare_clamp else ())
    found = [c for c in CONFIGS.values() if all(c.kwargs.get(k) == kwargs.get(k) for k in keys if k in kwargs)]
    hint = hint.lower()
    return sorted(found, key=lambda c: not any(a in hint for a in (c.name,) + c.aliases))


def random_stylegan2(resolution: int = 1024, w_dim: int = 512, seed: int = 0, small: bool = False):
    """A StyleGAN2 with config-f channel counts at ``resolution`` and random weights (``small``: channel_base 1024,
    channel_max 64). The factory signature ``benchmarks/bench_jacobian.py --generator`` calls."""
    kwargs = _f(resolution)
    kwargs.update(w_dim=w_dim, z_dim=w_dim)
    if small:
        kwargs.update(channel_base=max(1024, resolution), channel_max=64)
    import torch

    from .stylegan2 import StyleGAN2Generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = StyleGAN2Generator(**kwargs).eval().requires_grad_(False)
        for module in G.modules():  # official init has zero noise strength; give the noise inputs a say
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.1)
    return G
