"""The forward-mode Jacobian engine vs reverse mode, layer skip vs plain, chunking / OOM split, targets, inputs."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from resefa_fast.errors import ResefaError
from resefa_fast.jacobian import Grams, Memmap, StagedGenerator, jacobian, readouts
from resefa_fast.jacobian import engine
from resefa_fast.jacobian.toy import ToyGenerator

from conftest import relative_error

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread


#: Forward vs reverse mode in float32 (DESIGN.md §6): relative Frobenius error.
JACOBIAN_RTOL = 1e-4


def toy(resolution=16, w_dim=8, channels=6, seed=0, accepts_ws_rows=False):
    return ToyGenerator(resolution, w_dim, channels=lambda r: channels, seed=seed,
                        accepts_ws_rows=accepts_ws_rows).eval()


class ImageMLP(torch.nn.Module):
    """A generic (non-staged) callable: latent [d] -> image [C, H, W] with odd sizes, tanh and upsampling."""

    def __init__(self, d=17, grid=(7, 9), channels=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.grid, self.channels = grid, channels
        self.w1 = torch.nn.Parameter(torch.randn(32, d, generator=g) / math.sqrt(d))
        self.w2 = torch.nn.Parameter(torch.randn(channels * grid[0] * grid[1], 32, generator=g) / math.sqrt(32))

    def forward(self, z):
        image = (self.w2 @ torch.tanh(self.w1 @ z.reshape(-1))).reshape(self.channels, *self.grid)
        return F.interpolate(image[None], scale_factor=2, mode="bilinear", align_corners=False)[0]


def reverse_jacobian(fn, latent, readout=None):
    """Reference J [P, d] by reverse mode (torch.func.jacrev)."""
    def pixels(x):
        image = fn(x)
        image = image[None] if image.dim() == 3 else image
        return (image if readout is None else readout(image)).reshape(-1)
    return torch.func.jacrev(pixels)(latent).reshape(-1, latent.numel()).detach()


def staged_call(G):
    """The staged generator as a plain callable of W+ [L, w_dim] or w [w_dim] (w repeated, as the original)."""
    return lambda x: G((x.expand(G.num_ws, G.w_dim) if x.dim() == 1 else x)[None])[0]


READOUTS = {
    "none": None,
    "rgb": readouts.rgb(),
    "original8": readouts.original(8),          # 16 -> 8: nearest downsample + channel sum
    "original32": readouts.original(32),        # 16 <= 32: the image as it is, RGB
    "area5x7": readouts.area((5, 7), "sum"),
    "crop-gray": readouts.compose(readouts.crop((3, 2, 9, 11)), readouts.grayscale()),
    "area-gray": readouts.area(8, "gray"),
}


@pytest.mark.parametrize("readout", list(READOUTS))
def test_forward_matches_reverse_staged(readout):
    G = toy(accepts_ws_rows=readout in ("original8", "crop-gray"))
    ws = torch.randn(G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    J = jacobian(G, ws, readout=READOUTS[readout], progress=False)
    J_ref = reverse_jacobian(staged_call(G), ws, READOUTS[readout])
    assert J.shape == J_ref.shape == (J_ref.shape[0], G.num_ws * G.w_dim)
    assert relative_error(J, J_ref) <= JACOBIAN_RTOL


@pytest.mark.parametrize("d,grid,channels", [(17, (7, 9), 3), (8, (3, 5), 1), (59, (4, 4), 2)])
def test_forward_matches_reverse_generic(d, grid, channels):
    fn = ImageMLP(d, grid, channels)
    z = torch.randn(d)
    J = jacobian(fn, z, chunk_size=5, progress=False)
    J_ref = torch.autograd.functional.jacobian(lambda x: fn(x).reshape(-1), z).reshape(-1, d)
    assert J.shape == (channels * grid[0] * grid[1] * 4, d)
    assert relative_error(J, J_ref) <= JACOBIAN_RTOL
    # a latent of any shape: d = its number of elements, flattened row-major
    J2 = jacobian(fn, z.reshape(1, d), chunk_size=5, progress=False)
    assert torch.equal(J, J2)


def test_w_latent_is_w_repeated_on_all_layers():
    """For a staged generator a w [w_dim] latent means W+ = w on every row, so J_w = Σ_l J_W+[:, l-th block]."""
    G = toy()
    w = torch.randn(G.w_dim)
    J_w = jacobian(G, w, readout=readouts.original(8), progress=False)
    J_wp = jacobian(G, w.expand(G.num_ws, G.w_dim).clone(), readout=readouts.original(8), progress=False)
    summed = J_wp.reshape(-1, G.num_ws, G.w_dim).sum(1)
    assert relative_error(J_w, summed) <= JACOBIAN_RTOL
    assert relative_error(J_w, reverse_jacobian(staged_call(G), w, readouts.original(8))) <= JACOBIAN_RTOL


def test_original_readout_is_the_original_formula():
    image = torch.randn(2, 3, 16, 16)
    big = readouts.original(8)(image)  # larger than the readout size: nearest resize, channel sum
    assert torch.equal(big, F.interpolate(image, scale_factor=8 / 16).sum(dim=1, keepdim=True))
    small = readouts.original(32)(image)  # not larger than the readout size: returned as it is (RGB, 16 x 16)
    assert torch.equal(small, image)
    assert readouts.original()(torch.zeros(1, 3, 1024, 1024)).shape == (1, 1, 256, 256)
    assert readouts.original()(torch.zeros(1, 3, 256, 256)).shape == (1, 3, 256, 256)
    assert readouts.area(4, "rgb")(torch.ones(1, 3, 16, 16)).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("resolution,by_row", [(16, False), (32, False), (16, True), (32, True)])
def test_layer_skip_equals_plain_and_saves_stage_runs(resolution, by_row):
    G = toy(resolution, accepts_ws_rows=by_row)
    ws = torch.randn(G.num_ws, G.w_dim)
    J_skip, info_skip = jacobian(G, ws, readout=readouts.rgb(), chunk_size=7, progress=False, return_info=True)
    J_plain, info_plain = jacobian(G, ws, readout=readouts.rgb(), chunk_size=7, layer_skip=False, progress=False,
                                   return_info=True)
    assert info_skip.layer_skip and not info_plain.layer_skip
    assert relative_error(J_skip, J_plain) <= 1e-6
    # rows 2s, 2s+1 are first read by stage s: the tangents of stage s run num_stages - s stages
    S = G.num_stages
    assert info_skip.groups == {s: 2 * G.w_dim for s in range(S)}
    assert info_skip.stage_runs == sum(2 * G.w_dim * (S - s) for s in range(S))
    assert info_plain.stage_runs == info_skip.stage_runs_without_skip == G.num_ws * G.w_dim * S
    assert info_skip.stage_runs < info_plain.stage_runs


class Overlapping(torch.nn.Module):
    """A staged generator with overlapping, out-of-order row ranges: stage 0 reads rows 2..3, stage 1 rows 0..2,
    stage 2 rows 1..3 (rows 0 and 1 start at stage 1, rows 2 and 3 at stage 0; columns are not contiguous)."""
    num_ws, w_dim, num_stages = 4, 3, 3
    RANGES = [(2, 4), (0, 3), (1, 4)]

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.mats = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(5, 5, generator=g) / 2) for _ in range(3)])
        self.proj = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(5, 3, generator=g)) for _ in range(3)])

    def stage_ws_rows(self, i):
        return self.RANGES[i]

    def run_stage(self, i, state, ws):
        lo, hi = self.RANGES[i]
        x = torch.zeros(ws.shape[0], 5) if state is None else state
        x = torch.tanh(x @ self.mats[i] + ws[:, lo:hi].sum(1) @ self.proj[i].T)
        return x.reshape(-1, 1, 1, 5) if i == self.num_stages - 1 else x


def test_layer_skip_with_overlapping_rows_and_scattered_columns(tmp_path):
    G = Overlapping()
    assert isinstance(G, StagedGenerator)
    ws = torch.randn(4, 3)
    J, info = jacobian(G, ws, chunk_size=2, progress=False, return_info=True)
    assert info.groups == {0: 6, 1: 6}
    J_ref = reverse_jacobian(lambda x: G.run_stage(2, G.run_stage(1, G.run_stage(0, None, x[None]), x[None]),
                                                   x[None])[0], ws)
    assert relative_error(J, J_ref) <= JACOBIAN_RTOL


@pytest.mark.parametrize("by_row", [False, True])
def test_column_subsets(by_row):
    G = toy(accepts_ws_rows=by_row)
    ws = torch.randn(G.num_ws, G.w_dim)
    J = jacobian(G, ws, readout=readouts.original(8), chunk_size=4, progress=False)
    for columns in ([5], [47, 0, 20, 21, 22, 9], torch.arange(8, 24), range(0, 48, 5)):
        part, info = jacobian(G, ws, readout=readouts.original(8), chunk_size=4, columns=columns, progress=False,
                              return_info=True)
        index = torch.as_tensor(list(columns))
        assert part.shape == (J.shape[0], index.numel()) and relative_error(part, J[:, index]) <= 1e-6
        assert sum(info.groups.values()) == index.numel()
    for bad in ([], [48], [-1], [1, 1], [0.5]):
        with pytest.raises(ResefaError, match="`columns`"):
            jacobian(G, ws, columns=bad, progress=False)


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 48, 100, None])
def test_chunk_size_does_not_change_j(chunk_size):
    G = toy()
    ws = torch.randn(G.num_ws, G.w_dim)
    reference = jacobian(G, ws, readout=readouts.original(8), chunk_size=3, progress=False)
    J = jacobian(G, ws, readout=readouts.original(8), chunk_size=chunk_size, progress=False)
    assert relative_error(J, reference) <= 1e-6


@pytest.mark.parametrize("error", [lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
                                   lambda: RuntimeError("CUDA error: out of memory")])
def test_oom_chunks_are_split_and_retried(monkeypatch, error):
    G = toy()
    ws = torch.randn(G.num_ws, G.w_dim)
    reference = jacobian(G, ws, readout=readouts.rgb(), chunk_size=4, progress=False)
    real = engine.jvp_columns

    def limited(evaluate, x, cols):  # a device that fits 3 tangents
        if cols.numel() > 3:
            raise error()
        return real(evaluate, x, cols)
    monkeypatch.setattr(engine, "jvp_columns", limited)
    J, info = jacobian(G, ws, readout=readouts.rgb(), chunk_size=16, progress=False, return_info=True)
    assert torch.equal(J, reference) or relative_error(J, reference) <= 1e-6
    assert info.splits == 3 and info.chunk_size == 2 and max(info.chunk_sizes) <= 3  # 16 -> 8 -> 4 -> 2
    assert sum(info.chunk_sizes) == G.num_ws * G.w_dim


def test_oom_at_one_tangent_and_other_errors_propagate(monkeypatch):
    G = toy()
    ws = torch.randn(G.num_ws, G.w_dim)

    def never(evaluate, x, cols):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(engine, "jvp_columns", never)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        jacobian(G, ws, chunk_size=4, progress=False)

    def broken(evaluate, x, cols):
        raise RuntimeError("some other failure")
    monkeypatch.setattr(engine, "jvp_columns", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        jacobian(G, ws, chunk_size=4, progress=False)


def test_oom_raised_by_fn_itself_is_retried():
    fn = ImageMLP()
    z = torch.randn(17)
    calls = {"n": 0}

    def flaky(x):  # the first two chunks run out of memory
        calls["n"] += 1
        if 2 <= calls["n"] <= 3:  # call 1 is the shape probe
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fn(x)
    J, info = jacobian(flaky, z, chunk_size=8, check_fn=False, progress=False, return_info=True)
    assert info.splits == 2 and info.chunk_sizes == [2] * 8 + [1]
    assert relative_error(J, jacobian(fn, z, progress=False)) <= 1e-6


@pytest.mark.parametrize("by_row", [False, True])
def test_several_latents(by_row):
    G = toy(accepts_ws_rows=by_row)
    codes = [torch.randn(G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    J = jacobian(G, codes, readout=readouts.original(8), chunk_size=9, progress=False)
    assert J.shape[0] == 3
    for n, ws in enumerate(codes):
        assert relative_error(J[n], jacobian(G, ws, readout=readouts.original(8), progress=False)) <= 1e-6
    assert relative_error(J[2], reverse_jacobian(staged_call(G), codes[2], readouts.original(8))) <= JACOBIAN_RTOL


def test_host_and_preallocated_targets():
    G = toy()
    codes = [torch.randn(G.num_ws, G.w_dim) for _ in range(2)]
    J = jacobian(G, codes, readout=readouts.rgb(), progress=False)
    host = jacobian(G, codes, readout=readouts.rgb(), out="host", progress=False)
    assert host.device.type == "cpu" and torch.equal(host, J)
    buffer = torch.zeros(2, *J.shape[1:], dtype=torch.float64)
    filled = jacobian(G, codes, readout=readouts.rgb(), out=buffer, progress=False)
    assert filled.data_ptr() == buffer.data_ptr() and relative_error(buffer, J) <= 1e-7
    with pytest.raises(ResefaError, match="`out`"):
        jacobian(G, codes, readout=readouts.rgb(), out=torch.zeros(3, 3), progress=False)


@pytest.mark.parametrize("readout,layout,shape,buffer", [
    ("original8", "original", lambda N, d: (N, 8, 8, 1, d), None),
    ("original32", "original", lambda N, d: (N, 3, 16, 16, 1, d), None),
    ("rgb", "flat", lambda N, d: (N, 3 * 16 * 16, d), None),
    ("original8", "original", lambda N, d: (N, 8, 8, 1, d), 0),            # every block written at once
    ("original8", "original", lambda N, d: (N, 8, 8, 1, d), 4 * 64 * 20),  # flushed every 20+ columns
])
def test_memmap_in_the_original_layout(tmp_path, readout, layout, shape, buffer):
    G = toy()
    codes = [torch.randn(G.num_ws, G.w_dim) for _ in range(2)]
    J = jacobian(G, codes, readout=READOUTS[readout], chunk_size=11, progress=False)
    path = str(tmp_path / "jacobian.npy")
    target = path if layout == "original" and buffer is None else Memmap(
        path, layout=layout, **({} if buffer is None else {"buffer_bytes": buffer}))
    mapped = jacobian(G, codes, readout=READOUTS[readout], out=target, chunk_size=11, progress=False)
    d = G.num_ws * G.w_dim
    assert mapped.shape == shape(2, d) and mapped.dtype == np.float32
    loaded = np.load(path)
    assert loaded.shape == shape(2, d)
    # the file is J reshaped: file[n, (c,) h, w, 0, j] = J[n, c·H·W + h·W + w, j]
    assert np.array_equal(loaded.reshape(2, -1, d), J.numpy())
    assert os.listdir(tmp_path) == ["jacobian.npy"]


def test_memmap_write_is_atomic(tmp_path):
    G = toy()
    ws = torch.randn(G.num_ws, G.w_dim)
    path = tmp_path / "J.npy"
    np.save(path, np.arange(3.0))  # an older file: must survive a failed run untouched
    calls = {"n": 0}

    def crashing(x):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the run
        return G(x[None])
    with pytest.raises(KeyboardInterrupt):
        jacobian(crashing, ws, out=str(path), chunk_size=4, check_fn=False, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["J.npy"] and np.array_equal(np.load(path), np.arange(3.0))


def masks_for(grid):
    """1 pixel, 50 %, all but one, and a soft mask on an [H, W] grid: ``[4, H, W]``."""
    H, W = grid
    masks = torch.zeros(4, H, W)
    masks[0, H // 2, W // 3] = 1
    masks[1, : H // 2] = 1
    masks[2] = 1
    masks[2, 0, 0] = 0
    masks[3] = torch.rand(H, W, generator=torch.Generator().manual_seed(0))
    masks[3, :, : W // 2] = 0
    return masks


@pytest.mark.parametrize("readout", ["original8", "rgb"])
def test_grams_without_storing_j(readout):
    G = toy()
    codes = [torch.randn(G.num_ws, G.w_dim) for _ in range(2)]
    J = jacobian(G, codes, readout=READOUTS[readout], progress=False).double()  # [N, P, d]
    C = 1 if readout == "original8" else 3
    H = 8 if readout == "original8" else 16
    masks = masks_for((H, H))
    grams, traces = jacobian(G, codes, readout=READOUTS[readout], out=Grams(masks), chunk_size=6, progress=False)
    weights = masks[:, None].expand(-1, C, -1, -1).reshape(4, -1).double()  # the same mask on every channel
    ref = torch.einsum("rp,npi,npj->nrij", weights, J, J)
    assert grams.shape == (2, 4, J.shape[2], J.shape[2]) and grams.dtype == torch.float64
    assert relative_error(grams, ref) <= 1e-6
    assert relative_error(traces, torch.einsum("rp,npi->nr", weights, J.square())) <= 1e-6
    one, one_traces = jacobian(G, codes[0], readout=READOUTS[readout], out=Grams(weights.float()), progress=False)
    assert one.shape == (4, J.shape[2], J.shape[2]) and relative_error(one, ref[0]) <= 1e-6
    with pytest.raises(ResefaError, match="`weights`"):
        jacobian(G, codes[0], readout=READOUTS[readout], out=Grams(torch.zeros(2, 5, 5)), progress=False)


def test_precision_modes():
    G = toy()
    ws = torch.randn(G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))
    J = jacobian(G, ws, readout=readouts.original(8), progress=False)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert torch.equal(jacobian(G, ws, readout=readouts.original(8), precision="tf32", progress=False), J)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    low = jacobian(G, ws, readout=readouts.original(8), precision="bfloat16", progress=False)
    # tolerance from the same-precision plain computation (STYLE.md): reverse mode under bf16 autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_low = reverse_jacobian(staged_call(G), ws, readouts.original(8))
    assert low.dtype == torch.float32 and 0 < relative_error(low, J) <= 2 * relative_error(plain_low, J) + 1e-3
    J64 = jacobian(G.double(), ws.double(), readout=readouts.original(8), progress=False)
    assert J64.dtype == torch.float64 and relative_error(J, J64) <= JACOBIAN_RTOL
    half = jacobian(G.float(), ws, readout=readouts.original(8), dtype=torch.float16, progress=False)
    assert half.dtype == torch.float16 and relative_error(half.float(), J) < 1e-3


def test_progress_bar_and_quiet(capsys):
    fn = ImageMLP()
    jacobian(fn, torch.randn(17), progress=False)
    assert capsys.readouterr().err == ""
    jacobian(fn, torch.randn(17), progress=True, chunk_size=4)
    assert "tangent" in capsys.readouterr().err


def test_bad_inputs():
    G = toy()
    fn = ImageMLP()
    z = torch.randn(17)

    def raises(argument, *args, **kwargs):
        with pytest.raises(ResefaError, match=argument):
            jacobian(*args, progress=False, **kwargs)

    raises("`fn`", 3, z)
    raises("`latent`", fn, [1, 2, 3])
    raises("`latent`", fn, torch.arange(17))
    raises("`latent`", fn, [])
    raises("`latent`", fn, torch.full((17,), float("nan")))
    raises("`latent`", fn, [z, torch.randn(16)])
    raises("`latent`", G, torch.randn(G.num_ws, G.w_dim + 1))
    raises("`readout`", fn, z, readout="original")
    raises("`chunk_size`", fn, z, chunk_size=0)
    raises("`chunk_size`", fn, z, chunk_size=2.5)
    raises("`out`", fn, z, out="gpu")
    raises("`out`", fn, z, out="/no/such/dir/J.npy")
    raises("`precision`", fn, z, precision="int8")
    raises("`layer_skip`", fn, z, layer_skip=True)
    raises("`layer_skip`", G, torch.randn(G.w_dim), layer_skip=True)
    raises("`dtype`", fn, z, dtype=torch.int32)
    raises("`readout`", fn, z, readout=lambda image: image.sum())
    raises("`fn`.*image", lambda x: x.reshape(1, 1, 1, 1, -1), z)
    raises("`fn`.*tensor", lambda x: [fn(x)], z)


@pytest.mark.parametrize("bad,message", [
    (lambda fn: (lambda x: fn(x.add_(1))), "in place"),
    (lambda fn: (lambda x: fn(x) + torch.randn(1)), "deterministic"),
    (lambda fn: (lambda x: fn(x) + 1e-3 * torch.randn(1)), "deterministic"),  # weak noise too
    (lambda fn: (lambda x: fn(x) / 0 * 0), "finite"),
    (lambda fn: (lambda x: fn(x).detach()), "depend"),
    (lambda fn: (lambda x: fn(x) * 0 + 1), "depend"),
    (lambda fn: (lambda x: fn(torch.from_numpy(x.numpy()))), "differentiable"),
    (lambda fn: (lambda x: fn(x) + torch.log(x[0] - x[0])), "finite"),
])
def test_bad_functions_are_caught_before_the_run(bad, message):
    fn = ImageMLP()
    with pytest.raises(ResefaError, match=message):
        jacobian(bad(fn), torch.randn(17), progress=False)


def test_nan_in_a_tangent_is_caught():
    fn = ImageMLP()
    z = torch.randn(17)
    z[5] = 0.0

    def sqrt_abs(x):  # finite output and probe JVP (random tangent) but an infinite derivative in column 5 only
        return fn(x) + torch.sqrt(x[5].abs() + 1e-30) * 0 + torch.where(torch.arange(17) == 5, x.abs().sqrt(),
                                                                    0 * x).sum()
    with pytest.raises(ResefaError, match="NaN/Inf"):
        jacobian(sqrt_abs, z, check_fn=False, progress=False)


def test_staged_generator_must_read_every_row():
    G = Overlapping()
    G.RANGES = [(2, 4), (2, 3), (1, 4)]  # row 0 is read by no stage
    with pytest.raises(ResefaError, match="rows \\[0\\]"):
        jacobian(G, torch.randn(4, 3), progress=False)


def test_automatic_chunk_size_from_free_memory(monkeypatch):
    """CUDA without a GPU: a fake allocator whose peak is fixed + per·k. The first chunks are 2 and 4 tangents,
    then k = (0.8 · free − fixed) / per; an OOM later still splits."""
    per, fixed, free = 1_000, 5_000, 100_000
    fake = {"peak": 0}
    for name, value in [("synchronize", None), ("memory_allocated", 0), ("reset_peak_memory_stats", None),
                        ("memory_reserved", 0), ("empty_cache", None)]:
        monkeypatch.setattr(torch.cuda, name, lambda device=None, value=value: value)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake["peak"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 10 ** 9))

    def columns(x, cols):
        if cols.numel() > 70:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        fake["peak"] = fixed + per * cols.numel()
        return torch.zeros(cols.numel(), 3)
    chunker = engine._Chunker(None, torch.device("cuda"), 1000)
    sizes = [cols.numel() for cols, _ in chunker.run(columns, None, torch.arange(1000))]
    planned = int((engine.MEMORY_FRACTION * free - fixed) // per)  # 75
    assert sizes[:2] == [2, 4] and chunker.splits == 1 and set(sizes[2:-1]) == {planned // 2} and sum(sizes) == 1000


@settings(max_examples=12, deadline=None)
@given(d=st.integers(1, 23), height=st.integers(1, 9), width=st.integers(1, 9), channels=st.integers(1, 3),
       chunk=st.one_of(st.none(), st.integers(1, 30)), seed=st.integers(0, 1000))
def test_odd_sizes_match_reverse(d, height, width, channels, chunk, seed):
    torch.set_num_threads(1)
    fn = ImageMLP(d, (height, width), channels, seed=seed)
    z = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    J = jacobian(fn, z, chunk_size=chunk, progress=False)
    assert J.shape == (channels * height * width * 4, d)
    assert relative_error(J, reverse_jacobian(fn, z)) <= JACOBIAN_RTOL


def test_engine_output_feeds_the_solvers(tmp_path):
    """J from the engine (tensor [P, d] and the original-layout file) goes straight into resefa_fast.factorize."""
    import resefa_fast as rf
    G = toy()
    codes = [torch.randn(G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    path = str(tmp_path / "J.npy")
    mapped = jacobian(G, codes, readout=readouts.original(8), out=path, progress=False)  # [2, 8, 8, 1, d]
    J = jacobian(G, codes[0], readout=readouts.original(8), progress=False)  # [64, d]
    mask = torch.zeros(8, 8)
    mask[2:5, 1:7] = 1
    from_tensor = rf.reference.factorize(J.reshape(8, 8, -1), mask, k=4)
    from_file = rf.reference.factorize(np.asarray(mapped[:1]), mask, k=4)
    assert torch.allclose(from_file.eigenvalues.reshape(-1), from_tensor.eigenvalues.reshape(-1), rtol=1e-6)
    assert bool(((from_file.directions.reshape(4, -1) * from_tensor.directions.reshape(4, -1)).sum(-1).abs()
                 > 1 - 1e-6).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (tf32 convolutions)")
@pytest.mark.parametrize("precision", ["tf32", "bfloat16", "float16"])
def test_reduced_precision_on_cuda_passes_the_checks(precision):
    """The input checks (determinism, ...) run in float32: under tf32 two calls may round differently, which must
    not be mistaken for random noise. The reduced-precision J is as close to the float32 J as reverse mode in the
    same precision is (the tolerance comes from that plain computation's own rounding, STYLE.md)."""
    from resefa_fast.jacobian.engine import _precision
    from resefa_fast.models import random_stylegan2

    G = random_stylegan2(64, w_dim=32, small=True).cuda()
    ws = G.map(torch.randn(1, G.z_dim, device="cuda", generator=torch.Generator("cuda").manual_seed(0)))[0]
    readout = readouts.area(16, "sum")
    J = jacobian(G, ws, readout=readout, progress=False)
    low = jacobian(G, ws, readout=readout, precision=precision, progress=False)
    with _precision(precision, torch.device("cuda")):
        plain_low = reverse_jacobian(lambda x: G.synthesize(x[None])[0], ws, readout)
    assert 0 < relative_error(low.cpu(), J.cpu()) <= 2 * relative_error(plain_low.cpu(), J.cpu()) + 1e-3
    G.noise_mode = "random"
    with pytest.raises(ResefaError, match="deterministic"):
        jacobian(G, ws, readout=readout, precision=precision, progress=False)
