"""Load StyleGAN3 checkpoints (T and R) behind ``resefa_fast.models.load``, and save our own. No code from a file
is executed: NVIDIA pickles are read by the restricted unpickler (:mod:`.safe_pickle`), ``torch.save`` files by
``torch.load(weights_only=True)`` (both in :mod:`.loaders`, which hands the file's top object to :func:`read`).

Formats (detected from the content):

- ``nvidia-pickle``: NVlabs/stylegan3 network pickles whose ``G_ema`` is ``training.networks_stylegan3.Generator``
  (a synthesis network with ``input`` and layers ``L{i}_{size}_{channels}``): init kwargs and tensors read from the
  persistence records; the layers' recorded attributes (sizes, up/down factors, padding, kernel, clamp) are
  checked against the ones rebuilt here.
- ``hammer``: the Hammer ``.pth`` the original ReSeFa reads (``models`` → ``generator_smooth`` or ``generator``;
  ``mapping.dense*``, ``synthesis.early_layer.*``, ``synthesis.layer{i}.{conv,filter}.*``, top-level ``w_avg``);
  settings from ``model_kwargs_init`` when the file has it (Hammer's converter writes it), else from ``config=``,
  else inferred (below).
- ``official-state-dict``: a bare ``G_ema.state_dict()`` of networks_stylegan3.py.
- ``resefa_fast``: our :func:`save` format (``format`` = ``resefa_fast.stylegan3``).

Inference (state dicts without recorded settings): the shapes give w_dim, z_dim, c_dim, the mapping depth, the
number of layers, the kernel, the channels and, from the filter lengths, every layer's up / down factor (filter
size 6 assumed); radial (2-D) down filters mark config R and its non-critical layers. Every schedule consistent with
those (input sampling rate and margin from the input's size, num_critical, channel_base) is rebuilt and its designed
filters compared with the stored ones; the first that equals them is taken. Stored filters are always the ones
used; their deviation from the design of the chosen settings must be below :data:`FILTER_ATOL`.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ResefaError
from .loaders import (LoadedModel, _children, _is_tensor_dict, _record_state, build_checked,  # shared
                      init_arguments)
from .safe_pickle import PersistentRecord
from .stylegan3 import StyleGAN3Generator, design_lowpass_filter, input_grid, layer_plans, layer_schedule
from .stylegan3_configs import matching_stylegan3_configs, stylegan3_config, STYLEGAN3_SHAPE_KEYS

__all__ = ["read", "save", "infer_stylegan3_kwargs", "SAVE_FORMAT", "FILTER_ATOL"]

SAVE_FORMAT = "resefa_fast.stylegan3"
#: Largest |stored - designed| filter tap accepted (float32 rounding of the same design is ~1e-8).
FILTER_ATOL = 1e-6

_OUR_KWARGS = ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "channel_base", "channel_max",
               "num_mapping_layers", "num_layers", "num_critical", "first_cutoff", "first_stopband",
               "last_stopband_rel", "margin_size", "output_scale", "conv_kernel", "filter_size", "lrelu_upsampling",
               "use_radial_filters", "conv_clamp", "mapping_lr_multiplier")
#: networks_stylegan3.py init kwargs -> ours (Generator, SynthesisNetwork and SynthesisLayer levels).
_NVIDIA_SYNTHESIS = {k: k for k in ("channel_base", "channel_max", "num_layers", "num_critical", "first_cutoff",
                                    "first_stopband", "last_stopband_rel", "margin_size", "output_scale",
                                    "conv_kernel", "filter_size", "lrelu_upsampling", "use_radial_filters",
                                    "conv_clamp")}
_NVIDIA_IGNORED = ("num_fp16_res", "magnitude_ema_beta", "w_avg_beta", "freeze_layers", "freeze_embed")
_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
#: Hammer's StyleGAN3Generator kwargs -> ours (None: must have the value noted in _HAMMER_FIXED).
_HAMMER_KWARGS = dict(z_dim="z_dim", w_dim="w_dim", mapping_layers="num_mapping_layers",
                      mapping_lr_mul="mapping_lr_multiplier", label_dim="c_dim", resolution="img_resolution",
                      image_channels="img_channels", output_scale="output_scale", num_layers="num_layers",
                      num_critical="num_critical", fmaps_base="channel_base", fmaps_max="channel_max",
                      kernel_size="conv_kernel", conv_clamp="conv_clamp", first_cutoff="first_cutoff",
                      first_stopband="first_stopband", last_stopband_rel="last_stopband_rel",
                      margin_size="margin_size", filter_size="filter_size", act_upsampling="lrelu_upsampling",
                      use_radial_filter="use_radial_filters")
_HAMMER_FIXED = dict(repeat_w=True, normalize_z=True, embedding_bias=True, embedding_lr_mul=1.0,
                     normalize_embedding=True, normalize_embedding_latent=False, final_tanh=False, eps=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# public calls


def read(obj, path: str, config: Optional[str] = None, device="cpu") -> Optional[LoadedModel]:
    """The :data:`resefa_fast.models.loaders.FAMILY_READERS` entry: a :class:`LoadedModel` when ``obj`` (the file's
    top object) is a StyleGAN3 checkpoint, None otherwise."""
    if obj is None or not isinstance(obj, dict):
        return None
    found = _detect(obj)
    if found is None:
        return None
    fmt, payload = found
    meta: Dict[str, Any] = dict(assumptions={}, ignored={}, family="stylegan3")
    try:
        chosen = stylegan3_config(config) if config is not None else None
    except ResefaError as error:
        raise ResefaError(f"{path}: a StyleGAN3 checkpoint; {error}") from None
    if fmt == "resefa_fast":
        kwargs, sd = _from_ours(payload, path)
        meta["saved_metadata"] = payload.get("metadata", {})
    elif fmt == "nvidia-pickle":
        kwargs, sd, records = _from_nvidia(payload, path, meta)
    elif fmt == "hammer":
        g, recorded = payload
        kwargs, sd = _from_hammer(g, recorded, chosen, path, meta)
    else:
        kwargs, sd = _settings_of_state_dict(dict(payload), chosen, path, meta, "official-state-dict"), dict(payload)
    if chosen is not None:
        for key in STYLEGAN3_SHAPE_KEYS:
            if key in kwargs and chosen.kwargs.get(key) != kwargs[key]:
                raise ResefaError(f"{path}: does not match `config` {config!r}: {key} is {kwargs[key]!r} in the "
                                  f"file, {chosen.kwargs.get(key)!r} in the configuration")
    generator = _build(kwargs, sd, path, fmt, strict_filters=fmt != "resefa_fast")
    if fmt == "nvidia-pickle":
        _check_records(generator, records, path)
    candidates = matching_stylegan3_configs(generator.init_kwargs, hint=os.path.basename(path))
    if chosen is None and candidates:
        chosen = candidates[0]
    generator = generator.to(device).eval().requires_grad_(False)
    metadata = dict(format=fmt, path=path, init_kwargs=dict(generator.init_kwargs),
                    config=chosen.name if chosen else None, config_candidates=[c.name for c in candidates],
                    valid_region=None, w_avg_source="file", **meta)
    return LoadedModel(generator, generator.w_avg.detach().clone(), metadata)


def save(generator: StyleGAN3Generator, path, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Save ``generator`` as a plain ``torch.save`` dict (``format``, ``init_kwargs``, ``state_dict``, ``metadata``)
    that ``resefa_fast.models.load`` reads back with ``weights_only=True``."""
    if not isinstance(generator, StyleGAN3Generator):
        raise ResefaError("`generator` must be a resefa_fast.models.StyleGAN3Generator; got "
                          f"{type(generator).__name__}")
    payload = dict(format=SAVE_FORMAT, version=1, init_kwargs=dict(generator.init_kwargs),
                   state_dict={k: v.detach().cpu() for k, v in generator.state_dict().items()},
                   metadata=dict(metadata or {}))
    torch.save(payload, os.fspath(path))


