"""resefa_fast.models: the StyleGAN2 generator against an independent reference forward pass
(tests/models_reference.py), the layer-skip protocol and forward mode, the loaders of every format, and every
bad-file case."""
import argparse
import io
import math
import os
import pickle

import models_reference as ref
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resefa_fast as rf
from resefa_fast import models
from resefa_fast.errors import ResefaError
from resefa_fast.models import StyleGAN2Generator

from conftest import model_inputs, relative_error, write_file

#: Relative (Frobenius) error bounds, each with its reason.
TOL = {
    # same float64 weights, float64 compute: only the rounding of a different operation order (fused vs non-fused,
    # conv vs tap-by-tap FIR) through ~10 layers, ~1e-15 per op; 1e-10 leaves a wide margin and still catches any
    # formula difference (a wrong ε, gain or padding is >= 1e-8)
    "exact": 1e-10,
    # a format conversion rounded each weight once to float32 (rosinality's 1/√fan_in folded into the weight,
    # genforce's flip/scale): ~6e-8 relative per weight, ~1e-7 after the layers; 1e-6 bounds it
    "converted": 1e-6,
    # float32 compute against the float64 reference: the target
    "float32": 1e-5,
    # forward vs reverse mode Jacobian in float32: DESIGN.md §6
    "jacobian32": 1e-4,
}

TINY = dict(models.TINY.kwargs)


def rounded(sd):
    """Real checkpoints are float32: round once so that the reference and the loaded model hold the same values."""
    return {k: v.float().double() for k, v in sd.items()}


def ours_from_official(sd, kw, dtype=torch.float64):
    G = StyleGAN2Generator(**kw).to(dtype).eval()
    G.load_state_dict({k: v for k, v in sd.items() if not k.endswith("resample_filter")})
    return G


