"""Test helpers for resefa_fast.models: random checkpoints in each format's own key names and layouts, and an
independent reference forward pass written the way the original codes compute (fused modulated convolution via
grouped convolution, the FIR filter applied tap by tap), in float64.

Format facts used here (public sources):
- stylegan2-ada-pytorch ``training/networks.py``: ``mapping.fc{i}``, ``mapping.embed``, ``mapping.w_avg``;
  ``synthesis.b{r}.{const, conv0, conv1, torgb, skip}``; layers hold ``affine`` (bias init 1), ``weight``
  ``[O, I, k, k]``, ``bias``, ``noise_const`` ``[r, r]``, ``noise_strength`` ``[]``, ``resample_filter`` ``[4, 4]``;
  network pickles are ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` calls.
- rosinality ``model.py``: ``style.{1..n}``, ``input.input`` ``[1, C, 4, 4]``, ``conv1``, ``to_rgb1``,
  ``convs.{j}``, ``to_rgbs.{j}``, ``noises.noise_{i}`` ``[1, 1, r, r]``; ModulatedConv2d weight ``[1, O, I, k, k]``
  scaled by ``1/√fan_in`` before modulation and demodulation; ``conv.modulation``, ``noise.weight`` ``[1]``,
  ``activate.bias``, ToRGB ``bias`` ``[1, 3, 1, 1]``; blur kernels ``*.blur.kernel`` / ``*.upsample.kernel``.
- Hammer (the original ReSeFa's ``models/stylegan2_generator.py``): ``mapping.dense{i}``, ``w_avg``,
  ``synthesis.early_layer.const`` ``[1, C, 4, 4]``, ``synthesis.layer{i}`` (``style`` with the +1 in its bias,
  ``noise`` ``[1, 1, r, r]``, ``filter``), ``synthesis.output{i}``, ``synthesis.residual{i}``, ``synthesis.filter``;
  demodulated layers use the unscaled weight, toRGB scales the style by ``1/√fan_in``.
- genforce ``models/stylegan2_generator.py``: as Hammer but ``truncation.w_avg``, style bias *without* the +1 (added
  at run time), every weight scaled by ``1/√fan_in`` before modulation, up-sampling weights flipped at run time.
"""
from __future__ import annotations

import math
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2)


