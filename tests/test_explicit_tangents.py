"""Explicit forward-mode tangents (``ops.*_jvp``, ``StyleGAN2Generator.rows_jvp``, the engine's
``EXPLICIT_TANGENTS``): the values of ``torch.func.jvp`` to float32 rounding, with the primal bit for bit."""
import pytest
import torch
from torch.func import jvp, vmap

from resefa_fast.errors import ResefaError
from resefa_fast.jacobian import engine, jacobian, readouts
from resefa_fast.jacobian.staged import first_stages, primal_states, synthesize
from resefa_fast.models import ops

from conftest import relative_error
from test_sampled_readout import generator

#: Explicit vs torch.func tangents: the same products summed in another order (weights folded), float32 rounding.
SAME_RTOL = 1e-6

pytestmark = pytest.mark.usefixtures("one_thread")


def func_tangents(f, x, tangents):
    """``vmap(jvp)`` of ``f`` at ``x`` for a batch of tangents ``[k, *x.shape]``."""
    return vmap(lambda t: jvp(f, (x,), (t,))[1])(tangents)


@pytest.mark.parametrize("up,stride,demodulate", [(1, 1, True), (2, 1, True), (1, 2, True), (1, 1, False)])
@pytest.mark.parametrize("size", [4, 16])  # 4: scaled inputs (O·9 > H·W); 16: stacked weights
@pytest.mark.parametrize("which", ["x", "styles", "both"])
def test_modulated_conv2d_jvp_equals_torch_func(up, stride, demodulate, size, which):
    generator_ = torch.Generator().manual_seed(1)
    channels_in, channels_out, k = 6, 5, 4
    x = torch.randn(1, channels_in, size, size, generator=generator_)
    weight = torch.randn(channels_out, channels_in, 3, 3, generator=generator_)
    styles = torch.randn(1, channels_in, generator=generator_) + 1
    noise = torch.randn(size * up // stride, size * up // stride, generator=generator_)
    f = ops.setup_filter()
    dx = torch.randn(k, channels_in, size, size, generator=generator_) if which != "styles" else None
    ds = torch.randn(k, channels_in, generator=generator_) if which != "x" else None
    y, dy = ops.modulated_conv2d_jvp(x, dx, weight, styles, ds, demodulate, up, f, noise, stride)
    assert torch.equal(y, ops.modulated_conv2d(x, weight, styles, demodulate, up, f, noise, stride))

    def conv(inputs):
        return ops.modulated_conv2d(inputs[0], weight, inputs[1], demodulate, up, f, noise, stride)
    zeros_x, zeros_s = torch.zeros(k, *x.shape), torch.zeros(k, *styles.shape)
    tangents = (dx[:, None] if dx is not None else zeros_x, ds[:, None] if ds is not None else zeros_s)
    expected = vmap(lambda tx, ts: jvp(conv, ((x, styles),), ((tx, ts),))[1])(*tangents)[:, 0]
    assert dy.shape == expected.shape
    assert relative_error(dy, expected) <= SAME_RTOL


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv2d_jvp_keeps_stacked_outputs_within_32_bit_indexing(up, monkeypatch):
    """The stacked-weight route is one convolution of a batch of one with k·O output channels, which cuDNN cannot
    split: above 2³¹ elements it ran a 64-bit kernel 30× slower. With the limit lowered below this problem's stacked
    output, every convolution must keep O channels (copies of x as a batch instead), with the same tangents."""
    generator_ = torch.Generator().manual_seed(2)
    channels_in, channels_out, k, size = 6, 5, 4, 16
    x = torch.randn(1, channels_in, size, size, generator=generator_)
    weight = torch.randn(channels_out, channels_in, 3, 3, generator=generator_)
    styles = torch.randn(1, channels_in, generator=generator_) + 1
    ds = torch.randn(k, channels_in, generator=generator_)
    f = ops.setup_filter()
    out_channels = []
    conv2d_resample = ops.conv2d_resample

    def spy(*args, **kwargs):
        y = conv2d_resample(*args, **kwargs)
        out_channels.append(y.shape[1])
        return y
    monkeypatch.setattr(ops, "conv2d_resample", spy)
    _, stacked = ops.modulated_conv2d_jvp(x, None, weight, styles, ds, True, up, f)
    assert max(out_channels) == k * channels_out  # the stacked route, at the real limit
    out_channels.clear()
    monkeypatch.setattr(ops, "_INT32_ELEMENTS", k * channels_out * ops._spatial_bound(x, weight, up, 1))
    _, copies = ops.modulated_conv2d_jvp(x, None, weight, styles, ds, True, up, f)
    assert out_channels and max(out_channels) == channels_out
    assert relative_error(copies, stacked) <= SAME_RTOL


@pytest.mark.parametrize("activation,gain,clamp", [("lrelu", 2 ** 0.5, None), ("lrelu", 1.0, 0.5),
                                                   ("linear", 1.0, 0.5), ("linear", 1.0, None),
                                                   ("lrelu", 0.7 * 2 ** 0.5, 0.35)])
def test_bias_act_jvp_equals_torch_func_also_at_the_kinks(activation, gain, clamp):
    """Inputs put exactly at the leaky ReLU's kink (x + b = 0) and at the clamp's bounds: the explicit mask must
    follow torch's own forward-mode conventions there (slope 0.2 at 0, clamp passing its bounds)."""
    generator_ = torch.Generator().manual_seed(2)
    bias = torch.tensor([0.25, -0.5, 0.0])
    x = torch.randn(1, 3, 6, 6, generator=generator_)
    x[0, :, 0, 0] = -bias  # exactly at the kink
    if clamp is not None:
        x[0, :, 1, 1] = clamp / gain - bias  # at +clamp after the gain (exactly, where the rounding allows)
    dx = torch.randn(5, 3, 6, 6, generator=generator_)
    y, dy = ops.bias_act_jvp(x, dx, bias, activation, gain, clamp)
    assert torch.equal(y, ops.bias_act(x, bias, activation, gain, clamp))
    expected = func_tangents(lambda v: ops.bias_act(v, bias, activation, gain, clamp), x, dx[:, None])[:, 0]
    assert relative_error(dy, expected) <= SAME_RTOL
    assert torch.equal(dy == 0, expected == 0)  # the same entries cut by the clamp


@pytest.mark.parametrize("architecture,conv_clamp,noise_mode", [("skip", None, "const"), ("skip", 0.6, "none"),
                                                                ("resnet", 0.6, "const")])
@pytest.mark.parametrize("stride", [1, 4])
def test_rows_jvp_equals_torch_func_for_every_row_and_for_w(architecture, conv_clamp, noise_mode, stride):
    G = generator(32, architecture, conv_clamp=conv_clamp)
    G.noise_mode = noise_mode
    ws = G.map(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)))[0]
    first = first_stages(G)
    cache = primal_states(G, ws[None], sorted(set(first)))
    rows = [ws[r][None] for r in range(G.num_ws)]
    dw = torch.randn(3, G.w_dim, generator=torch.Generator().manual_seed(4))
    for row, start in enumerate(first):
        def image(w_row, row=row, start=start):
            return synthesize(G, tuple(rows[:row]) + (w_row[None],) + tuple(rows[row + 1:]), start, cache[start],
                              stride=stride)
        primal, tangents = G.rows_jvp((row,), start, cache[start], tuple(rows), dw, stride=stride)
        assert torch.equal(primal, image(ws[row]))
        expected = func_tangents(image, ws[row], dw)[:, 0]
        assert tangents.shape == expected.shape == (3, G.img_channels, 32 // stride, 32 // stride)
        assert relative_error(tangents, expected) <= SAME_RTOL, row
    # w space: one tangent on every row (w repeated), every layer's style moving with the activations' tangents
    w = ws[0]

    def image_of_w(v):
        return synthesize(G, v.expand(G.num_ws, G.w_dim)[None], stride=stride)
    primal, tangents = G.rows_jvp(range(G.num_ws), 0, None, w.expand(G.num_ws, G.w_dim)[None], dw, stride=stride)
    assert torch.equal(primal, image_of_w(w))
    assert relative_error(tangents, func_tangents(image_of_w, w, dw)[:, 0]) <= SAME_RTOL


def test_rows_jvp_in_float64_equals_reverse_mode():
    """In float64 the explicit tangents agree with reverse mode to float64 rounding (a constant rounded to float32
    anywhere in the tangent path would show here as ~1e-8)."""
    G = generator(16, "skip", conv_clamp=0.6).double()
    ws = G.map(torch.randn(1, G.z_dim, dtype=torch.float64))[0]
    J = jacobian(G, ws, chunk_size=16, progress=False)
    J_reverse = torch.func.jacrev(lambda x: G.synthesis(x[None]).reshape(-1))(ws).reshape(-1, ws.numel())
    assert relative_error(J, J_reverse) <= 1e-12


def test_rows_jvp_rejects_a_start_after_a_stage_reading_the_rows():
    G = generator(32)
    ws = G.map(torch.randn(1, G.z_dim))
    state = G.run_stage(0, None, ws)
    G.rows_jvp((1,), 0, None, ws, torch.zeros(1, G.w_dim))
    G.rows_jvp((2,), 1, state, ws, torch.zeros(1, G.w_dim))
    for rows, start in [((0,), 2), ((1,), 1), ((3, 1), 1)]:  # stage 0 (b4) reads rows 0 and 1 (its toRGB)
        with pytest.raises(ValueError, match="start"):
            G.rows_jvp(rows, start, state, ws, torch.zeros(1, G.w_dim))
    for rows in [(), (G.num_ws,)]:
        with pytest.raises(ValueError, match="rows"):
            G.rows_jvp(rows, 0, None, ws, torch.zeros(1, G.w_dim))
    for stride in (0, 3, 2.0):
        with pytest.raises(ValueError, match="stride"):
            G.rows_jvp((1,), 0, None, ws, torch.zeros(1, G.w_dim), stride=stride)


@pytest.mark.parametrize("size", [8, 32])  # 8: the sampled last stage (stride 4); 32: the full image
@pytest.mark.parametrize("space", ["w", "W+"])
def test_engine_explicit_tangents_equal_torch_func(size, space, monkeypatch):
    G = generator(32, "skip", conv_clamp=0.6)
    ws = G.map(torch.randn(1, G.z_dim))[0]
    latent = ws[0] if space == "w" else ws
    kwargs = dict(readout=readouts.original(size), chunk_size=11, progress=False, return_info=True)
    J, info = jacobian(G, latent, **kwargs)
    assert info.explicit_tangents and info.layer_skip == (space == "W+") and info.sampled_stride == 32 // size
    monkeypatch.setattr(engine, "EXPLICIT_TANGENTS", False)
    J_func, info_func = jacobian(G, latent, **kwargs)
    assert not info_func.explicit_tangents
    assert relative_error(J, J_func) <= SAME_RTOL


def test_engine_keeps_torch_func_where_explicit_tangents_do_not_apply(monkeypatch):
    G = generator(32)
    ws = G.map(torch.randn(1, G.z_dim))[0]
    columns = range(0, G.num_ws * G.w_dim, 5)
    kwargs = dict(readout=readouts.original(8), columns=columns, progress=False, return_info=True)
    _, info = jacobian(G, ws, layer_skip=False, **kwargs)  # W+ without layer skip: every row moves in one run
    assert not info.explicit_tangents
    monkeypatch.setattr(G, "accepts_ws_rows", False)  # layer skip by stage
    _, info = jacobian(G, ws, **kwargs)
    assert not info.explicit_tangents and info.layer_skip


@pytest.mark.parametrize("space", ["w", "W+"])
def test_engine_refuses_explicit_tangents_that_disagree_with_the_forward_pass(space, monkeypatch):
    """A generator whose forward pass was changed (here: its last stage's image scaled) while its rows_jvp was not:
    the input checks compare the two and refuse, instead of returning the old function's Jacobian."""
    G = generator(32)
    ws = G.map(torch.randn(1, G.z_dim))[0]
    latent = ws[0] if space == "w" else ws
    original = G.run_stage

    def changed(i, state, ws_):
        out = original(i, state, ws_)
        return out * 1.5 if i == G.num_stages - 1 else out
    monkeypatch.setattr(G, "run_stage", changed)
    monkeypatch.setattr(engine, "SAMPLE_LAST_STAGE", False)  # the changed run_stage makes the image
    with pytest.raises(ResefaError, match="rows_jvp"):
        jacobian(G, latent, readout=readouts.original(8), progress=False)
    J = jacobian(G, latent, readout=readouts.original(8), progress=False, check_fn=False)  # no checks: as asked
    monkeypatch.setattr(engine, "EXPLICIT_TANGENTS", False)
    J_func = jacobian(G, latent, readout=readouts.original(8), progress=False)  # torch.func sees the change
    assert relative_error(J_func, 1.5 * J) <= SAME_RTOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("space", ["w", "W+"])
def test_engine_explicit_tangents_on_the_gpu(space, monkeypatch):
    """cuDNN's algorithm choice pinned (with a free choice float32 calls differ by 2-4e-4 on a StyleGAN2)."""
    G = generator(64, "skip", conv_clamp=0.6).cuda()
    ws = G.map(torch.randn(1, G.z_dim).cuda())[0]
    latent = ws[0] if space == "w" else ws
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    kwargs = dict(readout=readouts.original(16), progress=False, return_info=True)
    J, info = jacobian(G, latent, **kwargs)
    monkeypatch.setattr(engine, "EXPLICIT_TANGENTS", False)
    J_func, _ = jacobian(G, latent, **kwargs)
    assert info.explicit_tangents
    assert relative_error(J, J_func) <= 1e-5


#: Unit roundoff of the half tangent dtypes (2^-11, 2^-8).
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
@pytest.mark.parametrize("space", ["w", "W+"])
@pytest.mark.parametrize("architecture,conv_clamp", [("skip", None), ("resnet", 0.6)])
def test_engine_carries_reduced_precision_tangents_in_that_dtype(precision, space, architecture, conv_clamp):
    """precision="float16" / "bfloat16" with explicit tangents: the tangents are stored in that dtype through every
    layer (not autocast, whose elementwise passes stay float32), so J's error against float64 is a few unit
    roundoffs of it -- well above float32's rounding (the half dtype is really used) and at most 10 u (each layer
    rounds the tangents a few times; u = 2^-11, 2^-8). Measured: float16 0.5-1.5e-3, bfloat16 3.5-9.5e-3."""
    G = generator(32, architecture, conv_clamp=conv_clamp, w_dim=16)
    ws = G.map(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)))[0]
    latent = ws[0] if space == "w" else ws
    kwargs = dict(readout=readouts.original(8), chunk_size=13, progress=False)
    J64 = jacobian(G.double(), latent.double(), **kwargs)
    J, info = jacobian(G.float(), latent, precision=precision, return_info=True, **kwargs)
    assert info.explicit_tangents and J.dtype == torch.float32
    u = UNIT_ROUNDOFF[precision]
    assert u / 10 <= relative_error(J.double(), J64) <= 10 * u


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("which", ["x", "styles", "both"])
def test_modulated_conv2d_jvp_keeps_the_tangents_dtype(dtype, which):
    """Half tangents at a float32 primal: ``dy`` in the tangents' dtype and equal to the float32 tangents of the
    same (rounded) inputs to a few unit roundoffs (the products accumulate in float32; the result is rounded)."""
    generator_ = torch.Generator().manual_seed(5)
    x = torch.randn(1, 6, 16, 16, generator=generator_)
    weight = torch.randn(5, 6, 3, 3, generator=generator_)
    styles = torch.randn(1, 6, generator=generator_) + 1
    dx = torch.randn(4, 6, 16, 16, generator=generator_).to(dtype) if which != "styles" else None
    ds = torch.randn(4, 6, generator=generator_).to(dtype) if which != "x" else None
    _, dy = ops.modulated_conv2d_jvp(x, dx, weight, styles, ds, True, 2, ops.setup_filter())
    _, expected = ops.modulated_conv2d_jvp(x, None if dx is None else dx.float(), weight, styles,
                                           None if ds is None else ds.float(), True, 2, ops.setup_filter())
    u = UNIT_ROUNDOFF[str(dtype).split(".")[1]]
    assert dy.dtype == dtype and relative_error(dy.float(), expected) <= 8 * u