# ---------------------------------------------------------------------------------------------------------------
# detection


def _is_sg3_synthesis(record) -> bool:
    children = _children(record) if isinstance(record, PersistentRecord) else {}
    return "input" in children and any(re.fullmatch(r"L\d+_\d+_\d+", name) for name in children)


def _hammer_sg3(sd) -> bool:
    return isinstance(sd, dict) and "synthesis.early_layer.frequency" in sd


def _detect(obj: dict) -> Optional[Tuple[str, Any]]:
    if obj.get("format") == SAVE_FORMAT:
        return "resefa_fast", obj
    record = obj.get("G_ema", obj.get("G"))
    if isinstance(record, PersistentRecord) and _is_sg3_synthesis(_children(record).get("synthesis")):
        return "nvidia-pickle", record
    inner = obj.get("models") if isinstance(obj.get("models"), dict) else obj
    for name in ("generator_smooth", "generator"):
        if _hammer_sg3(inner.get(name)):
            recorded = obj.get("model_kwargs_init")
            recorded = recorded.get(name) if isinstance(recorded, dict) else None
            return "hammer", (inner[name], recorded if isinstance(recorded, dict) else None)
    if _is_tensor_dict(obj):
        if "synthesis.input.freqs" in obj:
            return "official-state-dict", obj
        if _hammer_sg3(obj):
            return "hammer", (obj, None)
    return None