# ---------------------------------------------------------------------------------------------------------------
# the generator against the reference


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
@pytest.mark.parametrize("conv_clamp", [None, 0.5])
@pytest.mark.parametrize("c_dim", [0, 3])
def test_generator_matches_reference(architecture, conv_clamp, c_dim):
    kw = dict(TINY, architecture=architecture, conv_clamp=conv_clamp, c_dim=c_dim)
    sd = rounded(ref.random_official(kw))
    G = ours_from_official(sd, kw)
    blocks, M = ref.official_blocks(sd, kw)
    z, c = model_inputs(kw)
    for psi, cutoff in [(1.0, None), (0.7, None), (0.5, 2)]:
        ws = G.map(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
        ws_ref = ref.ref_mapping(M, z, c, psi, cutoff, num_ws=G.num_ws)
        assert relative_error(ws, ws_ref) <= TOL["exact"]
        for noise_mode in ("const", "none"):
            img = G.synthesize(ws, noise_mode=noise_mode)
            img_ref = ref.ref_synthesis(blocks, ws_ref, noise_mode, clamp=conv_clamp)
            assert img.shape == (3, 3, 16, 16)
            assert relative_error(img, img_ref) <= TOL["exact"], (psi, cutoff, noise_mode)
    if conv_clamp is not None:  # the clamp must actually bite in this test
        assert float(G.synthesize(ws).detach().abs().max()) > 0
        unclamped = ref.ref_synthesis(blocks, ws_ref, "const", clamp=None)
        assert relative_error(img, unclamped) > 1e-3


def test_float32_matches_reference_within_target():
    sd = rounded(ref.random_official(TINY))
    G32 = ours_from_official(sd, TINY, torch.float32)
    blocks, M = ref.official_blocks(sd, TINY)
    z, _ = model_inputs(TINY)
    img = G32(z.float())
    assert img.dtype == torch.float32
    assert relative_error(img, ref.ref_synthesis(blocks, ref.ref_mapping(M, z, num_ws=G32.num_ws))) <= TOL["float32"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_res=st.integers(2, 5), channel_base=st.sampled_from([16, 64, 256]), channel_max=st.sampled_from([4, 8]),
       img_channels=st.integers(1, 4), architecture=st.sampled_from(["skip", "resnet"]),
       c_dim=st.sampled_from([0, 2]), layers=st.integers(1, 3), seed=st.integers(0, 1000))
def test_property_any_shape_matches_reference(log_res, channel_base, channel_max, img_channels, architecture,
                                              c_dim, layers, seed):
    kw = dict(z_dim=5, w_dim=6, c_dim=c_dim, img_resolution=2 ** log_res, img_channels=img_channels,
              channel_base=max(channel_base, 2 ** log_res), channel_max=channel_max, num_mapping_layers=layers,
              architecture=architecture, conv_clamp=None)
    sd = ref.random_official(kw, seed=seed)
    G = ours_from_official(sd, kw)
    assert G.num_ws == 2 * (log_res - 1)
    blocks, M = ref.official_blocks(sd, kw)
    z, c = model_inputs(kw, batch=2, seed=seed)
    ws = G.map(z, c)
    img = G.synthesize(ws)
    assert img.shape == (2, img_channels, 2 ** log_res, 2 ** log_res)
    assert relative_error(img, ref.ref_synthesis(blocks, ref.ref_mapping(M, z, c, num_ws=G.num_ws))) <= TOL["exact"]


def test_noise_modes():
    G = models.random_stylegan2(16, w_dim=8, small=True)
    ws = G.map(torch.randn(2, 8))
    a, b = G.synthesize(ws, "const"), G.synthesize(ws, "const")
    assert torch.equal(a, b)
    torch.manual_seed(0)
    r1 = G.synthesize(ws, "random")
    r2 = G.synthesize(ws, "random")
    assert not torch.allclose(r1, r2) and not torch.allclose(r1, a)
    none = G.synthesize(ws, "none")
    for m in G.modules():
        if hasattr(m, "noise_strength"):
            m.noise_strength.zero_()
    assert torch.allclose(G.synthesize(ws, "const"), none, atol=1e-6)
    with pytest.raises(ResefaError, match="noise_mode"):
        G.synthesize(ws, "sometimes")
    with pytest.raises(ResefaError, match="noise_mode"):
        G.noise_mode = "fixed"


def test_init_kwargs_rebuild_and_argument_checks():
    G = models.build("tiny", seed=3)
    G2 = StyleGAN2Generator(**G.init_kwargs)
    assert G2.init_kwargs == G.init_kwargs
    assert [k for k in G.state_dict()] == [k for k in G2.state_dict()]
    assert G.w_avg.shape == (8,) and G.num_ws == 6 and G.num_stages == 3
    for bad in [dict(img_resolution=24), dict(architecture="orig"), dict(w_dim=0), dict(channel_base=8)]:
        with pytest.raises(ResefaError):
            StyleGAN2Generator(**{**TINY, **bad})
    with pytest.raises(ResefaError, match="`ws`"):
        G.synthesize(torch.zeros(1, 5, 8))
    with pytest.raises(ResefaError, match="`z`"):
        G.map(torch.zeros(1, 3))
    Gc = StyleGAN2Generator(**{**TINY, "c_dim": 2})
    with pytest.raises(ResefaError, match="`c`"):
        Gc.map(torch.zeros(1, 8))
    with pytest.raises(ResefaError, match="truncation_cutoff"):
        G.map(torch.zeros(1, 8), truncation_cutoff=9)


def test_registry_configs():
    for name, c in models.CONFIGS.items():
        with torch.device("meta"):
            G = StyleGAN2Generator(**c.kwargs)
        assert G.num_ws == 2 * int(math.log2(c.kwargs["img_resolution"])) - 2, name
    with torch.device("meta"):
        G = StyleGAN2Generator(**models.config("ffhq-1024").kwargs)
    assert G.num_ws == 18 and G.synthesis.channels[1024] == 32 and G.synthesis.channels[64] == 512
    assert sum(p.numel() for p in G.synthesis.parameters()) > 28_000_000
    assert models.config("car").valid_region == (64, 448, 0, 512)
    found = models.configs.matching_configs(models.config("lsun-car-512").kwargs, hint="my-car-model.pt")
    assert found[0].name == "lsun-car-512" and len(found) > 1
    with pytest.raises(ResefaError, match="config"):
        models.config("celeba-64")


# ---------------------------------------------------------------------------------------------------------------
# layer-skip protocol and forward mode


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
def test_stages_compose_to_synthesis_and_read_only_their_rows(architecture):
    G = models.build("tiny", seed=1, architecture=architecture).double()
    ws = torch.randn(2, G.num_ws, G.w_dim, dtype=torch.float64)
    state = None
    states = []
    for i in range(G.num_stages):
        states.append(state)
        state = G.run_stage(i, state, ws)
    assert torch.equal(state, G.synthesis(ws))
    rows = [G.stage_ws_rows(i) for i in range(G.num_stages)]
    assert rows[0][0] == 0 and max(stop for _, stop in rows) == G.num_ws
    assert set(range(G.num_ws)) == {r for lo, hi in rows for r in range(lo, hi)}
    as_rows = tuple(ws.unbind(1))
    for i, (lo, hi) in enumerate(rows):
        out = G.run_stage(i, states[i], ws)
        # rows outside [lo, hi) do not matter to stage i
        other = ws.clone()
        outside = [r for r in range(G.num_ws) if not lo <= r < hi]
        other[:, outside] = torch.randn(2, len(outside), G.w_dim, dtype=torch.float64)
        out2 = G.run_stage(i, states[i], other)
        for a, b in zip(out if isinstance(out, tuple) else (out,), out2 if isinstance(out2, tuple) else (out2,),
                        strict=True):
            assert torch.equal(a, b)
        # rows inside do
        inside = ws.clone()
        inside[:, lo:hi] += 1
        out3 = G.run_stage(i, states[i], inside)
        changed = out3[-1] if isinstance(out3, tuple) else out3
        assert not torch.allclose(changed, out[-1] if isinstance(out, tuple) else out)
        # W+ as a tuple of rows (accepts_ws_rows)
        out4 = G.run_stage(i, states[i], as_rows)
        for a, b in zip(out if isinstance(out, tuple) else (out,), out4 if isinstance(out4, tuple) else (out4,),
                        strict=True):
            assert torch.equal(a, b)
    assert isinstance(G, rf.StagedGenerator)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vmap_jvp_matches_reverse_mode(dtype):
    G = models.random_stylegan2(16, w_dim=8, small=True).to(dtype)
    w = G.map(torch.randn(1, 8, dtype=dtype))[0]  # [num_ws, w_dim]

    def f(x):
        return G.synthesis(x[None]).reshape(-1)

    d = w.numel()
    tangents = torch.eye(d, dtype=dtype).reshape(d, *w.shape)
    J_fwd = torch.func.vmap(lambda t: torch.func.jvp(f, (w,), (t,))[1])(tangents).T  # [P, d]
    J_rev = torch.autograd.functional.jacobian(f, w).reshape(-1, d)
    J_jacrev = torch.func.jacrev(f)(w).reshape(-1, d)
    tol = TOL["exact"] if dtype == torch.float64 else TOL["jacobian32"]
    assert relative_error(J_fwd, J_rev) <= tol and relative_error(J_jacrev, J_rev) <= tol


def test_jacobian_engine_layer_skip_matches_reverse_mode():
    G = models.random_stylegan2(16, w_dim=8, small=True).double()
    w = G.map(torch.randn(1, 8, dtype=torch.float64))[0]
    J_rev = torch.func.jacrev(lambda x: G.synthesis(x[None]).reshape(-1))(w).reshape(-1, w.numel())
    for accepts_rows in (True, False):
        G.accepts_ws_rows = accepts_rows
        J, info = rf.jacobian(G, w, layer_skip=True, chunk_size=16, progress=False, return_info=True)
        assert relative_error(J, J_rev) <= TOL["exact"]
        assert info.stage_runs < info.stage_runs_without_skip
    J_w = rf.jacobian(G, w[0], progress=False)  # w repeated on all rows
    J_w_rev = torch.func.jacrev(lambda x: G.synthesis(x[None, None].expand(1, G.num_ws, -1)).reshape(-1))(w[0])
    assert relative_error(J_w, J_w_rev) <= TOL["exact"]


# ---------------------------------------------------------------------------------------------------------------
# loaders, one format at a time


MARKER_SRC = "import pathlib\npathlib.Path({!r}).write_text('executed')\nclass Generator: pass\n"


@pytest.mark.parametrize("architecture,conv_clamp,c_dim", [("skip", None, 0), ("resnet", 0.5, 0), ("skip", 256, 3)])
@pytest.mark.parametrize("protocol", [2, 4])
def test_nvidia_pickle(tmp_path, architecture, conv_clamp, c_dim, protocol):
    kw = dict(TINY, architecture=architecture, conv_clamp=conv_clamp, c_dim=c_dim)
    sd = rounded(ref.random_official(kw))
    marker = tmp_path / "module_src_ran"
    path = write_file(tmp_path, "network-snapshot-000100.pkl",
                 ref.nvidia_pickle_bytes(sd, kw, module_src=MARKER_SRC.format(str(marker)), protocol=protocol))
    loaded = models.load(path)
    assert not marker.exists()  # module_src is never executed
    G = loaded.generator
    assert loaded.metadata["format"] == "nvidia-pickle"
    assert G.init_kwargs["conv_clamp"] == conv_clamp and G.init_kwargs["architecture"] == architecture
    assert loaded.metadata["ignored"] == {"num_fp16_res": 4}
    assert torch.equal(loaded.w_avg, sd["mapping.w_avg"].float())
    z, c = model_inputs(kw)
    blocks, M = ref.official_blocks(sd, kw)
    img_ref = ref.ref_synthesis(blocks, ref.ref_mapping(M, z, c, 0.7, num_ws=G.num_ws), clamp=conv_clamp)
    assert relative_error(G(z.float(), None if c is None else c.float(), truncation_psi=0.7), img_ref) <= TOL["float32"]
    G64 = G.double()
    assert relative_error(G64(z, c, truncation_psi=0.7), img_ref) <= TOL["exact"]


def test_nvidia_pickle_stylegan3_repo_kwargs_form(tmp_path):
    sd = rounded(ref.random_official(TINY))
    path = write_file(tmp_path, "sg2-from-sg3-repo.pkl", ref.nvidia_pickle_bytes(sd, TINY, stylegan3_kwargs=True))
    G = models.load(path).generator.double()
    blocks, M = ref.official_blocks(sd, TINY)
    z, _ = model_inputs(TINY)
    assert G.init_kwargs["channel_base"] == TINY["channel_base"]
    assert relative_error(G(z), ref.ref_synthesis(blocks, ref.ref_mapping(M, z, num_ws=G.num_ws))) <= TOL["exact"]


def test_rosinality(tmp_path):
    g, latent_avg = ref.random_rosinality()
    g, latent_avg = rounded(g), latent_avg.float()
    path = write_file(tmp_path, "550000.pt", {"g_ema": {k: v.float() for k, v in g.items()}, "latent_avg": latent_avg})
    loaded = models.load(path)
    G = loaded.generator.double()
    assert loaded.metadata["format"] == "rosinality" and loaded.metadata["w_avg_source"] == "file"
    assert G.init_kwargs["channel_base"] == 128 and G.init_kwargs["channel_max"] == 16
    assert G.num_ws == 6 and G.init_kwargs["num_mapping_layers"] == 2
    blocks, fcs = ref.rosinality_blocks(g, 4)
    z, _ = model_inputs(G.init_kwargs)
    M = dict(fcs=fcs, lr=0.01, w_avg=latent_avg.double())
    for psi in (1.0, 0.6):
        img_ref = ref.ref_synthesis(blocks, ref.ref_mapping(M, z, psi=psi, num_ws=6))
        assert relative_error(G(z, truncation_psi=psi), img_ref) <= TOL["converted"]
        assert relative_error(loaded.generator.float()(z.float(), truncation_psi=psi), img_ref) <= TOL["float32"]
        G = G.double()


def test_rosinality_training_checkpoint_without_latent_avg(tmp_path):
    g, _ = ref.random_rosinality()
    args = argparse.Namespace(size=16, latent=8, n_mlp=2, channel_multiplier=2)
    g = {k: v.float() for k, v in g.items()}
    path = write_file(tmp_path, "010000.pt", {"g": g, "d": {"x": torch.zeros(1)}, "g_ema": g, "g_optim": {},
                                         "d_optim": {}, "args": args})
    loaded = models.load(path)
    assert loaded.metadata["w_avg_source"].startswith("estimated")
    with torch.no_grad():
        w = loaded.generator.map(torch.randn(20000, 8, generator=torch.Generator().manual_seed(9)))[:, 0]
    # the estimate is a mean of 10,000 samples: within a few standard errors of another sample mean
    assert float((w.mean(0) - loaded.w_avg).abs().max()) <= 5 * float(w.std(0).max()) / math.sqrt(5000)


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
@pytest.mark.parametrize("wrapped", [True, False])
def test_hammer(tmp_path, architecture, wrapped):
    kw = dict(TINY, architecture=architecture)
    g = rounded(ref.random_hammer(kw))
    f32 = {k: v.float() for k, v in g.items()}
    ckpt = {"models": {"generator_smooth": f32, "generator": {}, "discriminator": {}}} if wrapped else \
        {"generator": f32}
    loaded = models.load(write_file(tmp_path, "stylegan2_tiny.pth", ckpt))
    assert loaded.metadata["format"] == "hammer"
    G = loaded.generator.double()
    assert G.init_kwargs["architecture"] == architecture
    blocks, fcs = ref.hammer_blocks(g, kw)
    z, _ = model_inputs(kw)
    M = dict(fcs=fcs, lr=0.01, w_avg=g["w_avg"])
    for psi, cutoff in [(1.0, None), (0.7, 4)]:
        img_ref = ref.ref_synthesis(blocks, ref.ref_mapping(M, z, psi=psi, cutoff=cutoff, num_ws=6))
        assert relative_error(G(z, truncation_psi=psi, truncation_cutoff=cutoff), img_ref) <= TOL["exact"]


def test_genforce(tmp_path):
    g = rounded(ref.random_hammer(TINY, genforce=True))
    loaded = models.load(write_file(tmp_path, "stylegan2_ffhq_tiny.pth",
                               {"generator_smooth": {k: v.float() for k, v in g.items()}}))
    assert loaded.metadata["format"] == "genforce"
    G = loaded.generator.double()
    blocks, fcs = ref.hammer_blocks(g, TINY, genforce=True)
    z, _ = model_inputs(TINY)
    img_ref = ref.ref_synthesis(blocks, ref.ref_mapping(dict(fcs=fcs, lr=0.01, w_avg=g["truncation.w_avg"]), z,
                                                        num_ws=6))
    assert relative_error(G(z), img_ref) <= TOL["converted"]


def test_official_state_dict_and_save_round_trip(tmp_path):
    kw = dict(TINY, c_dim=2, architecture="resnet")
    sd = rounded(ref.random_official(kw))
    loaded = models.load(write_file(tmp_path, "G_ema_state.pt", {k: v.float() for k, v in sd.items()}))
    assert loaded.metadata["format"] == "official-state-dict"
    G = loaded.generator
    out = tmp_path / "mine.pt"
    models.save(G, out, metadata={"note": "round trip", "seed": 3})
    again = models.load(out)
    assert again.metadata["format"] == "resefa_fast" and again.metadata["saved_metadata"]["seed"] == 3
    assert again.generator.init_kwargs == G.init_kwargs
    for (k, a), (k2, b) in zip(G.state_dict().items(), again.generator.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    z, c = model_inputs(kw)
    assert torch.equal(G(z.float(), c.float()), again.generator(z.float(), c.float()))
    torch.load(out, weights_only=True)  # plain data
    with pytest.raises(ResefaError, match="generator"):
        models.save(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_config_argument_and_naming(tmp_path):
    sd = rounded(ref.random_official(TINY))
    path = write_file(tmp_path, "tiny.pt", {k: v.float() for k, v in sd.items()})
    loaded = models.load(path, config="tiny")
    assert loaded.metadata["config"] == "tiny" and loaded.metadata["config_candidates"] == []
    with pytest.raises(ResefaError, match="does not match `config`"):
        models.load(path, config="ffhq-1024")


# ---------------------------------------------------------------------------------------------------------------
# bad files: each gives a ResefaError naming the file and what was expected


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _malicious_inside_record(tmp_path):
    sd = rounded(ref.random_official(TINY))
    with ref.fake_nvidia_modules():
        top = ref.record_tree(sd, {}, "")
        top.state["_init_kwargs"] = {"evil": _Evil()}
        return ref.nvidia_pickle_bytes(sd, TINY, top=top)


def _stylegan3(tmp_path):
    with ref.fake_nvidia_modules():
        syn = ref._Record("SynthesisNetwork", ref.module_state({}, {}, {"input": ref._Record(
            "SynthesisInput", ref.module_state({}, {}, {}), ""), "L0_36_512": ref._Record(
            "SynthesisLayer", ref.module_state({}, {}, {}), "")}), "class SynthesisInput: pass")
        top = ref._Record("Generator", ref.module_state({}, {}, {"synthesis": syn}, {}), "")
    return ref.nvidia_pickle_bytes({}, TINY, top=top)


def _missing_key():
    g, avg = ref.random_rosinality()
    g = {k: v.float() for k, v in g.items() if k != "convs.1.conv.modulation.weight"}
    return {"g_ema": g, "latent_avg": avg.float()}


def _misshaped():
    sd = {k: v.float() for k, v in ref.random_official(TINY).items()}
    sd["synthesis.b8.conv1.affine.bias"] = torch.zeros(5)
    return sd


class _Custom:  # a class torch.load(weights_only=True) will not rebuild
    pass


BAD_FILES = {
    "empty": (b"", "not a checkpoint"),
    "text": (b"hello, I am not a network\n", "not a checkpoint"),
    "truncated pickle": (lambda tp: ref.nvidia_pickle_bytes(rounded(ref.random_official(TINY)), TINY)[:300],
                         "not a readable pickle"),
    "os.system pickle": (pickle.dumps({"G_ema": _Evil()}), "refused to load.*system"),
    "os.system inside a record": (_malicious_inside_record, "refused to load.*system"),
    "stylegan3 generator": (_stylegan3, "StyleGAN3"),
    "unknown dict": ({"weights": torch.zeros(2)}, "not a known StyleGAN2 checkpoint"),
    "not a dict": ([torch.zeros(2)], "expected a dict"),
    "missing key": (lambda tp: _missing_key(), "without tensor .*convs.1.conv.modulation.weight"),
    "mis-shaped key": (lambda tp: _misshaped(), "mis-shaped.*affine.bias"),
    "custom class in torch.save": ({"g_ema": _Custom()}, "weights_only"),
    "unknown resefa_fast kwargs": ({"format": "resefa_fast.stylegan2", "init_kwargs": {"warp": 1},
                                    "state_dict": {}}, "unknown generator settings"),
    "conditional genforce": (lambda tp: {"generator": {**{k: v.float() for k, v in ref.random_hammer(
        TINY, genforce=True).items()}, "mapping.label_weight": torch.zeros(2, 8)}}, "conditional genforce"),
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
    assert isinstance(error.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(ResefaError, match="existing checkpoint file"):
        models.load(tmp_path / "nope.pkl")


def test_restricted_unpickler_refuses_any_other_global():
    from resefa_fast.models.safe_pickle import restricted_load
    for obj in (io.BytesIO, eval, getattr, torch.nn.Linear):
        with pytest.raises(ResefaError, match="refused"):
            restricted_load(pickle.dumps({"x": obj}), "f.pkl")
