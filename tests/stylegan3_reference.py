"""Test helpers for the StyleGAN3 generator: random checkpoints in each format's own key names and layouts, and an
independent straightforward forward pass written the way the official code computes it (float64), not from
``resefa_fast.models.stylegan3``:

- the schedule (cutoffs, stopbands, sampling rates, sizes, channels, paddings) recomputed from
  ``networks_stylegan3.py``'s formulas; filters designed with ``scipy.signal.firwin`` / ``scipy.special.j1`` as the
  official ``design_lowpass_filter`` does;
- the modulated convolution *fused*: one weight per sample, grouped convolution, style pre-normalisation by the
  mean square over the whole batch (official; callers pass one sample at a time where they compare exactly);
- the filtered leaky ReLU as ``_filtered_lrelu_ref``: bias, ``upfirdn2d`` with zeros inserted by strided assignment,
  padding / cropping, a 2-D (outer product) filter, leaky ReLU · gain, clamp, ``upfirdn2d`` down (full convolution,
  then every ``down``-th sample);
- the input's transform matrices written element by element as in ``SynthesisInput.forward``; the sampling grid
  from its closed form ``x_j = ((2j + 1) / size - 1) · size / (2 s)``.

Format facts used here (public sources):
- NVlabs/stylegan3 ``training/networks_stylegan3.py``: ``mapping.fc{i}``, ``mapping.embed``, ``mapping.w_avg``;
  ``synthesis.input.{weight [C, C], affine (w -> 4), transform [3, 3], freqs [C, 2], phases [C]}``;
  ``synthesis.L{i}_{size}_{channels}.{affine, weight [O, I, k, k], bias, magnitude_ema [], up_filter [taps],
  down_filter [taps] or [taps, taps] (radial)}`` (filters absent where they have one tap, e.g. ToRGB).
  Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, **synthesis_kwargs).
- The original ReSeFa / Hammer ``models/stylegan3_generator.py`` (``var_mapping``): top-level ``w_avg``,
  ``mapping.dense{i}``, ``mapping.embedding``, ``synthesis.early_layer.{weight, affine, transform, frequency, phase,
  grid [1, size, size, 2]}``, ``synthesis.layer{i}.{magnitude_ema, conv.weight, conv.style, filter.bias,
  filter.up_filter, filter.down_filter}``; Hammer's converter saves ``{'models': {generator, discriminator,
  generator_smooth}, 'model_kwargs_init': {...}}`` with kwargs named ``resolution``, ``fmaps_base``,
  ``kernel_size``, ``use_radial_filter`` ...
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------
# the schedule and the filters, as networks_stylegan3.py computes them


def schedule(kw):
    """Layer parameters of ``kw`` (our init kwargs names) as the official SynthesisNetwork / SynthesisLayer."""
    n, res = kw["num_layers"], kw["img_resolution"]
    first_cutoff, first_stopband = kw.get("first_cutoff", 2), kw.get("first_stopband", 2 ** 2.1)
    last_cutoff = res / 2
    last_stopband = last_cutoff * kw.get("last_stopband_rel", 2 ** 0.3)
    exponents = np.minimum(np.arange(n + 1) / (n - kw["num_critical"]), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + kw.get("margin_size", 10) * 2
    sizes[-2:] = res
    channels = np.rint(np.minimum((kw["channel_base"] / 2) / cutoffs, kw["channel_max"]))
    channels[-1] = kw["img_channels"]
    layers = []
    for idx in range(n + 1):
        prev = max(idx - 1, 0)
        torgb = idx == n
        critical = idx >= n - kw["num_critical"]
        k = 1 if torgb else kw.get("conv_kernel", 3)
        tmp = max(rates[prev], rates[idx]) * (1 if torgb else kw.get("lrelu_upsampling", 2))
        up, down = int(np.rint(tmp / rates[prev])), int(np.rint(tmp / rates[idx]))
        fs = kw.get("filter_size", 6)
        up_taps = fs * up if up > 1 and not torgb else 1
        down_taps = fs * down if down > 1 and not torgb else 1
        radial = kw.get("use_radial_filters", False) and not critical
        in_size, out_size = int(sizes[prev]), int(sizes[idx])
        pad_total = (out_size - 1) * down + 1 - (in_size + k - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2
        layers.append(dict(
            name=f"L{idx}_{out_size}_{int(channels[idx])}", cin=int(channels[prev]), cout=int(channels[idx]), k=k,
            in_size=in_size, out_size=out_size, up=up, down=down, torgb=torgb, radial=radial,
            padding=[pad_lo, pad_total - pad_lo, pad_lo, pad_total - pad_lo],
            up_filter=design(up_taps, cutoffs[prev], half_widths[prev] * 2, tmp),
            down_filter=design(down_taps, cutoffs[idx], half_widths[idx] * 2, tmp, radial)))
    return dict(layers=layers, size0=int(sizes[0]), rate0=float(rates[0]), cutoff0=float(cutoffs[0]),
                channels0=int(channels[0]))


def design(numtaps, cutoff, width, fs, radial=False):
    """``SynthesisLayer.design_lowpass_filter`` with scipy (float32, as the official buffers)."""
    import scipy.signal
    import scipy.special
    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs),
                               dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    w = np.kaiser(numtaps, beta)
    f *= np.outer(w, w)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


def transform_matrix(tx=0.0, ty=0.0, angle=0.0):
    """``np.linalg.inv(make_transform(...))`` of stylegan3's gen_images.py / the original ReSeFa's manipulate.py."""
    m = np.eye(3)
    s, c = np.sin(angle / 360.0 * np.pi * 2), np.cos(angle / 360.0 * np.pi * 2)
    m[0][0], m[0][1], m[0][2] = c, s, tx
    m[1][0], m[1][1], m[1][2] = -s, c, ty
    return torch.from_numpy(np.linalg.inv(m))


# ---------------------------------------------------------------------------------------------------------------
# random checkpoints


def random_official(kw, seed=0, transform=None):
    """A random ``G_ema.state_dict()`` of networks_stylegan3.py for ``kw`` (float64 values rounded to float32)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale + shift).float().double()

    sch = schedule(kw)
    w_dim, z_dim, c_dim = kw["w_dim"], kw["z_dim"], kw["c_dim"]
    sd = OrderedDict()
    if c_dim:
        sd["mapping.embed.weight"], sd["mapping.embed.bias"] = r(w_dim, c_dim), r(w_dim, scale=0.1)
    feats = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * kw["num_mapping_layers"]
    for i in range(kw["num_mapping_layers"]):
        sd[f"mapping.fc{i}.weight"] = r(feats[i + 1], feats[i], scale=100.0)  # stored / lr_multiplier
        sd[f"mapping.fc{i}.bias"] = r(feats[i + 1], scale=10.0)
    sd["mapping.w_avg"] = r(w_dim, scale=0.5)
    c0 = sch["channels0"]
    freqs = torch.randn(c0, 2, generator=g, dtype=torch.float64)
    radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
    freqs = freqs / (radii * radii.square().exp().pow(0.25)) * sch["cutoff0"]
    sd["synthesis.input.weight"] = r(c0, c0)
    # a learned transform that is not the identity: rotation/translation from w
    sd["synthesis.input.affine.weight"] = r(4, w_dim, scale=0.3)
    sd["synthesis.input.affine.bias"] = (r(4, scale=0.1) + torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
                                         ).float().double()
    sd["synthesis.input.transform"] = (torch.eye(3, dtype=torch.float64) if transform is None else
                                       transform).float().double()
    sd["synthesis.input.freqs"] = freqs.float().double()
    sd["synthesis.input.phases"] = (torch.rand(c0, generator=g, dtype=torch.float64) - 0.5).float().double()
    for L in sch["layers"]:
        p = f"synthesis.{L['name']}"
        sd[f"{p}.affine.weight"] = r(L["cin"], w_dim)
        sd[f"{p}.affine.bias"] = r(L["cin"], scale=0.2, shift=1.0)
        sd[f"{p}.weight"] = r(L["cout"], L["cin"], L["k"], L["k"])
        sd[f"{p}.bias"] = r(L["cout"], scale=0.2)
        sd[f"{p}.magnitude_ema"] = (torch.rand([], generator=g, dtype=torch.float64) * 2 + 0.2).float().double()
        for name in ("up_filter", "down_filter"):
            if L[name] is not None:
                sd[f"{p}.{name}"] = L[name].double()
    return sd


