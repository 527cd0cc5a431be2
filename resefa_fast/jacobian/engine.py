"""The forward-mode Jacobian engine (DESIGN.md §3).

J of ``readout ∘ fn`` at a latent code: rows = analysed pixels (P, the readout's ``[C, H, W]`` flattened
row-major), columns = latent dimensions (d, the latent flattened row-major, e.g. W+ ``[L, 512]`` -> L·512).
Column j is the JVP with the tangent ``t_x = e_j``; a chunk of k tangents runs as ``vmap(jvp)`` with the primal
unbatched, so the primal is computed once per chunk and the tangents as one batch.

Glossary: N latent codes, d latent dims, P analysed pixels, k tangents per chunk, L W+ rows, s(l) the first
stage that reads W+ row l.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.func import jvp, vmap

from ..errors import ResefaError, check
from .readouts import output_grid

# torch builds its forward-mode decompositions with torch.jit.script on first use and warns that jit is deprecated,
# once per process, on every CLI run: a warning about torch internals the user cannot act on. Import them quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    with contextlib.suppress(ImportError):
        import torch._decomp.decompositions_for_jvp  # noqa: F401
from .staged import first_stages, is_staged, primal_states, samples_last_stage, synthesize
from .targets import make_target

__all__ = ["jacobian", "JacobianInfo", "jvp_columns", "PRECISIONS"]

#: Compute modes: "float32" (tf32 off for matmuls *and* cuDNN convolutions, which default to tf32 on Ampere+),
#: "tf32" (on), "bfloat16" / "float16" (reduced-precision tangents, opt-in: a generator with explicit tangents
#: carries them in that dtype at a float32 primal; any other callable runs under autocast; errors measured in
#: resefa_fast/jacobian/NOTES.md).
PRECISIONS = ("float32", "tf32", "bfloat16", "float16")
#: The dtype explicit tangents are carried in, per precision (absent: the latent's).
TANGENT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: Chunk size on the CPU when none is given (memory is rarely the limit there; larger chunks stop paying off).
CPU_CHUNK = 32
#: Largest automatic chunk on CUDA (beyond this the tangent batch is already large enough to fill an H100).
MAX_AUTO_CHUNK = 512
#: Largest relative difference between two calls of ``fn`` at one latent that still counts as deterministic.
DETERMINISM_RTOL = 1e-5
#: Largest relative difference between a generator's explicit tangents and torch.func's that still counts as the
#: same function (float32 algorithm choices differ by ~4e-4; a forward pass changed without its tangents, by O(1)).
EXPLICIT_RTOL = 1e-2
#: Fraction of free device memory the automatic chunk size may plan to use.
MEMORY_FRACTION = 0.8
#: Compute a staged generator's last stage only at the pixels the readout reads, when both declare it
#: (``readouts.Readout.sampling`` and ``StagedGenerator.run_last_stage_sampled``). False: always the full image.
SAMPLE_LAST_STAGE = True
#: Use a staged generator's explicit tangents (``rows_jvp``, StyleGAN2) instead of ``vmap(jvp)`` for w latents and
#: on the row-wise W+ layer-skip path, in every precision. False: always torch.func.
EXPLICIT_TANGENTS = True


@dataclass
class JacobianInfo:
    """What a run did: ``chunk_size`` (final), ``splits`` (OOM split-and-retry events), ``seconds``,
    ``stage_runs`` / ``stage_runs_without_skip`` (tangent × stage evaluations with and without layer skip; equal
    for generic callables, which count as one stage), ``groups`` (first stage -> number of tangents),
    ``sampled_stride`` (the last stage computed only at rows / columns ``0, s, 2s, ...`` of the image because the
    readout reads only those; 1: the full image), ``explicit_tangents`` (the generator's own ``rows_jvp`` made the
    tangents, not ``vmap(jvp)``)."""
    chunk_size: int = 0
    splits: int = 0
    seconds: float = 0.0
    layer_skip: bool = False
    stage_runs: int = 0
    stage_runs_without_skip: int = 0
    groups: Dict[int, int] = field(default_factory=dict)
    chunk_sizes: List[int] = field(default_factory=list)
    sampled_stride: int = 1
    explicit_tangents: bool = False


@dataclass
class _Group:
    """Tangents that start at the same stage: latent columns ``offset + local`` (``local`` ``[k]``), differentiated
    as ``evaluate(primal) -> pixels [C, H, W]`` where ``primal`` is the whole latent or (row-wise layer skip) the
    one W+ row the group perturbs, and ``local`` indexes ``primal`` flattened. ``tangents``, when given, maps k
    tangents of ``primal`` ``[k, *primal.shape]`` to the pixels' tangents ``[k, P]`` directly (a generator's
    ``rows_jvp``), in place of ``vmap(jvp)`` of ``evaluate``."""
    start: int
    local: torch.Tensor
    evaluate: Callable[[torch.Tensor], torch.Tensor]
    stages: int  # stages each tangent of the group runs
    primal: Optional[torch.Tensor] = None  # None: the latent itself
    offset: int = 0
    tangents: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def columns(self, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Columns ``cols`` ``[k]`` of the group's Jacobian at ``x``: ``[k, P]``."""
        if self.tangents is None:
            return jvp_columns(self.evaluate, x, cols)
        return self.tangents(_one_hot(x, cols))


