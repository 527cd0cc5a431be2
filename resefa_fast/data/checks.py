"""Distribution checks of generated images against the procedural data, computed by the project (no downloaded
feature network):

- per-channel mean and standard deviation of the pixels;
- a *procedural Fréchet distance* (pFD): the Fréchet distance between Gaussian fits of fixed features — the
  spatial means of a fixed random-weight conv net's activations at three scales, plus the 8x8 area-averaged
  image (layout and colours); its scale is given by the distance between two independent real sets of the same
  size (``fd_real_real``), reported beside it;
- per part box: the mean image inside the box (where the parts are drawn) and the pixel standard deviation inside
  the box (whether the parts vary), each as a mean absolute difference from the data's.

    >>> reference = real_reference(4096, device="cuda")          # once
    >>> report = compare(generated_images, reference)            # dict of floats
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from . import procedural

__all__ = ["FeatureNet", "frechet_distance", "gaussian_fit", "image_statistics", "real_reference", "compare"]

#: Seed of the real images of the reference set (far from the training stream's seeds).
REFERENCE_SEED = 987_654_321


class FeatureNet(torch.nn.Module):
    """Fixed random conv net (seeded, never trained): ``[B, 3, 64, 64]`` -> features ``[B, 416]`` = spatial means
    of three leaky-ReLU conv layers (32, 64, 128 channels at 32², 16², 8²) and the 8x8 area-averaged image (192)."""

    def __init__(self, seed: int = 1234):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = [3, 32, 64, 128]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            weight = torch.randn(b, a, 3, 3, generator=generator) * math.sqrt(2.0 / (9 * a))  # He init
            self.register_buffer(f"weight{i}", weight)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        features = []
        for i in range(3):
            x = F.leaky_relu(F.conv2d(x, getattr(self, f"weight{i}"), stride=2, padding=1), 0.2)
            features.append(x.mean(dim=(2, 3)))
        features.append(F.adaptive_avg_pool2d(images.float(), 8).flatten(1))
        return torch.cat(features, dim=1)


_FEATURE_NETS: Dict[str, FeatureNet] = {}


def _feature_net(device) -> FeatureNet:
    key = str(device)
    if key not in _FEATURE_NETS:
        _FEATURE_NETS[key] = FeatureNet().to(device)
    return _FEATURE_NETS[key]


def gaussian_fit(features: torch.Tensor):
    """Mean ``[D]`` and covariance ``[D, D]`` (float64, unbiased) of features ``[N, D]``."""
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    return mean, centred.T @ centred / max(x.shape[0] - 1, 1)


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """``|μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)``, via symmetric eigendecompositions in float64 (the
    square root of the symmetric product has the same trace as ``(Σ1 Σ2)^½``)."""
    values, vectors = torch.linalg.eigh(cov1.double())
    root1 = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    product = root1 @ cov2.double() @ root1
    cross = torch.linalg.eigvalsh(0.5 * (product + product.T)).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross
    return float(distance)


def image_statistics(images: torch.Tensor, batch: int = 512) -> Dict[str, torch.Tensor]:
    """Statistics of images ``[N, 3, 64, 64]`` in [-1, 1]: ``channel_mean`` / ``channel_std`` ``[3]``, the
    Gaussian fit (``feature_mean`` ``[D]``, ``feature_cov`` ``[D, D]``), and per part ``mean_<part>``
    ``[3, h, w]`` (mean image inside the box) and ``std_<part>`` ``[3, h, w]`` (pixel std inside the box)."""
    images = images.float()
    net = _feature_net(images.device)
    features = torch.cat([net(images[i:i + batch]) for i in range(0, images.shape[0], batch)])
    stats = {"channel_mean": images.mean(dim=(0, 2, 3)), "channel_std": images.std(dim=(0, 2, 3))}
    stats["feature_mean"], stats["feature_cov"] = gaussian_fit(features)
    for part, box in procedural.part_boxes().items():
        r0, r1, c0, c1 = box.bounds((procedural.RESOLUTION, procedural.RESOLUTION))
        crop = images[:, :, r0:r1, c0:c1]
        stats[f"mean_{part}"], stats[f"std_{part}"] = crop.mean(dim=0), crop.std(dim=0)
    return stats


def real_reference(n: int = 4096, device=None, seed: int = REFERENCE_SEED) -> Dict[str, torch.Tensor]:
    """:func:`image_statistics` of ``n`` procedural images of ``seed``, plus ``fd_real_real``: the pFD between
    them and ``n`` other real images (the noise floor of the pFD at this sample size)."""
    images, _ = procedural.sample(n, seed=seed, device=device)
    stats = image_statistics(images)
    other = image_statistics(procedural.sample(n, seed=seed + 1, device=device)[0])
    stats["fd_real_real"] = torch.tensor(frechet_distance(stats["feature_mean"], stats["feature_cov"],
                                                          other["feature_mean"], other["feature_cov"]))
    return stats


def compare(images: torch.Tensor, reference: Dict[str, torch.Tensor],
            stats: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, float]:
    """Distribution checks of ``images`` ``[N, 3, 64, 64]`` against ``reference`` (:func:`real_reference`):
    ``pfd`` (and ``pfd_real_real`` for scale), ``channel_mean_diff`` / ``channel_std_diff`` (max abs over RGB),
    ``channel_mean`` / ``channel_std`` (lists), and per part ``part_mean_diff/<part>`` and ``part_std_diff/<part>``
    (mean abs difference of the mean / std images inside the box, on the [-1, 1] scale)."""
    stats = image_statistics(images) if stats is None else stats
    report = {
        "pfd": frechet_distance(stats["feature_mean"], stats["feature_cov"], reference["feature_mean"],
                                reference["feature_cov"]),
        "pfd_real_real": float(reference["fd_real_real"]),
        "channel_mean_diff": float((stats["channel_mean"] - reference["channel_mean"]).abs().max()),
        "channel_std_diff": float((stats["channel_std"] - reference["channel_std"]).abs().max()),
        "channel_mean": [round(float(v), 4) for v in stats["channel_mean"]],
        "channel_std": [round(float(v), 4) for v in stats["channel_std"]],
    }
    for part in procedural.PART_BOXES:
        report[f"part_mean_diff/{part}"] = float((stats[f"mean_{part}"] - reference[f"mean_{part}"]).abs().mean())
        report[f"part_std_diff/{part}"] = float((stats[f"std_{part}"] - reference[f"std_{part}"]).abs().mean())
    return report