def official_to_hammer(sd, kw):
    """The same weights in Hammer's / the original ReSeFa's names (its ``var_mapping`` read backwards), with the
    ``early_layer.grid`` buffer Hammer registers."""
    sch = schedule(kw)
    out = OrderedDict(w_avg=sd["mapping.w_avg"])
    for key, value in sd.items():
        if key.startswith("mapping.fc"):
            out[key.replace("mapping.fc", "mapping.dense")] = value
        elif key.startswith("mapping.embed."):
            out[key.replace("mapping.embed.", "mapping.embedding.")] = value
    names = {"weight": "weight", "affine.weight": "affine.weight", "affine.bias": "affine.bias",
             "transform": "transform", "freqs": "frequency", "phases": "phase"}
    for src, dst in names.items():
        out[f"synthesis.early_layer.{dst}"] = sd[f"synthesis.input.{src}"]
    out["synthesis.early_layer.grid"] = grid(sch["size0"], sch["rate0"])[None].float().double()
    for idx, L in enumerate(sch["layers"]):
        p, q = f"synthesis.{L['name']}", f"synthesis.layer{idx}"
        out[f"{q}.magnitude_ema"] = sd[f"{p}.magnitude_ema"]
        out[f"{q}.conv.weight"] = sd[f"{p}.weight"]
        out[f"{q}.conv.style.weight"] = sd[f"{p}.affine.weight"]
        out[f"{q}.conv.style.bias"] = sd[f"{p}.affine.bias"]
        out[f"{q}.filter.bias"] = sd[f"{p}.bias"]
        for name in ("up_filter", "down_filter"):
            if f"{p}.{name}" in sd:
                out[f"{q}.filter.{name}"] = sd[f"{p}.{name}"]
    return out


