"""The CUDA extension's ops (resefa_fast.cuda_ops) against float64 torch references.

GPU tests are skipped without CUDA or without the built extension; the argument checks run on the CPU. Outputs are
poisoned (NaN) before each call where the op accepts an output. Tolerances: the fast op's error vs the float64
reference must be at most 2x the error of a plain torch computation in the same precision, plus a small floor
(STYLE.md); see TOLERANCE_FLOOR for the floors and their reasons.
"""
import pytest
import torch

from resefa_fast import cuda_ops
from resefa_fast._ext import extension_status
from resefa_fast.errors import ResefaError
from resefa_fast.regions import box_mask

GPU = torch.cuda.is_available() and extension_status()["available"]
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA device and the built extension resefa_fast._C")

#: Floors added to "2x the same-precision torch error", each with its reason.
TOLERANCE_FLOOR = {
    # float32 accumulation over P terms: cuBLAS's blocking differs from torch's, errors ~ sqrt(P)·2^-24 each.
    "fp32": 1e-6,
    # tf32 / bf16: operand rounding dominates (2^-11 / 2^-8 relative); the floor covers a different summation order.
    "tf32": 1e-5,
    "bf16": 1e-4,
    # eigenvalues of well-separated spectra in float32 / float64
    torch.float32: 1e-6,
    torch.float64: 1e-13,
}


