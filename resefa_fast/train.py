"""Train the project's StyleGAN2 generator on the procedural faces (:mod:`resefa_fast.data.procedural`).

    python -m resefa_fast.train --out runs/faces --minutes 8              # one GPU, ~8 minutes
    python -m resefa_fast.train --out runs/faces --minutes 8              # again: resumes from runs/faces

The recipe of stylegan2-ada-pytorch (``train.py --cfg=auto``, without augmentation and path-length
regularisation): non-saturating logistic loss, R1 on the reals every ``r1_interval`` steps (lazy regularisation),
Adam(β = (0, 0.99), lr 0.0025), an EMA of the generator with half-life ``ema_kimg`` thousand images (ramped up
over the first ``ema_rampup`` fraction of the images seen), w_avg tracked with β 0.995, random noise inputs while
training, optional style mixing (off by default). One difference: the R1 term is added to the discriminator's
loss of the same step (one optimiser step) instead of a separate regularisation phase, so Adam's lr and β are not
rescaled by ``interval / (interval + 1)``.

The run is time-bounded (``--minutes``), saves ``DIR/checkpoint.pt`` atomically (temp file + ``os.replace``)
every ``--checkpoint-minutes`` and at the end, and resumes from it when started again on the same ``DIR``. It
logs to ``DIR/log.jsonl`` (one JSON object a line: ``"type": "train"`` with step, kimg, seconds, losses, R1,
images/s; ``"type": "eval"`` with the distribution checks of :mod:`resefa_fast.data.checks` on the EMA
generator), writes sample grids ``DIR/samples_<kimg>.png``, and at the end saves the EMA generator with
:func:`resefa_fast.models.save` to ``DIR/generator.pt``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from .data import checks, procedural
from .models import StyleGAN2Generator, save
from .models.discriminator import Discriminator

__all__ = ["PRESETS", "Trainer", "ema_beta", "main", "parse_args", "r1_penalty", "update_ema"]

#: Network sizes by preset name (64x64 RGB). "small": the default for a short GPU run (generator 1.43 M
#: parameters, 5.7 MB in float32, 128 channels at 4..32, 64 at 64; ~62 GFLOP per forward of 64 images; discriminator
#: 1.47 M); "medium": twice the channels below 32x32 (generator 3.9 M parameters, 16 MB); "tiny": tests on the CPU.
PRESETS: Dict[str, Dict[str, Any]] = {
    "small": dict(z_dim=128, w_dim=128, channel_base=4096, channel_max=128, mapping_layers=4,
                  d_channel_base=4096, d_channel_max=128),
    "medium": dict(z_dim=128, w_dim=128, channel_base=4096, channel_max=256, mapping_layers=4,
                   d_channel_base=4096, d_channel_max=256),
    "tiny": dict(z_dim=16, w_dim=16, channel_base=256, channel_max=32, mapping_layers=2,
                 d_channel_base=256, d_channel_max=32),
}
#: Options that fix the networks' shapes: taken from the checkpoint when resuming.
SHAPE_OPTIONS = ("z_dim", "w_dim", "channel_base", "channel_max", "mapping_layers", "d_channel_base",
                 "d_channel_max", "conv_clamp")
CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------------------------
# the pieces (each tested on its own)


def r1_penalty(D: torch.nn.Module, reals: torch.Tensor, create_graph: bool = True):
    """R1 (Mescheder et al. 2018) of ``D`` at ``reals`` ``[N, C, H, W]``: ``(logits [N, 1], penalty [N])`` with
    ``penalty_i = ‖∂(Σ_j D(x)_j) / ∂x_i‖²`` — the gradient of the summed logits, as stylegan2-ada computes it (the
    minibatch-std layer couples the samples)."""
    reals = reals.detach().requires_grad_(True)
    logits = D(reals)
    (grad,) = torch.autograd.grad(logits.sum(), reals, create_graph=create_graph)
    return logits, grad.square().sum(dim=(1, 2, 3))


def ema_beta(batch: int, nimg: int, ema_kimg: float, ema_rampup: Optional[float]) -> float:
    """EMA coefficient of one step of ``batch`` images after ``nimg`` images: ``0.5 ** (batch / ema_nimg)`` with
    ``ema_nimg = min(1000 · ema_kimg, nimg · ema_rampup)`` (half-life ``ema_nimg`` images; stylegan2-ada)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """``p_ema ← p + β (p_ema − p)`` for every parameter; buffers copied."""
    ema_params, params = list(G_ema.parameters()), [p.detach() for p in G.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


def _grid_png(images: torch.Tensor, path: str, columns: int = 8) -> None:
    """Save images ``[N, 3, H, W]`` in [-1, 1] as one PNG grid (atomically)."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    canvas = torch.zeros(rows * columns, c, h, w)
    canvas[:n] = images.detach().float().cpu()
    canvas = canvas.reshape(rows, columns, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, columns * w, c)
    pixels = ((canvas + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    tmp = path + ".tmp"
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, path)


def _atomic_save(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RealStream:
    """The reals of step ``s``: procedural images whose factors come from chunks of ``chunk`` steps drawn on the
    CPU with seed ``(seed, chunk index)`` and moved to the device once per chunk (no host sync per step)."""

    def __init__(self, batch: int, seed: int, device, chunk: int = 64):
        self.batch, self.seed, self.device, self.chunk = batch, seed, torch.device(device), chunk
        self._index, self._factors = None, None

    def __call__(self, step: int) -> torch.Tensor:
        index = step // self.chunk
        if index != self._index:
            seed = (self.seed * 1_000_003 + index) % (2 ** 63)
            self._factors = procedural.sample_factors(self.batch * self.chunk, seed, device=self.device)
            self._index = index
        start = (step % self.chunk) * self.batch
        return procedural.render({k: v[start:start + self.batch] for k, v in self._factors.items()})


# ---------------------------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Networks, optimisers and counters of one run; ``step()`` trains one minibatch. ``state_dict()`` /
    ``load_state_dict()`` hold everything a resumed run needs (networks, optimisers, step, images seen,
    seconds, random generators)."""

    def __init__(self, options: Dict[str, Any], device="cpu"):
        self.options = dict(options)
        self.device = torch.device(device)
        o = self.options
        torch.manual_seed(o["seed"])
        self.G = StyleGAN2Generator(z_dim=o["z_dim"], w_dim=o["w_dim"], img_resolution=procedural.RESOLUTION,
                                    img_channels=3, channel_base=o["channel_base"], channel_max=o["channel_max"],
                                    num_mapping_layers=o["mapping_layers"], architecture="skip",
                                    conv_clamp=o["conv_clamp"]).to(self.device).train()
        self.D = Discriminator(procedural.RESOLUTION, 3, channel_base=o["d_channel_base"],
                               channel_max=o["d_channel_max"], mbstd_group_size=o["mbstd_group"],
                               conv_clamp=o["conv_clamp"]).to(self.device).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        fused = self.device.type == "cuda"
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=o["lr_g"], betas=(0.0, 0.99), eps=1e-8, fused=fused)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=o["lr_d"], betas=(0.0, 0.99), eps=1e-8, fused=fused)
        self.z_generator = torch.Generator(self.device).manual_seed(o["seed"] + 1)
        self.reals = RealStream(o["batch"], o["seed"], self.device)
        self.step_count, self.nimg, self.seconds = 0, 0, 0.0
        self.autocast = o["precision"] == "bf16"
        # forward passes of the losses (torch.compile'd with --compile; R1's double backward uses the plain D)
        self._mapping, self._synthesis, self._D_forward = self.G.mapping, self.G.synthesis, self.D
        if o.get("compile"):
            self._mapping, self._synthesis = torch.compile(self.G.mapping), torch.compile(self.G.synthesis)
            self._D_forward = torch.compile(self.D)
        self._sums: Dict[str, torch.Tensor] = {}
        self._sum_steps = 0

    # ---- one step --------------------------------------------------------------------------------------------
    def _latents(self) -> torch.Tensor:
        return torch.randn(self.options["batch"], self.G.z_dim, device=self.device, generator=self.z_generator)

    def _generate(self, z: torch.Tensor, track_w_avg: bool = False) -> torch.Tensor:
        """Images of latents ``z`` ``[B, z_dim]`` with random noise (and style mixing with probability
        ``style_mixing``)."""
        ws = self._mapping(z)  # [B, num_ws, w_dim]
        if track_w_avg:
            with torch.no_grad():
                self.G.mapping.w_avg.copy_(ws[:, 0].detach().float().mean(dim=0).lerp(self.G.mapping.w_avg, 0.995))
        p = self.options["style_mixing"]
        if p > 0:
            # rows from `cutoff` on come from a second latent (cutoff = num_ws: no mixing), per minibatch
            cutoff = int(torch.randint(1, self.G.num_ws, ()))
            if float(torch.rand(())) >= p:
                cutoff = self.G.num_ws
            ws2 = self._mapping(self._latents())
            ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return self._synthesis(ws, noise_mode="random")

    def _accumulate(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value

    def step(self) -> None:
        """One minibatch: generator step, discriminator step (with R1 every ``r1_interval`` steps), EMA."""
        o = self.options
        batch = o["batch"]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

        # generator: softplus(-D(G(z)))
        self.D.requires_grad_(False)
        with autocast:
            fake_logits = self._D_forward(self._generate(self._latents(), track_w_avg=True))
            loss_G = F.softplus(-fake_logits.float()).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)

        # discriminator: softplus(D(G(z))) + softplus(-D(x)) [+ R1 · γ/2 · interval]
        reals = self.reals(self.step_count)
        with torch.no_grad(), autocast:
            fakes = self._generate(self._latents())
        with autocast:
            fake_logits = self._D_forward(fakes.detach())
        regularise = o["r1_interval"] > 0 and o["r1_gamma"] > 0 and self.step_count % o["r1_interval"] == 0
        if regularise:  # float32: the double backward of the penalty is not autocast
            real_logits, penalty = r1_penalty(self.D, reals)
            loss_r1 = penalty.mean() * (o["r1_gamma"] / 2) * o["r1_interval"]
        else:
            with autocast:
                real_logits = self._D_forward(reals)
        loss_D = F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()
        total = loss_D + loss_r1 if regularise else loss_D
        self.opt_D.zero_grad(set_to_none=True)
        total.backward()
        self.opt_D.step()

        self.nimg += batch
        update_ema(self.G_ema, self.G, ema_beta(batch, self.nimg, o["ema_kimg"], o["ema_rampup"]))
        self.step_count += 1
        self._accumulate(loss_G=loss_G, loss_D=loss_D, D_real=real_logits.mean(), D_fake=fake_logits.mean())
        if regularise:
            self._accumulate(r1=penalty.mean(), r1_count=torch.ones((), device=self.device))
        self._sum_steps += 1

    def pop_averages(self) -> Dict[str, float]:
        """Averages of the losses since the last call (one host sync)."""
        sums = {k: float(v) for k, v in self._sums.items()}
        steps, r1_count = max(self._sum_steps, 1), sums.pop("r1_count", 0.0)
        out = {k: v / steps for k, v in sums.items() if k != "r1"}
        out["r1"] = sums["r1"] / r1_count if r1_count else None
        self._sums, self._sum_steps = {}, 0
        return out

    # ---- evaluation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ema(self, n: int, seed: int = 0, batch: int = 256) -> torch.Tensor:
        """``n`` images ``[n, 3, 64, 64]`` of the EMA generator (const noise) from latents of ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.G_ema.z_dim, generator=generator).to(self.device)
        return torch.cat([self.G_ema(z[i:i + batch], noise_mode="const") for i in range(0, n, batch)])

    # ---- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        rng = {"cpu": torch.get_rng_state(), "z": self.z_generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"format": "resefa_fast-train", "version": 1, "options": self.options,
                "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "step": self.step_count, "nimg": self.nimg, "seconds": self.seconds, "rng": rng}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.step_count, self.nimg, self.seconds = int(state["step"]), int(state["nimg"]), float(state["seconds"])
        torch.set_rng_state(state["rng"]["cpu"])
        self.z_generator.set_state(state["rng"]["z"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


# ---------------------------------------------------------------------------------------------------------------
# the command


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m resefa_fast.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="run directory (checkpoint, log, samples, generator.pt)")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of this invocation's training")
    p.add_argument("--steps", type=int, default=None, help="stop at this total step count (also)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out (overwrite it)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from (default: --out/checkpoint.pt)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="network sizes")
    for name in ("z_dim", "w_dim", "channel_base", "channel_max", "mapping_layers", "d_channel_base",
                 "d_channel_max"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help="override the preset's")
    p.add_argument("--conv-clamp", type=float, default=256.0, help="clamp of conv outputs (0: none)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr-g", type=float, default=0.0025)
    p.add_argument("--lr-d", type=float, default=0.0025)
    p.add_argument("--r1-gamma", type=float, default=0.05, help="R1 weight γ (stylegan2-ada auto: 0.0128 here)")
    p.add_argument("--r1-interval", type=int, default=16, help="lazy R1 every this many steps (0: none)")
    p.add_argument("--ema-kimg", type=float, default=None, help="EMA half-life in kimg (default: batch · 10/32)")
    p.add_argument("--ema-rampup", type=float, default=0.05, help="EMA ramp-up fraction (0: none)")
    p.add_argument("--style-mixing", type=float, default=0.0, help="style mixing probability")
    p.add_argument("--mbstd-group", type=int, default=4)
    p.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"],
                   help="tf32 matmuls/convs (CUDA), or bf16 autocast of the forward passes (R1 stays float32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks' forward passes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=200, help="print and log a train line every N steps")
    p.add_argument("--eval-minutes", type=float, default=1.0, help="distribution checks every N minutes")
    p.add_argument("--eval-images", type=int, default=4096, help="images per distribution check")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    return p.parse_args(argv)


def _options(args: argparse.Namespace) -> Dict[str, Any]:
    options = dict(PRESETS[args.preset])
    for name in options:
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    ema_kimg = args.ema_kimg if args.ema_kimg is not None else args.batch * 10 / 32
    options.update(conv_clamp=args.conv_clamp or None, batch=args.batch, lr_g=args.lr_g, lr_d=args.lr_d,
                   r1_gamma=args.r1_gamma, r1_interval=args.r1_interval, ema_kimg=ema_kimg,
                   ema_rampup=args.ema_rampup or None, style_mixing=args.style_mixing,
                   mbstd_group=args.mbstd_group, precision=args.precision, compile=args.compile, seed=args.seed,
                   preset=args.preset)
    return options


class _Log:
    def __init__(self, path: str):
        self.path = path

    def write(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _evaluate(trainer: Trainer, reference, n: int, out: str, log: _Log) -> Dict[str, Any]:
    start = time.time()
    images = trainer.generate_ema(n, seed=0)
    report = checks.compare(images, reference)
    kimg = trainer.nimg / 1000
    _grid_png(images[:64], os.path.join(out, f"samples_{int(kimg):06d}kimg.png"))
    _grid_png(images[:64], os.path.join(out, "samples_latest.png"))
    record = {"type": "eval", "step": trainer.step_count, "kimg": round(kimg, 3),
              "seconds": round(trainer.seconds, 1), "eval_seconds": round(time.time() - start, 2), **report}
    log.write(record)
    parts = " ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in report.items() if k.startswith("part_mean_diff"))
    print(f"[eval] step {trainer.step_count} kimg {kimg:.1f}: pFD {report['pfd']:.3f} (real-real "
          f"{report['pfd_real_real']:.3f}), channel mean/std diff {report['channel_mean_diff']:.3f}/"
          f"{report['channel_std_diff']:.3f}, part mean diff {parts}", flush=True)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        tf32 = args.precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    checkpoint_path = os.path.join(args.out, CHECKPOINT)
    resume_path = args.resume or (checkpoint_path if os.path.exists(checkpoint_path) and not args.fresh else None)
    options = _options(args)
    state = None
    if resume_path:
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        changed = {k: (state["options"][k], options[k]) for k in SHAPE_OPTIONS if state["options"][k] != options[k]}
        if changed and any(getattr(args, k, None) is not None for k in changed):
            print(f"note: network shape taken from the checkpoint, not the command line: {changed}", flush=True)
        options.update({k: state["options"][k] for k in SHAPE_OPTIONS})
    trainer = Trainer(options, device)
    if state is not None:
        trainer.load_state_dict(state)
        print(f"resumed from {resume_path} at step {trainer.step_count} ({trainer.nimg / 1000:.1f} kimg, "
              f"{trainer.seconds:.0f} s)", flush=True)
    log = _Log(os.path.join(args.out, "log.jsonl"))
    if state is None and os.path.exists(log.path):  # a fresh run starts a fresh log
        os.replace(log.path, log.path + ".old")
    log.write({"type": "start", "step": trainer.step_count, "kimg": trainer.nimg / 1000, "options": options,
               "argv": sys.argv[1:] if argv is None else list(argv), "device": str(device),
               "torch": str(torch.__version__), "G_parameters": trainer.G.num_parameters(),
               "D_parameters": sum(p.numel() for p in trainer.D.parameters()), "num_ws": trainer.G.num_ws})
    print(f"G {trainer.G.num_parameters() / 1e6:.2f} M parameters (num_ws {trainer.G.num_ws}), D "
          f"{sum(p.numel() for p in trainer.D.parameters()) / 1e6:.2f} M; batch {options['batch']}, device {device}, "
          f"precision {options['precision']}", flush=True)

    reference = checks.real_reference(args.eval_images, device=device)
    if state is None:
        _grid_png(procedural.sample(64, seed=checks.REFERENCE_SEED, device=device)[0],
                  os.path.join(args.out, "reals.png"))

    def save_checkpoint():
        _atomic_save(trainer.state_dict(), checkpoint_path)

    budget = args.minutes * 60
    start = last_log_time = last_eval = last_checkpoint = time.time()
    seconds_at_start, step_at_start, nimg_at_start = trainer.seconds, trainer.step_count, trainer.nimg
    last_log_step, last_log_nimg = trainer.step_count, trainer.nimg
    while time.time() - start < budget and (args.steps is None or trainer.step_count < args.steps):
        trainer.step()
        trainer.seconds = seconds_at_start + time.time() - start
        now = time.time()
        if trainer.step_count % args.log_every == 0:
            averages = trainer.pop_averages()  # host sync
            now = time.time()
            rate = (trainer.nimg - last_log_nimg) / max(now - last_log_time, 1e-9)
            record = {"type": "train", "step": trainer.step_count, "kimg": round(trainer.nimg / 1000, 3),
                      "seconds": round(seconds_at_start + now - start, 2), "images_per_s": round(rate, 1),
                      "steps_per_s": round((trainer.step_count - last_log_step) / max(now - last_log_time, 1e-9), 2),
                      **{k: (None if v is None else round(v, 5)) for k, v in averages.items()}}
            log.write(record)
            r1 = "-" if averages["r1"] is None else f"{averages['r1']:.4f}"
            print(f"step {trainer.step_count:7d}  kimg {trainer.nimg / 1000:8.1f}  t {record['seconds']:7.0f}s  "
                  f"G {averages['loss_G']:.3f}  D {averages['loss_D']:.3f}  R1 {r1}  "
                  f"{rate:7.0f} img/s", flush=True)
            last_log_time, last_log_step, last_log_nimg = now, trainer.step_count, trainer.nimg
        if now - last_eval >= args.eval_minutes * 60:
            _evaluate(trainer, reference, args.eval_images, args.out, log)
            last_eval = time.time()
        if now - last_checkpoint >= args.checkpoint_minutes * 60:
            save_checkpoint()
            last_checkpoint = time.time()

    if trainer._sum_steps:
        averages = trainer.pop_averages()
        log.write({"type": "train", "step": trainer.step_count, "kimg": round(trainer.nimg / 1000, 3),
                   "seconds": round(trainer.seconds, 2), **averages})
    elapsed = time.time() - start
    rates = {"steps_per_s": round((trainer.step_count - step_at_start) / max(elapsed, 1e-9), 2),
             "images_per_s": round((trainer.nimg - nimg_at_start) / max(elapsed, 1e-9), 1)}
    save_checkpoint()
    report = _evaluate(trainer, reference, args.eval_images, args.out, log)
    metadata = {
        "dataset": "resefa_fast.data.procedural (64x64 procedural faces)",
        "part_boxes": {part: list(box) for part, box in procedural.PART_BOXES.items()},
        "factors": {name: part for name, part in procedural.FACTORS.items()},
        "step": trainer.step_count, "kimg": round(trainer.nimg / 1000, 3),
        "train_seconds": round(trainer.seconds, 1), "options": options, "final_checks": report,
        "torch": str(torch.__version__),
    }
    G_ema = copy.deepcopy(trainer.G_ema).cpu().eval()
    G_ema.noise_mode = "const"
    tmp = os.path.join(args.out, "generator.pt.tmp")
    save(G_ema, tmp, metadata=metadata)
    os.replace(tmp, os.path.join(args.out, "generator.pt"))
    log.write({"type": "end", "step": trainer.step_count, "kimg": round(trainer.nimg / 1000, 3),
               "seconds": round(trainer.seconds, 1), "this_run": rates})
    print(f"done: step {trainer.step_count}, {trainer.nimg / 1000:.1f} kimg, {trainer.seconds:.0f} s in all; this "
          f"run {rates['steps_per_s']} steps/s, {rates['images_per_s']} images/s (evaluations included); saved "
          f"{os.path.join(args.out, 'generator.pt')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