def hammer_kwargs(kw):
    """Hammer's ``model_kwargs_init['generator_smooth']`` for ``kw`` (names of its StyleGAN3Generator)."""
    return dict(model_type="StyleGAN3Generator", z_dim=kw["z_dim"], w_dim=kw["w_dim"], repeat_w=True,
                normalize_z=True, mapping_layers=kw["num_mapping_layers"], mapping_fmaps=kw["w_dim"],
                mapping_lr_mul=0.01, label_dim=kw["c_dim"], embedding_dim=kw["w_dim"], embedding_bias=True,
                embedding_lr_mul=1.0, normalize_embedding=True, normalize_embedding_latent=False,
                resolution=kw["img_resolution"], image_channels=kw["img_channels"], final_tanh=False,
                output_scale=0.25, num_layers=kw["num_layers"], num_critical=kw["num_critical"],
                fmaps_base=kw["channel_base"], fmaps_max=kw["channel_max"], kernel_size=kw["conv_kernel"],
                conv_clamp=kw["conv_clamp"], first_cutoff=2, first_stopband=2 ** 2.1, last_stopband_rel=2 ** 0.3,
                margin_size=kw["margin_size"], filter_size=6, act_upsampling=2,
                use_radial_filter=kw["use_radial_filters"], eps=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# neutral descriptions of the layers, read from each format's own keys


def official_params(sd, kw):
    sch = schedule(kw)
    P = dict(mapping=dict(fcs=[(sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"])
                               for i in range(kw["num_mapping_layers"])],
                          embed=(sd["mapping.embed.weight"], sd["mapping.embed.bias"]) if kw["c_dim"] else None,
                          w_avg=sd["mapping.w_avg"]),
             input=dict(weight=sd["synthesis.input.weight"], affine=(sd["synthesis.input.affine.weight"],
                                                                     sd["synthesis.input.affine.bias"]),
                        transform=sd["synthesis.input.transform"], freqs=sd["synthesis.input.freqs"],
                        phases=sd["synthesis.input.phases"],
                        grid=grid(sch["size0"], sch["rate0"], sd["synthesis.input.weight"].device),
                        rate=sch["rate0"], bandwidth=sch["cutoff0"]),
             layers=[], output_scale=0.25, clamp=kw["conv_clamp"])
    for L in sch["layers"]:
        p = f"synthesis.{L['name']}"
        P["layers"].append(dict(L, weight=sd[f"{p}.weight"], affine=(sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"]),
                                bias=sd[f"{p}.bias"], magnitude_ema=sd[f"{p}.magnitude_ema"],
                                up_filter=sd.get(f"{p}.up_filter"), down_filter=sd.get(f"{p}.down_filter")))
    return P


def hammer_params(sd, kw):
    sch = schedule(kw)
    P = dict(mapping=dict(fcs=[(sd[f"mapping.dense{i}.weight"], sd[f"mapping.dense{i}.bias"])
                               for i in range(kw["num_mapping_layers"])],
                          embed=(sd["mapping.embedding.weight"], sd["mapping.embedding.bias"]) if kw["c_dim"] else None,
                          w_avg=sd["w_avg"]),
             input=dict(weight=sd["synthesis.early_layer.weight"],
                        affine=(sd["synthesis.early_layer.affine.weight"], sd["synthesis.early_layer.affine.bias"]),
                        transform=sd["synthesis.early_layer.transform"], freqs=sd["synthesis.early_layer.frequency"],
                        phases=sd["synthesis.early_layer.phase"], grid=sd["synthesis.early_layer.grid"][0],
                        rate=sch["rate0"], bandwidth=sch["cutoff0"]),
             layers=[], output_scale=0.25, clamp=kw["conv_clamp"])
    for idx, L in enumerate(sch["layers"]):
        q = f"synthesis.layer{idx}"
        P["layers"].append(dict(L, weight=sd[f"{q}.conv.weight"],
                                affine=(sd[f"{q}.conv.style.weight"], sd[f"{q}.conv.style.bias"]),
                                bias=sd[f"{q}.filter.bias"], magnitude_ema=sd[f"{q}.magnitude_ema"],
                                up_filter=sd.get(f"{q}.filter.up_filter"),
                                down_filter=sd.get(f"{q}.filter.down_filter")))
    return P


# ---------------------------------------------------------------------------------------------------------------
# the forward pass


def grid(size, rate, device=None):
    """``affine_grid(diag(size / (2 rate)), [1, 1, size, size], align_corners=False)[0]`` in closed form:
    ``[size, size, 2]`` with ``(x, y)`` of pixel (row i, column j) = ``((2j + 1) / size - 1, (2i + 1) / size - 1)``
    times ``size / (2 rate)``."""
    t = ((2 * torch.arange(size, dtype=torch.float64, device=device) + 1) / size - 1) * (0.5 * size / rate)
    return torch.stack([t[None, :].expand(size, size), t[:, None].expand(size, size)], dim=2)


def fc(x, W, b, lr=1.0, act=False):
    x = x @ (W * (lr / math.sqrt(W.shape[1]))).T + b * lr
    return F.leaky_relu(x, 0.2) * math.sqrt(2) if act else x


def ref_mapping(M, z, c=None, psi=1.0, cutoff=None, num_ws=None):
    def norm(v):
        return v * (v.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    x = norm(z.double())
    if M["embed"] is not None:
        x = torch.cat([x, norm(fc(c.double(), *M["embed"]))], dim=1)
    for W, b in M["fcs"]:
        x = fc(x, W, b, lr=0.01, act=True)
    ws = x.unsqueeze(1).repeat([1, num_ws, 1])
    if psi != 1:
        cutoff = num_ws if cutoff is None else cutoff
        ws[:, :cutoff] = M["w_avg"].lerp(ws[:, :cutoff], psi)
    return ws


def ref_input(inp, w):
    t = fc(w, *inp["affine"])
    t = t / t[:, :2].norm(dim=1, keepdim=True)
    m_r = torch.eye(3, dtype=w.dtype, device=w.device).unsqueeze(0).repeat([w.shape[0], 1, 1])
    m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
    m_t = torch.eye(3, dtype=w.dtype, device=w.device).unsqueeze(0).repeat([w.shape[0], 1, 1])
    m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
    transforms = m_r @ m_t @ inp["transform"].unsqueeze(0)
    freqs, phases = inp["freqs"].unsqueeze(0), inp["phases"].unsqueeze(0)
    phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
    freqs = freqs @ transforms[:, :2, :2]
    amplitudes = (1 - (freqs.norm(dim=2) - inp["bandwidth"]) / (inp["rate"] / 2 - inp["bandwidth"])).clamp(0, 1)
    grids = inp["grid"].unsqueeze(0)  # [1, H, W, 2]
    x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
    x = x + phases.unsqueeze(1).unsqueeze(2)
    x = torch.sin(x * (np.pi * 2))
    x = x * amplitudes.unsqueeze(1).unsqueeze(2)
    x = x @ (inp["weight"] / np.sqrt(inp["weight"].shape[0])).t()
    return x.permute(0, 3, 1, 2)


def fused_modconv(x, w, s, demodulate, padding, input_gain):
    """networks_stylegan3.modulated_conv2d: per-sample weights, grouped convolution."""
    batch = x.shape[0]
    cin, kh, kw = w.shape[1:]
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()  # official: over the whole batch
    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().unsqueeze(2).unsqueeze(3).unsqueeze(4)
    w = w * input_gain.expand(batch, cin).unsqueeze(1).unsqueeze(3).unsqueeze(4)
    x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, cin, kh, kw), padding=padding, groups=batch)
    return x.reshape(batch, -1, *x.shape[2:])


def upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0, separable=False):
    """The official ``_upfirdn2d_ref``, with zeros inserted by strided assignment; a separable ``[taps]`` filter is
    applied as its 2-D outer product (tests) or, with ``separable`` (the benchmark's 1024² check, where 2-D float64
    filters would take minutes), as two 1-D passes like the official code."""
    if f is None:
        f = torch.ones([1, 1], dtype=x.dtype)
    f = f.to(device=x.device, dtype=x.dtype)
    B, C, H, W = x.shape
    y = x.new_zeros(B, C, H * up, W * up)
    y[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = padding
    y = F.pad(y, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    y = y[:, :, max(-py0, 0): y.shape[2] - max(-py1, 0), max(-px0, 0): y.shape[3] - max(-px1, 0)]
    if f.ndim == 1 and separable:
        g = (f * gain ** 0.5).flip([0])
        y = F.conv2d(y, g[None, None, None].repeat(C, 1, 1, 1), groups=C)
        y = F.conv2d(y, g[None, None, :, None].repeat(C, 1, 1, 1), groups=C)
    else:
        f = torch.outer(f, f) * gain if f.ndim == 1 else f * gain
        y = F.conv2d(y, f.flip([0, 1])[None, None].repeat(C, 1, 1, 1), groups=C)
    return y[:, :, ::down, ::down]


def ref_layer(x, w, L, clamp, separable=False):
    styles = fc(w, *L["affine"])
    if L["torgb"]:
        styles = styles * (1 / np.sqrt(L["cin"] * L["k"] ** 2))
    x = fused_modconv(x, L["weight"], styles, not L["torgb"], L["k"] - 1, L["magnitude_ema"].rsqrt())
    gain, slope = (1.0, 1.0) if L["torgb"] else (np.sqrt(2), 0.2)
    x = x + L["bias"].reshape(1, -1, 1, 1)
    x = upfirdn2d(x, L["up_filter"], up=L["up"], padding=L["padding"], gain=L["up"] ** 2, separable=separable)
    x = F.leaky_relu(x, slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    x = upfirdn2d(x, L["down_filter"], down=L["down"], separable=separable)
    assert x.shape[2:] == (L["out_size"], L["out_size"]), (x.shape, L["out_size"])
    return x


def cast(P, dtype):
    """``P`` with every floating tensor in ``dtype``."""
    if isinstance(P, dict):
        return {k: cast(v, dtype) for k, v in P.items()}
    if isinstance(P, (list, tuple)):
        return type(P)(cast(v, dtype) for v in P)
    return P.to(dtype) if isinstance(P, torch.Tensor) and P.is_floating_point() else P


def ref_synthesis(P, ws, separable=False, dtype=torch.float64):
    """Image ``[B, C, R, R]`` of W+ ``ws`` ``[B, num_ws, w_dim]``, one sample at a time (the official batch-wide
    style normalisation then equals the per-sample one), computed in ``dtype`` (float64; float32 measures the
    official formulation's own float32 rounding, the benchmark's tolerance floor)."""
    P = cast(P, dtype)
    images = []
    for b in range(ws.shape[0]):
        rows = ws[b:b + 1].to(dtype).unbind(1)
        x = ref_input(P["input"], rows[0])
        for L, w in zip(P["layers"], rows[1:], strict=True):
            x = ref_layer(x, w, L, P["clamp"], separable)
        images.append(x * P["output_scale"])
    return torch.cat(images)


def ref_synthesis_batched(P, ws):
    """The official forward on the whole batch at once (styles normalised over the batch)."""
    rows = ws.double().unbind(1)
    x = ref_input(P["input"], rows[0])
    for L, w in zip(P["layers"], rows[1:], strict=True):
        x = ref_layer(x, w, L, P["clamp"])
    return x * P["output_scale"]


# ---------------------------------------------------------------------------------------------------------------
# NVIDIA network pickles of networks_stylegan3.py, built without torch_utils / dnnlib installed


SG3_MODULE_SRC = "# training/networks_stylegan3.py (stand-in)\nclass SynthesisInput: pass\n"


def nvidia_init_kwargs(kw, EasyDict, positional=False):
    """Generator init kwargs as train.py passes them (stylegan3-t / -r), plus the schedule keys of tiny configs."""
    init = dict(z_dim=kw["z_dim"], c_dim=kw["c_dim"], w_dim=kw["w_dim"], img_resolution=kw["img_resolution"],
                img_channels=kw["img_channels"], mapping_kwargs=EasyDict(num_layers=kw["num_mapping_layers"]),
                channel_base=kw["channel_base"], channel_max=kw["channel_max"], magnitude_ema_beta=0.999,
                num_layers=kw["num_layers"], num_critical=kw["num_critical"], margin_size=kw["margin_size"])
    if kw["conv_kernel"] != 3:
        init["conv_kernel"] = kw["conv_kernel"]
    if kw["use_radial_filters"]:
        init["use_radial_filters"] = True
    if kw["conv_clamp"] != 256:
        init["conv_clamp"] = kw["conv_clamp"]
        init["num_fp16_res"] = 0
    return init


def sg3_record_tree(sd, kw, init, module_src=SG3_MODULE_SRC, layer_attrs=True):
    """Persistence records of networks_stylegan3.py for the official-layout ``sd``: Generator -> mapping
    (FullyConnectedLayer fc*/embed, buffer w_avg), synthesis (SynthesisInput, SynthesisLayer L*) with the
    attributes the real objects carry (sizes as numpy arrays, factors, padding, clamp) and None filter buffers."""
    from models_reference import _Record, module_state
    sch = schedule(kw)

    def fc(prefix):
        return _Record("FullyConnectedLayer", module_state(
            {"weight": torch.nn.Parameter(sd[f"{prefix}.weight"].float(), requires_grad=False),
             "bias": torch.nn.Parameter(sd[f"{prefix}.bias"].float(), requires_grad=False)}, {}, {}), module_src)

    mapping_children = OrderedDict()
    if kw["c_dim"]:
        mapping_children["embed"] = fc("mapping.embed")
    for i in range(kw["num_mapping_layers"]):
        mapping_children[f"fc{i}"] = fc(f"mapping.fc{i}")
    mapping = _Record("MappingNetwork", module_state({}, {"w_avg": sd["mapping.w_avg"].float()}, mapping_children,
                                                     num_ws=kw["num_layers"] + 2), module_src)
    p = "synthesis.input"
    inp = _Record("SynthesisInput", module_state(
        {"weight": torch.nn.Parameter(sd[f"{p}.weight"].float(), requires_grad=False)},
        {k: sd[f"{p}.{k}"].float() for k in ("transform", "freqs", "phases")}, {"affine": fc(f"{p}.affine")},
        size=np.broadcast_to(np.asarray(sch["size0"]), [2]), sampling_rate=np.float64(sch["rate0"]),
        bandwidth=np.float64(sch["cutoff0"])), module_src)
    children = OrderedDict(input=inp)
    for L in sch["layers"]:
        p = f"synthesis.{L['name']}"
        params = {k: torch.nn.Parameter(sd[f"{p}.{k}"].float(), requires_grad=False) for k in ("weight", "bias")}
        buffers = OrderedDict(magnitude_ema=sd[f"{p}.magnitude_ema"].float())
        for name in ("up_filter", "down_filter"):
            buffers[name] = sd[f"{p}.{name}"].float() if f"{p}.{name}" in sd else None
        attrs = dict(is_torgb=L["torgb"], in_size=np.broadcast_to(np.asarray(L["in_size"]), [2]),
                     out_size=np.broadcast_to(np.asarray(L["out_size"]), [2]), up_factor=L["up"],
                     down_factor=L["down"], padding=list(L["padding"]), conv_kernel=L["k"],
                     conv_clamp=kw["conv_clamp"]) if layer_attrs else {}
        children[L["name"]] = _Record("SynthesisLayer", module_state(params, buffers, {"affine": fc(f"{p}.affine")},
                                                                     **attrs), module_src)
    synthesis = _Record("SynthesisNetwork", module_state({}, {}, children, num_ws=kw["num_layers"] + 2,
                                                         layer_names=[L["name"] for L in sch["layers"]]), module_src)
    return _Record("Generator", module_state({}, {}, OrderedDict(synthesis=synthesis, mapping=mapping), init),
                   module_src)


def nvidia_sg3_pickle_bytes(sd, kw, protocol=4, module_src=SG3_MODULE_SRC, positional=False, edit=None):
    """A network pickle ``{G, D, G_ema, augment_pipe, training_set_kwargs}`` of networks_stylegan3.py.
    ``positional``: z_dim .. mapping_kwargs recorded in ``_init_args`` (persistence records both). ``edit(top)``
    may alter the record tree before pickling."""
    import pickle

    from models_reference import _Record, fake_nvidia_modules, module_state
    with fake_nvidia_modules() as EasyDict:
        init = nvidia_init_kwargs(kw, EasyDict)
        top = sg3_record_tree(sd, kw, init, module_src)
        if positional:
            names = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
            top.state["_init_args"] = tuple(init.pop(n) for n in names)
            top.state["_init_kwargs"] = init
        if edit is not None:
            edit(top)
        D = _Record("Discriminator", module_state({"b4.fc.weight": torch.nn.Parameter(torch.randn(2, 2))}, {}, {}),
                    module_src)
        data = dict(G=top, D=D, G_ema=top, augment_pipe=None,
                    training_set_kwargs=EasyDict(resolution=kw["img_resolution"], use_labels=bool(kw["c_dim"])))
        return pickle.dumps(data, protocol=protocol)
