"""The discriminator and the training module (tiny networks on the CPU)."""
import copy
import json
import os

import pytest
import torch

from resefa_fast import models, train
from resefa_fast.models.discriminator import Discriminator, MinibatchStdLayer, downsample_conv2d
from resefa_fast.models.ops import setup_filter, upfirdn2d

TINY_ARGS = ["--preset", "tiny", "--batch", "8", "--device", "cpu", "--eval-images", "64", "--log-every", "2",
             "--r1-interval", "2"]


def _tiny_trainer(**overrides):
    options = train._options(train.parse_args(["--out", "unused"] + TINY_ARGS))
    options.update(overrides)
    return train.Trainer(options, "cpu")


def _assert_same_state(a, b, path="state"):
    """Nested dicts / lists of tensors and plain values equal exactly."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


# ---- discriminator ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [8, 6])
def test_discriminator_shape_and_gradients(batch):
    torch.manual_seed(0)
    D = Discriminator(64, 3, channel_base=256, channel_max=32)
    images = torch.randn(batch, 3, 64, 64, requires_grad=True)
    logits = D(images)
    assert logits.shape == (batch, 1) and bool(torch.isfinite(logits).all())
    logits.sum().backward()
    assert float(images.grad.abs().sum()) > 0
    for name, p in D.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_discriminator_block_layout():
    D = Discriminator(64, 3, channel_base=1024, channel_max=64)
    assert D.block_resolutions == [64, 32, 16, 8]
    assert D.b64.fromrgb.weight.shape == (16, 3, 1, 1)  # 1024 // 64 channels at 64
    assert D.b8.conv1.weight.shape == (64, 64, 3, 3) and D.b4.fc.weight.shape == (64, 64 * 16)


def test_downsample_conv_is_filter_then_stride():
    """A 3x3 conv with down-sampling equals: FIR [1,3,3,1] with padding 2, then the stride-2 conv; the 1x1 skip:
    FIR with padding 1, keep even samples, 1x1 conv (stylegan2-ada conv2d_resample)."""
    torch.manual_seed(0)
    x, f = torch.randn(2, 4, 16, 16, dtype=torch.float64), setup_filter().double()
    w3, w1 = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(5, 4, 1, 1, dtype=torch.float64)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [2, 2, 2, 2]).reshape(8, 1, 20, 20),
                                         f[None, None]).reshape(2, 4, 17, 17)
    expected3 = torch.nn.functional.conv2d(blurred, w3, stride=2)
    assert torch.allclose(downsample_conv2d(x, w3, f), expected3)
    expected1 = torch.nn.functional.conv2d(upfirdn2d(x, f, padding=(1, 1, 1, 1))[:, :, ::2, ::2], w1)
    assert downsample_conv2d(x, w1, f).shape == (2, 5, 8, 8)
    assert torch.allclose(downsample_conv2d(x, w1, f), expected1)


def test_minibatch_std_matches_direct_formula():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4, 4, dtype=torch.float64)
    y = MinibatchStdLayer(group_size=4, num_channels=1)(x)
    assert y.shape == (8, 7, 4, 4) and torch.equal(y[:, :6], x)
    for i in range(8):
        group = x[i % 2::2]  # groups: samples with the same index mod (8 / 4)
        std = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(y[i, 6], std.expand(4, 4))


# ---- training pieces -------------------------------------------------------------------------------------------


def test_r1_penalty_equals_direct_autograd():
    torch.manual_seed(0)
    D = Discriminator(16, 3, channel_base=128, channel_max=16).double()
    reals = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    logits, penalty = train.r1_penalty(D, reals)
    jacobian = torch.autograd.functional.jacobian(lambda x: D(x).sum(dim=1), reals)  # [4, 4, 3, 16, 16]
    expected = jacobian.sum(dim=0).square().sum(dim=(1, 2, 3))  # gradient of Σ_j D(x)_j w.r.t. each x_i
    assert torch.allclose(penalty, expected, rtol=1e-10, atol=0)
    assert torch.allclose(logits, D(reals))
    penalty.mean().backward()  # create_graph: the penalty trains D
    assert float(D.b16.conv0.weight.grad.abs().sum()) > 0 and float(D.b4.fc.weight.grad.abs().sum()) > 0


def test_ema_update_and_beta():
    torch.manual_seed(0)
    G = models.StyleGAN2Generator(**models.TINY.kwargs)
    G_ema = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p))
        G.mapping.w_avg.fill_(3.0)
    before = [p.clone() for p in G_ema.parameters()]
    beta = 0.9
    train.update_ema(G_ema, G, beta)
    for old, new, p in zip(before, G_ema.parameters(), G.parameters(), strict=True):
        assert torch.allclose(new, p + beta * (old - p), rtol=1e-6, atol=1e-6)  # float32 rounding of the lerp
    assert torch.equal(G_ema.mapping.w_avg, G.mapping.w_avg)
    assert train.ema_beta(64, 10 ** 9, 20.0, 0.05) == 0.5 ** (64 / 20000)
    assert train.ema_beta(64, 6400, 20.0, 0.05) == 0.5 ** (64 / 320)  # ramp-up: half-life 5 % of the images seen
    assert train.ema_beta(64, 6400, 20.0, None) == 0.5 ** (64 / 20000)


def test_real_stream_is_deterministic_and_chunked():
    stream, other = train.RealStream(4, seed=3, device="cpu", chunk=2), train.RealStream(4, seed=3, device="cpu")
    a, b, c = stream(0), stream(1), stream(2)
    assert a.shape == (4, 3, 64, 64) and not torch.equal(a, b) and not torch.equal(b, c)
    assert torch.equal(stream(1), b) and torch.equal(train.RealStream(4, 3, "cpu", chunk=2)(2), c)
    assert not torch.equal(other(0), train.RealStream(4, seed=4, device="cpu")(0))


@pytest.mark.parametrize("overrides", [{"precision": "bf16"}, {"style_mixing": 1.0}])
def test_training_variants_run(overrides):
    """bf16 autocast (R1 in float32) and style mixing: steps run, losses finite, G and D change."""
    trainer = _tiny_trainer(**overrides)
    G0, D0 = copy.deepcopy(trainer.G.state_dict()), copy.deepcopy(trainer.D.state_dict())
    for _ in range(2):
        trainer.step()
    averages = trainer.pop_averages()
    assert all(v is None or v == v for v in averages.values()) and averages["r1"] is not None
    assert not torch.equal(G0["synthesis.b64.conv1.weight"], trainer.G.state_dict()["synthesis.b64.conv1.weight"])
    assert not torch.equal(D0["b64.conv0.weight"], trainer.D.state_dict()["b64.conv0.weight"])
    assert float(trainer.G.mapping.w_avg.abs().sum()) > 0  # w_avg tracked while training


def test_trainer_resume_reproduces_an_uninterrupted_run():
    """Two steps, state_dict -> load into a fresh trainer (equal state), two more steps: the same networks and
    optimiser states as four uninterrupted steps."""
    straight = _tiny_trainer()
    for _ in range(4):
        straight.step()
    first = _tiny_trainer()
    for _ in range(2):
        first.step()
    saved = copy.deepcopy(first.state_dict())
    resumed = _tiny_trainer()
    resumed.load_state_dict(saved)
    _assert_same_state(resumed.state_dict(), saved)
    for _ in range(2):
        resumed.step()
    assert resumed.step_count == 4 and resumed.nimg == 32
    for key in ("G", "G_ema", "D", "opt_G", "opt_D"):
        _assert_same_state(resumed.state_dict()[key], straight.state_dict()[key], key)


def test_training_command_writes_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    assert train.main(["--out", out, "--steps", "3"] + TINY_ARGS) == 0
    for name in ("checkpoint.pt", "generator.pt", "log.jsonl", "reals.png", "samples_latest.png"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    checkpoint = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert checkpoint["step"] == 3 and checkpoint["nimg"] == 24
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    kinds = [r["type"] for r in records]
    assert kinds[0] == "start" and "train" in kinds and "eval" in kinds and kinds[-1] == "end"
    train_record = next(r for r in records if r["type"] == "train")
    for key in ("step", "kimg", "seconds", "loss_G", "loss_D", "r1", "images_per_s"):
        assert key in train_record, key
    evaluation = next(r for r in records if r["type"] == "eval")
    assert evaluation["pfd"] > 0 and "part_mean_diff/mouth" in evaluation

    loaded = models.load(os.path.join(out, "generator.pt"))
    G = loaded.generator
    assert torch.equal(G.state_dict()["synthesis.b64.conv1.weight"], checkpoint["G_ema"]["synthesis.b64.conv1.weight"])
    assert G(torch.randn(2, G.z_dim)).shape == (2, 3, 64, 64)
    assert loaded.metadata["saved_metadata"]["part_boxes"]["mouth"] == [50, 32, 10, 24]

    # started again on the same directory: resumes and continues the step counter
    assert train.main(["--out", out, "--steps", "5"] + TINY_ARGS) == 0
    resumed = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert resumed["step"] == 5 and resumed["nimg"] == 40
    assert resumed["seconds"] >= checkpoint["seconds"]
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    starts = [r for r in records if r["type"] == "start"]
    assert [r["step"] for r in starts] == [0, 3]

    # --fresh ignores the checkpoint and starts a new log (the old one kept beside it)
    assert train.main(["--out", out, "--steps", "1", "--fresh"] + TINY_ARGS) == 0
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] == 1
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [r["step"] for r in records if r["type"] == "start"] == [0]
    assert os.path.exists(os.path.join(out, "log.jsonl.old"))