def jacobian(
    fn: Callable,
    latent,
    readout: Optional[Callable] = None,
    chunk_size: Optional[int] = None,
    out="device",
    dtype: Optional[torch.dtype] = None,
    precision: str = "float32",
    layer_skip="auto",
    progress: Optional[bool] = None,
    check_fn: bool = True,
    return_info: bool = False,
    columns=None,
):
    """Jacobian ``J`` ``[P, d]`` of ``readout(fn(latent))`` by forward mode, in tangent chunks.

    Args:
        fn: a differentiable, deterministic callable ``latent -> image`` (``[C, H, W]`` or ``[1, C, H, W]``), or a
            generator implementing :class:`~resefa_fast.jacobian.StagedGenerator` (then ``latent`` is W+
            ``[num_ws, w_dim]`` -- with layer skip -- or w ``[w_dim]``, repeated on all layers as the original does).
        latent: one code (a tensor of any shape; d = its number of elements) or a list/tuple of N codes of one shape.
        readout: ``image [B, C, H, W] -> pixels [B, C', H', W']`` (see :mod:`resefa_fast.jacobian.readouts`);
            None keeps the image. J's row p = c·H'·W' + h·W' + w.
        chunk_size: tangents per ``vmap(jvp)`` call; None picks it from free device memory (CUDA; measured on the
            first two chunks) or uses 32 (CPU). A chunk that runs out of memory is halved and retried.
        out: "device" (``[P, d]`` tensor), "host"/"pinned" (CPU, pinned when CUDA exists), a ``.npy`` path
            (original layout ``[N, H, W, 1, d]`` / ``[N, C, H, W, 1, d]``, atomic), a tensor to fill,
            ``Memmap(path, layout)`` or ``Grams(weights)`` (masked Grams without keeping J).
        dtype: dtype of the stored J (default: the latent's; the ``.npy`` file is always float32).
        precision: one of :data:`PRECISIONS`; "float32" turns tf32 off for the run; "float16" / "bfloat16" carry
            a generator's explicit tangents in that dtype (faster; J error ≈ 1e-3 / 7e-3, see jacobian/NOTES.md),
            other callables run under autocast.
        layer_skip: True / False / "auto" (on for a staged generator given W+).
        progress: tqdm bar: None = when stderr is a terminal, True / False = always / never.
        check_fn: run the input checks on ``fn`` (mutation, determinism, NaN/Inf, dependence) before the chunks.
        return_info: also return a :class:`JacobianInfo`.
        columns: compute only these latent dimensions (distinct ints in [0, d)); J is then ``[P, len(columns)]``
            with column i = ∂pixels/∂latent[columns[i]] (e.g. the W+ rows of a few layers, or a sample for timing).

    Returns:
        ``[P, d]`` for one code, ``[N, P, d]`` for a list; a read-only ``np.memmap`` for ``.npy``; ``(grams, traces)``
        for ``Grams``. With ``return_info``: ``(result, info)``.
    """
    started = time.perf_counter()
    check(callable(fn), "fn", "a callable or a staged generator", type(fn).__name__)
    latents, several = _latent_codes(latent)
    check(readout is None or callable(readout), "readout", "None or a callable image -> pixels",
          type(readout).__name__)
    check(chunk_size is None or (isinstance(chunk_size, int) and not isinstance(chunk_size, bool)
                                 and chunk_size > 0), "chunk_size", "None or a positive int", repr(chunk_size))
    check(precision in PRECISIONS, "precision", f"one of {PRECISIONS}", repr(precision))
    check(layer_skip in (True, False, "auto"), "layer_skip", "True, False or 'auto'", repr(layer_skip))
    check(dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point), "dtype",
          "None or a floating torch.dtype", dtype)
    target = make_target(out)
    device = latents[0].device
    dtype = dtype or latents[0].dtype
    d = latents[0].numel()
    read = _pixels(readout)
    wanted, position = _column_positions(columns, d)

    staged = is_staged(fn)
    if staged:
        check(tuple(latents[0].shape) in ((fn.num_ws, fn.w_dim), (fn.w_dim,)), "latent",
              f"W+ [{fn.num_ws}, {fn.w_dim}] or w [{fn.w_dim}] for this generator", tuple(latents[0].shape))
        check(layer_skip != True or latents[0].dim() == 2, "layer_skip",  # noqa: E712
              "False or 'auto' for a w latent (layer skip needs W+)", layer_skip)
        skip = layer_skip in (True, "auto") and latents[0].dim() == 2
        stride, tail = _sampling(fn, readout, device)
        if stride > 1:  # the readout is tail(image[..., ::stride, ::stride]): the last stage makes only those pixels
            read = _pixels(tail)
        plain = _plain_staged(fn, read, stride)
        explicit = (EXPLICIT_TANGENTS and callable(getattr(fn, "rows_jvp", None))
                    and (latents[0].dim() == 1 or (skip and getattr(fn, "accepts_ws_rows", False))))
    else:
        check(layer_skip != True, "layer_skip", "False or 'auto' for a callable without the "  # noqa: E712
              "StagedGenerator protocol", layer_skip)
        skip, stride, explicit = False, 1, False
        plain = lambda x: read(fn(x))  # noqa: E731

    info = JacobianInfo(layer_skip=skip, sampled_stride=stride, explicit_tangents=explicit)
    # the checks test properties of fn (determinism, dependence, finiteness), so they run in float32 whatever the
    # requested precision: under tf32 two calls may pick cuDNN algorithms that round differently by ~1e-3
    with _precision("float32", device), torch.no_grad():
        grid = _check_fn(plain, latents[0]) if check_fn else output_grid(tuple(_shape_of(plain, latents[0])))
        if check_fn and explicit:
            _check_explicit_tangents(fn, latents[0], read, stride, plain)
    tangent_dtype = TANGENT_DTYPES.get(precision) if explicit else None
    with _precision(precision, device, autocast=not explicit), torch.no_grad():
        chunks = _Chunker(chunk_size, device, d)
        bar = _progress(progress, len(latents) * wanted.numel())
        try:
            target.begin(len(latents), grid, wanted.numel(), device, dtype)
            for n, x in enumerate(latents):
                groups = _staged_groups(fn, x, read, stride, explicit, tangent_dtype) if skip else [
                    _Group(0, torch.arange(d), plain, fn.num_stages if staged else 1,
                           tangents=_w_tangents(fn, x, read, stride, tangent_dtype) if explicit else None)]
                for group in groups:
                    local = group.local[position[group.local + group.offset] >= 0]
                    if local.numel() == 0:
                        continue
                    info.groups[group.start] = info.groups.get(group.start, 0) + local.numel()
                    primal = x if group.primal is None else group.primal
                    for cols, block in chunks.run(group.columns, primal, local):
                        cols = cols + group.offset
                        if not bool(torch.isfinite(block).all()):
                            hint = (" (float16 tangents overflow past 65504: precision='bfloat16' has float32's "
                                    "range)" if tangent_dtype == torch.float16 else "")
                            raise ResefaError(f"`fn` must give finite outputs; its JVP has NaN/Inf in latent code "
                                              f"{n}, columns {int(cols[0])}..{int(cols[-1])}{hint}")
                        target.write(n, position[cols], block)
                        info.stage_runs += cols.numel() * group.stages
                        bar.update(cols.numel())
                info.stage_runs_without_skip += wanted.numel() * (fn.num_stages if staged else 1)
            result = target.finish(squeeze=not several)
        except BaseException:
            target.abort()
            raise
        finally:
            bar.close()
    info.chunk_size, info.splits, info.chunk_sizes = chunks.size, chunks.splits, chunks.history
    info.seconds = time.perf_counter() - started
    return (result, info) if return_info else result


