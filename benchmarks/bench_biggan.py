"""Time the BigGAN generators of resefa_fast.models: images/s and forward-mode tangents/s (float32 and tf32) of
BigGAN-128/256/512 and BigGAN-deep-128/256/512-shaped generators with random weights, and the z-space Jacobian of one
latent code.

Rows (per family and resolution):
- correctness first: a random checkpoint in the public layout (BigGAN-PyTorch / pytorch-pretrained-biggan keys,
  tests/biggan_reference.py) is converted by our loader; ours (float32, tf32 off) vs the independent reference
  forward (spectral norm applied every call, float64) on one image: relative error <= 1e-5;
- ``forward``: images/s by batch and precision (class 207, truncation 0.5);
- ``vmap(jvp) z``: z tangents per second, chunks of k tangents at one latent (primal once per chunk), readout =
  the original's (nearest resize to 256 + channel sum above 256, RGB kept at or below 256), no layer skip;
- ``jacobian z``: seconds of ``resefa_fast.jacobian`` for the whole z Jacobian of one latent (d = z_dim; BigGAN's
  hierarchical z with layer skip), same readout; ``jacobian z+embedding``: d = z_dim + embedding size.

    python benchmarks/bench_biggan.py --device cuda --json $OUT/biggan.json
    python benchmarks/bench_biggan.py --small            # CPU smoke run (channel width / 8, 128² only)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from bench_jacobian import Timer, describe, git_commit  # noqa: E402  (one timer for all benchmarks)
from bench_models import precision  # noqa: E402

import resefa_fast as rf  # noqa: E402
from resefa_fast.jacobian import readouts  # noqa: E402
from resefa_fast.models import biggan as bg  # noqa: E402
from resefa_fast.models import biggan_loaders as bl  # noqa: E402

#: ours (float32, tf32 off) vs the reference on the same weights: the issue's target.
IMAGE_RTOL = 1e-5
CLASS, TRUNCATION = 207, 0.5


def checked_generator(family: str, resolution: int, small: bool, device: torch.device):
    """(generator, relative error vs the reference): a random checkpoint in the public layout, converted by our
    loader, compared on one image."""
    import biggan_reference as ref
    _, kwargs, _ = bg.biggan_config(f"biggan-{'deep-' if family == 'deep' else ''}{resolution}")
    ch = kwargs["ch"] // 8 if small else kwargs["ch"]
    z = bg.truncated_z(1, kwargs["z_dim"], TRUNCATION, seed=0, dtype=torch.float64).to(device)
    if family == "biggan":
        attention = {int(a) for a in kwargs["attention"].split("_")}
        kw = dict(resolution=resolution, ch=ch, z_dim=kwargs["z_dim"], shared_dim=kwargs["embed_dim"],
                  n_classes=kwargs["num_classes"], hier=True, attention=attention)
        sd = {k: v.float().double().to(device) for k, v in ref.random_biggan_pytorch(kw, with_sv0=False).items()}
        converted, out, _ = bl.convert_biggan_pytorch({k: v.float() for k, v in sd.items()})
        G = bg.BigGANGenerator(**converted)
        with torch.no_grad():
            expected = ref.ref_biggan_pytorch(sd, kw, z, torch.tensor([CLASS], device=device), kwargs["bn_eps"])
    else:
        cfg = ref.hf_config(output_dim=resolution, z_dim=kwargs["z_dim"], class_embed_dim=kwargs["z_dim"],
                            channel_width=ch, num_classes=kwargs["num_classes"], layers=kwargs["layers"],
                            attention_layer_position=kwargs["attention_layer_position"], eps=kwargs["eps"],
                            n_stats=kwargs["n_stats"])
        sd = {k: v.float().double().to(device) for k, v in ref.random_pretrained_biggan(cfg).items()}
        converted, out, _ = bl.convert_pretrained_biggan({k: v.float() for k, v in sd.items()},
                                                         config_json=("config.json", cfg))
        G = bg.BigGANDeepGenerator(**converted)
        vector = torch.nn.functional.one_hot(torch.tensor([CLASS]), kwargs["num_classes"]).double().to(device)
        with torch.no_grad():
            expected = ref.ref_pretrained_biggan(sd, cfg, z, vector, TRUNCATION)
    G = G.to(device)
    G.load_state_dict(out)
    G = G.eval().requires_grad_(False)
    with precision("float32"), torch.no_grad():
        error = float((G(z.float(), CLASS, TRUNCATION).double() - expected).norm() / expected.norm())
    del sd, expected
    return G, error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--families", default="biggan,deep",
                        help="biggan (BigGAN-PyTorch / TF-Hub), deep (BigGAN-deep)")
    parser.add_argument("--resolutions", default="128,256,512")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--chunks", default="8,32,64", help="tangents per vmap(jvp) call")
    parser.add_argument("--precisions", default="float32,tf32")
    parser.add_argument("--columns", type=int, default=0,
                        help="time the Jacobian rows on this many latent dimensions (spread over d) and extrapolate; "
                        "0 = all")
    parser.add_argument("--small", action="store_true", help="CPU-sized run: channel width / 8, 128² only, "
                        "batches 1,2, chunks 4, 8 Jacobian columns, one timing repeat")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.small:
        args.resolutions = "128" if args.resolutions == "128,256,512" else args.resolutions
        args.batches = "1,2" if args.batches == "1,8,32" else args.batches
        args.chunks = "4" if args.chunks == "8,32,64" else args.chunks
        args.columns = args.columns or 8
    device = torch.device(args.device)
    timer = Timer(device, warmup=1, repeats=1 if args.small else 3)
    once = Timer(device, warmup=0 if args.small else 1, repeats=1 if args.small else 2)
    readout = readouts.original(256)
    report = dict(device=describe(device), torch=torch.__version__, commit=git_commit(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(), args=vars(args), generators={},
                  correctness={}, rows=[])
    rows = report["rows"]

    def timed(t, family, resolution, name, mode, unit, count, fn):
        """``fn`` (``count`` items) timed into one row; out of device memory gives an "out of memory" row."""
        base = dict(family=family, resolution=resolution, method=name, precision=mode, batch=count)
        try:
            seconds, peak, _ = t(fn)
        except torch.OutOfMemoryError:
            rows.append(dict(base, error="out of memory"))
            torch.cuda.empty_cache()
            print(f"| {family}-{resolution} | {name} | {mode} | {count} | out of memory | | | |", flush=True)
            return
        r = dict(base, unit=unit, seconds=seconds, per_item_ms=seconds / count * 1e3, items_per_s=count / seconds,
                 peak_gib=None if peak is None else peak / 2 ** 30)
        rows.append(r)
        print(f"| {family}-{resolution} | {name} | {mode} | {count} | {seconds:.3f} | {r['per_item_ms']:.2f} | "
              f"{r['items_per_s']:.1f} {unit}/s | {'' if peak is None else f'{peak / 2 ** 30:.2f}'} |", flush=True)

    for family in args.families.split(","):
        for resolution in [int(r) for r in args.resolutions.split(",")]:
            key = f"{family}-{resolution}"
            G, error = checked_generator(family, resolution, args.small, device)
            report["correctness"][key] = error
            report["generators"][key] = dict(G.init_kwargs, parameters=G.num_parameters())
            print(f"\n{key}: ours vs reference (float32): relative error {error:.2e}; "
                  f"{G.num_parameters() / 1e6:.1f} M parameters", flush=True)
            assert error <= IMAGE_RTOL, (key, error)
            print("\n| model | method | precision | batch, chunk or d | total s | ms / item | rate | peak GiB |\n"
                  "|---|---|---|---|---|---|---|---|")
            z1 = G.sample_z(1, TRUNCATION, seed=0)
            for mode in args.precisions.split(","):
                with precision(mode), torch.no_grad():
                    for batch in [int(b) for b in args.batches.split(",")]:
                        z = G.sample_z(batch, TRUNCATION, seed=1)
                        timed(timer, family, resolution, "forward", mode, "images", batch,
                              lambda z=z, G=G: G(z, CLASS, TRUNCATION))
                fn, latent = G.jacobian_inputs(z1[0], CLASS, TRUNCATION, space="z", staged=False)
                with precision(mode):
                    for chunk in [int(k) for k in args.chunks.split(",")]:
                        tangents = torch.zeros(chunk, latent.numel(), device=device)
                        tangents[torch.arange(chunk), torch.arange(chunk) % latent.numel()] = 1

                        def run(fn=fn, latent=latent, tangents=tangents):
                            return torch.func.vmap(lambda t: torch.func.jvp(lambda x: readout(fn(x)), (latent,),
                                                                            (t,))[1])(tangents)
                        timed(timer, family, resolution, "vmap(jvp) z", mode, "tangents", chunk, run)
                chunk = max(int(k) for k in args.chunks.split(","))
                for space in ("z", "z+embedding"):
                    fn, latent = G.jacobian_inputs(z1[0], CLASS, TRUNCATION, space=space)
                    d = latent.numel()
                    # a sample of columns spread over d (every chunk of hierarchical z, so layer skip counts)
                    columns = None if not args.columns or args.columns >= d else \
                        torch.linspace(0, d - 1, args.columns).round().long().unique()
                    count = d if columns is None else columns.numel()
                    timed(once, family, resolution, f"jacobian {space}", mode, "tangents", count,
                          lambda fn=fn, latent=latent, mode=mode, columns=columns: rf.jacobian(
                              fn, latent, readout=readout, chunk_size=chunk, precision=mode, progress=False,
                              check_fn=False, columns=columns))
                    if "seconds" in rows[-1]:
                        rows[-1].update(d=d, estimated_full_s=rows[-1]["seconds"] / count * d)
            del G
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


if __name__ == "__main__":
    main()