# ---------------------------------------------------------------------------------------------------------------
# formats


def _from_ours(obj, path):
    kwargs, sd = obj.get("init_kwargs"), obj.get("state_dict")
    if not isinstance(kwargs, dict) or not isinstance(sd, dict):
        raise ResefaError(f"{path}: resefa_fast StyleGAN3 file without `init_kwargs` / `state_dict` dicts; corrupt")
    unknown = sorted(set(kwargs) - set(_OUR_KWARGS))
    if unknown:
        raise ResefaError(f"{path}: resefa_fast file with unknown StyleGAN3 settings {unknown} (newer version?)")
    return dict(kwargs), dict(sd)


def _from_nvidia(record: PersistentRecord, path: str, meta: Dict[str, Any]):
    if record.class_name != "Generator":
        raise ResefaError(f"{path}: G_ema is a {record.class_name!r}; expected the Generator of "
                          "training.networks_stylegan3")
    init = init_arguments(record, _POSITIONAL, path, "StyleGAN3 G_ema")
    mapping_kwargs = dict(init.pop("mapping_kwargs", None) or {})
    kwargs = {k: init.pop(k) for k in _POSITIONAL[:5]}
    for key in _NVIDIA_IGNORED:
        for source in (init, mapping_kwargs):
            if key in source:
                meta["ignored"][key] = source.pop(key)
    kwargs["num_mapping_layers"] = mapping_kwargs.pop("num_layers", 2)
    kwargs["mapping_lr_multiplier"] = mapping_kwargs.pop("lr_multiplier", 0.01)
    unknown = sorted(k for k in init if k not in _NVIDIA_SYNTHESIS) + sorted(f"mapping_kwargs.{k}"
                                                                               for k in mapping_kwargs)
    if unknown:
        raise ResefaError(f"{path}: unsupported StyleGAN3 generator settings {unknown}; supported: "
                          f"{sorted(_NVIDIA_SYNTHESIS)} and mapping num_layers / lr_multiplier")
    kwargs.update({_NVIDIA_SYNTHESIS[k]: v for k, v in init.items()})
    sd = _record_state(record, path)
    return kwargs, sd, _children(_children(record)["synthesis"])


