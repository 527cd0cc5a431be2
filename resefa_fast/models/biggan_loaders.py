"""Load BigGAN checkpoints in the formats people have, and save our own (``resefa_fast.models.load`` calls
:func:`read_biggan` through ``loaders.FAMILY_READERS``). Nothing from a file is executed: ``torch.save`` files go
through ``torch.load(weights_only=True)`` (``loaders._read``), ``config.json`` through ``json``.

Formats (detected from the content):

- ``biggan-pytorch``: ajbrock BigGAN-PyTorch ``G_ema.pth`` / ``G.pth`` (a ``Generator.state_dict()``) and the TF-Hub
  biggan-128/256/512 conversions of its ``TFHub/converter.py`` (same keys, no ``sv0``): ``shared.weight``,
  ``linear.{weight,bias,u0}``, ``blocks.{i}.0.{conv1,conv2,conv_sc}.{weight,bias,u0,sv0}``,
  ``blocks.{i}.0.bn{1,2}.{gain,bias}.{weight,u0,sv0}``, ``blocks.{i}.0.bn{1,2}.{stored_mean,stored_var}``,
  ``blocks.{i}.1.{theta,phi,g,o}.{weight,u0,sv0}``, ``blocks.{i}.1.gamma``, ``output_layer.0.{gain,bias,stored_mean,
  stored_var}``, ``output_layer.2.{weight,bias,u0,sv0}``. Spectral norm in eval mode (``layers.SN.W_``): one power
  iteration from ``u0`` without update, ``v = normalize(u0 W)``, ``u = normalize(v Wᵀ)``, ``σ = v Wᵀ uᵀ``, weight
  ``W / σ`` (with ``num_G_SVs > 1`` the extra ``u1``, ``sv1`` ... only feed the logged singular values).
- ``pytorch-pretrained-biggan``: huggingface's BigGAN-deep, a folder (or the files) with ``config.json`` and
  ``pytorch_model.bin`` (``BigGAN.state_dict()``: ``embeddings.weight``, ``generator.gen_z``, ``generator.layers.{i}
  .{bn_0..3, conv_0..3}``, the attention module ``generator.layers.{p}.snconv1x1_{theta,phi,g,o_conv}`` + ``gamma``,
  ``generator.bn``, ``generator.conv_to_rgb``); ``torch.nn.utils.spectral_norm`` keys ``weight_orig``,
  ``weight_u``, ``weight_v``; eval mode: ``σ = u · (W v)`` with the stored vectors.
- ``hammer``: a Hammer/genforce-style wrapper (``models`` -> ``generator_smooth`` / ``generator``, or those keys at
  the top) around either state dict above. Neither Hammer nor genforce (nor the original ReSeFa code) ships a
  BigGAN model, so no BigGAN-specific layout of theirs exists to follow; the wrapper is read as theirs is.
- ``resefa_fast``: :func:`save_biggan` (class, init kwargs, folded state dict).

Folding is done in float64 and the result stored in the checkpoint's dtype.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import ResefaError
from .biggan import BIGGAN_ARCH, BIGGAN_CONFIGS, CLASSES, DEEP_LAYERS, OUTPUT_BN_EPS, biggan_config
from .loaders import build_checked

__all__ = ["read_biggan", "save_biggan", "convert_biggan_pytorch", "convert_pretrained_biggan", "sigma_biggan_pytorch",
           "sigma_torch_spectral_norm", "BIGGAN_FORMATS", "SAVE_FORMAT"]

BIGGAN_FORMATS = ("biggan-pytorch", "pytorch-pretrained-biggan", "hammer", "resefa_fast")
SAVE_FORMAT = "resefa_fast.biggan"
WEIGHTS_NAME, CONFIG_NAME = "pytorch_model.bin", "config.json"
#: BigGAN-PyTorch's ``SN_eps`` only bounds the norms in ``F.normalize`` from below (never reached by real weights);
#: its default.
SN_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# spectral norm, as each code computes it at inference


def sigma_biggan_pytorch(weight: torch.Tensor, u0: torch.Tensor, eps: float = SN_EPS) -> torch.Tensor:
    """BigGAN-PyTorch ``SN.W_`` in eval mode: one power iteration from ``u0`` ``[1, out]`` (not written back);
    returns σ (float64 scalar)."""
    w = weight.double().reshape(weight.shape[0], -1)  # [out, in·k·k]
    v = F.normalize(u0.double().reshape(1, -1) @ w, eps=eps)  # [1, in]
    u = F.normalize(v @ w.T, eps=eps)  # [1, out]
    return ((v @ w.T) @ u.T).reshape([])


def sigma_torch_spectral_norm(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``torch.nn.utils.spectral_norm`` in eval mode: ``σ = u · (W v)`` with the stored ``weight_u`` / ``weight_v``."""
    w = weight.double().reshape(weight.shape[0], -1)
    return torch.dot(u.double().reshape(-1), w @ v.double().reshape(-1))


