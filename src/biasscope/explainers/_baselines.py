"""Reference inputs ("what absence looks like") shared by IG, SHAP, occlusion and LIME."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.adapter import ModelAdapter

__all__ = ["BASELINES", "make_baseline"]

BASELINES = ("black", "mean", "blur", "white", "noise")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_baseline(
    adapter: ModelAdapter, x: torch.Tensor, kind: str, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A baseline like ``x`` (normalised): black/white pixels, the dataset mean colour
    (normalised zero), a strong Gaussian blur of ``x``, or uniform noise."""
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "black":
        return adapter.normalize(torch.zeros_like(x))
    if kind == "white":
        return adapter.normalize(torch.ones_like(x))
    if kind == "blur":
        return _gaussian_blur(x, sigma=max(2.0, x.shape[-1] / 16))
    if kind == "noise":
        u = torch.rand(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        return adapter.normalize(u)
    raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