def relative_error(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def reference_grams(J, w):
    """float64 ``Jᵀ diag(w_r) J`` ``[R, d, d]`` and traces ``[R]``."""
    J64, w64 = J.double(), w.double()
    grams = torch.einsum("pi,rp,pj->rij", J64, w64, J64)
    return grams, (w64 * J64.square().sum(1)).sum(1)


def torch_same_precision(J, w, precision):
    """Plain torch ``(J·w)ᵀ J`` per mask in the op's precision (the tolerance's yardstick)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            return torch.stack([((J * m[:, None]).bfloat16().T @ J.bfloat16()).float() for m in w])
        return torch.stack([(J * m[:, None]).T @ J for m in w])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def soft_weights(R, P, generator, device):
    """Soft masks with exact zeros and ones: a mix the kernels must not special-case wrongly."""
    w = torch.rand(R, P, generator=generator, device=device)
    w[w < 0.3] = 0
    w[w > 0.9] = 1
    return w


# ------------------------------------------------------------------------------------------------ argument checks
def test_status_reports_reason():
    status = extension_status()
    assert set(status) >= {"available", "reason", "cuda_version", "torch_cuda"}
    assert isinstance(status["reason"], str) and status["reason"]


@pytest.mark.parametrize("bad", ["cpu", "dtype", "shape"])
def test_masked_grams_rejects_bad_input(bad):
    J = torch.randn(10, 4)
    w = torch.rand(2, 10)
    if bad == "dtype":
        J = J.double()
    if bad == "shape":
        w = torch.rand(2, 11)
    with pytest.raises(ResefaError):
        cuda_ops.masked_grams(J, w)


def test_masked_grams_rejects_bad_precision():
    with pytest.raises(ResefaError, match="precision"):
        cuda_ops.masked_grams(torch.randn(4, 3), torch.rand(1, 4), precision="fp16")


@pytest.mark.parametrize("case", ["both", "neither", "box_shape", "negative_box", "mask_shape", "mask_range",
                                  "grid", "scale"])
def test_gather_argument_checks(case):
    jv, scale = torch.randn(2 * 7 * 9, 5), torch.rand(3, 5)
    boxes, masks, grid = torch.tensor([[3, 4, 2, 2]] * 3), None, (7, 9)
    if case == "both":
        masks = torch.rand(3, 7, 9)
    if case == "neither":
        boxes = None
    if case == "box_shape":
        boxes = boxes[:, :3]
    if case == "negative_box":
        boxes[1, 2] = -1
    if case in ("mask_shape", "mask_range"):
        boxes, masks = None, torch.rand(3, 7, 8) if case == "mask_shape" else torch.rand(3, 7, 9) + 0.5
    if case == "grid":
        grid = (7, 10)
    if case == "scale":
        scale = torch.rand(3, 4)
    with pytest.raises(ResefaError):
        cuda_ops.check_gather_arguments(jv, scale, boxes, masks, grid)


def test_solver_argument_checks():
    with pytest.raises(ResefaError, match="square"):
        cuda_ops.syevdx_topk(torch.randn(3, 4), 1)
    with pytest.raises(ResefaError, match="dtype"):
        cuda_ops.syevj_batched(torch.randn(2, 3, 3, dtype=torch.float16))
    with pytest.raises(ResefaError):
        cuda_ops.truncated_svd(torch.randn(5, 4).cuda() if GPU else torch.randn(5, 4), 3, oversample=2)


@pytest.mark.parametrize("case, argument", [("dtype", "jacobian"), ("one_d", "jacobian"), ("empty", "jacobian"),
                                            ("column_dtype", "column_scale"), ("columns", "column_scale"),
                                            ("row_dtype", "row_scale"), ("rows", "row_scale")])
def test_refined_operands_argument_checks(case, argument):
    J, column_scale, row_scale = torch.randn(6, 4), torch.rand(4), torch.rand(6).half()
    if case == "dtype":
        J = J.double()
    if case == "one_d":
        J = J.flatten()
    if case == "empty":
        J, row_scale = J[:0], row_scale[:0]
    if case == "column_dtype":
        column_scale = column_scale.half()
    if case == "columns":
        column_scale = torch.rand(5)
    if case == "row_dtype":
        row_scale = row_scale.float()
    if case == "rows":
        row_scale = torch.rand(7).half()
    with pytest.raises(ResefaError, match=argument):
        cuda_ops.check_refined_operands_arguments(J, column_scale, row_scale)
    with pytest.raises(ResefaError, match=argument):  # the op checks before it touches the extension
        cuda_ops.prepare_refined_operands(J, column_scale, row_scale)


def test_refined_operands_rejects_cpu_and_mixed_devices():
    J, column_scale, row_scale = torch.randn(6, 4), torch.rand(4), torch.rand(6).half()
    with pytest.raises(ResefaError, match="jacobian.*CUDA"):
        cuda_ops.prepare_refined_operands(J, column_scale, row_scale)
    if GPU:
        with pytest.raises(ResefaError, match="column_scale"):
            cuda_ops.prepare_refined_operands(J.cuda(), column_scale, row_scale.cuda())
        with pytest.raises(ResefaError, match="row_scale"):
            cuda_ops.prepare_refined_operands(J.cuda(), column_scale.cuda(), row_scale)
        with pytest.raises(ResefaError, match="float64"):
            cuda_ops.prepare_refined_operands(J.cuda(), column_scale.cuda(), row_scale.cuda(), float64="yes")


# ------------------------------------------------------------------------------------------------ masked Grams
@needs_gpu
@pytest.mark.parametrize("P, d, R", [(1000, 17, 1), (4099, 96, 5), (257, 8, 1000), (3001, 512, 3)])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_masked_grams_matches_float64(P, d, R, precision):
    g = torch.Generator(device="cuda").manual_seed(P * 31 + d * 7 + R)
    J = torch.randn(P, d, device="cuda", generator=g)
    w = soft_weights(R, P, g, "cuda")
    out = torch.full((R, d, d), float("nan"), device="cuda")
    grams, traces = cuda_ops.masked_grams(J, w, out=out, precision=precision)
    assert grams.data_ptr() == out.data_ptr() and torch.isfinite(grams).all()
    ref, ref_traces = reference_grams(J, w)
    baseline = relative_error(torch_same_precision(J, w, precision), ref)
    assert relative_error(grams, ref) <= 2 * baseline + TOLERANCE_FLOOR[precision]
    # traces are float32 in every precision mode (row energies, not the GEMM)
    assert relative_error(traces, ref_traces) <= TOLERANCE_FLOOR["fp32"] + 2 * relative_error(
        (w * J.square().sum(1)).sum(1), ref_traces)


@needs_gpu
def test_masked_grams_accumulates_pixel_chunks_and_small_workspace():
    g = torch.Generator(device="cuda").manual_seed(3)
    P, d, R = 5003, 33, 4
    J = torch.randn(P, d, device="cuda", generator=g)
    w = soft_weights(R, P, g, "cuda")
    ref, _ = reference_grams(J, w)
    out = torch.full((R, d, d), float("nan"), device="cuda")
    cuda_ops.masked_grams(J[:2000], w[:, :2000], out=out)  # overwrites the poison
    cuda_ops.masked_grams(J[2000:], w[:, 2000:].contiguous(), out=out, accumulate=True)
    baseline = relative_error(torch_same_precision(J, w, "fp32"), ref)
    assert relative_error(out, ref) <= 2 * baseline + TOLERANCE_FLOOR["fp32"]
    # a workspace too small for one block of all masks: masks and pixels go in several blocks
    small, _ = cuda_ops.masked_grams(J, w, workspace_bytes=2048 * d * 4 + 1)
    assert relative_error(small, ref) <= 2 * baseline + TOLERANCE_FLOOR["fp32"]


def check_grams_and_traces(J, w, grams, traces, precision):
    """Grams within 2x the same-precision torch error of float64, traces (float32 in every mode) within 2x a
    float32 torch ``Σ w‖J_p‖²``."""
    ref, ref_traces = reference_grams(J, w)
    baseline = relative_error(torch_same_precision(J, w, precision), ref)
    assert torch.isfinite(grams).all() and torch.isfinite(traces).all()
    assert relative_error(grams, ref) <= 2 * baseline + TOLERANCE_FLOOR[precision]
    assert relative_error(traces, ref_traces) <= TOLERANCE_FLOOR["fp32"] + 2 * relative_error(
        (w * J.square().sum(1)).sum(1), ref_traces)


@needs_gpu
@pytest.mark.parametrize("P, d, R", [
    (5, 3, 1),        # P below one block of rows; d odd: scalar path, 4-lane row groups
    (31, 512, 1),     # float4 path, one warp per row, P < the 32 rows of a block
    (1001, 4, 37),    # float4 path with one vector per row (1-lane groups, 1024-row blocks); R = 37
    (777, 36, 37),    # float4 path, 9 vectors per row (partial batch, partial warp), P not a block multiple
    (2050, 130, 1),   # d % 4 == 2: scalar path, several batches of 4 per lane
    (4133, 516, 2),   # float4 path, 129 vectors per row: the last batch of a row holds one vector
])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_masked_grams_vector_and_scalar_paths(P, d, R, precision):
    """The weighted-copy kernel's paths: float4 (d % 4 == 0) and scalar, row groups of 1..32 lanes, block tails."""
    g = torch.Generator(device="cuda").manual_seed(P + 13 * d + R)
    J = torch.randn(P, d, device="cuda", generator=g)
    w = soft_weights(R, P, g, "cuda")
    out = torch.full((R, d, d), float("nan"), device="cuda")
    grams, traces = cuda_ops.masked_grams(J, w, out=out, precision=precision)
    check_grams_and_traces(J, w, grams, traces, precision)


@needs_gpu
@pytest.mark.parametrize("offset", [1, 2, 4])  # floats: 4 / 8 bytes off 16-byte alignment (scalar), 16 (float4)
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_masked_grams_offset_views(offset, precision):
    """Contiguous views with a storage offset reach the kernel as they are (data_ptr not 16-byte aligned): the
    alignment check must fall back to the scalar path, never misread."""
    g = torch.Generator(device="cuda").manual_seed(offset)
    P, d, R = 1500, 64, 3
    J = torch.randn(P * d + offset, device="cuda", generator=g)[offset:].view(P, d)
    w = torch.rand(R * P + offset, device="cuda", generator=g)[offset:].view(R, P)
    assert J.is_contiguous() and J.storage_offset() == offset and w.storage_offset() == offset
    grams, traces = cuda_ops.masked_grams(J, w, precision=precision)
    check_grams_and_traces(J, w, grams, traces, precision)


@needs_gpu
@pytest.mark.parametrize("d", [64, 33])
def test_masked_grams_traces_over_mask_and_pixel_blocks(d):
    """A workspace that forces several mask blocks (R = 37 in blocks of 5) and pixel blocks of 2048: the traces
    are summed per block and added across pixel blocks; they must still match float64."""
    g = torch.Generator(device="cuda").manual_seed(d)
    P, R = 5003, 37
    J = torch.randn(P, d, device="cuda", generator=g)
    w = soft_weights(R, P, g, "cuda")
    grams, traces = cuda_ops.masked_grams(J, w, workspace_bytes=2048 * d * 4 * 5)
    check_grams_and_traces(J, w, grams, traces, "fp32")


@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_masked_grams_traces_are_deterministic(precision):
    """No float atomics in the traces: two calls give bitwise-equal traces, one pixel block or several."""
    g = torch.Generator(device="cuda").manual_seed(5)
    P, d, R = 65536 + 13, 96, 3
    J = torch.randn(P, d, device="cuda", generator=g)
    w = soft_weights(R, P, g, "cuda")
    for workspace in (512 << 20, 4096 * d * 4 * R):
        first = cuda_ops.masked_grams(J, w, precision=precision, workspace_bytes=workspace)[1]
        second = cuda_ops.masked_grams(J, w, precision=precision, workspace_bytes=workspace)[1]
        assert torch.equal(first, second)
        ref = (w.double() * J.double().square().sum(1)).sum(1)
        assert relative_error(first, ref) <= TOLERANCE_FLOOR["fp32"] + 2 * relative_error(
            (w * J.square().sum(1)).sum(1), ref)


@needs_gpu
def test_row_energies_matches_float64():
    J = torch.randn(4097, 111, device="cuda")
    ref = J.double().square().sum(1)
    assert relative_error(cuda_ops.row_energies(J), ref) <= 2 * relative_error(J.square().sum(1), ref) + 1e-7


# ------------------------------------------------------------------------------------------------ refined operands
def torch_refined_operands(J, column_scale, row_scale):
    """The torch passes prepare_refined_operands replaces: float16 ``(J·c)·r``, ``J.double()``, float64 energies."""
    half = torch.empty(J.shape, dtype=torch.float16, device=J.device)
    torch.mul(J, column_scale, out=half)  # float32 product rounded to float16
    half.mul_(row_scale[:, None])  # float16 × float16 in float32, rounded once
    return half, J.double(), torch.linalg.vector_norm(J.double(), dim=1) ** 2


def refined_inputs(P, d, seed, offset=0, column_offset=0):
    """J with values that overflow float16 after scaling (and some that overflow at any scale >= 1), column scales
    that are powers of two from 2^-20 (float16 subnormals and zeros) to 2^10, row scales 0, 1 and soft values.
    ``offset`` / ``column_offset``: J / column_scale as contiguous views that many floats into their storage."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    J = (30 * torch.randn(P * d + offset, device="cuda", generator=g))[offset:].view(P, d)
    J.view(-1)[::97] = 1e5
    powers = torch.tensor([2.0 ** e for e in (-20, -10, -3, 0, 1, 10)], device="cuda")
    picks = torch.randint(0, len(powers), (d + column_offset,), device="cuda", generator=g)
    picks[column_offset], picks[-1] = len(powers) - 1, 0  # J[0, 0] = 1e5 scaled by 2^10: inf, and NaN (row 0: r = 0)
    column_scale = powers[picks][column_offset:]
    row_scale = torch.rand(P, device="cuda", generator=g).half()
    row_scale[::3] = 0
    row_scale[1::3] = 1
    assert J.is_contiguous() and J.storage_offset() == offset and column_scale.storage_offset() == column_offset
    return J, column_scale, row_scale


def assert_half_bitwise_equal(half, ref):
    """Bitwise equality of float16 tensors; NaNs (inf · 0) only where torch has them, their payloads not compared."""
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(half), nan)
    assert torch.equal(half.view(torch.int16)[~nan], ref.view(torch.int16)[~nan])


@needs_gpu
@pytest.mark.parametrize("P, d, offset, column_offset", [
    (301, 19, 0, 0),     # d odd: scalar path
    (257, 20, 0, 0),     # float4 path
    (257, 20, 1, 0),     # J 4 bytes off 16-byte alignment: scalar path
    (255, 20, 4, 0),     # J 16 bytes into its storage: still aligned, float4 path
    (129, 20, 0, 1),     # column_scale 4 bytes off alignment: scalar path
    (1000, 4, 0, 0),     # one vector per row
    (1, 1, 0, 0),        # the smallest problem
    (3, 9216, 0, 0),     # the benchmark's d: 2304 vectors per row, several load batches per thread
    (5, 4099, 0, 0),     # scalar path, several batches per thread, a partial last batch
    ((1 << 20) + 3, 4, 0, 0),  # P > 2^20 rows (one block each)
])
def test_refined_operands_match_torch(P, d, offset, column_offset):
    J, column_scale, row_scale = refined_inputs(P, d, seed=P + 7 * d + offset, offset=offset,
                                                column_offset=column_offset)
    half, exact, energies = cuda_ops.prepare_refined_operands(J, column_scale, row_scale)
    ref_half, ref_exact, ref_energies = torch_refined_operands(J, column_scale, row_scale)
    assert half.dtype == torch.float16 and exact.dtype == torch.float64 and energies.dtype == torch.float64
    assert half.shape == (P, d) and exact.shape == (P, d) and energies.shape == (P,)
    assert_half_bitwise_equal(half, ref_half)
    assert torch.equal(exact, ref_exact)
    torch.testing.assert_close(energies, ref_energies, rtol=1e-13, atol=0)
    if P * d > 1000:  # the inputs do exercise overflow, NaN (inf · 0) and zero rows
        assert torch.isinf(ref_half).any() and torch.isnan(ref_half).any() and (ref_half == 0).any()
    # deterministic energies (a fixed reduction order, no atomics)
    assert torch.equal(cuda_ops.prepare_refined_operands(J, column_scale, row_scale, float64=False)[2], energies)


@needs_gpu
@pytest.mark.parametrize("d", [19, 20])
def test_refined_operands_without_float64_copy(d):
    J, column_scale, row_scale = refined_inputs(301, d, seed=d)
    half, exact, energies = cuda_ops.prepare_refined_operands(J, column_scale, row_scale, float64=False)
    assert exact is None
    ref_half, _, ref_energies = torch_refined_operands(J, column_scale, row_scale)
    assert_half_bitwise_equal(half, ref_half)
    with_copy = cuda_ops.prepare_refined_operands(J, column_scale, row_scale)
    assert torch.equal(half.view(torch.int16), with_copy[0].view(torch.int16))
    assert torch.equal(energies, with_copy[2])
    torch.testing.assert_close(energies, ref_energies, rtol=1e-13, atol=0)


@needs_gpu
def test_refined_operands_strided_inputs():
    """A transposed J and strided scale vectors are made contiguous by the wrapper; results as for copies."""
    g = torch.Generator(device="cuda").manual_seed(9)
    P, d = 333, 64
    J = torch.randn(d, P, device="cuda", generator=g).T
    column_scale = torch.rand(2 * d, device="cuda", generator=g)[::2]
    row_scale = torch.rand(2 * P, device="cuda", generator=g).half()[::2]
    half, exact, energies = cuda_ops.prepare_refined_operands(J, column_scale, row_scale)
    ref_half, ref_exact, ref_energies = torch_refined_operands(J, column_scale, row_scale)
    assert not torch.isnan(half).any()
    assert_half_bitwise_equal(half, ref_half)
    assert torch.equal(exact, ref_exact)
    torch.testing.assert_close(energies, ref_energies, rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------------------------ bulk gather
def reference_gather(jv, scale, masks, C):
    """float64 padded operands from dense masks ``[R, H, W]`` (rows with m > 0, increasing pixel order)."""
    R, H, W = masks.shape
    rows = []
    for r in range(R):
        m = masks[r].reshape(-1).double().repeat(C)  # [C·H·W]
        idx = torch.nonzero(m > 0).flatten()
        rows.append(m[idx].sqrt()[:, None] * jv.double()[idx] * scale[r].double())
    width = max(x.shape[0] for x in rows)
    out = torch.zeros(R, width, jv.shape[1], dtype=torch.float64, device=jv.device)
    for r, x in enumerate(rows):
        out[r, : x.shape[0]] = x
    return out, torch.tensor([x.shape[0] for x in rows])


@needs_gpu
@pytest.mark.parametrize("C, H, W, k", [(1, 7, 9, 5), (3, 64, 64, 17), (1, 256, 256, 64)])
def test_gather_from_boxes_matches_dense_masks(C, H, W, k):
    g = torch.Generator().manual_seed(H * W + k)
    boxes = [[H // 2, W // 2, 1, 1], [0, 0, H, W], [H - 1, W - 1, 5, 3], [2, 3, H * 2, W * 2],
             [H // 3, W // 4, max(1, H // 3), max(1, W // 5)]]
    boxes = torch.tensor(boxes, dtype=torch.int32)
    jv = torch.randn(C * H * W, k, generator=g).cuda()
    scale = torch.rand(len(boxes), k, generator=g).cuda()
    out, counts = cuda_ops.gather_scaled_rows(jv, scale, boxes=boxes, grid=(H, W))
    masks = torch.stack([box_mask(b.tolist(), (H, W)) for b in boxes]).cuda()
    ref, ref_counts = reference_gather(jv, scale, masks, C)
    assert counts.cpu().tolist() == ref_counts.tolist()
    assert out.shape == ref.shape
    # two float32 products per element: within 2 ulp of the float64 value
    torch.testing.assert_close(out.double(), ref, rtol=2.5e-7, atol=0)


@needs_gpu
@pytest.mark.parametrize("R", [1, 1000])
def test_gather_from_soft_masks(R):
    g = torch.Generator().manual_seed(R)
    C, H, W, k = 2, 13, 11, 9
    masks = torch.rand(R, H, W, generator=g)
    masks[masks < 0.6] = 0
    masks[0] = 0
    masks[0, 5, 7] = 0.25  # one pixel
    if R > 1:
        masks[1] = 1  # full
        masks[2, :, :] = 0  # empty: zero rows, count 0
    jv = torch.randn(C * H * W, k, generator=g).cuda()
    scale = torch.rand(R, k, generator=g).cuda()
    out, counts = cuda_ops.gather_scaled_rows(jv, scale, masks=masks, grid=(H, W))
    ref, ref_counts = reference_gather(jv, scale, masks.cuda(), C)
    assert counts.cpu().tolist() == ref_counts.tolist()
    torch.testing.assert_close(out.double(), ref, rtol=4e-7, atol=0)  # sqrt and two products: a few ulp


def float32_gather(jv, scale, masks, C):
    """The gather in float32 with the kernel's operation order, ``(√m · jv) · scale``: must match bit for bit."""
    R, H, W = masks.shape
    rows = []
    for r in range(R):
        m = masks[r].reshape(-1).float().repeat(C)
        idx = torch.nonzero(m > 0).flatten()
        rows.append((m[idx].sqrt()[:, None] * jv[idx]) * scale[r])
    return rows


def poison_next_allocation(numel):
    """Leave NaNs in the caching allocator's free block of this size, so that an output row the kernel forgets to
    write (the zero padding) shows up (best effort: the allocator usually hands the same block back)."""
    torch.full((numel,), float("nan"), device="cuda")


@needs_gpu
@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 8, 36, 130, 512, 516])
@pytest.mark.parametrize("mode", ["boxes", "masks"])
def test_gather_vector_widths_exact(k, mode):
    """float4 (k % 4 == 0), float2 (k % 2 == 0) and scalar paths, row groups of 1..32 lanes, padded rows: exact."""
    g = torch.Generator().manual_seed(k)
    C, H, W = 2, 37, 29
    boxes = torch.tensor([[18, 14, 37, 29], [0, 0, 3, 3], [36, 28, 5, 7], [10, 20, 1, 1], [20, 5, 9, 40]],
                         dtype=torch.int32)
    box_masks = torch.stack([box_mask(b.tolist(), (H, W)) for b in boxes])
    if mode == "boxes":
        masks = box_masks
    else:
        masks = torch.rand(len(boxes), H, W, generator=g) * box_masks
        masks[masks < 0.2] = 0
        masks[3] = 0  # an empty region: all of its rows are padding
    jv = torch.randn(C * H * W, k, generator=g).cuda()
    scale = torch.rand(len(boxes), k, generator=g).cuda()
    rows = float32_gather(jv, scale, masks.cuda(), C)
    poison_next_allocation(len(boxes) * max(x.shape[0] for x in rows) * k)
    if mode == "boxes":
        out, counts = cuda_ops.gather_scaled_rows(jv, scale, boxes=boxes, grid=(H, W))
    else:
        out, counts = cuda_ops.gather_scaled_rows(jv, scale, masks=masks, grid=(H, W))
    assert counts.cpu().tolist() == [x.shape[0] for x in rows]
    assert out.shape == (len(boxes), max(x.shape[0] for x in rows), k)
    for r, x in enumerate(rows):
        assert torch.equal(out[r, : x.shape[0]], x)
        assert (out[r, x.shape[0]:] == 0).all()


