"""resefa_fast.models BigGAN: both architectures against independent reference forward passes
(tests/biggan_reference.py) on checkpoints built with each public format's key names, the loaders of every format,
class and truncation handling, the latent spaces and layer skip under the Jacobian engine, every bad-file case, and
the benchmark's CPU smoke run."""
import json
import os
import pickle
import sys

import biggan_reference as ref
import pytest
import torch

import resefa_fast as rf
from resefa_fast import models
from resefa_fast.errors import ResefaError
from resefa_fast.models import BigGANDeepGenerator, BigGANGenerator
from resefa_fast.models import biggan as bg
from resefa_fast.models import biggan_loaders as bl

from conftest import relative_error

#: Relative (Frobenius) error bounds, each with its reason.
TOL = {
    # float64 weights and compute, spectral norm folded once (ours) vs applied every call (reference): only the
    # rounding of a different operation order, ~1e-15 per op; any formula difference (an eps, a swapped
    # interpolation weight, a missing +1) is >= 1e-6
    "exact": 1e-10,
    # a loaded checkpoint holds float32 folded weights W/σ (each rounded once, ~6e-8 relative) run in float64
    "converted": 1e-6,
    # float32 compute against the float64 reference: the target
    "float32": 1e-5,
    # forward vs reverse mode Jacobian in float32: DESIGN.md §6
    "jacobian32": 1e-4,
}

@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: intra-op threads only add contention on a shared machine (a tiny forward took
    0.8 s with 2 threads under load, 10 ms with 1), so these tests run single-threaded and restore the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BP_TINY = dict(resolution=32, ch=4, z_dim=8, shared_dim=6, n_classes=5, hier=True, attention={16})


def f32(sd):
    return {k: v.float() for k, v in sd.items()}


def rounded(sd):
    """Real checkpoints are float32: round once so that the reference and the loaded model hold the same values."""
    return {k: v.float().double() for k, v in sd.items()}


def ours_biggan(sd, bn_eps=None, dtype=torch.float64):
    kwargs, out, _ = bl.convert_biggan_pytorch(sd, bn_eps=bn_eps)
    G = BigGANGenerator(**kwargs).to(dtype).eval()
    G.load_state_dict(out)
    return G


def ours_deep(sd, cfg=None, dtype=torch.float64):
    kwargs, out, _ = bl.convert_pretrained_biggan(sd, config_json=None if cfg is None else ("config.json", cfg))
    G = BigGANDeepGenerator(**kwargs).to(dtype).eval()
    G.load_state_dict(out)
    return G


def zs(batch, dim, seed=3):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def one_hot(index, n):
    return torch.nn.functional.one_hot(torch.as_tensor(index), n).double()


def write(tmp_path, name, data, legacy=False):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        torch.save(data, path, _use_new_zipfile_serialization=not legacy)
    return path


