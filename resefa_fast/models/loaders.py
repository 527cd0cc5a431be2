"""Load StyleGAN2 checkpoints in the formats people have, and save our own. Loading never executes code from the
file: NVIDIA pickles go through :mod:`.safe_pickle`, ``torch.save`` files through ``torch.load(weights_only=True)``.

Formats (detected from the content, not the file name):

- ``nvidia-pickle``: stylegan2-ada-pytorch / stylegan3 network pickles (``G_ema`` of ``training.networks`` or
  ``training.networks_stylegan2``): init kwargs and weights read from the persistence records.
- ``rosinality``: stylegan2-pytorch ``.pt`` (``g_ema``, optional ``latent_avg``; training checkpoints also hold
  ``args``, an ``argparse.Namespace``, allowed as data).
- ``hammer``: the Hammer codebase's ``.pth`` read by the original ReSeFa (``models`` → ``generator_smooth`` or
  ``generator``; ``mapping.dense*``, ``synthesis.layer*``, top-level ``w_avg``).
- ``genforce``: genforce ``.pth`` (same layer names, ``truncation.w_avg``; style bias stored without its +1,
  up-sampling conv weights stored flipped, TF-style demodulation on the scaled weight).
- ``official-state-dict``: a bare ``G_ema.state_dict()`` of the official code (``synthesis.b4.const`` ...).
- ``resefa_fast``: our :func:`save` format (init kwargs + state dict).

Every format is converted to the official parameter layout, whose network shape is read back from the tensor
shapes (:func:`infer_kwargs`), then loaded strictly into :class:`StyleGAN2Generator`.
"""
from __future__ import annotations

import argparse
import inspect
import io
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import ResefaError
from . import builtin, configs, ops
from .safe_pickle import TORCH_LEGACY_MAGIC, PersistentRecord, restricted_load
from .stylegan2 import StyleGAN2Generator

__all__ = ["LoadedModel", "load", "save", "infer_kwargs", "build_checked", "FORMATS", "SAVE_FORMAT"]

FORMATS = ("nvidia-pickle", "rosinality", "hammer", "genforce", "official-state-dict", "resefa_fast")
#: Marker of our own files.
SAVE_FORMAT = "resefa_fast.stylegan2"
#: z samples used to estimate w_avg when a checkpoint has none (rosinality training checkpoints).
W_AVG_SAMPLES = 10_000
#: Readers of the other generator families (StyleGAN3, BigGAN), registered by their modules:
#: ``reader(obj, path, config, device)`` returns a :class:`LoadedModel`, or None when ``obj`` (the file's top object,
#: or None when ``path`` is a directory) is not theirs. Tried in order before the StyleGAN2 formats.
FAMILY_READERS: List[Callable[..., Optional["LoadedModel"]]] = []
#: ``(generator class, save function)`` of the other families, registered with their readers: :func:`save` hands
#: their generators over.
FAMILY_SAVERS: List[Tuple[type, Callable[..., None]]] = []


@dataclass
class LoadedModel:
    """``generator`` (eval mode, no parameter gradients), ``w_avg`` ``[w_dim]`` and ``metadata``: ``format``,
    ``path``, ``init_kwargs``, ``config`` (a registered name or None), ``config_candidates``, ``valid_region``,
    ``w_avg_source``, ``assumptions`` (what the file does not say and was assumed), ``ignored`` (recorded
    settings without effect here, e.g. float16 resolutions)."""
    generator: StyleGAN2Generator
    w_avg: torch.Tensor
    metadata: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# public calls