@needs_gpu
@pytest.mark.parametrize("offset", [1, 2, 4])  # floats: scalar, float2, float4 path for k = 64
def test_gather_offset_views_exact(offset):
    """jv / scale views with a storage offset: the access width must follow the pointers' alignment."""
    g = torch.Generator().manual_seed(offset)
    C, H, W, k = 1, 16, 16, 64
    jv = torch.randn(C * H * W * k + offset, generator=g).cuda()[offset:].view(C * H * W, k)
    scale = torch.rand(3 * k + offset, generator=g).cuda()[offset:].view(3, k)
    assert jv.storage_offset() == offset and scale.storage_offset() == offset
    masks = torch.rand(3, H, W, generator=g)
    masks[masks < 0.5] = 0
    out, counts = cuda_ops.gather_scaled_rows(jv, scale, masks=masks, grid=(H, W))
    rows = float32_gather(jv, scale, masks.cuda(), C)
    for r, x in enumerate(rows):
        assert torch.equal(out[r, : x.shape[0]], x) and (out[r, x.shape[0]:] == 0).all()


# ------------------------------------------------------------------------------------------------ cuSOLVER
def spd_with_spectrum(n, dtype, seed, low=1.0, high=100.0):
    """Random symmetric ``Q diag(λ) Qᵀ`` with geometrically spaced, well-separated λ (relative gaps ≥ ~1e-2)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(torch.log10(torch.tensor(low)).item(), torch.log10(torch.tensor(high)).item(), n,
                         dtype=torch.float64)
    return ((Q * lam) @ Q.T).to(dtype).cuda(), lam.flip(0), Q.flip(1)


def eigh_error(a, k):
    """Relative top-k eigenvalue error of torch.linalg.eigh in a's own precision (the yardstick)."""
    ref = torch.linalg.eigvalsh(a.double()).flip(0)[:k]
    mine = torch.linalg.eigvalsh(a).flip(0)[:k].double()
    return ((mine - ref).abs() / ref.abs()).max().item(), ref