def hf_folder(tmp_path, sd, cfg, name="biggan-deep-tiny"):
    folder = tmp_path / name
    folder.mkdir()
    torch.save(f32(sd), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# the generators against the references


@pytest.mark.parametrize("hier", [True, False])
@pytest.mark.parametrize("with_sv0", [True, False])
def test_biggan_matches_reference(hier, with_sv0):
    kw = dict(BP_TINY, hier=hier)
    sd = ref.random_biggan_pytorch(kw, seed=1, with_sv0=with_sv0)
    G = ours_biggan(sd, bn_eps=1e-4)
    assert G.hier == hier and G.z_dim == 8 and G.img_resolution == 32
    z = zs(3, 8)
    classes = torch.tensor([0, 4, 2])
    img_ref = ref.ref_biggan_pytorch(sd, kw, z, classes, bn_eps=1e-4)
    img = G.synthesize(z, classes)
    assert img.shape == (3, 3, 32, 32)
    assert relative_error(img, img_ref) <= TOL["exact"]
    # the same image from a list of ints, from one-hot class vectors and from the embedding itself
    assert relative_error(G(z, [0, 4, 2]), img_ref) <= TOL["exact"]
    assert relative_error(G(z, one_hot([0, 4, 2], 5)), img_ref) <= TOL["exact"]
    e = sd["shared.weight"][classes]
    assert relative_error(G(z, embedding=e), ref.ref_biggan_pytorch(sd, kw, z, e, bn_eps=1e-4)) <= TOL["exact"]
    # extra singular vectors (num_G_SVs = 2: u1, sv1) do not enter σ
    extra = dict(sd, **{k[:-2] + "u1": torch.randn_like(v) for k, v in sd.items() if k.endswith(".u0")},
                 **{k[:-3] + "sv1": v for k, v in sd.items() if k.endswith(".sv0")})
    assert torch.equal(ours_biggan(extra, bn_eps=1e-4)(z, classes), img)
    # a wrong bn eps is visible (the eps is a real part of the function)
    assert relative_error(G(z, classes), ref.ref_biggan_pytorch(sd, kw, z, classes, bn_eps=1e-5)) > 1e-6


@pytest.mark.parametrize("truncation", [1.0, 0.4, 0.5, 0.75, 0.1])
def test_deep_matches_reference(truncation):
    cfg = ref.hf_config()
    sd = ref.random_pretrained_biggan(cfg, seed=2)
    G = ours_deep(sd, cfg)
    assert G.img_resolution == 16 and G.init_kwargs["attention_layer_position"] == 2
    z = zs(2, 6)
    for classes, vectors in [([1, 3], one_hot([1, 3], 5)),
                             (torch.softmax(zs(2, 5, seed=9), 1), torch.softmax(zs(2, 5, seed=9), 1))]:
        img_ref = ref.ref_pretrained_biggan(sd, cfg, z, vectors, truncation)
        assert relative_error(G(z, classes, truncation), img_ref) <= TOL["exact"], truncation


def test_deep_spectral_norm_uses_the_stored_vectors():
    """torch's spectral norm in eval mode divides by ``u · W v`` with the stored u and v; with u from a later step
    than v this differs from ``|W v|`` or the true top singular value."""
    cfg = ref.hf_config()
    sd = ref.random_pretrained_biggan(cfg, seed=8, consistent=False)
    G = ours_deep(sd, cfg)
    z = zs(2, 6)
    expected = ref.ref_pretrained_biggan(sd, cfg, z, one_hot([0, 1], 5), 0.5)
    assert relative_error(G(z, [0, 1], 0.5), expected) <= TOL["exact"]


def test_deep_statistics_selection_is_the_packages():
    """0.4 / 0.25 = 1.6: the package blends stats[1]·0.6 + stats[2]·0.4 (not a linear interpolation); check that an
    honest linear interpolation would differ, so the test above pins the package's choice."""
    cfg = ref.hf_config()
    sd = ref.random_pretrained_biggan(cfg, seed=2)
    G = ours_deep(sd, cfg)
    bn = G.generator.bn
    mean, _ = bn.statistics(0.4)
    means = sd["generator.bn.running_means"]
    assert torch.allclose(mean, means[1] * 0.6 + means[2] * 0.4, atol=1e-12)
    assert not torch.allclose(mean, means[1] * 0.4 + means[2] * 0.6, atol=1e-6)


def test_float32_within_target():
    sd = rounded(ref.random_biggan_pytorch(BP_TINY))
    G = ours_biggan(f32(sd), bn_eps=1e-4, dtype=torch.float32)
    z = zs(2, 8)
    img = G(z.float(), [1, 2])
    assert img.dtype == torch.float32
    assert relative_error(img, ref.ref_biggan_pytorch(sd, BP_TINY, z, torch.tensor([1, 2]), 1e-4)) <= TOL["float32"]
    cfg = ref.hf_config()
    sd = rounded(ref.random_pretrained_biggan(cfg))
    G = ours_deep(f32(sd), cfg, dtype=torch.float32)
    z = zs(2, 6)
    assert relative_error(G(z.float(), [0, 4], 0.6), ref.ref_pretrained_biggan(sd, cfg, z, one_hot([0, 4], 5), 0.6)) \
        <= TOL["float32"]


@pytest.mark.parametrize("resolution", [128, 256, 512])
def test_public_shapes_convert_to_the_registered_configs(resolution):
    """Checkpoints with the public models' exact structure (channel width 8 instead of 96/128 to stay small):
    BigGAN-PyTorch / TF-Hub conversions and pytorch-pretrained-biggan's BigGAN128/256/512 layer lists."""
    attention = {128: 64, 256: 128, 512: 64}[resolution]
    z_dim = {128: 120, 256: 140, 512: 128}[resolution]
    kw = dict(resolution=resolution, ch=8, z_dim=z_dim, shared_dim=128, n_classes=1000, hier=True,
              attention={attention})
    sd = ref.random_biggan_pytorch(kw, with_sv0=False)
    kwargs, _, meta = bl.convert_biggan_pytorch(sd)
    _, expected, _ = bg.biggan_config(f"biggan-{resolution}")
    assert kwargs == dict(expected, ch=8)
    assert meta["assumptions"]["bn_eps"].startswith("1e-4")
    cfg = ref.hf_config(output_dim=resolution, z_dim=128, class_embed_dim=128, channel_width=8, num_classes=1000,
                        layers=[list(x) for x in bg.DEEP_LAYERS[resolution]], attention_layer_position=8, n_stats=51)
    sd = ref.random_pretrained_biggan(cfg)
    _, expected, _ = bg.biggan_config(f"biggan-deep-{resolution}")
    for config_json in (("config.json", cfg), None):  # the layer list is also recognised without config.json
        kwargs, _, _ = bl.convert_pretrained_biggan(sd, config_json=config_json)
        assert kwargs == dict(expected, ch=8)
    if resolution == 128:
        G = ours_deep(sd, cfg)
        z = zs(1, 128)
        expected = ref.ref_pretrained_biggan(sd, cfg, z, one_hot([207], 1000), 0.5)
        assert relative_error(G(z, 207, 0.5), expected) <= TOL["exact"]


def test_registry():
    chunks = {}
    for name, (cls, kwargs, _) in bg.BIGGAN_CONFIGS.items():
        with torch.device("meta"):
            G = bg.CLASSES[cls](**kwargs)
        assert G.init_kwargs == bg.biggan_config(name)[1]
        if cls == "BigGANGenerator":
            chunks[name] = (G.num_slots, G.z_chunk, [r for r, a in zip([8 * 2 ** i for i in range(G.num_blocks)],
                                                                        G.attention_at, strict=True) if a])
    assert chunks["biggan-128"] == (6, 20, [64]) and chunks["biggan-256"] == (7, 20, [128])
    assert chunks["biggan-512"] == (8, 16, [64])
    with pytest.raises(ResefaError, match="config"):
        bg.biggan_config("biggan-1024")
    for bad in [dict(img_resolution=48), dict(z_dim=9), dict(attention="x"), dict(ch=1)]:
        with pytest.raises(ResefaError):
            BigGANGenerator(**{**bg.BIGGAN_TINY, **bad})
    for bad in [dict(layers=[[False, 16, 16], [True, 16, 5]]), dict(img_resolution=32), dict(ch=2)]:
        with pytest.raises(ResefaError):
            BigGANDeepGenerator(**{**bg.BIGGAN_DEEP_TINY, **bad})


# ---------------------------------------------------------------------------------------------------------------
# classes and truncation


def test_class_handling():
    G = bg.build_biggan("biggan-tiny")
    z = G.sample_z(2)
    with pytest.raises(ResefaError, match=r"class indices in \[0, 4\]"):
        G(z, [0, 5])
    with pytest.raises(ResefaError, match="classes"):
        G(z, True)
    with pytest.raises(ResefaError, match=r"class vectors \[B, 5\]"):
        G(z, torch.zeros(2, 4))
    with pytest.raises(ResefaError, match="exactly one"):
        G(z, 1, embedding=torch.zeros(2, 6))
    with pytest.raises(ResefaError, match="exactly one"):
        G(z)
    with pytest.raises(ResefaError, match="1 or 2 classes"):
        G(z, [0, 1, 2])
    assert torch.equal(G(z, 3), G(z, [3, 3]))  # one class for the whole batch
    with torch.device("meta"):
        big = BigGANGenerator(**bg.biggan_config("biggan-128")[1])
    with pytest.raises(ResefaError, match="ImageNet"):
        big.embed(1000)
    with pytest.raises(ResefaError, match="`z`"):
        G(torch.zeros(2, 7), 0)


def test_truncation():
    G = bg.build_biggan("biggan-tiny")
    z = G.sample_z(4000, truncation=0.5, seed=1)
    assert float(z.abs().max()) <= 1.0 and float(z.std()) > 0.3
    assert torch.equal(z, G.sample_z(4000, truncation=0.5, seed=1))
    assert not torch.equal(z, G.sample_z(4000, truncation=0.5, seed=2))
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ResefaError, match="truncation"):
            G(z[:1], 0, truncation=bad)
    # BigGAN's network has no truncation input (BigGAN-PyTorch's forward takes none): only z's scale matters
    assert torch.equal(G(z[:2], 0, truncation=0.5), G(z[:2], 0, truncation=1.0))
    D = bg.build_biggan("biggan-deep-tiny")
    z = D.sample_z(2, truncation=0.4)
    # BN statistics follow the truncation
    assert relative_error(D(z, 1, truncation=0.4), D(z, 1, truncation=1.0)) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# latent spaces, layer skip and forward mode


