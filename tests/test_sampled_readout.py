"""The sampled last stage: a readout that reads the image only at a stride (``readouts.original`` with an integer
ratio) and a generator that computes its last stage only there (StyleGAN2) give the same Jacobian as the full image,
and every other readout / generator keeps the full path."""
import pytest
import torch
import torch.nn.functional as F

from resefa_fast.jacobian import engine, jacobian, readouts
from resefa_fast.jacobian.staged import samples_last_stage, synthesize
from resefa_fast.jacobian.toy import ToyGenerator
from resefa_fast.models import StyleGAN2Generator, ops

from conftest import relative_error

#: Forward vs reverse mode in float32 (DESIGN.md §6): relative Frobenius error.
JACOBIAN_RTOL = 1e-4
#: The sampled and the full path: the same products and sums per pixel, so float32 rounding at most.
SAME_RTOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread


def generator(resolution=32, architecture="skip", conv_clamp=None, w_dim=8, seed=0):
    """A small StyleGAN2 with random weights whose noise inputs and biases all matter (non-zero)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = StyleGAN2Generator(z_dim=w_dim, w_dim=w_dim, img_resolution=resolution, channel_base=4 * resolution,
                               channel_max=8, architecture=architecture, conv_clamp=conv_clamp).eval()
        G.requires_grad_(False)
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
            elif name.endswith(".bias") and "synthesis" in name:
                p.copy_(0.5 * torch.randn_like(p))
    return G


def last_state(G, ws):
    """The primal state entering the last stage."""
    state = None
    with torch.no_grad():
        for i in range(G.num_stages - 1):
            state = G.run_stage(i, state, ws)
    return state


# ---------------------------------------------------------------------------------------------------------------
# what the nearest resize samples, and when a readout declares a stride


@pytest.mark.parametrize("width,size", [(1024, 256), (1024, 512), (512, 256), (64, 16), (32, 16), (64, 8),
                                        (48, 16), (96, 32), (768, 256), (1024, 128)])
def test_nearest_resize_by_an_integer_ratio_keeps_pixels_at_multiples_of_the_stride(width, size):
    """The index set proven on an image of distinct values: F.interpolate(scale_factor=size / W, mode="nearest")
    keeps exactly the pixels (s·i, s·j), s = W / size, i, j < size -- what the readout's declaration relies on."""
    stride = width // size
    image = torch.arange(2 * width * width, dtype=torch.float64).reshape(1, 2, width, width)
    resized = F.interpolate(image, scale_factor=size / width, mode="nearest")
    rows, cols = torch.meshgrid(torch.arange(size) * stride, torch.arange(size) * stride, indexing="ij")
    assert torch.equal(resized, image[:, :, rows, cols])
    assert torch.equal(resized, image[..., ::stride, ::stride])
    # the readout declares this stride, and its tail applied to the sampled image is the readout, exactly
    found = readouts.original(size).sampling((1, 3, width, width))
    assert found is not None and found[0] == stride
    x = torch.randn(2, 3, width, width)
    assert torch.equal(found[1](x[..., ::stride, ::stride]), readouts.original(size)(x))


def test_declared_exactly_where_the_resize_is_a_strided_slice():
    """Over many sizes: ``original(size)`` declares a stride iff W / size is an integer > 1 and the resize really is
    ``[..., ::s, ::s]`` (checked here independently on random images); never for non-integer ratios."""
    for width in range(2, 130):
        for size in (1, 2, 3, 5, 7, 8, 16, 24, 32, 48, 64, 100):
            found = readouts.original(size).sampling((1, 3, width, width))
            if width <= size or width % size:
                assert found is None, (width, size)
                continue
            stride = width // size
            image = torch.randn(1, 3, width, width, dtype=torch.float64)
            try:
                resized = F.interpolate(image, scale_factor=size / width, mode="nearest")
            except RuntimeError:  # floor(W · size / W) = 0 rows: the readout itself fails
                resized = None
            is_slice = resized is not None and torch.equal(resized, image[..., ::stride, ::stride])
            assert (found is not None) == is_slice, (width, size)
            if found is not None:
                assert found[0] == stride
    assert readouts.original(256).sampling((1, 3, 1024, 1024))[0] == 4  # the default readout at 1024²
    # non-square: the height must be divisible by the stride too (else the resize keeps floor(H / s) rows)
    assert readouts.original(16).sampling((1, 3, 32, 64))[0] == 4
    assert readouts.original(16).sampling((1, 3, 30, 64)) is None


@pytest.mark.parametrize("width,size", [(64, 24), (48, 32), (64, 48), (1024, 384), (32, 32), (16, 32)])
def test_non_integer_ratio_or_no_resize_declares_nothing(width, size):
    assert readouts.original(size).sampling((1, 3, width, width)) is None
    if width > size:  # and the resize is no strided slice at any stride
        assert not any(readouts.nearest_stride(width, width, size / width, s) for s in range(1, width + 1))


