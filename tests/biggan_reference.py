"""Test helpers for the BigGAN models: random checkpoints in each public format's own key names and layouts, and
independent reference forward passes that read those *native* tensors the way the public codes run them at
inference (spectral norm applied from the stored vectors every call, batch norm through ``F.batch_norm`` in eval
mode, attention written out), in float64. Nothing here imports ``resefa_fast.models.biggan``.

Format facts used (public sources):
- ajbrock BigGAN-PyTorch ``BigGAN.py`` / ``layers.py``: ``G_arch`` channel tables; ``shared`` (nn.Embedding),
  ``linear`` (SNLinear), ``blocks[i][0]`` GBlock (``conv1``, ``conv2``, ``conv_sc``, ``bn1``/``bn2`` ccbn with
  SNLinear ``gain``/``bias`` without bias and buffers ``stored_mean``/``stored_var``), ``blocks[i][1]`` Attention
  (``theta``, ``phi``, ``g``, ``o``, scalar ``gamma``), ``output_layer`` = (bn with ``gain``/``bias``/stored
  stats and eps 1e-5, ReLU, SNConv2d to 3); SN buffers ``u0`` ``[1, out]`` and ``sv0`` ``[1]``; eval-mode SN = one
  power iteration from u0 without update; hierarchical z: ``ys = [cat(y, z_k)]``; GBlock up-samples both paths
  (nearest) and applies ``conv_sc`` after up-sampling.
- huggingface pytorch-pretrained-biggan ``model.py`` / ``config.py``: ``embeddings`` (Linear(num_classes, z_dim),
  no bias), ``generator.gen_z``, ``generator.layers`` (GenBlock ``bn_0..3``/``conv_0..3``, SelfAttn
  ``snconv1x1_{theta,phi,g,o_conv}`` + ``gamma`` ``[1]`` inserted before layer ``attention_layer_position``),
  ``generator.bn``, ``generator.conv_to_rgb`` (channel_width -> channel_width, first 3 kept); spectral norm by
  ``torch.nn.utils.spectral_norm`` (``weight_orig``, ``weight_u``, ``weight_v``); BigGANBatchNorm statistics
  ``running_means``/``running_vars`` ``[n_stats, C]`` selected by ``math.modf(truncation / step)``.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

G_ARCH = {  # BigGAN-PyTorch G_arch: resolution -> (in multipliers, out multipliers), all blocks up-sample
    32: ([4, 4, 4], [4, 4, 4]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
}


def _rand(g):
    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale + shift
    return r


# ---------------------------------------------------------------------------------------------------------------
# BigGAN-PyTorch


def random_biggan_pytorch(kw, seed=0, with_sv0=True):
    """A random BigGAN-PyTorch ``Generator.state_dict()`` (G_shared) for ``kw`` = dict(resolution, ch, z_dim,
    shared_dim, n_classes, hier, attention: set of resolutions)."""
    g = torch.Generator().manual_seed(seed)
    r = _rand(g)
    ins, outs = G_ARCH[kw["resolution"]]
    n = len(ins)
    chunk = kw["z_dim"] // (n + 1) if kw["hier"] else kw["z_dim"]
    cond = kw["shared_dim"] + (chunk if kw["hier"] else 0)
    sd = OrderedDict()

    def sn(prefix, *shape, bias=True, scale=1.0):
        sd[prefix + ".weight"] = r(*shape, scale=scale)
        if bias:
            sd[prefix + ".bias"] = r(shape[0], scale=0.1)
        sd[prefix + ".u0"] = r(1, shape[0])
        if with_sv0:
            sd[prefix + ".sv0"] = torch.ones(1, dtype=torch.float64)

    sd["shared.weight"] = r(kw["n_classes"], kw["shared_dim"])
    sn("linear", kw["ch"] * ins[0] * 16, chunk)
    for i, (a, b) in enumerate(zip(ins, outs, strict=True)):
        cin, cout = kw["ch"] * a, kw["ch"] * b
        p = f"blocks.{i}.0."
        sn(p + "conv1", cout, cin, 3, 3)
        sn(p + "conv2", cout, cout, 3, 3)
        sn(p + "conv_sc", cout, cin, 1, 1)
        for bn, c in (("bn1", cin), ("bn2", cout)):
            sn(p + bn + ".gain", c, cond, bias=False, scale=0.3)
            sn(p + bn + ".bias", c, cond, bias=False, scale=0.3)
            sd[p + bn + ".stored_mean"] = r(c, scale=0.2)
            sd[p + bn + ".stored_var"] = r(c, scale=0.2).abs() + 0.5
        if 8 * 2 ** i in kw["attention"]:
            p = f"blocks.{i}.1."
            sn(p + "theta", cout // 8, cout, 1, 1, bias=False)
            sn(p + "phi", cout // 8, cout, 1, 1, bias=False)
            sn(p + "g", cout // 2, cout, 1, 1, bias=False)
            sn(p + "o", cout, cout // 2, 1, 1, bias=False)
            sd[p + "gamma"] = r(scale=0.5).reshape([])
    last = kw["ch"] * outs[-1]
    sd["output_layer.0.gain"] = r(last, scale=0.2, shift=1.0)
    sd["output_layer.0.bias"] = r(last, scale=0.2)
    sd["output_layer.0.stored_mean"] = r(last, scale=0.2)
    sd["output_layer.0.stored_var"] = r(last, scale=0.2).abs() + 0.5
    sn("output_layer.2", 3, last, 3, 3)
    return sd


def bp_sn(sd, prefix, eps):
    """BigGAN-PyTorch ``SN.W_`` in eval mode for ``prefix``: one power iteration from u0 (no update)."""
    W = sd[prefix + ".weight"]
    W_mat = W.view(W.size(0), -1)
    u = sd[prefix + ".u0"]
    v = torch.matmul(u, W_mat)
    v = v / torch.clamp(v.norm(dim=1, keepdim=True), min=eps)
    u = torch.matmul(v, W_mat.t())
    u = u / torch.clamp(u.norm(dim=1, keepdim=True), min=eps)
    sv = torch.squeeze(torch.matmul(torch.matmul(v, W_mat.t()), u.t()))
    return W / sv


def ref_biggan_pytorch(sd, kw, z, y, bn_eps, sn_eps=1e-12):
    """BigGAN-PyTorch ``G(z, G.shared(y))`` in eval mode: ``z`` ``[B, z_dim]``, ``y`` class indices ``[B]`` or an
    embedding ``[B, shared_dim]`` (float)."""
    ins, _ = G_ARCH[kw["resolution"]]
    n = len(ins)
    y = sd["shared.weight"][y] if not torch.is_floating_point(y) else y
    if kw["hier"]:
        zs = torch.split(z, kw["z_dim"] // (n + 1), 1)
        z = zs[0]
        ys = [torch.cat([y, item], 1) for item in zs[1:]]
    else:
        ys = [y] * n

    def linear(prefix, x, bias=True):
        return F.linear(x, bp_sn(sd, prefix, sn_eps), sd[prefix + ".bias"] if bias else None)

    def conv(prefix, x, bias=True):
        W = bp_sn(sd, prefix, sn_eps)
        return F.conv2d(x, W, sd[prefix + ".bias"] if bias else None, padding=W.shape[-1] // 2)

    def ccbn(prefix, x, yy):
        gain = (1 + linear(prefix + ".gain", yy, bias=False)).view(yy.size(0), -1, 1, 1)
        bias = linear(prefix + ".bias", yy, bias=False).view(yy.size(0), -1, 1, 1)
        out = F.batch_norm(x, sd[prefix + ".stored_mean"], sd[prefix + ".stored_var"], None, None, False, 0.1,
                           bn_eps)
        return out * gain + bias

    h = linear("linear", z).view(z.size(0), -1, 4, 4)
    for i in range(n):
        p = f"blocks.{i}.0."
        x = h
        h = F.relu(ccbn(p + "bn1", x, ys[i]))
        h = F.interpolate(h, scale_factor=2)
        x = F.interpolate(x, scale_factor=2)
        h = conv(p + "conv1", h)
        h = F.relu(ccbn(p + "bn2", h, ys[i]))
        h = conv(p + "conv2", h)
        h = h + conv(p + "conv_sc", x)
        if f"blocks.{i}.1.gamma" in sd:
            h = sagan_attention(h, *(bp_sn(sd, f"blocks.{i}.1.{k}", sn_eps) for k in ("theta", "phi", "g", "o")),
                                sd[f"blocks.{i}.1.gamma"])
    h = F.batch_norm(h, sd["output_layer.0.stored_mean"], sd["output_layer.0.stored_var"], sd["output_layer.0.gain"],
                     sd["output_layer.0.bias"], False, 0.1, 1e-5)
    return torch.tanh(conv("output_layer.2", F.relu(h)))


def sagan_attention(x, theta_w, phi_w, g_w, o_w, gamma):
    """The SA-GAN block as BigGAN-PyTorch's ``layers.Attention.forward`` writes it."""
    ch = x.shape[1]
    theta = F.conv2d(x, theta_w)
    phi = F.max_pool2d(F.conv2d(x, phi_w), [2, 2])
    g = F.max_pool2d(F.conv2d(x, g_w), [2, 2])
    theta = theta.view(-1, ch // 8, x.shape[2] * x.shape[3])
    phi = phi.view(-1, ch // 8, x.shape[2] * x.shape[3] // 4)
    g = g.view(-1, ch // 2, x.shape[2] * x.shape[3] // 4)
    beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
    o = F.conv2d(torch.bmm(g, beta.transpose(1, 2)).view(-1, ch // 2, x.shape[2], x.shape[3]), o_w)
    return gamma * o + x


# ---------------------------------------------------------------------------------------------------------------
# pytorch-pretrained-biggan


def hf_config(**over):
    """A BigGANConfig dict (``config.json`` content)."""
    cfg = dict(output_dim=16, z_dim=6, class_embed_dim=6, channel_width=4, num_classes=5,
               layers=[[False, 16, 16], [True, 16, 8], [False, 8, 4], [True, 4, 2], [False, 2, 1]],
               attention_layer_position=2, eps=1e-4, n_stats=5)
    cfg.update(over)
    return cfg


def random_pretrained_biggan(cfg, seed=0, consistent=True):
    """A random pytorch-pretrained-biggan ``BigGAN.state_dict()`` for ``cfg``; ``weight_u``/``weight_v`` made by one
    power-iteration step from a random u, as the package's converter does (then ``u = normalize(W v)``, so
    ``u · W v = |W v|``); ``consistent=False`` perturbs u after the step, which tells the two formulas apart."""
    g = torch.Generator().manual_seed(seed)
    r = _rand(g)
    ch, zd, ns = cfg["channel_width"], cfg["z_dim"], cfg["n_stats"]
    sd = OrderedDict()

    def sn(prefix, *shape, bias=True):
        W = r(*shape)
        sd[prefix + ".weight_orig"] = W
        if bias:
            sd[prefix + ".bias"] = r(shape[0], scale=0.1)
        Wm = W.reshape(W.shape[0], -1)
        u = r(shape[0])
        v = F.normalize(Wm.t() @ u, dim=0, eps=1e-4)
        u = F.normalize(Wm @ v, dim=0, eps=1e-4)
        if not consistent:
            u = F.normalize(u + 0.3 * r(shape[0]), dim=0)
        sd[prefix + ".weight_u"], sd[prefix + ".weight_v"] = u, v

    def bn(prefix, c, conditional=True):
        sd[prefix + ".running_means"] = r(ns, c, scale=0.2)
        sd[prefix + ".running_vars"] = r(ns, c, scale=0.2).abs() + 0.5
        if conditional:
            sn(prefix + ".scale", c, 2 * zd, bias=False)
            sn(prefix + ".offset", c, 2 * zd, bias=False)
        else:
            sd[prefix + ".weight"] = r(c, scale=0.2, shift=1.0)
            sd[prefix + ".bias"] = r(c, scale=0.2)

    sd["embeddings.weight"] = r(zd, cfg["num_classes"])
    sn("generator.gen_z", 4 * 4 * 16 * ch, 2 * zd)
    index = 0
    for i, (_, a, b) in enumerate(cfg["layers"]):
        if i == cfg["attention_layer_position"]:
            c = ch * a
            p = f"generator.layers.{index}."
            sn(p + "snconv1x1_theta", c // 8, c, 1, 1, bias=False)
            sn(p + "snconv1x1_phi", c // 8, c, 1, 1, bias=False)
            sn(p + "snconv1x1_g", c // 2, c, 1, 1, bias=False)
            sn(p + "snconv1x1_o_conv", c, c // 2, 1, 1, bias=False)
            sd[p + "gamma"] = r(1, scale=0.5)
            index += 1
        cin, cout, mid = ch * a, ch * b, ch * a // 4
        p = f"generator.layers.{index}."
        bn(p + "bn_0", cin)
        sn(p + "conv_0", mid, cin, 1, 1)
        bn(p + "bn_1", mid)
        sn(p + "conv_1", mid, mid, 3, 3)
        bn(p + "bn_2", mid)
        sn(p + "conv_2", mid, mid, 3, 3)
        bn(p + "bn_3", mid)
        sn(p + "conv_3", cout, mid, 1, 1)
        index += 1
    bn("generator.bn", ch, conditional=False)
    sn("generator.conv_to_rgb", ch, ch, 3, 3)
    return sd


def hf_sn(sd, prefix):
    """``torch.nn.utils.spectral_norm`` in eval mode: ``weight_orig / (u · W v)``."""
    W = sd[prefix + ".weight_orig"]
    sigma = torch.dot(sd[prefix + ".weight_u"], torch.mv(W.reshape(W.shape[0], -1), sd[prefix + ".weight_v"]))
    return W / sigma


def hf_stats(sd, prefix, truncation, n_stats):
    coef, start_idx = math.modf(truncation / (1.0 / (n_stats - 1)))
    start_idx = int(start_idx)
    means, vars_ = sd[prefix + ".running_means"], sd[prefix + ".running_vars"]
    if coef != 0.0:
        return (means[start_idx] * coef + means[start_idx + 1] * (1 - coef),
                vars_[start_idx] * coef + vars_[start_idx + 1] * (1 - coef))
    return means[start_idx], vars_[start_idx]


def ref_pretrained_biggan(sd, cfg, z, class_vector, truncation):
    """pytorch-pretrained-biggan ``BigGAN.forward(z, class_label, truncation)`` in eval mode."""
    eps, ns, ch = cfg["eps"], cfg["n_stats"], cfg["channel_width"]
    embed = class_vector @ sd["embeddings.weight"].t()
    cond = torch.cat((z, embed), dim=1)

    def bn(prefix, x):
        mean, var = hf_stats(sd, prefix, truncation, ns)
        weight = 1 + cond @ hf_sn(sd, prefix + ".scale").t()
        bias = cond @ hf_sn(sd, prefix + ".offset").t()
        return (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps) \
            * weight[:, :, None, None] + bias[:, :, None, None]

    def conv(prefix, x):
        W = hf_sn(sd, prefix)
        return F.conv2d(x, W, sd.get(prefix + ".bias"), padding=W.shape[-1] // 2)

    h = F.linear(cond, hf_sn(sd, "generator.gen_z"), sd["generator.gen_z.bias"])
    h = h.view(-1, 4, 4, 16 * ch).permute(0, 3, 1, 2).contiguous()
    index = 0
    for i, (up, _, _) in enumerate(cfg["layers"]):
        if i == cfg["attention_layer_position"]:
            p = f"generator.layers.{index}."
            h = sagan_attention(h, *(hf_sn(sd, p + k) for k in ("snconv1x1_theta", "snconv1x1_phi", "snconv1x1_g",
                                                                  "snconv1x1_o_conv")), sd[p + "gamma"])
            index += 1
        p = f"generator.layers.{index}."
        x0 = h
        h = conv(p + "conv_0", F.relu(bn(p + "bn_0", h)))
        h = F.relu(bn(p + "bn_1", h))
        if up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = conv(p + "conv_1", h)
        h = conv(p + "conv_2", F.relu(bn(p + "bn_2", h)))
        h = conv(p + "conv_3", F.relu(bn(p + "bn_3", h)))
        if x0.shape[1] != h.shape[1]:
            x0 = x0[:, :x0.shape[1] // 2]
        if up:
            x0 = F.interpolate(x0, scale_factor=2, mode="nearest")
        h = h + x0
        index += 1
    mean, var = hf_stats(sd, "generator.bn", truncation, ns)
    h = F.batch_norm(h, mean, var, sd["generator.bn.weight"], sd["generator.bn.bias"], training=False, momentum=0.0,
                     eps=eps)
    h = conv("generator.conv_to_rgb", F.relu(h))
    return torch.tanh(h[:, :3])