def test_staged_z_space_reads_only_its_chunks():
    G = bg.build_biggan("biggan-tiny").double()
    fn, latent = G.jacobian_inputs(G.sample_z(1).double()[0], classes=2)
    assert isinstance(fn, bg.BigGANStaged) and isinstance(fn, rf.StagedGenerator)
    assert latent.shape == (4, 2) and fn.num_stages == 4
    ws = torch.randn(2, 4, 2, dtype=torch.float64)
    fn.embedding = fn.embedding.expand(2, -1)
    state, states = None, []
    for i in range(fn.num_stages):
        states.append(state)
        state = fn.run_stage(i, state, ws)
    assert torch.equal(state, G(ws.reshape(2, 8), 2))
    for i in range(fn.num_stages):
        lo, hi = fn.stage_ws_rows(i)
        assert (lo, hi) == (i, i + 1)
        other = ws.clone()
        other[:, [r for r in range(4) if not lo <= r < hi]] += 1
        assert torch.equal(fn.run_stage(i, states[i], other), fn.run_stage(i, states[i], ws))
        assert torch.equal(fn.run_stage(i, states[i], tuple(ws.unbind(1))), fn.run_stage(i, states[i], ws))
        inside = ws.clone()
        inside[:, lo:hi] += 1
        assert not torch.allclose(fn.run_stage(i, states[i], inside), fn.run_stage(i, states[i], ws))