def _from_hammer(g, recorded, chosen, path: str, meta: Dict[str, Any]):
    if not _is_tensor_dict(g):
        raise ResefaError(f"{path}: Hammer StyleGAN3 generator state dict holds non-tensor values")
    if "w_avg" not in g:
        raise ResefaError(f"{path}: Hammer StyleGAN3 generator without `w_avg`; incomplete checkpoint")
    sd: Dict[str, torch.Tensor] = {}
    simple = {"w_avg": "mapping.w_avg", "synthesis.early_layer.weight": "synthesis.input.weight",
              "synthesis.early_layer.affine.weight": "synthesis.input.affine.weight",
              "synthesis.early_layer.affine.bias": "synthesis.input.affine.bias",
              "synthesis.early_layer.transform": "synthesis.input.transform",
              "synthesis.early_layer.frequency": "synthesis.input.freqs",
              "synthesis.early_layer.phase": "synthesis.input.phases"}
    layer_keys = {"magnitude_ema": "magnitude_ema", "conv.weight": "weight", "conv.style.weight": "affine.weight",
                  "conv.style.bias": "affine.bias", "filter.bias": "bias", "filter.up_filter": "up_filter",
                  "filter.down_filter": "down_filter"}
    grid = None
    for key, value in g.items():
        if key in simple:
            sd[simple[key]] = value
        elif key == "synthesis.early_layer.grid":
            grid = value
        elif m := re.fullmatch(r"mapping\.dense(\d+)\.(weight|bias)", key):
            sd[f"mapping.fc{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"mapping\.embedding\.(weight|bias)", key):
            sd[f"mapping.embed.{m[1]}"] = value
        elif (m := re.fullmatch(r"synthesis\.layer(\d+)\.(.+)", key)) and m[2] in layer_keys:
            sd[f"synthesis.layer{m[1]}.{layer_keys[m[2]]}"] = value  # renamed to L{i}_{size}_{ch} once built
        else:
            raise ResefaError(f"{path}: unexpected tensor `{key}` for a Hammer StyleGAN3 generator")
    dense = sorted(int(m[1]) for k in g if (m := re.fullmatch(r"mapping\.dense(\d+)\.weight", k)))
    if not dense:
        raise ResefaError(f"{path}: Hammer StyleGAN3 generator without mapping.dense* layers; incomplete checkpoint")
    w_dim = int(g[f"mapping.dense{dense[-1]}.weight"].shape[0])
    if tuple(sd["mapping.w_avg"].shape) != (w_dim,):
        raise ResefaError(f"{path}: w_avg of shape {tuple(sd['mapping.w_avg'].shape)}; only repeat_w=True generators "
                          f"(one w [{w_dim}] for all layers) are supported")
    if recorded is not None:
        kwargs = _hammer_recorded_kwargs(recorded, path, meta)
    else:
        size0 = int(grid.shape[1]) if grid is not None else None
        kwargs = _settings_of_state_dict(sd, chosen, path, meta, "hammer", size0=size0)
    names = _layer_names(kwargs, path)
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"synthesis\.layer(\d+)\.(.+)", key)
        if m:
            idx = int(m[1])
            if idx >= len(names):
                raise ResefaError(f"{path}: Hammer layer {idx} beyond the {len(names)} layers of {kwargs}")
            key = f"synthesis.{names[idx]}.{m[2]}"
        out[key] = value
    if grid is not None:  # Hammer stores the input's sampling grid; it must be the one the settings give
        plan = layer_plans(**kwargs)[0]
        expected = input_grid(plan["in_size"], plan["down_design"][3] / plan["down_factor"], torch.float64)[None]
        if tuple(grid.shape) != tuple(expected.shape) or float((grid.double() - expected).abs().max()) > 1e-5:
            raise ResefaError(f"{path}: synthesis.early_layer.grid {tuple(grid.shape)} is not the sampling grid of "
                              f"the settings {kwargs}")
    return kwargs, out


def _hammer_recorded_kwargs(recorded: Dict[str, Any], path: str, meta: Dict[str, Any]) -> Dict[str, Any]:
    if recorded.get("model_type", "StyleGAN3Generator") != "StyleGAN3Generator":
        raise ResefaError(f"{path}: model_kwargs_init names a {recorded.get('model_type')!r}; expected "
                          "StyleGAN3Generator")
    wrong = {k: recorded[k] for k, v in _HAMMER_FIXED.items() if k in recorded and recorded[k] != v}
    w_dim = recorded.get("w_dim")
    if recorded.get("mapping_fmaps", w_dim) != w_dim or (recorded.get("label_dim")
                                                        and recorded.get("embedding_dim", w_dim) != w_dim):
        wrong["mapping_fmaps / embedding_dim"] = (recorded.get("mapping_fmaps"), recorded.get("embedding_dim"))
    if wrong:
        raise ResefaError(f"{path}: unsupported Hammer StyleGAN3 settings {wrong}; supported: the official "
                          f"network's ({_HAMMER_FIXED}, mapping_fmaps = embedding_dim = w_dim)")
    kwargs = {ours: recorded[theirs] for theirs, ours in _HAMMER_KWARGS.items() if theirs in recorded}
    meta["ignored"].update({k: v for k, v in recorded.items() if k not in _HAMMER_KWARGS and k not in _HAMMER_FIXED
                            and k not in ("model_type", "mapping_fmaps", "embedding_dim")})
    return kwargs


def _layer_names(kwargs: Dict[str, Any], path: str) -> List[str]:
    try:
        return [plan["name"] for plan in layer_plans(**kwargs)]
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise ResefaError(f"{path}: StyleGAN3 settings {kwargs} do not give a layer schedule ({error})") from None


# ---------------------------------------------------------------------------------------------------------------
# settings of a bare state dict (official layout, layers possibly still named layer{i})


def _settings_of_state_dict(sd: Dict[str, torch.Tensor], chosen, path: str, meta: Dict[str, Any],
                            fmt: str, size0: Optional[int] = None) -> Dict[str, Any]:
    try:
        kwargs = infer_stylegan3_kwargs(sd, path, size0=size0)
    except ResefaError:
        if chosen is None:
            raise
        meta["assumptions"]["settings"] = f"from config {chosen.name!r} (not inferable from the file)"
        return dict(chosen.kwargs)
    if chosen is not None:  # the caller compares the inferred shape with the configuration's
        kwargs["conv_clamp"] = chosen.kwargs.get("conv_clamp", 256.0)
        meta["assumptions"]["conv_clamp"] = f"from config {chosen.name!r}"
        return kwargs
    meta["assumptions"].update(conv_clamp="256 (the official default; not recorded in a state dict)",
                               mapping_lr_multiplier="0.01 (official default)",
                               output_scale="0.25 (official default)",
                               filter_size="6, lrelu_upsampling 2 (official defaults; checked against the filters)",
                               schedule="inferred from shapes and checked against the stored filters")
    return kwargs