def _latent_codes(latent) -> Tuple[List[torch.Tensor], bool]:
    """``([codes], several)`` from one tensor or a list/tuple of N tensors of one shape, checked."""
    several = isinstance(latent, (list, tuple))
    latents = list(latent) if several else [latent]
    check(len(latents) > 0, "latent", "a tensor or a non-empty list of tensors", latent)
    for i, x in enumerate(latents):
        check(isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() > 0, "latent",
              "a non-empty floating-point tensor (or a list of them)", type(x).__name__ if not isinstance(
                  x, torch.Tensor) else f"{x.dtype} {tuple(x.shape)}")
        check(x.shape == latents[0].shape and x.device == latents[0].device, "latent",
              "codes of one shape on one device", f"{tuple(x.shape)} on {x.device} at index {i}")
        check(bool(torch.isfinite(x).all()), "latent", "finite (no NaN/Inf)", f"code {i}")
    return latents, several


def _column_positions(columns, d: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(wanted [m], position [d])``: the latent dimensions to compute and the output column of each latent
    dimension (-1: not computed)."""
    if columns is None:
        wanted = torch.arange(d)
    else:
        wanted = torch.as_tensor(columns).reshape(-1)
        check(wanted.numel() > 0 and not wanted.is_floating_point() and not wanted.is_complex()
              and bool(((wanted >= 0) & (wanted < d)).all()) and wanted.unique().numel() == wanted.numel(),
              "columns", f"distinct ints in [0, {d})", columns if wanted.numel() < 10 else f"{wanted.numel()} values")
        wanted = wanted.long()
    position = torch.full((d,), -1, dtype=torch.long)
    position[wanted] = torch.arange(wanted.numel())
    return wanted, position


def jvp_columns(evaluate: Callable, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Columns ``cols`` ``[k]`` of the Jacobian of ``evaluate`` at ``x``: ``[k, P]`` (row i = ∂evaluate/∂x_cols[i]).
    One ``vmap(jvp)`` call: the primal once, the k one-hot tangents ``t_x`` as a batch."""
    t_x = _one_hot(x, cols)
    return vmap(lambda t: jvp(evaluate, (x,), (t,))[1])(t_x).reshape(cols.numel(), -1)


def _one_hot(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The one-hot tangents ``[k, *x.shape]`` of ``x``'s flattened dimensions ``cols`` ``[k]``."""
    k = cols.numel()
    t_x = torch.zeros(k, x.numel(), dtype=x.dtype, device=x.device)
    t_x[torch.arange(k, device=x.device), cols.to(x.device)] = 1
    return t_x.reshape(k, *x.shape)


def _is_oom(error: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(error, oom) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


class _Chunker:
    """Runs columns in chunks: a fixed size, or (CUDA, ``size=None``) 2 then 4 tangents measured for peak memory
    and the size extrapolated from free memory; an out-of-memory chunk is halved and retried (down to 1)."""

    def __init__(self, size: Optional[int], device: torch.device, dim: int):
        self.device, self.dim, self.splits, self.history = device, dim, 0, []
        self.measure = size is None and device.type == "cuda"
        self.size = size if size is not None else (2 if self.measure else min(CPU_CHUNK, dim))
        self.peaks: List[Tuple[int, int]] = []

    def run(self, columns_of, x, columns):
        """Yield ``(cols, columns_of(x, cols))`` chunk by chunk over ``columns``."""
        i = 0
        while i < columns.numel():
            k = min(self.size, columns.numel() - i)
            cols = columns[i:i + k]
            if self.measure:
                torch.cuda.synchronize(self.device)
                base = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            try:
                block = columns_of(x, cols)
            except Exception as error:
                if not _is_oom(error):
                    raise
                if k == 1:
                    error.add_note("resefa_fast.jacobian: a single tangent does not fit in memory")
                    raise
                self.size, self.measure = max(1, k // 2), False
                self.splits += 1
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if self.measure:
                self.peaks.append((k, torch.cuda.max_memory_allocated(self.device) - base))
                self._plan()
            self.history.append(k)
            yield cols, block
            i += k

    def _plan(self):
        """After 2 measured chunks: bytes per tangent = slope of peak memory over k; size = what fits."""
        if len(self.peaks) == 1:
            self.size = min(4, self.dim)
            return
        (k1, p1), (k2, p2) = self.peaks[-2:]
        per = max((p2 - p1) / max(k2 - k1, 1), 1.0)
        fixed = max(p1 - k1 * per, 0.0)
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        self.size = int(max(1, min(MAX_AUTO_CHUNK, self.dim, (MEMORY_FRACTION * free - fixed) // per)))
        self.measure = False


def _pixels(readout):
    """``image -> pixels [C', H', W']`` for one code: batches the image for the readout and drops the batch."""
    def read(image):
        if not isinstance(image, torch.Tensor):
            raise ResefaError(f"`fn` must return a tensor image; got {type(image).__name__}")
        if image.dim() == 2:
            image = image[None, None]
        elif image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[0] != 1:
            raise ResefaError(f"`fn` must return an image [C, H, W] or [1, C, H, W]; got {tuple(image.shape)}")
        pixels = image if readout is None else readout(image)
        if not isinstance(pixels, torch.Tensor) or pixels.dim() not in (3, 4) or pixels.shape[0] != 1:
            raise ResefaError("`readout` must map [1, C, H, W] to [1, C', H', W'] or [1, H', W']; got "
                              f"{getattr(pixels, 'shape', type(pixels).__name__)}")
        return pixels[0]
    return read


def _sampling(generator, readout, device: torch.device) -> Tuple[int, Optional[Callable]]:
    """``(stride, tail)`` when ``readout`` reads the staged ``generator``'s image only at rows / columns ``0,
    stride, ...`` and then applies ``tail`` (``readouts.Readout.sampling``) and the generator can compute just
    those (``run_last_stage_sampled``); else ``(1, None)``: the full image."""
    sampling = getattr(readout, "sampling", None)
    if not SAMPLE_LAST_STAGE or readout is None or not callable(sampling) or not samples_last_stage(generator):
        return 1, None
    channels, height, width = generator.image_shape
    found = sampling((1, channels, height, width), device)
    if found is None:
        return 1, None
    stride, tail = found
    if not (isinstance(stride, int) and stride > 1 and height % stride == 0 and width % stride == 0
            and callable(tail)):
        return 1, None
    return stride, tail


def _plain_staged(generator, read, stride: int = 1):
    """``x -> pixels`` for a staged generator from stage 0; a w ``[w_dim]`` is repeated on all W+ rows.
    ``stride`` > 1: the last stage makes only the image's rows / columns ``0, stride, ...`` (``read`` is then the
    readout's tail)."""
    def evaluate(x):
        ws = x.expand(generator.num_ws, generator.w_dim) if x.dim() == 1 else x
        return read(synthesize(generator, ws[None], stride=stride))
    return evaluate


def _staged_groups(generator, ws: torch.Tensor, read, stride: int = 1, explicit: bool = False,
                   tangent_dtype: Optional[torch.dtype] = None) -> List[_Group]:
    """Tangent groups of W+ ``ws`` ``[L, w_dim]`` by first stage, each evaluating from the cached primal state
    entering its stage (so its state tangent is zero there). ``stride`` as in :func:`_plain_staged`.

    A generator with ``accepts_ws_rows = True`` gets one group per W+ row l, and ``run_stage`` receives W+ as a
    tuple of rows ``[1, w_dim]`` in which only row l carries the tangent: the layers that read other rows (their
    styles, demodulation, the convolutions before the first layer reading l) then run without a tangent at all.
    With ``explicit`` the generator's ``rows_jvp`` makes each row's image tangents (in ``tangent_dtype``, None: the
    latent's), and torch.func differentiates only the readout."""
    first = first_stages(generator)
    cache = primal_states(generator, ws[None], sorted(set(first)))
    groups = []
    if getattr(generator, "accepts_ws_rows", False):
        rows = [ws[row][None] for row in range(generator.num_ws)]  # [1, w_dim] each, no tangent
        for row, s in enumerate(first):
            def evaluate(w_row, s=s, row=row):
                return read(synthesize(generator, tuple(rows[:row]) + (w_row[None],) + tuple(rows[row + 1:]), s,
                                       cache[s], stride=stride))
            tangents = None
            if explicit:
                def tangents(t, s=s, row=row):
                    return _read_tangents(read, *generator.rows_jvp((row,), s, cache[s], tuple(rows),
                                                                    t.to(tangent_dtype or t.dtype), stride=stride))
            groups.append(_Group(s, torch.arange(generator.w_dim), evaluate, generator.num_stages - s,
                                 primal=ws[row], offset=row * generator.w_dim, tangents=tangents))
        return groups
    for s in sorted(set(first)):
        rows = torch.tensor([row for row, f in enumerate(first) if f == s])
        cols = (rows[:, None] * generator.w_dim + torch.arange(generator.w_dim)).flatten()

        def evaluate(x, s=s):
            return read(synthesize(generator, x[None], s, cache[s], stride=stride))
        groups.append(_Group(s, cols, evaluate, generator.num_stages - s))
    return groups


def _w_tangents(generator, w: torch.Tensor, read, stride: int = 1, tangent_dtype: Optional[torch.dtype] = None):
    """The explicit tangents of a staged generator at a w latent ``[w_dim]`` (repeated on every W+ row) or a W+
    latent ``[num_ws, w_dim]``, for tangents moving every row alike: ``t [k, w_dim] -> [k, P]``, carried through
    the generator in ``tangent_dtype`` (None: ``t``'s)."""
    ws = w.expand(generator.num_ws, generator.w_dim)[None]

    def tangents(t):
        return _read_tangents(read, *generator.rows_jvp(range(generator.num_ws), 0, None, ws,
                                                        t.to(tangent_dtype or t.dtype), stride=stride))
    return tangents


def _read_tangents(read, image: torch.Tensor, image_tangents: torch.Tensor) -> torch.Tensor:
    """The pixels' tangents ``[k, P]`` of image tangents ``[k, C, H, W]`` at ``image`` ``[1, C, H, W]``: the
    readout's own JVP (torch.func: readouts are small next to the generator and need not be linear), in the
    image's dtype (reduced-precision tangents end at the readout)."""
    image_tangents = image_tangents.to(image.dtype)
    pixels = vmap(lambda dimage: jvp(read, (image,), (dimage,))[1])(image_tangents[:, None])
    return pixels.reshape(image_tangents.shape[0], -1)


def _shape_of(evaluate, x):
    return evaluate(x.clone()).shape


def _check_explicit_tangents(generator, x: torch.Tensor, read, stride: int, evaluate) -> None:
    """The generator's own tangents (``rows_jvp``) against ``torch.func.jvp`` of its forward pass ``evaluate`` for
    one random direction on every W+ row (each layer's style tangent and every activation tangent at once): a
    subclass that changed the forward pass but not ``rows_jvp`` would otherwise give a wrong J silently."""
    dw = torch.randn(1, generator.w_dim, generator=torch.Generator().manual_seed(1), dtype=x.dtype).to(x.device)
    ours = _w_tangents(generator, x, read, stride)(dw)[0]
    _, theirs = jvp(evaluate, (x.clone(),), (dw[0].expand_as(x).contiguous(),))
    difference = float((ours.double() - theirs.double().reshape(-1)).norm() / theirs.double().norm())
    if not difference <= EXPLICIT_RTOL:
        raise ResefaError(
            f"`fn.rows_jvp` (its explicit tangents) disagrees with torch.func.jvp of its forward pass (relative "
            f"difference {difference:.1e}): a generator that changes its forward pass must change rows_jvp alike; "
            "or set resefa_fast.jacobian.engine.EXPLICIT_TANGENTS = False to use torch.func alone")


def _check_fn(evaluate, x: torch.Tensor) -> Tuple[int, int, int]:
    """Catch what would give a wrong J silently: ``fn`` mutating its input, randomness between calls (e.g.
    StyleGAN noise mode "random"), NaN/Inf, forward-mode failures, no dependence on the latent. Returns the
    readout grid ``(C, H, W)``."""
    probe = x.clone()
    first = evaluate(probe)
    if not isinstance(first, torch.Tensor):
        raise ResefaError(f"`fn` must return a tensor; got {type(first).__name__}")
    if not torch.equal(probe, x):
        raise ResefaError("`fn` must not modify its input in place (the latent changed during a call)")
    if not bool(torch.isfinite(first).all()):
        raise ResefaError("`fn` must give finite outputs; its output at `latent` has NaN/Inf")
    second = evaluate(x.clone())
    # not bit-exact: cuDNN may pick another algorithm on the second call (float32 rounding, ~1e-7 relative);
    # random noise inputs differ by orders of magnitude more
    difference = float((first.double() - second.double()).norm())
    if not difference <= DETERMINISM_RTOL * float(first.double().norm()):
        raise ResefaError("`fn` must be deterministic (two calls at one latent differ: fix the noise, e.g. "
                          "noise_mode='const', and put dropout layers in eval mode)")
    t_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device)
    try:
        _, t_y = jvp(evaluate, (x.clone(),), (t_x,))
    except Exception as error:
        if _is_oom(error) or isinstance(error, ResefaError):
            raise
        raise ResefaError(f"`fn` must be differentiable in forward mode (torch.func.jvp failed: "
                          f"{type(error).__name__}: {error})") from error
    if not bool(torch.isfinite(t_y).all()):
        raise ResefaError("`fn` must give finite outputs; its JVP at `latent` has NaN/Inf")
    if not bool((t_y != 0).any()):
        raise ResefaError("`fn`'s output must depend on `latent` (a random tangent gave an all-zero JVP: "
                          "detached or non-differentiable operations?)")
    return output_grid(tuple(first.shape))


@contextlib.contextmanager
def _precision(precision: str, device: torch.device, autocast: bool = True):
    """tf32 on only for "tf32"; autocast for the reduced-precision tangent modes when ``autocast`` (not for
    explicit tangents, which carry their own dtype). Restores the flags after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if autocast and precision in TANGENT_DTYPES:
            with torch.autocast(device.type, dtype=getattr(torch, precision)):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(progress: Optional[bool], total: int):
    if progress is False:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="tangent", desc="jacobian", disable=None if progress is None else False,
                leave=False)