@pytest.mark.parametrize("name", ["biggan-tiny", "biggan-deep-tiny"])
@pytest.mark.parametrize("space", ["z", "z+embedding"])
def test_jacobian_forward_equals_reverse(name, space):
    G64 = bg.build_biggan(name, seed=4).double()
    z = G64.sample_z(1, truncation=0.7, seed=5)[0]

    def readout(img):  # every second pixel: P = 3·(R/2)², keeps the reverse-mode reference cheap
        return img[:, :, ::2, ::2]

    def image(x, G=G64):
        if space == "z":
            return readout(G(x[None], 3, truncation=0.7)).reshape(-1)
        return readout(G(x[None, :G.z_dim], embedding=x[None, G.z_dim:], truncation=0.7)).reshape(-1)

    fn, latent = G64.jacobian_inputs(z, classes=3, truncation=0.7, space=space)
    flat = latent.reshape(-1)
    J_rev = torch.func.jacrev(image)(flat)  # [P, d]
    J, info = rf.jacobian(fn, latent, readout=readout, chunk_size=5, progress=False, return_info=True)
    assert J.shape == J_rev.shape
    assert relative_error(J, J_rev) <= TOL["exact"]
    if isinstance(fn, bg.BigGANStaged):
        assert info.layer_skip and info.stage_runs < info.stage_runs_without_skip
    G32 = bg.build_biggan(name, seed=4)
    fn32, latent32 = G32.jacobian_inputs(z.float(), classes=3, truncation=0.7, space=space)
    assert relative_error(rf.jacobian(fn32, latent32, readout=readout, chunk_size=8, progress=False), J_rev) \
        <= TOL["jacobian32"]