def test_float16_tangents_that_overflow_are_refused_with_the_way_out():
    """float16 has a range of 65504: tangents past it become Inf, which the engine refuses, naming bfloat16."""
    G = generator(32, w_dim=16)
    ws = G.map(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)))[0]
    with torch.no_grad():
        G.synthesis.b32.torgb.weight.mul_(1e6)  # the image (and its tangents) ~1e6 times larger
    with pytest.raises(ResefaError, match="bfloat16"):
        jacobian(G, ws[0], readout=readouts.original(8), precision="float16", progress=False)
    J = jacobian(G, ws[0], readout=readouts.original(8), precision="bfloat16", progress=False)
    assert bool(torch.isfinite(J).all())


#: Where affine_tangents runs: torch's passes on the CPU, the fused kernel on CUDA (with the extension).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: Unit roundoff per tangent dtype (float32's too: the result is rounded once to the tangents' dtype).
ROUNDING = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size,offset", [((4, 4), 0), ((5, 3), 0), ((4, 4), 1)])  # wide / one-element accesses
@pytest.mark.parametrize("terms", ["all", "scale", "primal", "x", "per-channel scale"])
def test_affine_tangents_equals_its_formula(device, dtype, size, offset, terms, monkeypatch):
    """``base · scale + primal ⊗ coeff + x ⊗ dstyles`` against float64, each element within one rounding to the
    tangents' dtype plus float32 arithmetic; every element written (the output is compared in full). ``offset``
    shifts base by one element (misaligned for 4-wide accesses: the kernel must take its one-element path); on
    CUDA the fused kernel must be the one that ran."""
    if device == "cuda":
        from resefa_fast._ext import load_extension
        if load_extension() is None:
            pytest.skip("the CUDA extension is not built")
    g = torch.Generator().manual_seed(7)
    k, C = 5, 6
    storage = torch.randn(offset + k * C * size[0] * size[1], generator=g).to(dtype)
    base = storage[offset:].view(k, C, *size)
    grid = lambda: torch.randn(1, C, *size, generator=g)  # noqa: E731
    scale = {"all": grid(), "scale": grid(), "per-channel scale": torch.randn(1, C, 1, 1, generator=g)}.get(terms)
    primal, coeff = (grid(), torch.randn(k, C, generator=g)) if terms in ("all", "primal") else (None, None)
    x, dstyles = (grid(), torch.randn(k, C, generator=g).to(dtype)) if terms in ("all", "x") else (None, None)
    calls = []
    if device == "cuda":
        from resefa_fast import cuda_ops
        kernel = cuda_ops.tangent_affine
        monkeypatch.setattr(cuda_ops, "tangent_affine", lambda *a: calls.append(1) or kernel(*a))
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    out = ops.affine_tangents(to(base), to(scale), to(primal), to(coeff), to(x), to(dstyles)).cpu()
    assert out.dtype == dtype and out.shape == base.shape and calls == ([1] if device == "cuda" else [])
    parts = [base.double() * (1.0 if scale is None else scale.double())]
    parts += [p.double() * c.double()[:, :, None, None] for p, c in ((primal, coeff), (x, dstyles)) if p is not None]
    expected = sum(parts)
    magnitude = sum(part.abs() for part in parts)
    assert bool(((out.double() - expected).abs() <= ROUNDING[dtype] * expected.abs() + 4 * 2.0 ** -24 * magnitude)
                .all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fused tangent kernel)")
@pytest.mark.parametrize("architecture", ["skip", "resnet"])
@pytest.mark.parametrize("space", ["w", "W+"])
def test_engine_with_the_fused_tangent_kernel_equals_torch_passes(architecture, space, monkeypatch):
    """The engine's explicit tangents with ``FUSED_TANGENTS`` on (one kernel between two convolutions) and off
    (torch's passes): the same J to float32 rounding (cuDNN off: its algorithm choice alone moves J by ~1e-4)."""
    from resefa_fast._ext import load_extension
    if load_extension() is None:
        pytest.skip("the CUDA extension is not built")
    G = generator(32, architecture, conv_clamp=0.6, w_dim=16).cuda()
    ws = G.map(torch.randn(1, G.z_dim, device="cuda"))[0]
    latent = ws[0] if space == "w" else ws
    kwargs = dict(readout=readouts.original(8), chunk_size=13, progress=False)
    with torch.backends.cudnn.flags(enabled=False):
        fused = jacobian(G, latent, **kwargs)
        monkeypatch.setattr(ops, "FUSED_TANGENTS", False)
        unfused = jacobian(G, latent, **kwargs)
    assert relative_error(fused, unfused) <= SAME_RTOL