def infer_stylegan3_kwargs(sd: Dict[str, torch.Tensor], path: str = "<state dict>",
                           size0: Optional[int] = None) -> Dict[str, Any]:
    """:class:`StyleGAN3Generator` kwargs of a state dict in the official layout (layers named ``L{i}_{s}_{c}`` or
    ``layer{i}``), inferred from the shapes and checked against the stored filters (see the module docstring).
    ``size0``: the input's size when the layer names do not give it (Hammer's grid)."""
    def need(key):
        if key not in sd:
            raise ResefaError(f"{path}: missing tensor `{key}`; the file is not a complete StyleGAN3 generator")
        return sd[key]

    prefixes: Dict[int, Tuple[str, Optional[int]]] = {}
    for key in sd:
        if m := re.match(r"synthesis\.L(\d+)_(\d+)_(\d+)\.", key):
            prefixes[int(m[1])] = (f"synthesis.L{m[1]}_{m[2]}_{m[3]}", int(m[2]))
        elif m := re.match(r"synthesis\.layer(\d+)\.", key):
            prefixes[int(m[1])] = (f"synthesis.layer{m[1]}", None)
    n = len(prefixes) - 1
    if n < 1 or sorted(prefixes) != list(range(n + 1)):
        raise ResefaError(f"{path}: synthesis layers {sorted(prefixes)}; expected L0 .. LN (N >= 1) plus ToRGB")
    fc = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    if not fc or fc != list(range(len(fc))):
        raise ResefaError(f"{path}: mapping layers {fc}; expected mapping.fc0 .. fcN-1")
    w_dim = int(need(f"mapping.fc{fc[-1]}.weight").shape[0])
    embed = sd.get("mapping.embed.weight")
    c_dim = int(embed.shape[1]) if embed is not None else 0
    z_dim = int(need("mapping.fc0.weight").shape[1]) - (w_dim if c_dim else 0)
    weights = [need(f"{prefixes[i][0]}.weight") for i in range(n + 1)]
    channels = [int(w.shape[0]) for w in weights]
    channels0 = int(need("synthesis.input.weight").shape[0])
    kernel = int(weights[0].shape[-1])
    filter_size = 6
    ups, downs, radial = [], [], []
    for i in range(n + 1):
        fu, fd = sd.get(f"{prefixes[i][0]}.up_filter"), sd.get(f"{prefixes[i][0]}.down_filter")
        for f, out in ((fu, ups), (fd, downs)):
            taps = 1 if f is None else int(f.shape[-1])
            if taps % filter_size and taps != 1:
                raise ResefaError(f"{path}: filter of {taps} taps in layer {i}; expected filter_size (6) x factor")
            out.append(taps // filter_size if taps > 1 else 1)
        radial.append(fd is not None and fd.ndim == 2)
    ratio = np.prod([ups[i] / downs[i] for i in range(1, n + 1)])
    names_sizes = [prefixes[i][1] for i in range(n + 1)]
    if size0 is None:
        size0 = names_sizes[0]
    if size0 is None:
        raise ResefaError(f"{path}: the input's size is unknown (no layer sizes in the names, no grid); pass "
                          "`config=`")
    tried = []
    critical_options = [n - sum(radial)] if any(radial) else [2] + [c for c in range(n) if c != 2]
    for rate0 in [2 ** k for k in range(1, int(math.log2(size0)) + 1)]:
        if (size0 - rate0) % 2:
            continue
        resolution = int(round(rate0 * ratio))
        if names_sizes[-1] is not None and names_sizes[-1] != resolution:
            continue
        if resolution < 8 or resolution & (resolution - 1):
            continue
        for num_critical in critical_options:
            base = dict(z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, img_resolution=resolution,
                        img_channels=channels[-1], num_mapping_layers=len(fc), num_layers=n,
                        num_critical=num_critical, margin_size=(size0 - rate0) // 2, conv_kernel=kernel,
                        use_radial_filters=any(radial), conv_clamp=256.0)
            for channel_base, channel_max in _channel_candidates(base, [channels0] + channels[:n]):
                kwargs = dict(base, channel_base=channel_base, channel_max=channel_max)
                tried.append((resolution, num_critical, channel_base))
                if _filters_deviation(kwargs, sd, [prefixes[i][0] for i in range(n + 1)]) <= FILTER_ATOL:
                    return kwargs
    raise ResefaError(f"{path}: no StyleGAN3 schedule reproduces the stored filters and channels {channels} "
                      f"(tried resolution, num_critical, channel_base = {tried[:8]}{' ...' if len(tried) > 8 else ''});"
                      " unsupported hyperparameters, or pass `config=`")


def _channel_candidates(base: Dict[str, Any], channels: List[int]):
    """(channel_base, channel_max) pairs giving ``channels`` (input, then layers 0 .. N-1) for ``base``'s schedule:
    channel_max the largest count; channel_base powers of two first, then the value the smallest count implies."""
    sch = layer_schedule(base["img_resolution"], base["img_channels"], 1, 1, base["num_layers"],
                         base["num_critical"], 2, 2 ** 2.1, 2 ** 0.3, base["margin_size"])
    cutoffs = np.concatenate([sch["cutoffs"][:1], sch["cutoffs"][:-1]])
    channel_max = max(channels)
    j = int(np.argmin(channels))
    options = [2 ** k for k in range(4, 22)] + [int(round(2 * cutoffs[j] * channels[j]))]
    for channel_base in options:
        if all(int(np.rint(min(channel_base / 2 / c, channel_max))) == ch for c, ch in zip(cutoffs, channels,
                                                                                          strict=True)):
            yield channel_base, channel_max


def _filters_deviation(kwargs: Dict[str, Any], sd: Dict[str, torch.Tensor], prefixes: List[str]) -> float:
    """max |stored - designed| over all filters of the settings ``kwargs`` (inf where presence or shapes differ)."""
    worst = 0.0
    for plan, prefix in zip(layer_plans(**kwargs), prefixes, strict=True):
        for name in ("up", "down"):
            f, g = design_lowpass_filter(*plan[f"{name}_design"]), sd.get(f"{prefix}.{name}_filter")
            if (f is None) != (g is None) or (f is not None and tuple(f.shape) != tuple(g.shape)):
                return math.inf
            if f is not None:
                worst = max(worst, float((f.double() - g.double().cpu()).abs().max()))
    return worst


def _build(kwargs: Dict[str, Any], sd: Dict[str, torch.Tensor], path: str, fmt: str,
           strict_filters: bool = True) -> StyleGAN3Generator:
    """``StyleGAN3Generator(**kwargs)`` with ``sd`` loaded strictly (every key and shape); the stored filters must
    equal the designed ones within :data:`FILTER_ATOL`."""
    generator = build_checked(StyleGAN3Generator, kwargs, sd, path, fmt, "StyleGAN3 generator")
    own = generator.state_dict()
    if strict_filters:
        for key in [k for k in own if k.endswith("_filter")]:
            deviation = float((own[key].double() - sd[key].double().cpu()).abs().max())
            if deviation > FILTER_ATOL:
                raise ResefaError(f"{path}: stored `{key}` differs from the filter the settings design (max "
                                  f"|difference| {deviation:.2e}); unsupported hyperparameters {kwargs}")
    generator.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    return generator


def _check_records(generator: StyleGAN3Generator, records: Dict[str, Any], path: str) -> None:
    """The layer attributes an NVIDIA pickle records must equal the rebuilt ones."""
    for name, layer in zip(generator.synthesis.layer_names, generator.synthesis.layers, strict=True):
        record = records.get(name)
        state = record.state if isinstance(record, PersistentRecord) and isinstance(record.state, dict) else {}
        ours = dict(padding=list(layer.padding), up_factor=layer.up_factor, down_factor=layer.down_factor,
                    conv_kernel=layer.conv_kernel, in_size=[layer.in_size] * 2, out_size=[layer.out_size] * 2,
                    is_torgb=layer.is_torgb, conv_clamp=layer.conv_clamp)
        for key, value in ours.items():
            if key not in state:
                continue
            theirs = state[key]
            theirs = [int(v) for v in np.asarray(theirs).reshape(-1)] if isinstance(value, list) else theirs
            if theirs != value and not (isinstance(value, float) and theirs is not None and float(theirs) == value):
                raise ResefaError(f"{path}: layer {name} records {key} = {theirs!r}; the settings give {value!r}")