def test_preset_directions_through_the_api():
    """The API path the paper uses on BigGAN: the z Jacobian at one class (layer skip), a BigGAN preset region
    (defined on 256×256, resampled to the Jacobian's grid), ReSeFa directions [k, z_dim] that are then applied to
    another class."""
    G = bg.build_biggan("biggan-tiny", seed=2)
    z = G.sample_z(1, truncation=0.8)
    fn, latent = G.jacobian_inputs(z[0], classes=1, truncation=0.8)
    J = rf.jacobian(fn, latent, progress=False)  # [3·32·32, 8]
    result = rf.factorize(J.reshape(3, 32, 32, -1), "biggan/center1", k=3, backend="reference")
    directions = result.directions.reshape(3, -1)
    assert directions.shape == (3, 8)
    assert torch.allclose(directions.double().norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    edited = G(z + 0.5 * directions[:1].to(z.dtype), 4, truncation=0.8)  # another class, same z direction
    assert edited.shape == (1, 3, 32, 32) and not torch.allclose(edited, G(z, 4, truncation=0.8))


def test_jacobian_inputs_checks():
    G = bg.build_biggan("biggan-tiny")
    with pytest.raises(ResefaError, match="space"):
        G.jacobian_inputs(G.sample_z(1)[0], 0, space="w")
    with pytest.raises(ResefaError, match="one code"):
        G.jacobian_inputs(G.sample_z(2), 0)
    fn, latent = G.jacobian_inputs(G.sample_z(1)[0], 0, staged=False)
    assert not isinstance(fn, bg.BigGANStaged) and latent.shape == (8,)


# ---------------------------------------------------------------------------------------------------------------
# loaders, one format at a time


@pytest.mark.parametrize("tfhub", [False, True])
def test_load_biggan_pytorch(tmp_path, tfhub):
    sd = rounded(ref.random_biggan_pytorch(BP_TINY, with_sv0=not tfhub))
    loaded = models.load(write(tmp_path, "biggan-tiny.pth" if tfhub else "G_ema.pth", f32(sd)))
    G = loaded.generator
    assert isinstance(G, BigGANGenerator) and loaded.w_avg is None
    assert loaded.metadata["format"] == "biggan-pytorch" and loaded.metadata["family"] == "biggan"
    eps = 1e-4 if tfhub else 1e-5
    assert G.init_kwargs["bn_eps"] == eps and "bn_eps" in loaded.metadata["assumptions"]
    z, classes = zs(2, 8), torch.tensor([3, 1])
    img_ref = ref.ref_biggan_pytorch(sd, BP_TINY, z, classes, bn_eps=eps)
    assert relative_error(G(z.float(), classes), img_ref) <= TOL["float32"]
    assert relative_error(G.double()(z, classes), img_ref) <= TOL["converted"]
    assert loaded.metadata["config"] == ("biggan-tiny" if tfhub else None)


@pytest.mark.parametrize("layout", ["folder", "prefixed files", "bin without config", "legacy torch.save"])
def test_load_pretrained_biggan(tmp_path, layout):
    cfg = ref.hf_config()
    sd = rounded(ref.random_pretrained_biggan(cfg, seed=6))
    if layout == "folder":
        path = hf_folder(tmp_path, sd, cfg)
    elif layout == "prefixed files":  # the package's download cache names
        path = write(tmp_path, "biggan-deep-tiny-pytorch_model.bin", f32(sd))
        (tmp_path / "biggan-deep-tiny-config.json").write_text(json.dumps(cfg))
    else:
        path = write(tmp_path, "pytorch_model.bin", f32(sd), legacy=layout == "legacy torch.save")
    loaded = models.load(path)
    G = loaded.generator
    assert isinstance(G, BigGANDeepGenerator) and loaded.metadata["format"] == "pytorch-pretrained-biggan"
    assert ("config_json" in loaded.metadata) == (layout in ("folder", "prefixed files"))
    assert ("eps" in loaded.metadata["assumptions"]) == (layout not in ("folder", "prefixed files"))
    z = zs(2, 6)
    for truncation in (0.4, 1.0):
        img_ref = ref.ref_pretrained_biggan(sd, cfg, z, one_hot([2, 0], 5), truncation)
        assert relative_error(G(z.float(), [2, 0], truncation), img_ref) <= TOL["float32"]
    assert relative_error(G.double()(z, [2, 0], 0.4), ref.ref_pretrained_biggan(sd, cfg, z, one_hot([2, 0], 5), 0.4)) \
        <= TOL["converted"]


@pytest.mark.parametrize("inner", ["biggan-pytorch", "pytorch-pretrained-biggan"])
@pytest.mark.parametrize("wrapped", [True, False])
def test_load_hammer_wrapper(tmp_path, inner, wrapped):
    if inner == "biggan-pytorch":
        sd = rounded(ref.random_biggan_pytorch(BP_TINY))
        z = zs(1, 8)
        img_ref = ref.ref_biggan_pytorch(sd, BP_TINY, z, torch.tensor([4]), 1e-5)
    else:
        cfg = ref.hf_config()
        sd = rounded(ref.random_pretrained_biggan(cfg))
        z = zs(1, 6)
        img_ref = ref.ref_pretrained_biggan(sd, cfg, z, one_hot([4], 5), 1.0)
    obj = {"models": {"generator_smooth": f32(sd), "generator": {}, "discriminator": {}}} if wrapped else \
        {"generator": f32(sd)}
    loaded = models.load(write(tmp_path, "biggan.pth", obj))
    assert loaded.metadata["format"] == "hammer" and inner in loaded.metadata["wrapped"]
    assert relative_error(loaded.generator(z.float(), 4), img_ref) <= TOL["float32"]


@pytest.mark.parametrize("name", ["biggan-tiny", "biggan-deep-tiny"])
def test_save_round_trip(tmp_path, name):
    G = bg.build_biggan(name, seed=7)
    path = tmp_path / "mine.pt"
    models.save_biggan(G, path, metadata={"note": "round trip", "seed": 7})
    again = models.load(path)
    assert again.metadata["format"] == "resefa_fast" and again.metadata["saved_metadata"]["seed"] == 7
    assert type(again.generator) is type(G) and again.generator.init_kwargs == G.init_kwargs
    assert again.metadata["config"] == name
    z = G.sample_z(2, truncation=0.5)
    assert torch.equal(G(z, [1, 2], 0.5), again.generator(z, [1, 2], 0.5))
    torch.load(path, weights_only=True)  # plain data
    with pytest.raises(ResefaError, match="generator"):
        models.save_biggan(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_config_argument(tmp_path):
    sd = ref.random_biggan_pytorch(BP_TINY, with_sv0=True)
    path = write(tmp_path, "G_ema.pth", f32(sd))
    loaded = models.load(path, config="biggan-tiny")
    assert loaded.metadata["config"] == "biggan-tiny" and loaded.generator.init_kwargs["bn_eps"] == 1e-4
    assert "from config" in loaded.metadata["assumptions"]["bn_eps"]
    with pytest.raises(ResefaError, match="does not match `config`"):
        models.load(path, config="biggan-128")
    with pytest.raises(ResefaError, match="BigGANDeepGenerator in the configuration"):
        models.load(path, config="biggan-deep-tiny")
    with pytest.raises(ResefaError, match="BigGAN configuration"):
        models.load(path, config="ffhq-1024")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("pytorch_pretrained_biggan"),
                    reason="pytorch-pretrained-biggan is not installed (pip install pytorch-pretrained-biggan)")
def test_against_the_pytorch_pretrained_biggan_package(tmp_path):
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig
    cfg = ref.hf_config()
    config = BigGANConfig.from_dict(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BigGAN(config)
        with torch.no_grad():
            for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
                if name.endswith("running_vars"):
                    tensor.uniform_(0.5, 1.5)
                elif not name.endswith(("weight_u", "weight_v")):
                    tensor.normal_(0, 0.5 if name.endswith("gamma") else 1.0)
            for module in model.modules():  # the converter's one power-iteration step: u, v consistent
                if hasattr(module, "weight_orig"):
                    w = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
                    module.weight_v.copy_(torch.nn.functional.normalize(w.t() @ module.weight_u, dim=0))
                    module.weight_u.copy_(torch.nn.functional.normalize(w @ module.weight_v, dim=0))
    model.eval()
    folder = tmp_path / "package-model"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(config.to_json_string())
    G = models.load(folder).generator
    z = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    vectors = torch.nn.functional.one_hot(torch.tensor([1, 4]), 5).float()
    for truncation in (1.0, 0.4, 0.5):
        with torch.no_grad():
            expected = model(z, vectors, truncation)
        assert relative_error(G(z, [1, 4], truncation), expected) <= TOL["float32"], truncation


# ---------------------------------------------------------------------------------------------------------------
# bad files: each gives a ResefaError naming the file and what was expected


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _bp(**change):
    sd = f32(ref.random_biggan_pytorch(BP_TINY))
    drop = change.pop("drop", ())
    for key in drop:
        sd.pop(key)
    sd.update(change)
    return sd


def _hf(drop=()):
    sd = f32(ref.random_pretrained_biggan(ref.hf_config()))
    for key in drop:
        sd.pop(key)
    return sd


BAD_FILES = {
    "BigGAN-PyTorch weight without u0": (lambda: _bp(drop=["blocks.1.0.conv2.u0"]), "without their `u0`"),
    "BigGAN-PyTorch missing key": (lambda: _bp(drop=["blocks.1.0.bn2.stored_var"]), "missing.*stored_var"),
    "BigGAN-PyTorch mis-shaped key": (lambda: _bp(**{"output_layer.0.bias": torch.zeros(3)}), "mis-shaped"),
    "BigGAN-PyTorch mybn": (lambda: _bp(**{"blocks.0.0.bn1.bn.stored_mean": torch.zeros(16)}), "mybn"),
    "BigGAN-PyTorch without shared": (lambda: _bp(drop=["shared.weight"]), "G_shared"),
    "BigGAN-PyTorch odd channels": (lambda: _bp(**{"blocks.1.0.conv1.weight": torch.zeros(16, 12, 3, 3)}),
                                    "do not follow BigGAN-PyTorch's G_arch"),
    "pretrained without weight_v": (lambda: _hf(drop=["generator.gen_z.weight_v"]), "weight_v"),
    "pretrained without embeddings": (lambda: _hf(drop=["embeddings.weight"]), "missing tensor `embeddings.weight`"),
    "wrapper with a non-tensor": (lambda: {"generator_smooth": {**_bp(), "blocks.0.0.conv1.u0": [1, 2]}},
                                  "non-tensor"),
    "resefa_fast file of unknown class": (lambda: {"format": "resefa_fast.biggan", "class": "BigGANv9",
                                                   "init_kwargs": {}, "state_dict": {}}, "corrupt"),
    "resefa_fast file with unknown kwargs": (lambda: {"format": "resefa_fast.biggan", "class": "BigGANGenerator",
                                                      "init_kwargs": {"warp": 2}, "state_dict": {}},
                                             "unsupported BigGANGenerator settings"),
    "os.system in a torch.save file": (lambda: pickle.dumps({"generator": _Evil()}), "refused to load.*system"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files(tmp_path, case):
    content, message = BAD_FILES[case]
    path = write(tmp_path, "bad_biggan.pth", content())
    with pytest.raises(ResefaError, match=message) as error:
        models.load(path)
    assert "bad_biggan.pth" in str(error.value)


def test_bad_folders(tmp_path):
    cfg = ref.hf_config()
    sd = ref.random_pretrained_biggan(cfg)
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ResefaError, match="only_config.*no pytorch_model.bin"):
        models.load(only_config)
    bad_json = hf_folder(tmp_path, sd, cfg, name="bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ResefaError, match="bad_json/config.json.*not a readable JSON"):
        models.load(bad_json)
    wrong = hf_folder(tmp_path, sd, dict(cfg, attention_layer_position=3), name="wrong_config")
    with pytest.raises(ResefaError, match="wrong_config/config.json: does not match the weights"):
        models.load(wrong)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "pytorch_model.bin").write_bytes(b"not a torch file")
    with pytest.raises(ResefaError, match="garbage/pytorch_model.bin.*not a checkpoint"):
        models.load(garbage)
    other = tmp_path / "other_state"
    other.mkdir()
    torch.save({"weights": torch.zeros(2)}, other / "pytorch_model.bin")
    with pytest.raises(ResefaError, match="other_state/pytorch_model.bin: not a pytorch-pretrained-biggan"):
        models.load(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ResefaError, match="existing checkpoint file"):
        models.load(empty)


# ---------------------------------------------------------------------------------------------------------------
# benchmark smoke run


def test_bench_biggan_small(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import bench_biggan
    out = tmp_path / "bench.json"
    report = bench_biggan.main(["--small", "--device", "cpu", "--resolutions", "128", "--batches", "1",
                                "--chunks", "2", "--columns", "3", "--precisions", "float32", "--json", str(out)])
    assert set(report["correctness"]) == {"biggan-128", "deep-128"}
    assert all(error <= bench_biggan.IMAGE_RTOL for error in report["correctness"].values())
    saved = json.loads(out.read_text())
    assert {r["method"] for r in saved["rows"]} == {"forward", "vmap(jvp) z", "jacobian z", "jacobian z+embedding"}
    assert all(r["items_per_s"] > 0 for r in saved["rows"])
