"""Registry of the standard StyleGAN3 configurations (NVIDIA's releases, T and R), so that a loaded checkpoint can
be named and a generator of a known shape built with random weights (benchmarks, tests).

Facts from the public sources: NVlabs/stylegan3 ``train.py`` builds ``networks_stylegan3.Generator`` with 2
mapping layers, ``--cbase`` 32768 and ``--cmax`` 512 by default; ``--cfg=stylegan3-r`` sets ``conv_kernel=1``,
doubles channel_base and channel_max and sets ``use_radial_filters=True``; ``conv_clamp`` keeps the
``SynthesisLayer`` default 256 (None only with ``--fp32``). The released 256² models have half the capacity
(Hammer's ``converters/stylegan3_converter.py``: ``fmaps_base // 2`` for resolution ≤ 256). Release file names:
``stylegan3-{t,r}-{afhqv2-512x512, ffhqu-256x256, ffhqu-1024x1024, metfacesu-1024x1024}.pkl``.
"""
from __future__ import annotations

from typing import Any, Dict, List

from ..errors import ResefaError
from .configs import Config

__all__ = ["STYLEGAN3_CONFIGS", "STYLEGAN3_TINY", "stylegan3_config", "build_stylegan3", "random_stylegan3",
           "matching_stylegan3_configs", "STYLEGAN3_SHAPE_KEYS"]


def _kwargs(cfg: str, resolution: int, **extra) -> Dict[str, Any]:
    base = 32768 // (2 if resolution <= 256 else 1)
    r = cfg == "r"
    kwargs = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=resolution, img_channels=3,
                  channel_base=base * (2 if r else 1), channel_max=1024 if r else 512, num_mapping_layers=2,
                  num_layers=14, num_critical=2, margin_size=10, conv_kernel=1 if r else 3, use_radial_filters=r,
                  conv_clamp=256.0)
    kwargs.update(extra)
    return kwargs


_SRC = "NVIDIA StyleGAN3 release (NVlabs/stylegan3, {}), also as converted by Hammer for the original ReSeFa"
_DATASETS = [("afhqv2", 512, "afhqv2-512x512", ("afhq",)), ("ffhqu", 256, "ffhqu-256x256", ()),
             ("ffhqu", 1024, "ffhqu-1024x1024", ("ffhqu",)), ("metfacesu", 1024, "metfacesu-1024x1024", ("metfacesu",))]

STYLEGAN3_CONFIGS: Dict[str, Config] = {}
for _cfg in ("t", "r"):
    for _data, _res, _file, _short in _DATASETS:
        _name = f"stylegan3-{_cfg}-{_data}-{_res}"
        STYLEGAN3_CONFIGS[_name] = Config(_name, _kwargs(_cfg, _res), _SRC.format(f"stylegan3-{_cfg}-{_file}.pkl"),
                                          aliases=(f"stylegan3-{_cfg}-{_file}",)
                                          + tuple(f"stylegan3-{_cfg}-{s}" for s in _short))

#: Tiny configurations for tests: 32×32 RGB, 6 layers (one resolution doubling, 2 critically sampled), margin 2,
#: 8 channels at most (R: 16), w_dim 8 (num_ws 8).
_TINY = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=32, img_channels=3, channel_base=128, channel_max=8,
             num_mapping_layers=2, num_layers=6, num_critical=2, margin_size=2, conv_kernel=3,
             use_radial_filters=False, conv_clamp=256.0)
STYLEGAN3_TINY: Dict[str, Config] = {
    "stylegan3-t-tiny": Config("stylegan3-t-tiny", dict(_TINY), "tests"),
    "stylegan3-r-tiny": Config("stylegan3-r-tiny", dict(_TINY, conv_kernel=1, use_radial_filters=True,
                                                         channel_base=256, channel_max=16), "tests"),
}

#: Keys that fix the network's shape and function (compared when naming a loaded generator).
STYLEGAN3_SHAPE_KEYS = ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "channel_base", "channel_max",
                        "num_mapping_layers", "num_layers", "num_critical", "margin_size", "conv_kernel",
                        "use_radial_filters")


def stylegan3_config(name: str) -> Config:
    """The StyleGAN3 configuration called ``name`` (or an alias such as the release file name
    ``stylegan3-t-ffhqu-1024x1024``); ``stylegan3-t-tiny`` / ``stylegan3-r-tiny`` for tests."""
    for c in list(STYLEGAN3_CONFIGS.values()) + list(STYLEGAN3_TINY.values()):
        if name == c.name or name in c.aliases:
            return c
    raise ResefaError(f"`config` must be one of {sorted(STYLEGAN3_CONFIGS) + sorted(STYLEGAN3_TINY)}; got {name!r}")


def matching_stylegan3_configs(kwargs: Dict[str, Any], hint: str = "") -> List[Config]:
    """Registered configurations whose shape keys equal ``kwargs``'s; names found in ``hint`` come first."""
    found = [c for c in STYLEGAN3_CONFIGS.values()
             if all(c.kwargs.get(k) == kwargs.get(k) for k in STYLEGAN3_SHAPE_KEYS)]
    hint = hint.lower()
    return sorted(found, key=lambda c: not any(a in hint for a in (c.name,) + c.aliases))


def build_stylegan3(name: str, seed: int = 0, **overrides):
    """A :class:`StyleGAN3Generator` of configuration ``name`` with random (official-init) weights, in eval mode."""
    import torch

    from .stylegan3 import StyleGAN3Generator
    kwargs = {**stylegan3_config(name).kwargs, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StyleGAN3Generator(**kwargs).eval().requires_grad_(False)


def random_stylegan3(resolution: int = 1024, cfg: str = "t", w_dim: int = 512, seed: int = 0, small: bool = False):
    """A StyleGAN3-T or -R with the release channel counts at ``resolution`` and random weights, the input's
    affine and the magnitude EMAs perturbed so that the learned transform and input gains matter (``small``:
    channel_max 16 for T, 32 for R, at least 8 / 16 channels per layer). The factory signature of the benchmarks."""
    import torch

    from .stylegan3 import StyleGAN3Generator
    if cfg not in ("t", "r"):
        raise ResefaError(f"`cfg` must be 't' or 'r'; got {cfg!r}")
    kwargs = _kwargs(cfg, resolution, w_dim=w_dim, z_dim=w_dim)
    if small:
        # the last layers get channel_base / resolution channels: 8 (T) / 16 (R) at any resolution
        kwargs.update(channel_base=max(512, 8 * resolution) * (2 if cfg == "r" else 1),
                      channel_max=16 * (2 if cfg == "r" else 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = StyleGAN3Generator(**kwargs).eval().requires_grad_(False)
        G.synthesis.input.affine.weight.normal_(0, 0.3)  # official init is 0 (w does not move the input yet)
        for layer in G.synthesis.layers:
            layer.magnitude_ema.uniform_(0.5, 2.0)
    return G