@needs_gpu
@pytest.mark.parametrize("n, k", [(17, 3), (96, 8), (512, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_syevdx_topk(n, k, dtype):
    a, _, _ = spd_with_spectrum(n, dtype, seed=n + k, high=100.0 if n < 512 else 1e4)
    values, vectors = cuda_ops.syevdx_topk(a, k)
    assert values.shape == (k,) and vectors.shape == (n, k)
    yardstick, ref = eigh_error(a, k)
    assert ((values.double() - ref).abs() / ref).max().item() <= 2 * yardstick + TOLERANCE_FLOOR[dtype]
    _, ref_vectors = torch.linalg.eigh(a.double())
    cos = (vectors.double() * ref_vectors.flip(1)[:, :k]).sum(0).abs()
    assert cos.min().item() >= (0.9999 if dtype == torch.float32 else 1 - 1e-10)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sygvdx_topk_matches_cholesky_reference(dtype):
    n, k = 97, 6
    a, _, _ = spd_with_spectrum(n, dtype, seed=1, high=1e3)
    b, _, _ = spd_with_spectrum(n, dtype, seed=2, low=1.0, high=10.0)
    values, vectors = cuda_ops.sygvdx_topk(a, b, k)
    A, B = a.double(), b.double()
    L = torch.linalg.cholesky(B)
    Cm = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, A, upper=False).T, upper=False)
    ref_all, y = torch.linalg.eigh(Cm)
    ref, ref_vectors = ref_all.flip(0)[:k], torch.linalg.solve_triangular(L.T, y.flip(1)[:, :k], upper=True)
    # yardstick: the same Cholesky route in the working precision
    L32 = torch.linalg.cholesky(b)
    C32 = torch.linalg.solve_triangular(L32, torch.linalg.solve_triangular(L32, a, upper=False).T, upper=False)
    own = torch.linalg.eigvalsh(0.5 * (C32 + C32.T)).flip(0)[:k].double()
    yardstick = ((own - ref).abs() / ref).max().item()
    assert ((values.double() - ref).abs() / ref).max().item() <= 2 * yardstick + TOLERANCE_FLOOR[dtype]
    x = vectors.double()
    cos = ((x / x.norm(dim=0)) * (ref_vectors / ref_vectors.norm(dim=0))).sum(0).abs()
    assert cos.min().item() >= (0.9999 if dtype == torch.float32 else 1 - 1e-10)
    # B-orthonormal
    torch.testing.assert_close(x.T @ B @ x, torch.eye(k, dtype=torch.float64, device=x.device),
                               atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=0)


@needs_gpu
def test_sygvdx_rejects_indefinite_b():
    n = 20
    a, _, _ = spd_with_spectrum(n, torch.float64, seed=3)
    b = torch.eye(n, dtype=torch.float64, device="cuda")
    b[7, 7] = -1.0
    with pytest.raises(ResefaError, match="positive definite"):
        cuda_ops.sygvdx_topk(a, b, 3)


@needs_gpu
@pytest.mark.parametrize("batch, n", [(1000, 8), (7, 96), (3, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_syevj_batched(batch, n, dtype):
    g = torch.Generator().manual_seed(batch + n)
    x = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    a = (x + x.mT).to(dtype).cuda()
    values, vectors = cuda_ops.syevj_batched(a)
    ref = torch.linalg.eigvalsh(a.double())
    own = torch.linalg.eigvalsh(a).double()
    scale = ref.abs().amax(dim=1, keepdim=True)
    yardstick = ((own - ref).abs() / scale).max().item()
    assert ((values.double() - ref).abs() / scale).max().item() <= 2 * yardstick + TOLERANCE_FLOOR[dtype]
    # residual ‖A V − V Λ‖ / ‖A‖ at the working precision
    residual = (a.double() @ vectors.double() - vectors.double() * values.double()[:, None, :]).norm(dim=(1, 2))
    eps = torch.finfo(dtype).eps
    assert (residual / a.double().norm(dim=(1, 2))).max().item() <= 50 * n ** 0.5 * eps


@needs_gpu
@pytest.mark.parametrize("dtype", [
    pytest.param(torch.float32, marks=pytest.mark.xfail(strict=True, reason=(
        "known bad, measured on an H100 2026-11-25: cuSOLVER Xgesvdr in float32 gives singular values with relative "
        "error 5e-4 on this gapped problem, 25x the float32 torch.linalg.svdvals error (1.9e-5); float64 passes"))),
    torch.float64])
def test_truncated_svd(dtype):
    g = torch.Generator().manual_seed(11)
    m, n, k = 3000, 96, 8
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    # a gap of 1e5 after the k-th value: the randomised range finder is exact to rounding, so the tolerance is
    # the working precision's, not the algorithm's
    s_true = torch.cat([torch.linspace(100, 50, k, dtype=torch.float64), torch.logspace(-3, -6, n - k, dtype=torch.float64)])
    a = ((U * s_true) @ V.T).to(dtype).cuda()
    s, v = cuda_ops.truncated_svd(a, k, oversample=16, niters=3)
    ref_s = torch.linalg.svdvals(a.double())[:k]
    own = torch.linalg.svdvals(a)[:k].double()
    yardstick = ((own - ref_s).abs() / ref_s).max().item()
    assert ((s.double() - ref_s).abs() / ref_s).max().item() <= 2 * yardstick + TOLERANCE_FLOOR[dtype] * 10
    cos = (v.double() * V[:, :k].cuda()).sum(0).abs()
    assert cos.min().item() >= 0.9999