# ---------------------------------------------------------------------------------------------------------------
# the FAMILY_READERS entry


def read_biggan(obj, path: str, config: Optional[str], device) -> Optional[Any]:
    """A ``LoadedModel`` when ``obj`` (the file's top object; None for a folder ``path``) is a BigGAN checkpoint,
    else None."""
    if obj is None:
        return _from_folder(path, config, device)
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == SAVE_FORMAT:
        return _finish(*_from_ours(obj, path), path, config, device)
    inner, where = _unwrap(obj)
    if inner is not None:
        kind = _kind(inner)
        if kind is None:
            return None
        fmt, kwargs, sd, meta = _convert(kind, inner, path, None)
        meta["wrapped"] = f"{where} holds a {fmt} state dict"
        return _finish("hammer", kwargs, sd, meta, path, config, device)
    kind = _kind(obj)
    if kind is None:
        return None
    return _finish(*_convert(kind, obj, path, _config_beside(path) if kind == "deep" else None), path, config,
                   device)


def _unwrap(obj) -> Tuple[Optional[dict], str]:
    """The generator state dict inside a Hammer/genforce-style wrapper, and where it was."""
    models = obj.get("models")
    for holder, prefix in ((models, "`models` -> "), (obj, "")):
        if isinstance(holder, dict):
            for name in ("generator_smooth", "generator"):
                if isinstance(holder.get(name), dict) and holder[name]:
                    return holder[name], f"{prefix}`{name}`"
    return None, ""


def _kind(sd) -> Optional[str]:
    """"biggan" (BigGAN-PyTorch layout), "deep" (pytorch-pretrained-biggan) or None (not a BigGAN state dict)."""
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) for k in sd):
        return None
    if "output_layer.2.weight" in sd or any(re.match(r"blocks\.\d+\.0\.conv1\.", k) for k in sd):
        return "biggan"
    if any(k.startswith("generator.gen_z.") or k.startswith("generator.layers.") for k in sd):
        return "deep"
    return None


def _tensors(sd: dict, path: str, what: str) -> Dict[str, torch.Tensor]:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ResefaError(f"{path}: {what} holds non-tensor entries {bad[:6]}; expected a state dict of tensors")
    return dict(sd)


def _convert(kind: str, sd: dict, path: str, config_json):
    if kind == "biggan":
        kwargs, out, meta = convert_biggan_pytorch(_tensors(sd, path, "the BigGAN-PyTorch state dict"), path)
        return "biggan-pytorch", kwargs, out, meta
    kwargs, out, meta = convert_pretrained_biggan(_tensors(sd, path, "the pytorch-pretrained-biggan state dict"),
                                                  path, config_json)
    return "pytorch-pretrained-biggan", kwargs, out, meta


# ---------------------------------------------------------------------------------------------------------------
# BigGAN-PyTorch


def _need(sd, key, path, fmt):
    if key not in sd:
        raise ResefaError(f"{path}: missing tensor `{key}`; not a complete {fmt} BigGAN generator")
    return sd[key]


