"""resefa_fast.models StyleGAN3 (T and R): the generator against an independent reference forward pass
(tests/stylegan3_reference.py), the user transform, truncation, labels, the layer-skip protocol and forward mode,
the loaders of every format, every bad-file case, and a smoke run of the benchmark."""
import math
import os
import sys

import numpy as np
import pytest
import stylegan3_reference as ref
import torch

import resefa_fast as rf
from resefa_fast import models
from resefa_fast.errors import ResefaError
from resefa_fast.models import StyleGAN3Generator
from resefa_fast.models.stylegan3 import design_lowpass_filter, layer_plans

from conftest import model_inputs, relative_error, write_file

pytest.importorskip("scipy")  # the reference designs its filters with scipy, as the official code

#: Relative (Frobenius) error bounds, each with its reason.
TOL = {
    # float64 weights and compute: only the rounding of a different operation order (fused vs non-fused conv,
    # polyphase vs zero-inserted FIR, separable vs outer-product filter) through ~8 layers, ~1e-15 per op; 1e-10
    # leaves a wide margin and still catches any formula difference (a wrong ε, gain, padding or filter is >= 1e-8)
    "exact": 1e-10,
    # float32 compute against the float64 reference: the target
    "float32": 1e-5,
    # forward vs reverse mode Jacobian in float32: DESIGN.md §6 / the issue
    "jacobian32": 1e-4,
}

T = dict(models.stylegan3_config("stylegan3-t-tiny").kwargs)
R = dict(models.stylegan3_config("stylegan3-r-tiny").kwargs)
CFGS = {"T": T, "R": R}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread


def ours_from_official(sd, kw, dtype=torch.float64):
    G = StyleGAN3Generator(**kw).to(dtype).eval().requires_grad_(False)
    G.load_state_dict(sd)
    return G


def check_against_reference(G, P, kw, tol, psi=0.7, cutoff=None, seed=5):
    z, c = model_inputs(kw, seed=seed)
    dtype = next(G.parameters()).dtype
    ws = G.map(z.to(dtype), None if c is None else c.to(dtype), truncation_psi=psi, truncation_cutoff=cutoff)
    ws_ref = ref.ref_mapping(P["mapping"], z, c, psi, cutoff, num_ws=G.num_ws)
    assert relative_error(ws, ws_ref) <= tol
    img = G.synthesize(ws)
    assert img.shape == (3, kw["img_channels"], kw["img_resolution"], kw["img_resolution"])
    assert relative_error(img, ref.ref_synthesis(P, ws_ref)) <= tol
    return img


# ---------------------------------------------------------------------------------------------------------------
# the generator against the reference


@pytest.mark.parametrize("cfg", ["T", "R"])
@pytest.mark.parametrize("c_dim,conv_clamp", [(0, 256.0), (3, 0.3)])
def test_generator_matches_reference(cfg, c_dim, conv_clamp):
    kw = dict(CFGS[cfg], c_dim=c_dim, conv_clamp=conv_clamp)
    sd = ref.random_official(kw)
    G = ours_from_official(sd, kw)
    P = ref.official_params(sd, kw)
    z, c = model_inputs(kw)
    for psi, cutoff in [(1.0, None), (0.7, None)]:  # truncation acts on W+ only: the mappings are compared
        expected = ref.ref_mapping(P["mapping"], z, c, psi, cutoff, num_ws=G.num_ws)
        assert relative_error(G.map(z, c, psi, cutoff), expected) <= TOL["exact"]
    img = check_against_reference(G, P, kw, TOL["exact"], 0.5, 3)
    if conv_clamp < 1:  # the clamp must actually bite in this test
        unclamped = ref.ref_synthesis(dict(P, clamp=None), ref.ref_mapping(P["mapping"], *model_inputs(kw), 0.5, 3,
                                                                           num_ws=G.num_ws))
        assert relative_error(img, unclamped) > 1e-3