def load(path, config: Optional[str] = None, device="cpu") -> LoadedModel:
    """Load a StyleGAN2 generator from ``path`` in any supported format (see the module docstring), or a model
    shipped with the package, ``builtin:NAME`` (:mod:`.builtin`; its part boxes in ``metadata["presets"]``).

    ``config``: a registered configuration name (``resefa_fast.models.CONFIGS``) the file must match; it names the
    model in ``metadata`` (e.g. the LSUN car crop) and supplies ``conv_clamp`` where the format does not record it.
    Raises :class:`ResefaError` naming the file and what was expected for unknown, corrupt or mis-shaped files.
    """
    path = os.fspath(path)
    if path.startswith(builtin.PREFIX):
        weights, which = builtin.builtin_path(path)
        loaded = load(weights, config=config, device=device)
        presets = {part: list(box) for part, box in which.presets.items()}
        loaded.metadata.update(builtin=which.name, description=which.description, presets=presets,
                               preset_family=which.preset_family)
        return loaded
    if os.path.isdir(path):
        for reader in FAMILY_READERS:
            loaded = reader(None, path, config, device)
            if loaded is not None:
                return loaded
    if not os.path.isfile(path):
        raise ResefaError(f"`path` must be an existing checkpoint file; got {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    obj = _read(data, path)
    for reader in FAMILY_READERS:
        loaded = reader(obj, path, config, device)
        if loaded is not None:
            return loaded
    fmt, state_dict, kwargs, meta = _interpret(obj, path)
    chosen = configs.config(config) if config is not None else None
    if chosen is not None:
        for key in configs.SHAPE_KEYS:
            if key in kwargs and chosen.kwargs.get(key) != kwargs[key]:
                raise ResefaError(f"{path}: does not match `config` {config!r}: {key} is {kwargs[key]!r} in the file, "
                                  f"{chosen.kwargs.get(key)!r} in the configuration")
        if "conv_clamp" in meta["assumptions"]:
            kwargs["conv_clamp"] = chosen.kwargs.get("conv_clamp")
            meta["assumptions"]["conv_clamp"] = f"from config {chosen.name!r}"
    generator = _build(kwargs, state_dict, path, fmt)
    w_avg_source = meta.pop("w_avg_source", "file")
    if w_avg_source == "estimate":
        w_avg_source = _estimate_w_avg(generator)
    candidates = configs.matching_configs(kwargs, hint=os.path.basename(path),
                                          compare_clamp="conv_clamp" not in meta["assumptions"])
    if chosen is None and candidates and (len(candidates) == 1 or _hinted(candidates[0], path)):
        chosen = candidates[0]
    generator = generator.to(device).eval().requires_grad_(False)
    metadata = dict(format=fmt, path=path, init_kwargs=dict(generator.init_kwargs),
                    config=chosen.name if chosen else None, config_candidates=[c.name for c in candidates],
                    valid_region=chosen.valid_region if chosen else None, w_avg_source=w_avg_source, **meta)
    return LoadedModel(generator, generator.w_avg.detach().clone(), metadata)


def save(generator: StyleGAN2Generator, path, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Save ``generator`` as a plain ``torch.save`` dict (``format``, ``init_kwargs``, ``state_dict``, ``metadata``)
    that :func:`load` reads back with ``weights_only=True`` (StyleGAN3 and BigGAN generators: their families' own
    save functions, registered in :data:`FAMILY_SAVERS`). ``metadata`` values: str, int, float, bool, None, or
    lists / dicts of those."""
    if not isinstance(generator, StyleGAN2Generator):
        for family, saver in FAMILY_SAVERS:  # StyleGAN3, BigGAN: their own file layouts, read back by load()
            if isinstance(generator, family):
                return saver(generator, path, metadata)
        raise ResefaError("`generator` must be a resefa_fast.models generator (StyleGAN2, StyleGAN3, BigGAN); got "
                          f"{type(generator).__name__}")
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in generator.init_kwargs.items()}
    payload = dict(format=SAVE_FORMAT, version=1, init_kwargs=kwargs,
                   state_dict={k: v.detach().cpu() for k, v in generator.state_dict().items()},
                   metadata=dict(metadata or {}))
    torch.save(payload, os.fspath(path))


# ---------------------------------------------------------------------------------------------------------------
# reading the file


def _read(data: bytes, path: str):
    """The file's top object: a ``torch.save`` file via ``torch.load(weights_only=True)``, any other pickle via the
    restricted unpickler (NVIDIA network pickles)."""
    if data[:4] == b"PK\x03\x04" or zipfile.is_zipfile(io.BytesIO(data)):
        return _torch_load(data, path)
    if not data[:1] == b"\x80":
        raise ResefaError(f"{path}: not a checkpoint: expected an NVIDIA network pickle (.pkl) or a torch.save file "
                          f"(.pt/.pth); the file starts with {data[:8]!r}")
    first = restricted_load(data, path)
    if isinstance(first, int) and first == TORCH_LEGACY_MAGIC:  # legacy (pre-1.6) torch.save file
        return _torch_load(data, path)
    return first


def _torch_load(data: bytes, path: str):
    try:
        # rosinality training checkpoints hold their argparse.Namespace: plain data, allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure becomes one clear message
        text = str(error).split("\n")
        reason = next((line for line in text if "GLOBAL" in line or "Unsupported" in line), text[0])
        raise ResefaError(f"{path}: refused or failed to read as a torch.save file with weights_only=True "
                          f"({type(error).__name__}: {reason.strip()[:300]}); only tensors and plain data are "
                          "loaded, never code") from None


def _interpret(obj, path: str) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, Any], Dict[str, Any]]:
    """``(format, official-layout state dict, generator kwargs, metadata)`` of the file's top object."""
    if not isinstance(obj, dict):
        raise ResefaError(f"{path}: expected a dict at the top of the checkpoint; got {type(obj).__name__}")
    if obj.get("format") == SAVE_FORMAT:
        return _from_ours(obj, path)
    record = obj.get("G_ema", obj.get("G"))
    if isinstance(record, PersistentRecord):
        return _from_nvidia(record, path)
    if isinstance(obj.get("g_ema"), dict):
        return _from_rosinality(obj["g_ema"], obj.get("latent_avg"), path)
    inner = obj.get("models") if isinstance(obj.get("models"), dict) else obj
    for name in ("generator_smooth", "generator"):
        if isinstance(inner.get(name), dict):
            return _from_hammer_or_genforce(inner[name], path, f"`{name}`")
    if _is_tensor_dict(obj):
        if "synthesis.b4.const" in obj:
            return "official-state-dict", dict(obj), infer_kwargs(obj, path), _meta(conv_clamp="not recorded")
        if "style.1.weight" in obj:
            return _from_rosinality(obj, None, path)
        if "mapping.dense0.weight" in obj:
            return _from_hammer_or_genforce(obj, path, "the state dict")
    keys = sorted(str(k) for k in obj)[:12]
    raise ResefaError(f"{path}: not a known StyleGAN2 checkpoint: expected an NVIDIA network pickle (G_ema), a "
                      "rosinality .pt (g_ema), a Hammer/genforce .pth (models -> generator_smooth / generator), a "
                      f"resefa_fast file, or an official G_ema state dict; top-level keys are {keys}")


def _is_tensor_dict(obj) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _meta(**assumptions) -> Dict[str, Any]:
    return dict(assumptions=dict(assumptions), ignored={})


# ---------------------------------------------------------------------------------------------------------------
# shapes -> kwargs, and the strict build


def infer_kwargs(sd: Dict[str, torch.Tensor], path: str = "<state dict>") -> Dict[str, Any]:
    """:class:`StyleGAN2Generator` kwargs from the tensor shapes of an official-layout state dict. ``conv_clamp``
    and the mapping learning rate are not visible in shapes: None and 0.01 (override after the call)."""
    def need(key):
        if key not in sd:
            raise ResefaError(f"{path}: missing tensor `{key}` (official layout after conversion); the file is not a "
                              "complete StyleGAN2 generator")
        return sd[key]

    resolutions = sorted({int(m.group(1)) for key in sd if (m := re.match(r"synthesis\.b(\d+)\.", key))})
    if not resolutions or resolutions[0] != 4:
        raise ResefaError(f"{path}: no synthesis block at 4x4 (`synthesis.b4.*`); not a StyleGAN2 generator")
    expected = [4 * 2 ** i for i in range(len(resolutions))]
    if resolutions != expected:
        raise ResefaError(f"{path}: synthesis blocks at {resolutions}; expected consecutive powers of two {expected}")
    channels = {r: int(need(f"synthesis.b{r}.conv1.weight").shape[0]) for r in resolutions}
    channel_max = max(channels.values())
    below = [(r, c) for r, c in channels.items() if c < channel_max]
    channel_base = below[0][0] * below[0][1] if below else channel_max * resolutions[-1]
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise ResefaError(f"{path}: channels per resolution {channels} do not follow min(channel_base // r, "
                          "channel_max); unsupported architecture")
    fc = sorted(int(m.group(1)) for key in sd if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", key)))
    if fc != list(range(len(fc))) or not fc:
        raise ResefaError(f"{path}: mapping layers {fc}; expected mapping.fc0 .. fcN-1")
    embed = sd.get("mapping.embed.weight")
    embed_features = int(embed.shape[0]) if embed is not None else 0
    w_dim = int(need(f"mapping.fc{fc[-1]}.weight").shape[0])
    layer_features = int(need("mapping.fc0.weight").shape[0]) if len(fc) > 1 else None
    resnet = any(key.startswith(f"synthesis.b{r}.skip.") for r in resolutions for key in sd)
    last = resolutions[-1]
    return dict(z_dim=int(need("mapping.fc0.weight").shape[1]) - embed_features, w_dim=w_dim,
                c_dim=int(embed.shape[1]) if embed is not None else 0, img_resolution=last,
                img_channels=int(need(f"synthesis.b{last}.torgb.weight").shape[0]), channel_base=channel_base,
                channel_max=channel_max, num_mapping_layers=len(fc), architecture="resnet" if resnet else "skip",
                conv_clamp=None, mapping_lr_multiplier=0.01,
                embed_features=embed_features if embed is not None and embed_features != w_dim else None,
                layer_features=layer_features if layer_features not in (None, w_dim) else None,
                use_noise=f"synthesis.b{last}.conv1.noise_const" in sd)


def _build(kwargs: Dict[str, Any], sd: Dict[str, torch.Tensor], path: str, fmt: str) -> StyleGAN2Generator:
    """``StyleGAN2Generator(**kwargs)`` with ``sd`` loaded strictly (every key, every shape)."""
    sd = dict(sd)
    _check_filters(sd, path)
    generator = build_checked(StyleGAN2Generator, kwargs, sd, path, fmt, "StyleGAN2 generator")
    own = generator.state_dict()
    generator.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    return generator


def build_checked(factory, kwargs: Dict[str, Any], sd: Dict[str, Any], path: str, fmt: str, family: str):
    """``factory(**kwargs)`` (its random init kept off the global RNG), after checking that the state dict ``sd``
    has exactly its keys, as tensors of its shapes: a :class:`ResefaError` naming the file, the format and what is
    missing, unexpected, mis-shaped or not a tensor otherwise. The weights are not loaded (callers check more
    first: stored filters). One check for every generator family's loaders."""
    try:
        with torch.random.fork_rng(devices=[]):
            generator = factory(**kwargs)
    except (TypeError, ResefaError) as error:
        raise ResefaError(f"{path}: unsupported {family} settings ({error})") from None
    own = generator.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    not_tensors = [k for k in own if k in sd and not isinstance(sd[k], torch.Tensor)]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if k in sd and isinstance(sd[k], torch.Tensor) and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong or not_tensors:
        parts = [f"{name} {items[:6]}{' ...' if len(items) > 6 else ''}" for name, items in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong),
                  ("not tensors", not_tensors)) if items]
        raise ResefaError(f"{path}: {fmt} checkpoint does not match a {family} with {kwargs}: " + "; ".join(parts))
    return generator


def _check_filters(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Drop the stored copies of the resampling filter (rebuilt from the kwargs), after checking them."""
    for key in [k for k in sd if re.search(r"(filter|kernel)$", k)]:
        f = sd.pop(key).double().reshape(-1)
        ok = any(torch.allclose(f, (ops.setup_filter() * g).double().reshape(-1).flip(0), atol=1e-6)
                 or torch.allclose(f, (ops.setup_filter() * g).double().reshape(-1), atol=1e-6) for g in (1, 4))
        if not ok:
            raise ResefaError(f"{path}: resampling filter `{key}` is not the [1, 3, 3, 1] FIR filter; unsupported")


def _estimate_w_avg(generator: StyleGAN2Generator) -> str:
    """Set ``w_avg`` to the mean of ``W_AVG_SAMPLES`` mapped z (seed 0) when the file has none."""
    g = torch.Generator().manual_seed(0)
    total = torch.zeros(generator.w_dim, dtype=torch.float64)
    with torch.no_grad():
        for n in [1000] * (W_AVG_SAMPLES // 1000):
            z = torch.randn(n, generator.z_dim, generator=g)
            total += generator.mapping(z)[:, 0].double().sum(0)
        generator.mapping.w_avg.copy_(total / W_AVG_SAMPLES)
    return f"estimated: mean of {W_AVG_SAMPLES} mapped z (seed 0); the file has none"


def _hinted(c: configs.Config, path: str) -> bool:
    name = os.path.basename(path).lower()
    return any(a in name for a in (c.name,) + c.aliases)


# ---------------------------------------------------------------------------------------------------------------
# formats


_OUR_KWARGS = set(inspect.signature(StyleGAN2Generator.__init__).parameters) - {"self"}


def _from_ours(obj, path):
    kwargs, sd = obj.get("init_kwargs"), obj.get("state_dict")
    if not isinstance(kwargs, dict) or not isinstance(sd, dict):
        raise ResefaError(f"{path}: resefa_fast file without `init_kwargs` / `state_dict` dicts; corrupt")
    unknown = sorted(set(kwargs) - _OUR_KWARGS)
    if unknown:
        raise ResefaError(f"{path}: resefa_fast file with unknown generator settings {unknown} (newer version?)")
    meta = _meta()
    meta["saved_metadata"] = obj.get("metadata", {})
    return "resefa_fast", sd, dict(kwargs), meta


_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_IGNORED_SYNTHESIS = ("num_fp16_res", "fp16_channels_last", "channels_last", "fused_modconv_default")


def _record_state(record: PersistentRecord, path: str, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Flat state dict ``{'mapping.fc0.weight': tensor, ...}`` of a persistence record tree."""
    state = record.state if isinstance(record.state, dict) else {}
    sd = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ResefaError(f"{path}: `{prefix}{name}` is a {type(value).__name__}, expected a tensor")
            sd[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise ResefaError(f"{path}: submodule `{prefix}{name}` is a {type(child).__name__}, expected a network "
                              "object of training.networks")
        sd.update(_record_state(child, path, f"{prefix}{name}."))
    return sd


def _children(record: PersistentRecord) -> Dict[str, Any]:
    return dict((record.state.get("_modules") or {}) if isinstance(record.state, dict) else {})


def init_arguments(record: PersistentRecord, positional, path: str, what: str) -> Dict[str, Any]:
    """The init arguments a persistence record kept (``_init_kwargs``, plus ``_init_args`` named by
    ``positional``); the first five (z_dim, c_dim, w_dim, img_resolution, img_channels) must be there."""
    init = dict(record.state.get("_init_kwargs") or {})
    for name, value in zip(positional, record.state.get("_init_args") or (), strict=False):
        init.setdefault(name, value)
    missing = [k for k in positional[:5] if k not in init]
    if missing:
        raise ResefaError(f"{path}: {what} records no {missing} among its init arguments; corrupt network pickle")
    return init


def _from_nvidia(record: PersistentRecord, path: str):
    synthesis = _children(record).get("synthesis")
    if record.class_name != "Generator" or not isinstance(synthesis, PersistentRecord):
        raise ResefaError(f"{path}: G_ema is a {record.class_name!r} without a synthesis network; expected the "
                          "Generator of stylegan2-ada-pytorch / stylegan3 (training.networks[_stylegan2])")
    blocks = _children(synthesis)
    if "b4" not in blocks:
        kind = ("a StyleGAN3 (alias-free) generator" if "input" in blocks or "class SynthesisInput"
                in synthesis.module_src else f"an unknown synthesis network ({synthesis.class_name})")
        raise ResefaError(f"{path}: G_ema is {kind}; only StyleGAN2 generators (synthesis blocks b4, b8, ...) are "
                          "supported")
    init = init_arguments(record, _POSITIONAL, path, "G_ema")
    mapping_kwargs = dict(init.get("mapping_kwargs") or {})
    synthesis_kwargs = dict(init.get("synthesis_kwargs") or {})
    synthesis_kwargs.update({k: v for k, v in init.items() if k not in _POSITIONAL})  # stylegan3's **kwargs form
    meta = _meta()
    meta["ignored"] = {k: synthesis_kwargs.pop(k) for k in _IGNORED_SYNTHESIS if k in synthesis_kwargs}
    if "w_avg_beta" in mapping_kwargs:
        meta["ignored"]["w_avg_beta"] = mapping_kwargs.pop("w_avg_beta")
    unsupported = {k: v for k, v in [("architecture", synthesis_kwargs.get("architecture", "skip")),
                                     ("kernel_size", synthesis_kwargs.get("kernel_size", 3)),
                                     ("activation", synthesis_kwargs.get("activation", "lrelu")),
                                     ("mapping activation", mapping_kwargs.get("activation", "lrelu"))]
                   if v not in {"architecture": ("skip", "resnet"), "kernel_size": (3,),
                                "activation": ("lrelu",), "mapping activation": ("lrelu",)}[k]}
    if unsupported:
        raise ResefaError(f"{path}: unsupported StyleGAN2 settings {unsupported}; supported: skip/resnet "
                          "architecture, 3x3 convolutions, leaky ReLU")
    kwargs = dict(z_dim=init["z_dim"], w_dim=init["w_dim"], c_dim=init["c_dim"],
                  img_resolution=init["img_resolution"], img_channels=init["img_channels"],
                  channel_base=synthesis_kwargs.get("channel_base", 32768),
                  channel_max=synthesis_kwargs.get("channel_max", 512),
                  num_mapping_layers=mapping_kwargs.get("num_layers", 8),
                  architecture=synthesis_kwargs.get("architecture", "skip"),
                  conv_clamp=synthesis_kwargs.get("conv_clamp"),
                  mapping_lr_multiplier=mapping_kwargs.get("lr_multiplier", 0.01),
                  embed_features=mapping_kwargs.get("embed_features"),
                  layer_features=mapping_kwargs.get("layer_features"),
                  use_noise=synthesis_kwargs.get("use_noise", True),
                  resample_filter=tuple(synthesis_kwargs.get("resample_filter", (1, 3, 3, 1))))
    if tuple(kwargs["resample_filter"]) != (1, 3, 3, 1):
        raise ResefaError(f"{path}: resample_filter {kwargs['resample_filter']} is not [1, 3, 3, 1]; unsupported")
    return "nvidia-pickle", _record_state(record, path), kwargs, meta


def _rename(sd, pairs, path, fmt):
    out = {}
    for key, value in sd.items():
        for pattern, target in pairs:
            m = re.fullmatch(pattern, key)
            if m:
                if target is not None:
                    out[target(m) if callable(target) else m.expand(target)] = value
                break
        else:
            raise ResefaError(f"{path}: unexpected tensor `{key}` for a {fmt} StyleGAN2 generator")
    return out


def _from_rosinality(g: Dict[str, torch.Tensor], latent_avg, path: str):
    if not _is_tensor_dict(g) or "style.1.weight" not in g or "input.input" not in g:
        raise ResefaError(f"{path}: `g_ema` is not a rosinality StyleGAN2 generator state dict (expected "
                          "style.1.weight, input.input, convs.*, to_rgbs.*)")
    sd: Dict[str, torch.Tensor] = {}
    num_blocks = 1 + len({k.split(".")[1] for k in g if k.startswith("to_rgbs.")})
    res = [4 * 2 ** i for i in range(num_blocks)]

    def styled(src: str, dst: str, noise: int, demodulate: bool = True):
        weight = g[f"{src}.conv.weight"][0]  # [O, I, k, k]
        # rosinality scales the weight by 1/√fan_in before modulating; folding that scale into the stored weight
        # makes the official form (ε = 1e-8 on the unscaled weight) compute exactly rosinality's demodulation
        scale = 1 / math.sqrt(weight[0].numel()) if demodulate else 1.0
        sd[f"{dst}.weight"] = weight * scale
        sd[f"{dst}.affine.weight"] = g[f"{src}.conv.modulation.weight"]
        sd[f"{dst}.affine.bias"] = g[f"{src}.conv.modulation.bias"]
        if demodulate:
            sd[f"{dst}.noise_strength"] = g[f"{src}.noise.weight"].reshape([])
            sd[f"{dst}.bias"] = g[f"{src}.activate.bias"]
            sd[f"{dst}.noise_const"] = g[f"noises.noise_{noise}"][0, 0]
        else:
            sd[f"{dst}.bias"] = g[f"{src}.bias"].reshape(-1)

    try:
        n_mlp = len([k for k in g if re.fullmatch(r"style\.\d+\.weight", k)])
        for i in range(n_mlp):
            sd[f"mapping.fc{i}.weight"] = g[f"style.{i + 1}.weight"]
            sd[f"mapping.fc{i}.bias"] = g[f"style.{i + 1}.bias"]
        sd["synthesis.b4.const"] = g["input.input"][0]
        styled("conv1", "synthesis.b4.conv1", 0)
        styled("to_rgb1", "synthesis.b4.torgb", None, demodulate=False)
        for j, r in enumerate(res[1:]):
            styled(f"convs.{2 * j}", f"synthesis.b{r}.conv0", 2 * j + 1)
            styled(f"convs.{2 * j + 1}", f"synthesis.b{r}.conv1", 2 * j + 2)
            styled(f"to_rgbs.{j}", f"synthesis.b{r}.torgb", None, demodulate=False)
            for kernel in (f"convs.{2 * j}.conv.blur.kernel", f"to_rgbs.{j}.upsample.kernel"):
                if kernel in g:
                    sd[f"synthesis.b{r}.{kernel}"] = g[kernel]
    except KeyError as error:
        raise ResefaError(f"{path}: rosinality generator without tensor {error}; incomplete checkpoint") from None
    used = ({f"style.{i + 1}.{p}" for i in range(n_mlp) for p in ("weight", "bias")} | {"input.input"}
            | {k for k in g if re.match(r"(conv1|to_rgb1|convs\.\d+|to_rgbs\.\d+|noises)\.", k)})
    extra = sorted(set(g) - used)
    if extra:
        raise ResefaError(f"{path}: unexpected tensors {extra[:6]} for a rosinality StyleGAN2 generator")
    meta = _meta(conv_clamp="None (not recorded)", mapping_lr_multiplier="0.01 (rosinality's lr_mlp default)")
    if isinstance(latent_avg, torch.Tensor):
        sd["mapping.w_avg"] = latent_avg.reshape(-1)
    else:
        meta["w_avg_source"] = "estimate"
        sd["mapping.w_avg"] = torch.zeros(g["style.1.weight"].shape[0])
    kwargs = infer_kwargs(sd, path)
    return "rosinality", sd, kwargs, meta


def _from_hammer_or_genforce(g: Dict[str, torch.Tensor], path: str, where: str):
    if not _is_tensor_dict(g) or "mapping.dense0.weight" not in g:
        raise ResefaError(f"{path}: {where} is not a Hammer/genforce StyleGAN2 generator state dict (expected "
                          "mapping.dense0.weight, synthesis.early_layer.const, synthesis.layer*)")
    genforce = "truncation.w_avg" in g
    fmt = "genforce" if genforce else "hammer"
    if "mapping.label_weight" in g:
        raise ResefaError(f"{path}: conditional genforce generator (mapping.label_weight: label concatenated before "
                          "normalisation) is not supported")
    if "synthesis.early_layer.weight" in g:
        raise ResefaError(f"{path}: {fmt} generator without a constant input (const_input=False) is not supported")
    layers = sorted({int(m.group(1)) for k in g if (m := re.match(r"synthesis\.layer(\d+)\.", k))})
    num_blocks = (len(layers) + 1) // 2
    for k in g:
        if re.fullmatch(r"synthesis\.layer\d+\.noise", k) and g[k].shape[-1] == 1 and g[k].shape[1] != 1:
            raise ResefaError(f"{path}: channel-wise noise (noise_type='channel') is not supported")

    def block(layer: int) -> int:  # layer index -> block resolution
        return 4 * 2 ** ((layer + 1) // 2)

    def conv_name(layer: int) -> str:
        return f"synthesis.b{block(layer)}.conv{0 if layer % 2 else 1}"

    def block_name(index: int) -> str:  # output{i} / residual{i} -> block of resolution 4·2^i
        return f"synthesis.b{4 * 2 ** index}"

    pairs = [
        (r"mapping\.dense(\d+)\.(weight|bias)", r"mapping.fc\1.\2"),
        (r"mapping\.embedding\.(weight|bias)", r"mapping.embed.\1"),
        (r"(?:truncation\.)?w_avg", "mapping.w_avg"),
        (r"synthesis\.early_layer\.const", "synthesis.b4.const"),
        (r"synthesis\.layer(\d+)\.style\.(weight|bias)", lambda m: f"{conv_name(int(m[1]))}.affine.{m[2]}"),
        (r"synthesis\.layer(\d+)\.(weight|bias|noise_strength)", lambda m: f"{conv_name(int(m[1]))}.{m[2]}"),
        (r"synthesis\.layer(\d+)\.noise", lambda m: f"{conv_name(int(m[1]))}.noise_const"),
        (r"synthesis\.layer(\d+)\.filter(\.kernel)?", lambda m: f"{conv_name(int(m[1]))}.filter"),
        (r"synthesis\.output(\d+)\.style\.(weight|bias)", lambda m: f"{block_name(int(m[1]))}.torgb.affine.{m[2]}"),
        (r"synthesis\.output(\d+)\.(weight|bias)", lambda m: f"{block_name(int(m[1]))}.torgb.{m[2]}"),
        (r"synthesis\.residual(\d+)\.weight", lambda m: f"{block_name(int(m[1]))}.skip.weight"),
        (r"synthesis\.residual(\d+)\.filter", lambda m: f"{block_name(int(m[1]))}.skip.filter"),
        (r"synthesis\.(filter|upsample\.kernel)", "synthesis.filter"),
    ]
    sd = _rename(g, pairs, path, fmt)
    sd["synthesis.b4.const"] = sd["synthesis.b4.const"][0]
    for key in [k for k in sd if k.endswith(".noise_const")]:
        sd[key] = sd[key][0, 0]
    if genforce:
        # genforce: style bias without TF's +1; weights scaled by 1/√fan_in inside the (TF-style) demodulation;
        # up-sampling conv weights stored flipped (it flips at run time before the transposed convolution)
        for key in [k for k in sd if k.endswith(".affine.bias")]:
            sd[key] = sd[key] + 1
        for layer in range(1, 2 * num_blocks - 1):
            key = f"{conv_name(layer)}.weight"
            w = sd[key]
            w = w / math.sqrt(w[0].numel())
            sd[key] = w.flip([2, 3]) if layer % 2 else w
    kwargs = infer_kwargs(sd, path)
    if tuple(sd["mapping.w_avg"].shape) != (kwargs["w_dim"],):
        raise ResefaError(f"{path}: w_avg of shape {tuple(sd['mapping.w_avg'].shape)}; only repeat_w=True generators "
                          f"(one w [{kwargs['w_dim']}] for all layers) are supported")
    meta = _meta(conv_clamp="None (not recorded)", mapping_lr_multiplier="0.01 (the Hammer/genforce default)")
    return fmt, sd, kwargs, meta