def test_other_readouts_declare_nothing():
    shape = (1, 3, 64, 64)
    for readout in (readouts.rgb(), readouts.area(16, "sum"), readouts.area(16, "rgb"), readouts.channel_sum(),
                    readouts.grayscale(), readouts.crop((0, 0, 16, 16)),
                    readouts.compose(readouts.original(16), readouts.rgb())):
        assert readout.sampling(shape) is None, readout


# ---------------------------------------------------------------------------------------------------------------
# the sampled ops and the sampled last stage


@pytest.mark.parametrize("up,stride", [(1, 2), (1, 4), (2, 2), (2, 4), (2, 8)])
def test_modulated_conv2d_with_stride_is_the_sliced_output(up, stride):
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(3, 5, 16, 16, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    styles, f = torch.randn(3, 5, generator=g), ops.setup_filter()
    noise = torch.randn(16 * up, 16 * up, generator=g)
    full = ops.modulated_conv2d(x, weight, styles, up=up, f=f, noise=noise)
    sampled = ops.modulated_conv2d(x, weight, styles, up=up, f=f, noise=noise[::stride, ::stride], stride=stride)
    assert sampled.shape == full[..., ::stride, ::stride].shape
    assert relative_error(sampled, full[..., ::stride, ::stride]) <= SAME_RTOL
    assert relative_error(ops.upsample2d(x, f, stride=stride), ops.upsample2d(x, f)[..., ::stride, ::stride]) \
        <= SAME_RTOL


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
@pytest.mark.parametrize("conv_clamp", [None, 0.6])
@pytest.mark.parametrize("resolution,stride", [(32, 2), (32, 4), (64, 4), (64, 8), (4, 2)])
def test_sampled_last_stage_is_the_sliced_image(architecture, conv_clamp, resolution, stride):
    G = generator(resolution, architecture, conv_clamp)
    assert samples_last_stage(G) and G.image_shape == (3, resolution, resolution)
    ws = G.map(torch.randn(2, G.z_dim))
    state = last_state(G, ws)
    with torch.no_grad():
        full = G.run_stage(G.num_stages - 1, state, ws)
        sampled = G.run_last_stage_sampled(state, ws, stride)
        rows = tuple(ws[:, row] for row in range(G.num_ws))  # the accepts_ws_rows form
        sampled_rows = G.run_last_stage_sampled(state, rows, stride)
        assert torch.equal(synthesize(G, ws, stride=stride), sampled)
    if conv_clamp is not None:  # the clamp is active (the same weights unclamped give another image)
        unclamped = generator(resolution, architecture, None)
        with torch.no_grad():
            assert (unclamped.synthesis(ws) - full).abs().max() > 1e-3
    expected = full[..., ::stride, ::stride]
    assert sampled.shape == (2, 3, resolution // stride, resolution // stride)
    assert relative_error(sampled, expected) <= SAME_RTOL
    assert relative_error(sampled_rows, expected) <= SAME_RTOL


def test_sampled_stage_arguments_are_checked():
    G = generator(16)
    ws = G.map(torch.randn(1, G.z_dim))
    with pytest.raises(ValueError):
        G.synthesis.run_stage(0, None, ws, stride=2)  # not the last stage
    with pytest.raises(ValueError):
        G.run_last_stage_sampled(last_state(G, ws), ws, 3)  # does not divide 16


# ---------------------------------------------------------------------------------------------------------------
# the engine


def counting(G, monkeypatch):
    """Count the calls of ``G.run_last_stage_sampled`` (the sampled path)."""
    calls = []
    original = G.run_last_stage_sampled

    def counted(state, ws, stride):
        calls.append(stride)
        return original(state, ws, stride)
    monkeypatch.setattr(G, "run_last_stage_sampled", counted)
    return calls


def reverse_jacobian(G, latent, readout):
    def pixels(x):
        ws = (x.expand(G.num_ws, G.w_dim) if x.dim() == 1 else x)[None]
        return readout(G.synthesis(ws)).reshape(-1)
    return torch.func.jacrev(pixels)(latent).reshape(-1, latent.numel())


@pytest.mark.parametrize("resolution,size,architecture", [(64, 16, "skip"), (32, 16, "skip"), (32, 8, "resnet")])
@pytest.mark.parametrize("space", ["w", "W+", "W+ by stage", "W+ no skip"])
def test_jacobian_with_sampled_last_stage_equals_full_path_and_reverse_mode(resolution, size, architecture, space,
                                                                           monkeypatch):
    G = generator(resolution, architecture, conv_clamp=0.6 if architecture == "resnet" else None)
    if space == "W+ by stage":
        monkeypatch.setattr(G, "accepts_ws_rows", False)
    ws = G.map(torch.randn(1, G.z_dim))[0]
    latent = ws[0] if space == "w" else ws
    readout = readouts.original(size)
    stride = resolution // size
    calls = counting(G, monkeypatch)
    kwargs = dict(chunk_size=13, progress=False, return_info=True,
                  layer_skip=False if space == "W+ no skip" else "auto")
    J, info = jacobian(G, latent, readout=readout, **kwargs)
    assert info.sampled_stride == stride and calls and set(calls) == {stride}
    assert J.shape == (size * size, latent.numel())
    calls.clear()
    # the old path: a plain callable wrapping the same readout declares nothing
    J_full, info_full = jacobian(G, latent, readout=lambda image: readout(image), **kwargs)
    assert info_full.sampled_stride == 1 and not calls
    assert info.layer_skip == info_full.layer_skip == (space in ("W+", "W+ by stage"))
    assert relative_error(J, J_full) <= SAME_RTOL
    assert relative_error(J, reverse_jacobian(G, latent, readout)) <= JACOBIAN_RTOL


def test_sampled_last_stage_with_column_subsets_and_several_latents(monkeypatch):
    G = generator(32)
    ws = G.map(torch.randn(2, G.z_dim))
    latents = [ws[0], ws[1]]
    columns = [0, 5, 17, 40, G.num_ws * G.w_dim - 1]
    readout = readouts.original(8)
    J, info = jacobian(G, latents, readout=readout, columns=columns, progress=False, return_info=True)
    J_full = jacobian(G, latents, readout=lambda image: readout(image), columns=columns, progress=False)
    assert info.sampled_stride == 4 and J.shape == (2, 64, len(columns))
    assert relative_error(J, J_full) <= SAME_RTOL


@pytest.mark.parametrize("readout", [readouts.rgb(), readouts.area(8, "sum"), readouts.original(24),
                                     readouts.original(64), readouts.compose(readouts.original(8)), None])
def test_readouts_without_a_stride_keep_the_full_path(readout, monkeypatch):
    G = generator(32)
    calls = counting(G, monkeypatch)
    ws = G.map(torch.randn(1, G.z_dim))[0]
    J, info = jacobian(G, ws, readout=readout, columns=range(0, G.num_ws * G.w_dim, 7), progress=False,
                       return_info=True)
    assert info.sampled_stride == 1 and not calls
    assert relative_error(J, reverse_jacobian(G, ws, readout or (lambda image: image))[:, ::7]) <= JACOBIAN_RTOL


def test_switch_and_generators_without_the_sampled_stage(monkeypatch):
    G = generator(32)
    calls = counting(G, monkeypatch)
    ws = G.map(torch.randn(1, G.z_dim))[0]
    monkeypatch.setattr(engine, "SAMPLE_LAST_STAGE", False)
    J_off, info = jacobian(G, ws, readout=readouts.original(8), progress=False, return_info=True)
    assert info.sampled_stride == 1 and not calls
    monkeypatch.setattr(engine, "SAMPLE_LAST_STAGE", True)
    J_on, info = jacobian(G, ws, readout=readouts.original(8), progress=False, return_info=True)
    assert info.sampled_stride == 4 and calls
    assert relative_error(J_on, J_off) <= SAME_RTOL
    # a staged generator without run_last_stage_sampled (the toy, StyleGAN3, BigGAN) keeps the full image
    toy = ToyGenerator(16, 8, channels=lambda r: 6, seed=0).eval()
    assert not samples_last_stage(toy)
    _, info = jacobian(toy, torch.randn(toy.num_ws, toy.w_dim), readout=readouts.original(8), progress=False,
                       return_info=True)
    assert info.sampled_stride == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("space", ["w", "W+"])
def test_sampled_last_stage_on_the_gpu_equals_the_full_path(space, monkeypatch):
    """On a GPU with cuDNN's algorithm choice pinned (deterministic) the two paths agree to float32 rounding (the
    H100 gave bit-identical Jacobians). With a free choice, cuDNN's float32 algorithms alone make two calls differ by
    2-4e-4 on a StyleGAN2 (benchmarks/check_sampled_stage.py), so this test pins it."""
    G = generator(64, "skip").cuda()
    ws = G.map(torch.randn(1, G.z_dim).cuda())[0]
    latent = ws[0] if space == "w" else ws
    readout = readouts.original(16)
    calls = counting(G, monkeypatch)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        J, info = jacobian(G, latent, readout=readout, chunk_size=13, progress=False, return_info=True)
        J_full = jacobian(G, latent, readout=lambda image: readout(image), chunk_size=13, progress=False)
    assert info.sampled_stride == 4 and calls
    assert relative_error(J.cpu(), J_full.cpu()) <= SAME_RTOL