@pytest.mark.parametrize("cfg", ["T", "R"])
def test_upsample_impls_are_the_same_function(cfg):
    """The "zeros" up-sampling (zero insertion + conv2d) equals the reference too, also under vmap(jvp)."""
    from resefa_fast.models import stylegan3
    kw = CFGS[cfg]
    sd = ref.random_official(kw, seed=9)
    G = ours_from_official(sd, kw)
    P = ref.official_params(sd, kw)
    ws = G.map(model_inputs(kw)[0])
    images, jvps = {}, {}
    tangents = torch.randn(3, *ws[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    try:
        for impl in stylegan3.UPSAMPLE_IMPLS:
            stylegan3.set_upsample_impl(impl)
            images[impl] = G.synthesize(ws)
            jvps[impl] = torch.func.vmap(lambda t: torch.func.jvp(lambda x: G.synthesis(x[None]), (ws[0],), (t,))[1])(
                tangents)
    finally:
        stylegan3.set_upsample_impl("transpose")
    assert relative_error(images["zeros"], ref.ref_synthesis(P, ws)) <= TOL["exact"]
    assert relative_error(jvps["zeros"], jvps["transpose"]) <= TOL["exact"]
    with pytest.raises(ResefaError, match="impl"):
        stylegan3.set_upsample_impl("fft")


@pytest.mark.parametrize("cfg", ["T", "R"])
def test_float32_matches_reference_within_target(cfg):
    kw = CFGS[cfg]
    sd = ref.random_official(kw, seed=3)
    G32 = ours_from_official(sd, kw, torch.float32)
    img = check_against_reference(G32, ref.official_params(sd, kw), kw, TOL["float32"])
    assert img.dtype == torch.float32


@pytest.mark.parametrize("cfg", ["T", "R"])
@pytest.mark.parametrize("tx,ty,rotate", [(0.25, -0.1, 0.0), (0.0, 0.0, 30.0), (-0.3, 0.2, -75.0)])
def test_user_transform_matches_reference(cfg, tx, ty, rotate):
    kw = CFGS[cfg]
    sd = ref.random_official(kw, seed=1)
    G = ours_from_official(sd, kw)
    z, _ = model_inputs(kw)
    ws = G.map(z)
    identity = G.synthesize(ws)
    G.set_transform(tx=tx, ty=ty, rotate=rotate)
    expected = ref.transform_matrix(tx, ty, rotate)
    assert torch.equal(G.transform, expected)
    P = ref.official_params(dict(sd, **{"synthesis.input.transform": expected}), kw)
    moved = G.synthesize(ws)
    assert relative_error(moved, ref.ref_synthesis(P, ws)) <= TOL["exact"]
    assert relative_error(moved, identity) > 1e-2  # the transform changes the image
    assert relative_error(G.set_transform().synthesize(ws), identity) == 0.0


def test_scaling_transform_damps_out_of_band_frequencies():
    """A zooming user transform pushes frequencies past the bandwidth; the official input damps them (amplitude
    ``1 - (|f| - f_c) / (s/2 - f_c)`` clamped to [0, 1])."""
    sd = ref.random_official(T, seed=6)
    G = ours_from_official(sd, T)
    zoom = torch.diag(torch.tensor([2.5, 2.5, 1.0], dtype=torch.float64))
    G.synthesis.input.transform.copy_(zoom)
    P = ref.official_params(dict(sd, **{"synthesis.input.transform": zoom}), T)
    ws = G.map(model_inputs(T)[0])
    assert relative_error(G.synthesize(ws), ref.ref_synthesis(P, ws)) <= TOL["exact"]
    amplitudes = 1 - ((sd["synthesis.input.freqs"] * 2.5).norm(dim=1) - P["input"]["bandwidth"]) / (
        P["input"]["rate"] / 2 - P["input"]["bandwidth"])
    assert float(amplitudes.min()) < 1  # the damping is exercised


def test_transform_is_the_original_codes_matrix():
    # gen_images.py / ReSeFa manipulate.py: transform = inv([[c, s, tx], [-s, c, ty], [0, 0, 1]])
    m = models.make_transform(0.3, -0.2, 40.0)
    angle = 40.0 / 360.0 * 2 * np.pi
    forward = np.array([[np.cos(angle), np.sin(angle), 0.3], [-np.sin(angle), np.cos(angle), -0.2], [0, 0, 1]])
    assert np.allclose(m @ forward, np.eye(3), atol=1e-14)
    G = models.build_stylegan3("stylegan3-t-tiny")
    with pytest.raises(ResefaError, match="rotate"):
        G.set_transform(rotate=float("nan"))


def test_official_batch_coupling_is_only_through_epsilon():
    """The official demodulated conv normalises the styles over the whole batch; ours per sample. The difference
    enters only through ε = 1e-8 and stays far below every tolerance."""
    sd = ref.random_official(T, seed=4)
    P = ref.official_params(sd, T)
    ws = ref.ref_mapping(P["mapping"], *model_inputs(T, batch=4), num_ws=T["num_layers"] + 2)
    assert relative_error(ref.ref_synthesis_batched(P, ws), ref.ref_synthesis(P, ws)) <= 1e-8
    # the benchmark's faster reference (separable 1-D passes) is the same function
    assert relative_error(ref.ref_synthesis(P, ws[:1], separable=True), ref.ref_synthesis(P, ws[:1])) <= TOL["exact"]


def test_filters_equal_scipy_design():
    """Our numpy filter design (firwin's Kaiser window, J1 by quadrature) equals scipy's for every layer of the
    1024² T and R releases (the buffers a random generator holds)."""
    for name in ("stylegan3-t-ffhqu-1024", "stylegan3-r-ffhqu-1024", "stylegan3-r-afhqv2-512"):
        kw = models.stylegan3_config(name).kwargs
        for plan, L in zip(layer_plans(**kw), ref.schedule(kw)["layers"], strict=True):
            assert plan["name"] == L["name"] and plan["padding"] == L["padding"]
            assert (plan["up_factor"], plan["down_factor"]) == (L["up"], L["down"])
            for mine, theirs in ((design_lowpass_filter(*plan["up_design"]), L["up_filter"]),
                                 (design_lowpass_filter(*plan["down_design"]), L["down_filter"])):
                assert (mine is None) == (theirs is None)
                if mine is not None:
                    assert mine.shape == theirs.shape and float((mine - theirs).abs().max()) <= 1e-7


def test_registry_configs():
    names = {"T": ["L0_36_512", "L1_36_512", "L2_52_512", "L3_52_512", "L4_84_512", "L5_148_512", "L6_148_512",
                   "L7_276_323", "L8_276_203", "L9_532_128", "L10_1044_81", "L11_1044_51", "L12_1044_32",
                   "L13_1024_32", "L14_1024_3"],
             "R": ["L0_36_1024", "L1_36_1024", "L2_52_1024", "L3_52_1024", "L4_84_1024", "L5_148_1024",
                   "L6_148_1024", "L7_276_645", "L8_276_406", "L9_532_256", "L10_1044_161", "L11_1044_102",
                   "L12_1044_64", "L13_1024_64", "L14_1024_3"]}
    for cfg in ("t", "r"):
        G = models.build_stylegan3(f"stylegan3-{cfg}-ffhqu-1024")
        assert G.synthesis.layer_names == names[cfg.upper()] and G.num_ws == 16
        assert G.mapping.num_layers == 2 and G.init_kwargs["conv_clamp"] == 256
        radial = [layer.down_filter is not None and layer.down_filter.ndim == 2 for layer in G.synthesis.layers]
        assert radial == ([True] * 12 + [False] * 3 if cfg == "r" else [False] * 15)
    for name, c in models.STYLEGAN3_CONFIGS.items():
        assert name.startswith("stylegan3-") and c.kwargs["img_resolution"] in (256, 512, 1024)
    assert models.stylegan3_config("stylegan3-r-ffhqu-256x256").kwargs["channel_base"] == 32768
    assert models.stylegan3_config("stylegan3-t-afhqv2-512x512").kwargs["channel_base"] == 32768
    with pytest.raises(ResefaError, match="config"):
        models.stylegan3_config("stylegan3-t-celeba")
    assert rf.preset("ffhqu/eyesr2").name == "ffhqu/eyesr2"


def test_init_kwargs_rebuild_and_argument_checks():
    G = models.build_stylegan3("stylegan3-r-tiny", seed=2)
    G2 = StyleGAN3Generator(**G.init_kwargs)
    assert G2.init_kwargs == G.init_kwargs and list(G.state_dict()) == list(G2.state_dict())
    assert G.w_avg.shape == (8,) and G.num_ws == 8 and G.num_stages == 8
    for bad in [dict(img_resolution=24), dict(num_critical=6), dict(w_dim=0), dict(margin_size=-1),
                dict(img_resolution=1024)]:  # the last: channel_base 128 gives layers without channels
        with pytest.raises(ResefaError):
            StyleGAN3Generator(**{**T, **bad})
    with pytest.raises(ResefaError, match="`ws`"):
        G.synthesize(torch.zeros(1, 5, 8))
    with pytest.raises(ResefaError, match="`z`"):
        G.map(torch.zeros(1, 3))
    with pytest.raises(ResefaError, match="`c`"):
        StyleGAN3Generator(**{**T, "c_dim": 2}).map(torch.zeros(1, 8))
    with pytest.raises(ResefaError, match="truncation_cutoff"):
        G.map(torch.zeros(1, 8), truncation_cutoff=9)


# ---------------------------------------------------------------------------------------------------------------
# layer-skip protocol and forward mode


def test_stages_compose_to_synthesis_and_read_only_their_rows():
    G = models.build_stylegan3("stylegan3-t-tiny", seed=1).double()
    G.synthesis.input.affine.weight.normal_()  # let w move the input
    ws = torch.randn(2, G.num_ws, G.w_dim, dtype=torch.float64)
    states, state = [], None
    for i in range(G.num_stages):
        states.append(state)
        state = G.run_stage(i, state, ws)
    assert torch.equal(state, G.synthesis(ws))
    assert [G.stage_ws_rows(i) for i in range(G.num_stages)] == [(i, i + 1) for i in range(G.num_ws)]
    for i in range(G.num_stages):
        out = G.run_stage(i, states[i], ws)
        other = ws.clone()
        other[:, [r for r in range(G.num_ws) if r != i]] = torch.randn(2, G.num_ws - 1, G.w_dim, dtype=torch.float64)
        assert torch.equal(G.run_stage(i, states[i], other), out)
        inside = ws.clone()
        inside[:, i] += 1
        assert not torch.allclose(G.run_stage(i, states[i], inside), out)
        assert torch.equal(G.run_stage(i, states[i], tuple(ws.unbind(1))), out)
    assert isinstance(G, rf.StagedGenerator)


@pytest.mark.parametrize("cfg,dtype", [("T", torch.float32), ("R", torch.float32), ("T", torch.float64)])
def test_jacobian_engine_matches_reverse_mode(cfg, dtype):
    G = StyleGAN3Generator(**dict(CFGS[cfg])).eval().requires_grad_(False)
    G.load_state_dict({k: v.float() for k, v in ref.random_official(CFGS[cfg], seed=7).items()})
    G = G.to(dtype)
    G.set_transform(0.1, -0.05, 15.0)
    w = G.map(torch.randn(1, 8, dtype=dtype), truncation_psi=0.8)[0]  # [num_ws, w_dim]
    tol = TOL["exact"] if dtype == torch.float64 else TOL["jacobian32"]
    readout = rf.readouts.original(8)  # nearest resize to 8x8 and channel sum: P = 64 rows keeps reverse mode cheap

    def f(x):
        return readout(G.synthesis(x[None])).reshape(-1)

    J_rev = torch.autograd.functional.jacobian(f, w).reshape(-1, w.numel())  # [P, num_ws * w_dim]
    J, info = rf.jacobian(G, w, readout=readout, layer_skip=True, chunk_size=16, progress=False, return_info=True)
    assert J.shape == J_rev.shape == (64, G.num_ws * G.w_dim) and relative_error(J, J_rev) <= tol
    assert info.stage_runs < info.stage_runs_without_skip
    J_w = rf.jacobian(G, w[0], readout=readout, progress=False)  # w repeated on every row, the original's Jacobian
    J_w_rev = torch.autograd.functional.jacobian(lambda x: f(x[None].expand(G.num_ws, -1)), w[0])
    assert relative_error(J_w, J_w_rev) <= tol


# ---------------------------------------------------------------------------------------------------------------
# loaders, one format at a time


MARKER_SRC = "import pathlib\npathlib.Path({!r}).write_text('executed')\nclass SynthesisInput: pass\n"


@pytest.mark.parametrize("cfg,c_dim,conv_clamp,protocol,positional", [
    ("T", 0, 256.0, 4, False), ("R", 0, 256.0, 2, True), ("T", 3, 0.3, 4, True), ("R", 2, None, 4, False)])
def test_nvidia_pickle(tmp_path, cfg, c_dim, conv_clamp, protocol, positional):
    kw = dict(CFGS[cfg], c_dim=c_dim, conv_clamp=conv_clamp)
    sd = ref.random_official(kw, transform=ref.transform_matrix(0.1, 0.2, 20.0))
    marker = tmp_path / "module_src_ran"
    data = ref.nvidia_sg3_pickle_bytes(sd, kw, protocol=protocol, positional=positional,
                                       module_src=MARKER_SRC.format(str(marker)))
    loaded = models.load(write_file(tmp_path, f"stylegan3-{cfg.lower()}-network-snapshot.pkl", data))
    assert not marker.exists()  # module_src is never executed
    G = loaded.generator
    assert isinstance(G, StyleGAN3Generator) and loaded.metadata["format"] == "nvidia-pickle"
    assert loaded.metadata["family"] == "stylegan3" and loaded.metadata["config"] is None
    assert G.init_kwargs["conv_clamp"] == conv_clamp and G.init_kwargs["use_radial_filters"] == (cfg == "R")
    assert loaded.metadata["ignored"]["magnitude_ema_beta"] == 0.999
    assert torch.equal(loaded.w_avg, sd["mapping.w_avg"].float())
    P = ref.official_params(sd, kw)  # includes the stored (non-identity) transform
    check_against_reference(G, P, kw, TOL["float32"])
    check_against_reference(G.double(), P, kw, TOL["exact"])


@pytest.mark.parametrize("cfg", ["T", "R"])
@pytest.mark.parametrize("how", ["kwargs", "inferred", "config", "bare"])
def test_hammer(tmp_path, cfg, how):
    kw = dict(CFGS[cfg], c_dim=2 if how == "kwargs" else 0)
    sd = ref.random_official(kw, seed=11)
    g = ref.official_to_hammer(sd, kw)
    f32 = {k: v.float() for k, v in g.items()}
    if how == "kwargs":  # what Hammer's converter writes
        ckpt = {"models": {"generator_smooth": f32, "generator": f32, "discriminator": {}},
                "model_kwargs_init": {"generator_smooth": ref.hammer_kwargs(kw)}}
    elif how == "bare":
        ckpt = f32
    else:
        ckpt = {"models": {"generator": f32, "discriminator": {}}}
    config = f"stylegan3-{cfg.lower()}-tiny" if how == "config" else None
    loaded = models.load(write_file(tmp_path, "stylegan3_tiny.pth", ckpt), config=config)
    assert loaded.metadata["format"] == "hammer"
    G = loaded.generator.double()
    assert {k: G.init_kwargs[k] for k in models.stylegan3_configs.STYLEGAN3_SHAPE_KEYS} == \
        {k: kw[k] for k in models.stylegan3_configs.STYLEGAN3_SHAPE_KEYS}
    if how in ("inferred", "bare"):
        assert "schedule" in loaded.metadata["assumptions"]
    check_against_reference(G, ref.hammer_params(g, kw), kw, TOL["exact"], psi=0.6, cutoff=4)


def test_hammer_inferred_at_release_shape(tmp_path):
    """Inference at a release shape (256², margin 10, 14 layers): random weights on the real schedule."""
    kw = dict(models.stylegan3_config("stylegan3-r-ffhqu-256").kwargs)
    kw.update(channel_base=kw["channel_base"] // 64, channel_max=kw["channel_max"] // 64)  # small, same layout
    G0 = StyleGAN3Generator(**kw)
    sd = {k: v.double() for k, v in G0.state_dict().items()}
    g = ref.official_to_hammer(sd, kw)
    loaded = models.load(write_file(tmp_path, "r256.pth", {"generator_smooth": {k: v.float() for k, v in g.items()}}))
    assert loaded.generator.init_kwargs == G0.init_kwargs


def test_official_state_dict_and_save_round_trip(tmp_path):
    kw = dict(R, c_dim=2)
    sd = ref.random_official(kw, transform=ref.transform_matrix(0.0, 0.1, -10.0))
    loaded = models.load(write_file(tmp_path, "G_ema_state.pt", {k: v.float() for k, v in sd.items()}))
    assert loaded.metadata["format"] == "official-state-dict" and loaded.metadata["config"] is None
    G = loaded.generator
    check_against_reference(G.double(), ref.official_params(sd, kw), kw, TOL["exact"])
    G = G.float()
    out = tmp_path / "mine.pt"
    models.save_stylegan3(G, out, metadata={"note": "round trip", "seed": 3})
    again = models.load(out)
    assert again.metadata["format"] == "resefa_fast" and again.metadata["saved_metadata"]["seed"] == 3
    assert again.generator.init_kwargs == G.init_kwargs
    for (k, a), (k2, b) in zip(G.state_dict().items(), again.generator.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    z, c = model_inputs(kw)
    assert torch.equal(G(z.float(), c.float()), again.generator(z.float(), c.float()))
    torch.load(out, weights_only=True)  # plain data
    with pytest.raises(ResefaError, match="StyleGAN3Generator"):
        models.save_stylegan3(models.build("tiny"), tmp_path / "x.pt")


def test_config_naming(tmp_path):
    kw = dict(models.stylegan3_config("stylegan3-t-ffhqu-256").kwargs)
    with torch.device("meta"):
        names = StyleGAN3Generator(**kw).synthesis.layer_names
    assert names[-1] == "L14_256_3"
    found = models.stylegan3_configs.matching_stylegan3_configs(kw, hint="stylegan3-t-ffhqu-256x256.pkl")
    assert [c.name for c in found] == ["stylegan3-t-ffhqu-256"]
    sd = ref.random_official(T)
    path = write_file(tmp_path, "tiny.pt", {k: v.float() for k, v in sd.items()})
    assert models.load(path, config="stylegan3-t-tiny").metadata["config"] == "stylegan3-t-tiny"
    with pytest.raises(ResefaError, match="does not match `config`"):
        models.load(path, config="stylegan3-r-tiny")
    with pytest.raises(ResefaError, match="tiny.pt: a StyleGAN3 checkpoint; `config` must be one of"):
        models.load(path, config="ffhq-1024")


# ---------------------------------------------------------------------------------------------------------------
# bad files: each gives a ResefaError naming the file and what was expected


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _pickle(kw=T, **options):
    return lambda tp: ref.nvidia_sg3_pickle_bytes(ref.random_official(kw), kw, **options)


def _edit_layer(key, value):
    def edit(top):
        synthesis = top.state["_modules"]["synthesis"]
        name = [n for n in synthesis.state["_modules"] if n.startswith("L1_")][0]
        synthesis.state["_modules"][name].state[key] = value
    return edit


def _roll_filter(top):
    synthesis = top.state["_modules"]["synthesis"]
    name = [n for n in synthesis.state["_modules"] if n.startswith("L2_")][0]
    buffers = synthesis.state["_modules"][name].state["_buffers"]
    buffers["down_filter"] = buffers["down_filter"].roll(1)


def _drop_layer(top):
    synthesis = top.state["_modules"]["synthesis"]
    name = [n for n in synthesis.state["_modules"] if n.startswith("L3_")][0]
    del synthesis.state["_modules"][name]


def _evil_kwargs(top):
    top.state["_init_kwargs"]["evil"] = _Evil()


def _hammer(edit):
    def make(tp):
        g = {k: v.float() for k, v in ref.official_to_hammer(ref.random_official(T), T).items()}
        edit(g)
        return {"models": {"generator": g}}
    return make


def _bad_filter(g):
    g["synthesis.layer2.filter.down_filter"] = g["synthesis.layer2.filter.down_filter"].roll(1)


def _bad_grid(g):
    g["synthesis.early_layer.grid"] = g["synthesis.early_layer.grid"] * 1.5


def _wp_avg(g):
    g["w_avg"] = torch.zeros(8 * 8)


def _unknown_hammer_key(g):
    g["synthesis.layer1.conv.noise"] = torch.zeros(1)


def _bad_hammer_kwargs(tp):
    g = {k: v.float() for k, v in ref.official_to_hammer(ref.random_official(T), T).items()}
    return {"models": {"generator": g}, "model_kwargs_init": {"generator": dict(ref.hammer_kwargs(T), repeat_w=False)}}


def _hammer_kwargs_without_resolution(tp):
    g = {k: v.float() for k, v in ref.official_to_hammer(ref.random_official(T), T).items()}
    recorded = {k: v for k, v in ref.hammer_kwargs(T).items() if k != "resolution"}
    return {"models": {"generator": g}, "model_kwargs_init": {"generator": recorded}}


def _misshaped(tp):
    sd = {k: v.float() for k, v in ref.random_official(T).items()}
    key = next(k for k in sd if k.endswith("affine.bias") and ".L2_" in k)
    sd[key] = torch.zeros(5)
    return sd


BAD_FILES = {
    "truncated pickle": (lambda tp: _pickle()(tp)[:400], "not a readable pickle"),
    "os.system in init kwargs": (_pickle(edit=_evil_kwargs), "refused to load.*system"),
    "missing layer": (_pickle(edit=_drop_layer), "missing.*L3_"),
    "record disagrees on padding": (_pickle(edit=_edit_layer("padding", [0, 0, 0, 0])), "records padding"),
    "unknown generator setting": (lambda tp: ref.nvidia_sg3_pickle_bytes(
        ref.random_official(T), T, edit=lambda top: top.state["_init_kwargs"].update(warp=2)),
        "unsupported StyleGAN3 generator settings.*warp"),
    "pickle filter changed": (_pickle(edit=_roll_filter), "differs from the filter"),
    "hammer filter changed": (_hammer(_bad_filter), "no StyleGAN3 schedule reproduces the stored filters"),
    "hammer grid changed": (_hammer(_bad_grid), "grid"),
    "hammer repeat_w=False": (_hammer(_wp_avg), "repeat_w"),
    "hammer unknown tensor": (_hammer(_unknown_hammer_key), "unexpected tensor `synthesis.layer1.conv.noise`"),
    "hammer unsupported kwargs": (_bad_hammer_kwargs, "unsupported Hammer StyleGAN3 settings.*repeat_w"),
    "hammer kwargs without resolution": (_hammer_kwargs_without_resolution, "do not give a layer schedule"),
    "mis-shaped tensor": (_misshaped, "mis-shaped.*affine.bias"),
    "unknown resefa_fast kwargs": ({"format": "resefa_fast.stylegan3", "init_kwargs": {"warp": 1},
                                    "state_dict": {}}, "unknown StyleGAN3 settings"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files(tmp_path, case):
    content, message = BAD_FILES[case]
    if callable(content):
        content = content(tmp_path)
    path = write_file(tmp_path, "bad_file.bin", content)
    with pytest.raises(ResefaError, match=message) as error:
        models.load(path)
    assert "bad_file.bin" in str(error.value)


def test_stylegan2_files_are_not_taken(tmp_path):
    import models_reference as ref2
    sd = {k: v.float() for k, v in ref2.random_official(dict(models.TINY.kwargs)).items()}
    loaded = models.load(write_file(tmp_path, "sg2.pt", sd))
    assert loaded.metadata["format"] == "official-state-dict"
    assert not isinstance(loaded.generator, StyleGAN3Generator)
    assert models.stylegan3_loaders.read({"weights": torch.zeros(1)}, "x.pt") is None
    assert models.stylegan3_loaders.read([torch.zeros(1)], "x.pt") is None
    assert models.stylegan3_loaders.read(None, "a_directory") is None


# ---------------------------------------------------------------------------------------------------------------
# the benchmark's CPU smoke run


def test_bench_stylegan3_small(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import bench_stylegan3
    report = bench_stylegan3.main(["--small", "--device", "cpu", "--json", str(tmp_path / "out.json")])
    assert (tmp_path / "out.json").exists()
    assert all(err <= bench_stylegan3.IMAGE_RTOL for err in report["correctness"].values())  # 32²: < 1e-5
    methods = {r["method"] for r in report["rows"]}
    assert {"forward", "vmap(jvp)"} <= methods
    assert set(report["correctness"]) == {"T", "R"} and set(report["vs_stylegan2"]) == {"T", "R"}
    for cfg in ("T", "R", "SG2"):
        est = report["jacobian_seconds"][cfg]
        assert est["w"]["seconds"] > 0 and math.isfinite(est["W+"]["seconds"])