def convert_biggan_pytorch(sd: Dict[str, torch.Tensor], path: str = "<state dict>", bn_eps: Optional[float] = None,
                           sn_eps: float = SN_EPS) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(init kwargs, our state dict, metadata)`` of a BigGAN-PyTorch generator state dict: shapes -> kwargs,
    spectral norm folded (:func:`sigma_biggan_pytorch`), ``u0`` / ``sv0`` dropped."""
    fmt = "BigGAN-PyTorch"
    if any(re.search(r"\.bn\d\.bn\.", k) for k in sd):
        raise ResefaError(f"{path}: batch norms with an inner `bn` module (BigGAN-PyTorch --mybn / --cross_replica) "
                          "are not supported; expected bn1/bn2 with stored_mean / stored_var")
    if "shared.weight" not in sd:
        raise ResefaError(f"{path}: no `shared.weight`: a BigGAN-PyTorch generator without a shared class embedding "
                          "(G_shared=False) is not supported")
    num_classes, embed_dim = (int(s) for s in sd["shared.weight"].shape)
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.0\.conv1\.weight$", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ResefaError(f"{path}: residual blocks {blocks}; expected blocks.0 .. blocks.N-1")
    resolution = 4 * 2 ** len(blocks)
    if resolution not in BIGGAN_ARCH:
        raise ResefaError(f"{path}: {len(blocks)} residual blocks make {resolution}x{resolution}; BigGAN-PyTorch's "
                          f"architectures are {sorted(BIGGAN_ARCH)}")
    channels = [tuple(int(s) for s in _need(sd, f"blocks.{i}.0.conv1.weight", path, fmt).shape[1::-1])
                for i in blocks]  # (in, out)
    ins, outs = BIGGAN_ARCH[resolution]
    ch = channels[-1][1] // outs[-1]
    if any((cin, cout) != (ch * i, ch * o) for (cin, cout), i, o in zip(channels, ins, outs, strict=True)):
        raise ResefaError(f"{path}: block channels {channels} do not follow BigGAN-PyTorch's G_arch for "
                          f"{resolution}x{resolution} (ch x {list(zip(ins, outs, strict=True))})")
    cond_dim = int(_need(sd, "blocks.0.0.bn1.gain.weight", path, fmt).shape[1])
    chunk = int(_need(sd, "linear.weight", path, fmt).shape[1])
    hier = cond_dim != embed_dim
    if hier and cond_dim - embed_dim != chunk:
        raise ResefaError(f"{path}: batch-norm input {cond_dim} != shared_dim {embed_dim} + z chunk {chunk}; "
                          "not a hierarchical BigGAN-PyTorch generator")
    attention = [8 * 2 ** i for i in blocks if f"blocks.{i}.1.theta.weight" in sd]
    meta: Dict[str, Any] = dict(assumptions={}, ignored={})
    if bn_eps is None:
        tfhub = not any(k.endswith(".sv0") for k in sd)
        bn_eps = 1e-4 if tfhub else 1e-5
        meta["assumptions"]["bn_eps"] = (
            "1e-4: no sv0 buffers, i.e. a TF-Hub conversion (TFHub/converter.py uses BN_eps 1e-4)" if tfhub else
            "1e-5: BigGAN-PyTorch's default and its launch scripts' BN_eps (not recorded in the file)")
    kwargs = dict(img_resolution=resolution, ch=ch, z_dim=chunk * (len(blocks) + 1) if hier else chunk,
                  embed_dim=embed_dim, num_classes=num_classes, hier=hier,
                  attention="_".join(str(r) for r in attention) or "0", bn_eps=float(bn_eps), bottom_width=4)
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if re.search(r"\.(u|sv)\d+$", key):  # σ uses u0 only: extra singular vectors (num_G_SVs > 1) are logging
            continue
        u0 = sd.get(key[:-len("weight")] + "u0") if key.endswith(".weight") else None
        if u0 is not None:
            out[key] = (value.double() / sigma_biggan_pytorch(value, u0, sn_eps)).to(value.dtype)
        else:
            out[key] = value
    spectral = [k for k in out if k.endswith(".weight") and k not in ("shared.weight",)
                and not k.startswith("output_layer.0.")]
    unnormalised = [k for k in spectral if k[:-len("weight")] + "u0" not in sd]
    if unnormalised:
        raise ResefaError(f"{path}: spectrally normalised weights without their `u0` vector: {unnormalised[:6]}")
    for key in [k for k in out if k.endswith(".gamma")]:
        out[key] = out[key].reshape([])  # a scalar parameter (the TF-Hub conversion may store [1])
    return kwargs, out, meta


# ---------------------------------------------------------------------------------------------------------------
# pytorch-pretrained-biggan


def convert_pretrained_biggan(sd: Dict[str, torch.Tensor], path: str = "<state dict>",
                              config_json: Optional[Tuple[str, Dict[str, Any]]] = None
                              ) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(init kwargs, our state dict, metadata)`` of a pytorch-pretrained-biggan ``BigGAN.state_dict()``;
    ``config_json`` = ``(its path, its content)`` when there is one (checked against the shapes; gives the layers'
    up-sampling flags and eps, which the weights do not show)."""
    fmt = "pytorch-pretrained-biggan"
    z_dim, num_classes = (int(s) for s in _need(sd, "embeddings.weight", path, fmt).shape)
    gen_z = _need(sd, "generator.gen_z.weight_orig", path, fmt)
    if gen_z.shape[1] != 2 * z_dim or gen_z.shape[0] % 256:
        raise ResefaError(f"{path}: generator.gen_z.weight_orig {tuple(gen_z.shape)} does not fit z_dim {z_dim} "
                          "(expected [256·channel_width, 2·z_dim])")
    ch = int(gen_z.shape[0]) // 256
    modules = sorted({int(m.group(1)) for k in sd if (m := re.match(r"generator\.layers\.(\d+)\.", k))})
    if modules != list(range(len(modules))) or not modules:
        raise ResefaError(f"{path}: generator layers {modules}; expected generator.layers.0 .. N-1")
    attention = [i for i in modules if f"generator.layers.{i}.snconv1x1_theta.weight_orig" in sd]
    if len(attention) != 1:
        raise ResefaError(f"{path}: {len(attention)} self-attention modules (generator.layers.*.snconv1x1_theta); "
                          "expected exactly one")
    blocks = [i for i in modules if i != attention[0]]
    shapes = []
    for i in blocks:
        cin = int(_need(sd, f"generator.layers.{i}.bn_0.running_means", path, fmt).shape[1])
        cout = int(_need(sd, f"generator.layers.{i}.conv_3.weight_orig", path, fmt).shape[0])
        if cin % ch or cout % ch:
            raise ResefaError(f"{path}: block {i} channels {cin} -> {cout} are not multiples of channel_width {ch}")
        shapes.append((cin // ch, cout // ch))
    n_stats = int(_need(sd, "generator.bn.running_means", path, fmt).shape[0])
    meta: Dict[str, Any] = dict(assumptions={}, ignored={})
    eps = 1e-4
    if config_json is not None:
        where, cfg = config_json
        ups = [bool(layer[0]) for layer in cfg.get("layers", [])]
        expected = dict(z_dim=z_dim, class_embed_dim=z_dim, channel_width=ch, num_classes=num_classes,
                        attention_layer_position=attention[0], n_stats=n_stats)
        wrong = {k: (cfg.get(k), v) for k, v in expected.items() if k in cfg and cfg[k] != v}
        layers_cfg = [(int(layer[1]), int(layer[2])) for layer in cfg.get("layers", [])]
        if layers_cfg and layers_cfg != shapes:
            wrong["layers"] = (layers_cfg, shapes)
        if wrong:
            raise ResefaError(f"{where}: does not match the weights in {path}: "
                              + ", ".join(f"{k} {a!r} in config.json, {b!r} in the weights" for k, (a, b) in
                                          wrong.items()))
        eps = float(cfg.get("eps", 1e-4))
        if not ups:
            ups = [i % 2 == 1 for i in range(len(shapes))]
            meta["assumptions"]["layers"] = "up-sampling on every second block (config.json lists no layers)"
        if "output_dim" in cfg and cfg["output_dim"] != 4 * 2 ** sum(ups):
            raise ResefaError(f"{where}: output_dim {cfg['output_dim']} but its layers up-sample to "
                              f"{4 * 2 ** sum(ups)}")
        meta["config_json"] = where
    else:
        known = {len(v): v for v in DEEP_LAYERS.values()}.get(len(shapes))
        ups = [bool(u) for u, _, _ in known] if known else [i % 2 == 1 for i in range(len(shapes))]
        meta["assumptions"]["layers"] = ("up-sampling as in the released config of the same depth" if known else
                                         "up-sampling on every second block (as in every released config)")
        meta["assumptions"]["eps"] = "1e-4 (BigGANConfig's default; no config.json beside the weights)"
    layers = [[up, cin, cout] for up, (cin, cout) in zip(ups, shapes, strict=True)]
    kwargs = dict(img_resolution=4 * 2 ** sum(ups), z_dim=z_dim, ch=ch, num_classes=num_classes, layers=layers,
                  attention_layer_position=attention[0], eps=eps, n_stats=n_stats)
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(("weight_u", "weight_v")):
            continue
        if key.endswith(".weight_orig"):
            stem = key[:-len("weight_orig")]
            u, v = sd.get(stem + "weight_u"), sd.get(stem + "weight_v")
            if u is None or v is None:
                raise ResefaError(f"{path}: `{key}` without its `weight_u` / `weight_v` (spectral norm of PyTorch "
                                  "< 1.0, or an incomplete file); expected both")
            out[stem + "weight"] = (value.double() / sigma_torch_spectral_norm(value, u, v)).to(value.dtype)
        else:
            out[key] = value
    for key in ("generator.conv_to_rgb.weight", "generator.conv_to_rgb.bias"):
        if key in out:  # the package computes channel_width outputs and keeps the first 3
            out[key] = out[key][:3]
    return kwargs, out, meta


def _config_beside(path: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The ``config.json`` of a ``pytorch_model.bin``: in its folder, or ``<name>-config.json`` beside
    ``<name>-pytorch_model.bin`` (the package's download cache names)."""
    folder, name = os.path.split(os.path.abspath(path))
    candidates = [os.path.join(folder, CONFIG_NAME)]
    if name.endswith(WEIGHTS_NAME) and name != WEIGHTS_NAME:
        candidates.insert(0, os.path.join(folder, name[:-len(WEIGHTS_NAME)] + CONFIG_NAME))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate, _read_json(candidate)
    return None


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResefaError(f"{path}: not a readable JSON BigGAN config ({type(error).__name__}: {error})") from None
    if not isinstance(cfg, dict):
        raise ResefaError(f"{path}: expected a JSON object (pytorch-pretrained-biggan BigGANConfig); got "
                          f"{type(cfg).__name__}")
    return cfg


def _from_folder(path: str, config: Optional[str], device):
    weights, cfg = os.path.join(path, WEIGHTS_NAME), os.path.join(path, CONFIG_NAME)
    if not os.path.exists(weights):
        if os.path.exists(cfg):
            raise ResefaError(f"{path}: has {CONFIG_NAME} but no {WEIGHTS_NAME}; a pytorch-pretrained-biggan folder "
                              "needs both")
        return None
    from .loaders import _read
    with open(weights, "rb") as f:
        obj = _read(f.read(), weights)
    if _kind(obj) != "deep":
        raise ResefaError(f"{weights}: not a pytorch-pretrained-biggan state dict (expected embeddings.weight, "
                          "generator.gen_z.*, generator.layers.*)")
    beside = (cfg, _read_json(cfg)) if os.path.exists(cfg) else None
    return _finish(*_convert("deep", obj, weights, beside), path, config, device)


# ---------------------------------------------------------------------------------------------------------------
# ours


def save_biggan(generator, path, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Save a BigGAN generator as a plain ``torch.save`` dict (``format``, ``class``, ``init_kwargs``,
    ``state_dict``, ``metadata``) that ``resefa_fast.models.load`` reads back with ``weights_only=True``."""
    name = type(generator).__name__
    if name not in CLASSES or not isinstance(generator, CLASSES[name]):
        raise ResefaError(f"`generator` must be a BigGANGenerator or BigGANDeepGenerator; got {name}")
    payload = dict(format=SAVE_FORMAT, version=1, **{"class": name}, init_kwargs=dict(generator.init_kwargs),
                   state_dict={k: v.detach().cpu() for k, v in generator.state_dict().items()},
                   metadata=dict(metadata or {}))
    torch.save(payload, os.fspath(path))


def _from_ours(obj, path):
    cls, kwargs, sd = obj.get("class"), obj.get("init_kwargs"), obj.get("state_dict")
    if cls not in CLASSES or not isinstance(kwargs, dict) or not isinstance(sd, dict):
        raise ResefaError(f"{path}: resefa_fast BigGAN file without a known `class` ({sorted(CLASSES)}) and "
                          "`init_kwargs` / `state_dict` dicts; corrupt")
    meta = dict(assumptions={}, ignored={}, saved_metadata=obj.get("metadata", {}), generator_class=cls)
    return "resefa_fast", kwargs, sd, meta


# ---------------------------------------------------------------------------------------------------------------
# build, check, name


_EPS_KEY = {"BigGANGenerator": "bn_eps", "BigGANDeepGenerator": "eps"}


def _class_of(kwargs: Dict[str, Any], meta: Dict[str, Any]) -> str:
    return meta.get("generator_class") or ("BigGANDeepGenerator" if "layers" in kwargs else "BigGANGenerator")


def _finish(fmt: str, kwargs: Dict[str, Any], sd: Dict[str, torch.Tensor], meta: Dict[str, Any], path: str,
            config: Optional[str], device):
    from .loaders import LoadedModel
    cls = _class_of(kwargs, meta)
    eps_key = _EPS_KEY[cls]
    chosen = None
    if config is not None:
        if config not in BIGGAN_CONFIGS:
            raise ResefaError(f"{path}: is a BigGAN checkpoint; `config` must name a BigGAN configuration "
                              f"({sorted(BIGGAN_CONFIGS)}); got {config!r}")
        c_cls, c_kwargs, _ = biggan_config(config)
        wrong = {k: (kwargs.get(k), v) for k, v in c_kwargs.items() if k != eps_key and kwargs.get(k) != v}
        if c_cls != cls or wrong:
            raise ResefaError(f"{path}: does not match `config` {config!r}: " + (
                f"a {cls} in the file, a {c_cls} in the configuration" if c_cls != cls else ", ".join(
                    f"{k} is {a!r} in the file, {b!r} in the configuration" for k, (a, b) in wrong.items())))
        chosen = config
        if eps_key in meta["assumptions"]:
            kwargs = dict(kwargs, **{eps_key: c_kwargs[eps_key]})
            meta["assumptions"][eps_key] = f"from config {config!r}"
    generator = _build(cls, kwargs, sd, path, fmt)
    candidates = [name for name, (c_cls, c_kwargs, _) in BIGGAN_CONFIGS.items() if c_cls == cls and all(
        generator.init_kwargs.get(k) == v for k, v in c_kwargs.items()
        if k != eps_key or eps_key not in meta["assumptions"])]
    exact = [name for name in candidates if BIGGAN_CONFIGS[name][1][eps_key] == generator.init_kwargs[eps_key]]
    if chosen is None and len(exact) == 1:  # named only when the (possibly assumed) eps agrees too
        chosen = exact[0]
    generator = generator.to(device).eval().requires_grad_(False)
    metadata = dict(format=fmt, path=path, family="biggan-deep" if cls == "BigGANDeepGenerator" else "biggan",
                    generator_class=cls, init_kwargs=dict(generator.init_kwargs), config=chosen,
                    config_candidates=candidates, valid_region=None, num_classes=generator.num_classes,
                    w_avg_source="none: BigGAN has no w space (LoadedModel.w_avg is None)", **{
                        k: v for k, v in meta.items() if k != "generator_class"})
    metadata["assumptions"]["output_bn_eps"] = (f"{OUTPUT_BN_EPS} (BigGAN-PyTorch's layers.bn default)"
                                                if cls == "BigGANGenerator" else "the config's eps")
    return LoadedModel(generator, None, metadata)


def _build(cls: str, kwargs: Dict[str, Any], sd: Dict[str, torch.Tensor], path: str, fmt: str):
    generator = build_checked(CLASSES[cls], kwargs, sd, path, fmt, cls)
    own = generator.state_dict()
    generator.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    return generator