def channels_of(kw):
    res = [4 * 2 ** i for i in range(int(math.log2(kw["img_resolution"])) - 1)]
    return res, {r: min(kw["channel_base"] // r, kw["channel_max"]) for r in res}


def taps_filter(gain=1.0):
    f = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64)
    f = torch.outer(f, f)
    return f / f.sum() * gain


# ---------------------------------------------------------------------------------------------------------------
# random official-layout state dicts (what G_ema.state_dict() holds)


def random_official(kw, seed=0, with_filters=True):
    """A random ``G_ema.state_dict()`` of the official code for ``kw`` (our init kwargs names)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale + shift

    res, ch = channels_of(kw)
    w_dim, z_dim, c_dim = kw["w_dim"], kw["z_dim"], kw["c_dim"]
    sd = OrderedDict()
    embed = (kw.get("embed_features") or w_dim) if c_dim else 0
    feats = [z_dim + embed] + [kw.get("layer_features") or w_dim] * (kw["num_mapping_layers"] - 1) + [w_dim]
    if c_dim:
        sd["mapping.embed.weight"], sd["mapping.embed.bias"] = r(embed, c_dim), r(embed, scale=0.1)
    for i in range(kw["num_mapping_layers"]):
        sd[f"mapping.fc{i}.weight"] = r(feats[i + 1], feats[i], scale=100.0)  # stored / lr_multiplier
        sd[f"mapping.fc{i}.bias"] = r(feats[i + 1], scale=10.0)
    sd["mapping.w_avg"] = r(w_dim, scale=0.5)

    def layer(prefix, cin, cout, k, res_, noise=True):
        sd[f"{prefix}.affine.weight"] = r(cin, w_dim)
        sd[f"{prefix}.affine.bias"] = r(cin, scale=0.2, shift=1.0)
        sd[f"{prefix}.weight"] = r(cout, cin, k, k)
        sd[f"{prefix}.bias"] = r(cout, scale=0.2)
        if noise and kw.get("use_noise", True):
            sd[f"{prefix}.noise_const"] = r(res_, res_)
            sd[f"{prefix}.noise_strength"] = r(scale=0.3)
        if with_filters and k == 3:
            sd[f"{prefix}.resample_filter"] = taps_filter().float().double()

    for r_ in res:
        b = f"synthesis.b{r_}"
        last = r_ == res[-1]
        if with_filters:
            sd[f"{b}.resample_filter"] = taps_filter()
        if r_ == 4:
            sd[f"{b}.const"] = r(ch[4], 4, 4)
        else:
            layer(f"{b}.conv0", ch[r_ // 2], ch[r_], 3, r_)
        layer(f"{b}.conv1", ch[r_], ch[r_], 3, r_)
        if last or kw.get("architecture", "skip") == "skip":
            layer(f"{b}.torgb", ch[r_], kw["img_channels"], 1, r_, noise=False)
        if r_ > 4 and kw.get("architecture", "skip") == "resnet":
            sd[f"{b}.skip.weight"] = r(ch[r_], ch[r_ // 2], 1, 1)
            if with_filters:
                sd[f"{b}.skip.resample_filter"] = taps_filter()
    return sd


# ---------------------------------------------------------------------------------------------------------------
# the reference forward pass (official semantics, fused form), on a neutral description of the layers


def fir(x, up=1, pad=(0, 0), gain=1.0):
    """upfirdn2d written out: zero insertion by strided assignment, padding, the 4x4 [1,3,3,1] filter tap by tap."""
    if up > 1:
        y = x.new_zeros(x.shape[0], x.shape[1], x.shape[2] * up, x.shape[3] * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    f = taps_filter(gain)
    k = f.shape[0]
    h, w = x.shape[2] - k + 1, x.shape[3] - k + 1
    out = x.new_zeros(x.shape[0], x.shape[1], h, w)
    for a in range(k):
        for b in range(k):
            out += f[k - 1 - a, k - 1 - b] * x[:, :, a:a + h, b:b + w]  # true convolution
    return out


def ref_modconv(x, w, L, demodulate, up=False):
    """Fused modulated conv as the official code does it (per-sample weights, grouped convolution)."""
    B, I = x.shape[:2]
    styles = w @ (L["aW"] / math.sqrt(L["aW"].shape[1])).T + L["ab"] + L.get("style_offset", 0.0)  # [B, I]
    styles = styles * L.get("style_gain", 1.0)
    W = L["W"] * L.get("weight_scale", 1.0)
    if up and L.get("flip_up", False):
        W = W.flip([2, 3])
    Wm = W[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
    if demodulate:
        Wm = Wm * torch.rsqrt(Wm.square().sum(dim=[2, 3, 4]) + 1e-8)[:, :, None, None, None]
    O, k = Wm.shape[1], Wm.shape[-1]
    xg = x.reshape(1, B * I, *x.shape[2:])
    if up:
        wt = Wm.transpose(1, 2).reshape(B * I, O, k, k)
        y = F.conv_transpose2d(xg, wt, stride=2, groups=B)
        y = fir(y, pad=(1, 1), gain=4.0)
    else:
        y = F.conv2d(xg, Wm.reshape(B * O, I, k, k), padding=k // 2, groups=B)
    return y.reshape(B, O, *y.shape[2:])


def ref_layer(x, w, L, noise_mode, up=False, gain=1.0, clamp=None):
    y = ref_modconv(x, w, L, True, up)
    if noise_mode == "const" and "noise" in L:
        y = y + L["noise"] * L["noise_strength"]
    y = F.leaky_relu(y + L["bias"][None, :, None, None], 0.2) * SQRT2 * gain
    return y if clamp is None else y.clamp(-clamp * gain, clamp * gain)


def ref_torgb(x, w, L, clamp=None):
    y = ref_modconv(x, w, L, False) + L["bias"][None, :, None, None]
    return y if clamp is None else y.clamp(-clamp, clamp)


def ref_synthesis(blocks, ws, noise_mode="const", clamp=None):
    """``blocks``: per resolution dict(const | conv0, conv1, torgb?, skip?); ``ws`` ``[B, num_ws, w_dim]``."""
    x = img = None
    row = 0
    for blk in blocks:
        if "const" in blk:
            x = blk["const"][None].repeat(ws.shape[0], 1, 1, 1)
            x = ref_layer(x, ws[:, row], blk["conv1"], noise_mode, clamp=clamp)
            used = 1
        elif "skip" in blk:
            y = fir(x, up=2, pad=(2, 1), gain=4.0)
            y = F.conv2d(y, blk["skip"] / math.sqrt(blk["skip"].shape[1])) * math.sqrt(0.5)
            x = ref_layer(x, ws[:, row], blk["conv0"], noise_mode, up=True, clamp=clamp)
            x = ref_layer(x, ws[:, row + 1], blk["conv1"], noise_mode, gain=math.sqrt(0.5), clamp=clamp)
            x = x + y
            used = 2
        else:
            x = ref_layer(x, ws[:, row], blk["conv0"], noise_mode, up=True, clamp=clamp)
            x = ref_layer(x, ws[:, row + 1], blk["conv1"], noise_mode, clamp=clamp)
            used = 2
        if img is not None:
            img = fir(img, up=2, pad=(2, 1), gain=4.0)
        if "torgb" in blk:
            y = ref_torgb(x, ws[:, row + used], blk["torgb"], clamp=clamp)
            img = y if img is None else img + y
        row += used
    return img


def ref_mapping(M, z, c=None, psi=1.0, cutoff=None, num_ws=None):
    """``M``: dict(fcs=[(W, b)], embed=(W, b) | None, lr, w_avg)."""
    def norm(v):
        return v * (v.square().mean(1, keepdim=True) + 1e-8).rsqrt()

    def fc(v, W, b, lr, act):
        v = v @ (W * lr / math.sqrt(W.shape[1])).T + b * lr
        return F.leaky_relu(v, 0.2) * SQRT2 if act else v

    x = norm(z)
    if M.get("embed") is not None:
        x = torch.cat([x, norm(fc(c, *M["embed"], 1.0, False))], 1)
    for W, b in M["fcs"]:
        x = fc(x, W, b, M["lr"], True)
    ws = x[:, None].repeat(1, num_ws, 1)
    if psi != 1:
        cut = num_ws if cutoff is None else cutoff
        ws[:, :cut] = M["w_avg"] + psi * (ws[:, :cut] - M["w_avg"])
    return ws


def official_blocks(sd, kw):
    """Neutral description of an official-layout state dict."""
    res, _ = channels_of(kw)

    def L(p, rgb=False):
        d = dict(aW=sd[f"{p}.affine.weight"], ab=sd[f"{p}.affine.bias"], W=sd[f"{p}.weight"], bias=sd[f"{p}.bias"])
        if f"{p}.noise_const" in sd:
            d.update(noise=sd[f"{p}.noise_const"], noise_strength=sd[f"{p}.noise_strength"])
        if rgb:
            d["style_gain"] = 1 / math.sqrt(d["W"].shape[1])
        return d

    blocks = []
    for r in res:
        b = f"synthesis.b{r}"
        blk = {"conv1": L(f"{b}.conv1")}
        if r == 4:
            blk["const"] = sd[f"{b}.const"]
        else:
            blk["conv0"] = L(f"{b}.conv0")
        if f"{b}.torgb.weight" in sd:
            blk["torgb"] = L(f"{b}.torgb", rgb=True)
        if f"{b}.skip.weight" in sd:
            blk["skip"] = sd[f"{b}.skip.weight"]
        blocks.append(blk)
    n = kw["num_mapping_layers"]
    M = dict(fcs=[(sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"]) for i in range(n)],
             embed=(sd["mapping.embed.weight"], sd["mapping.embed.bias"]) if kw["c_dim"] else None,
             lr=kw.get("mapping_lr_multiplier", 0.01), w_avg=sd["mapping.w_avg"])
    return blocks, M


# ---------------------------------------------------------------------------------------------------------------
# rosinality


def random_rosinality(res_log2=4, style_dim=8, n_mlp=2, seed=1, channels=None):
    """A random rosinality ``g_ema`` state dict (size 2**res_log2) and its ``latent_avg``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale + shift

    ch = channels or {4: 16, 8: 16, 16: 8, 32: 8}
    sd = OrderedDict()
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = r(style_dim, style_dim, scale=100.0)
        sd[f"style.{i}.bias"] = r(style_dim, scale=10.0)
    sd["input.input"] = r(1, ch[4], 4, 4)

    def styled(p, cin, cout, k, up=False):
        sd[f"{p}.conv.weight"] = r(1, cout, cin, k, k)
        sd[f"{p}.conv.modulation.weight"] = r(cin, style_dim)
        sd[f"{p}.conv.modulation.bias"] = r(cin, scale=0.2, shift=1.0)
        if up:
            sd[f"{p}.conv.blur.kernel"] = taps_filter(4.0)
        sd[f"{p}.noise.weight"] = r(1, scale=0.3)
        sd[f"{p}.activate.bias"] = r(cout, scale=0.2)

    def rgb(p, cin, up):
        if up:
            sd[f"{p}.upsample.kernel"] = taps_filter(4.0)
        sd[f"{p}.conv.weight"] = r(1, 3, cin, 1, 1)
        sd[f"{p}.conv.modulation.weight"] = r(cin, style_dim)
        sd[f"{p}.conv.modulation.bias"] = r(cin, scale=0.2, shift=1.0)
        sd[f"{p}.bias"] = r(1, 3, 1, 1, scale=0.2)

    styled("conv1", ch[4], ch[4], 3)
    rgb("to_rgb1", ch[4], False)
    num_layers = (res_log2 - 2) * 2 + 1
    for i in range(num_layers):
        rr = 2 ** ((i + 5) // 2)
        sd[f"noises.noise_{i}"] = r(1, 1, rr, rr)
    cin = ch[4]
    for j, i in enumerate(range(3, res_log2 + 1)):
        cout = ch[2 ** i]
        styled(f"convs.{2 * j}", cin, cout, 3, up=True)
        styled(f"convs.{2 * j + 1}", cout, cout, 3)
        rgb(f"to_rgbs.{j}", cout, True)
        cin = cout
    return sd, r(style_dim, scale=0.5)


def rosinality_blocks(sd, res_log2):
    """Rosinality semantics: weight scaled by 1/√fan_in before modulation (and demodulation), no style gain."""
    def L(p, rgb=False):
        W = sd[f"{p}.conv.weight"][0]
        d = dict(aW=sd[f"{p}.conv.modulation.weight"], ab=sd[f"{p}.conv.modulation.bias"], W=W,
                 weight_scale=1 / math.sqrt(W[0].numel()))
        if rgb:
            d["bias"] = sd[f"{p}.bias"].reshape(-1)
        else:
            d["bias"] = sd[f"{p}.activate.bias"]
            d["noise_strength"] = sd[f"{p}.noise.weight"][0]
        return d

    def noise(i):
        return sd[f"noises.noise_{i}"][0, 0]

    first = L("conv1")
    first["noise"] = noise(0)
    blocks = [dict(const=sd["input.input"][0], conv1=first, torgb=L("to_rgb1", rgb=True))]
    for j in range(res_log2 - 2):
        c0, c1 = L(f"convs.{2 * j}"), L(f"convs.{2 * j + 1}")
        c0["noise"], c1["noise"] = noise(2 * j + 1), noise(2 * j + 2)
        blocks.append(dict(conv0=c0, conv1=c1, torgb=L(f"to_rgbs.{j}", rgb=True)))
    n = len([k for k in sd if k.startswith("style.") and k.endswith(".weight")])
    return blocks, [(sd[f"style.{i}.weight"], sd[f"style.{i}.bias"]) for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------------------------
# Hammer / genforce


def random_hammer(kw, seed=2, genforce=False):
    """A random Hammer (or genforce) generator state dict for ``kw`` (skip or resnet; genforce: skip only)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale + shift

    res, ch = channels_of(kw)
    w_dim = kw["w_dim"]
    sd = OrderedDict()
    for i in range(kw["num_mapping_layers"]):
        sd[f"mapping.dense{i}.weight"] = r(w_dim, kw["z_dim"] if i == 0 else w_dim, scale=100.0)
        sd[f"mapping.dense{i}.bias"] = r(w_dim, scale=10.0)
    sd["truncation.w_avg" if genforce else "w_avg"] = r(w_dim, scale=0.5)
    sd["synthesis.early_layer.const"] = r(1, ch[4], 4, 4)
    style_shift = 0.0 if genforce else 1.0  # genforce adds the +1 at run time

    def mod(p, cin, cout, k, rr, noise=True, up=False):
        sd[f"{p}.weight"] = r(cout, cin, k, k)
        sd[f"{p}.bias"] = r(cout, scale=0.2)
        sd[f"{p}.style.weight"] = r(cin, w_dim)
        sd[f"{p}.style.bias"] = r(cin, scale=0.2, shift=style_shift)
        if noise:
            sd[f"{p}.noise_strength"] = r(scale=0.3)
            sd[f"{p}.noise"] = r(1, 1, rr, rr)
        if up:
            if genforce:
                sd[f"{p}.filter.kernel"] = taps_filter(4.0)[None, None]
            else:
                sd[f"{p}.filter"] = taps_filter()

    skip = kw.get("architecture", "skip") == "skip"
    for bi, rr in enumerate(res):
        if rr > 4:
            if not skip:
                sd[f"synthesis.residual{bi}.weight"] = r(ch[rr], ch[rr // 2], 1, 1)
                sd[f"synthesis.residual{bi}.filter"] = taps_filter()
            mod(f"synthesis.layer{2 * bi - 1}", ch[rr // 2], ch[rr], 3, rr, up=True)
        mod(f"synthesis.layer{2 * bi}", ch[rr], ch[rr], 3, rr)
        if skip or rr == res[-1]:
            mod(f"synthesis.output{bi}", ch[rr], kw["img_channels"], 1, rr, noise=False)
    if skip:
        sd["synthesis.upsample.kernel" if genforce else "synthesis.filter"] = (
            taps_filter(4.0)[None, None] if genforce else taps_filter())
    return sd


def hammer_blocks(sd, kw, genforce=False):
    """Hammer semantics (demodulated layers: unscaled weight; toRGB: style × 1/√fan_in) or genforce's (weight ×
    1/√fan_in everywhere, +1 on the style at run time, up-sampling weights flipped at run time)."""
    res, _ = channels_of(kw)

    def L(p, rgb=False, up=False):
        W = sd[f"{p}.weight"]
        d = dict(aW=sd[f"{p}.style.weight"], ab=sd[f"{p}.style.bias"], W=W, bias=sd[f"{p}.bias"])
        if f"{p}.noise" in sd:
            d.update(noise=sd[f"{p}.noise"][0, 0], noise_strength=sd[f"{p}.noise_strength"])
        if genforce:
            d.update(weight_scale=1 / math.sqrt(W[0].numel()), style_offset=1.0, flip_up=up)
        elif rgb:
            d["style_gain"] = 1 / math.sqrt(W.shape[1])
        return d

    blocks = []
    for bi, rr in enumerate(res):
        blk = {"conv1": L(f"synthesis.layer{2 * bi}")}
        if rr == 4:
            blk["const"] = sd["synthesis.early_layer.const"][0]
        else:
            blk["conv0"] = L(f"synthesis.layer{2 * bi - 1}", up=True)
        if f"synthesis.output{bi}.weight" in sd:
            blk["torgb"] = L(f"synthesis.output{bi}", rgb=True)
        if f"synthesis.residual{bi}.weight" in sd:
            blk["skip"] = sd[f"synthesis.residual{bi}.weight"]
        blocks.append(blk)
    fcs = [(sd[f"mapping.dense{i}.weight"], sd[f"mapping.dense{i}.bias"]) for i in range(kw["num_mapping_layers"])]
    return blocks, fcs


# ---------------------------------------------------------------------------------------------------------------
# NVIDIA network pickles, built without torch_utils / dnnlib installed


_CLASS_OF = [  # module path pattern -> class name in training/networks.py
    (r"", "Generator"), (r"mapping", "MappingNetwork"), (r"mapping\.(fc\d+|embed)", "FullyConnectedLayer"),
    (r"synthesis", "SynthesisNetwork"), (r"synthesis\.b\d+", "SynthesisBlock"),
    (r"synthesis\.b\d+\.conv[01]", "SynthesisLayer"), (r"synthesis\.b\d+\.torgb", "ToRGBLayer"),
    (r"synthesis\.b\d+\.skip", "Conv2dLayer"), (r".*\.affine", "FullyConnectedLayer"),
]


class _Record:
    """Pickles exactly like a ``persistence.persistent_class`` object: a call of
    ``torch_utils.persistence._reconstruct_persistent_obj(meta)``."""

    reconstruct = None  # set while the fake torch_utils module is installed

    def __init__(self, class_name, state, module_src):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name,
                    state=self.state)
        return (_Record.reconstruct, (meta,))


@contextmanager
def fake_nvidia_modules():
    """Install stand-ins of ``torch_utils.persistence`` and ``dnnlib.util`` so that pickle can name them."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called at load time
        raise AssertionError("the real reconstruct must not run")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                        "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})
    _Record.reconstruct = _reconstruct_persistent_obj
    try:
        yield EasyDict
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def module_state(params, buffers, children, init_kwargs=None, **attrs):
    """An ``nn.Module.__dict__`` as torch pickles it."""
    state = dict(training=False, _parameters=OrderedDict(params), _buffers=OrderedDict(buffers),
                 _non_persistent_buffers_set=set(), _backward_hooks=OrderedDict(), _forward_hooks=OrderedDict(),
                 _forward_pre_hooks=OrderedDict(), _state_dict_hooks=OrderedDict(),
                 _load_state_dict_pre_hooks=OrderedDict(), _modules=OrderedDict(children),
                 _init_args=(), _init_kwargs=dict(init_kwargs or {}))
    state.update(attrs)
    return state


def record_tree(sd, init_kwargs, module_src, class_of=None, float32=True):
    """The persistence record tree of an official-layout state dict (parameters vs buffers as in networks.py)."""
    import re
    class_of = class_of or _CLASS_OF
    buffers = ("noise_const", "resample_filter", "w_avg")
    paths = {""}
    for key in sd:
        parts = key.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            paths.add(".".join(parts[:i]))

    def build(path):
        name = next(c for pattern, c in reversed(class_of) if re.fullmatch(pattern, path))
        prefix = path + "." if path else ""
        params, bufs = OrderedDict(), OrderedDict()
        for key, value in sd.items():
            if key.startswith(prefix) and "." not in key[len(prefix):]:
                leaf = key[len(prefix):]
                v = value.float() if float32 else value
                if leaf in buffers:
                    bufs[leaf] = v
                else:
                    params[leaf] = torch.nn.Parameter(v, requires_grad=False)
        children = OrderedDict((p[len(prefix):], build(p)) for p in sorted(paths)
                               if p.startswith(prefix) and p != path and "." not in p[len(prefix):])
        return _Record(name, module_state(params, bufs, children, init_kwargs if path == "" else None), module_src)

    return build("")


def nvidia_pickle_bytes(sd, kw, module_src="", extra=None, protocol=4, stylegan3_kwargs=False, top=None):
    """A network pickle ``{G, D, G_ema, augment_pipe, training_set_kwargs}`` of the official-layout ``sd``.
    ``kw``: our kwargs, translated to the official init kwargs (``mapping_kwargs`` / ``synthesis_kwargs``)."""
    with fake_nvidia_modules() as EasyDict:
        mapping_kwargs = EasyDict(num_layers=kw["num_mapping_layers"], lr_multiplier=kw.get("mapping_lr_multiplier",
                                                                                          0.01))
        synthesis = EasyDict(channel_base=kw["channel_base"], channel_max=kw["channel_max"], num_fp16_res=4,
                             conv_clamp=kw.get("conv_clamp"), architecture=kw.get("architecture", "skip"))
        init = dict(z_dim=kw["z_dim"], c_dim=kw["c_dim"], w_dim=kw["w_dim"], img_resolution=kw["img_resolution"],
                    img_channels=kw["img_channels"], mapping_kwargs=mapping_kwargs)
        if stylegan3_kwargs:
            init.update(synthesis)  # stylegan3's networks_stylegan2.Generator takes **synthesis_kwargs
        else:
            init["synthesis_kwargs"] = synthesis
        G = top if top is not None else record_tree(sd, init, module_src)
        D = _Record("Discriminator", module_state({"b4.fc.weight": torch.nn.Parameter(torch.randn(2, 2))}, {}, {}),
                    module_src)
        data = dict(G=G, D=D, G_ema=G, augment_pipe=None,
                    training_set_kwargs=EasyDict(resolution=kw["img_resolution"], use_labels=bool(kw["c_dim"])))
        data.update(extra or {})
        return pickle.dumps(data, protocol=protocol)
