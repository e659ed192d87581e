"""Gradient SHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021).

SHAP values approximated as the expectation, over baselines ``b`` drawn from a background set and
``alpha ~ U(0, 1)``, of ``(x' - b) * grad f(b + alpha (x' - b))`` where ``x' = x + N(0, stdev^2)``
(``stdev`` in normalised input units, like Captum's ``stdevs`` and shap's ``local_smoothing``).
The default background is built from the image itself (black, blurred, uniform noise), so no
dataset is needed. Sums of attributions approach ``f(x) - E_b f(b)`` as the sample count grows;
each explanation reports that gap. Samples go through
:func:`~biasscope.explainers._gradients.path_gradients` in measured batches, in groups
of images whose samples fit a memory budget.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ExplainerError
from ..models.adapter import ModelAdapter
from ._baselines import BASELINES, make_baseline
from ._gradients import image_groups, path_gradients, target_logits_batched
from .base import SEED_MAX, Attribution, Explainer, Param
from .registry import register

__all__ = ["GradientShap", "parse_background"]

DEFAULT_BACKGROUND = "black,blur,noise"


def parse_background(spec: str) -> tuple[str, ...]:
    """``"black,blur,noise"`` -> ``("black", "blur", "noise")``; raises on unknown kinds."""
    kinds = tuple(k.strip().lower() for k in spec.split(",") if k.strip())
    if not kinds:
        raise ExplainerError(f"parameter background needs at least one of {', '.join(BASELINES)}")
    bad = [k for k in kinds if k not in BASELINES]
    if bad:
        raise ExplainerError(
            f"parameter background: unknown kind(s) {', '.join(bad)}; choose from {', '.join(BASELINES)}"
        )
    return kinds


@register(aliases=("gradientshap", "expected_gradients", "gradshap"))
class GradientShap(Explainer):
    name = "gradient_shap"
    label = "Gradient SHAP"
    signed = True
    requires = frozenset({"gradients"})
    params = (
        Param("n_samples", int, 50, "number of (baseline, alpha) samples per image", min=1, max=5000),
        Param("stdev", float, 0.0, "sd of Gaussian noise added to the input (normalised units)", min=0.0, max=10.0),
        Param("background", str, DEFAULT_BACKGROUND, f"comma-separated baseline kinds from {', '.join(BASELINES)}"),
        Param("seed", int, 0, "random seed (baseline choice, alpha, noise)", min=0, max=SEED_MAX),
    )
    description = "Expected gradients over baselines from a background set; approximates SHAP values."

    @classmethod
    def cost(cls, config: dict[str, Any], input_size: int) -> float:
        return 3.0 * config["n_samples"]  # a forward and backward per (baseline, alpha) sample

    def __init__(self, adapter: ModelAdapter, **params: Any) -> None:
        super().__init__(adapter, **params)
        self.background_kinds = parse_background(self.config["background"])

    def background(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The background set ``(B, N, 3, S, S)``: one baseline of each kind per image."""
        return torch.stack([make_baseline(self.adapter, x, k, generator=generator) for k in self.background_kinds])

    def samples(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Background ``(B, N, ...)``, sample points ``(k, N, ...)`` and ``x' - b`` ``(k, N, ...)``.

        Each image draws its background, baseline choices, alphas and noise from its own generator
        seeded with ``seed``, so its map does not depend on the batch it is explained in.
        """
        k, stdev = self.config["n_samples"], self.config["stdev"]
        bgs, points, deltas = [], [], []
        for j in range(x.shape[0]):
            gen = self.generator()
            xj = x[j : j + 1]
            bg = self.background(xj, gen)[:, 0]  # (B, ...)
            idx = torch.randint(0, bg.shape[0], (k,), generator=gen)
            alpha = torch.rand((k,), generator=gen).view(k, *([1] * (xj.ndim - 1)))
            xs = xj.expand(k, *xj.shape[1:])
            if stdev > 0:
                xs = xs + torch.randn(xs.shape, generator=gen) * stdev
            delta = xs - bg[idx]
            bgs.append(bg)
            points.append(bg[idx] + alpha * delta)
            deltas.append(delta)
        return torch.stack(bgs, 1), torch.stack(points, 1), torch.stack(deltas, 1)

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        k = self.config["n_samples"]
        x = x.detach().cpu().float()
        targets = targets.cpu()
        n = x.shape[0]
        attr = torch.empty_like(x)
        bgs = []
        for g in image_groups(x, k):
            m = g.stop - g.start
            bg, points, delta = self.samples(x[g])
            bgs.append(bg)
            lo, hi = 0.95 * g.start / n, 0.95 * g.stop / n
            grads = path_gradients(
                self, points.reshape(k * m, *x.shape[1:]), targets[g].repeat(k), progress_from=lo, progress_to=hi
            )
            attr[g] = (delta * grads.view(k, m, *x.shape[1:])).mean(0)
        bg = torch.cat(bgs, dim=1)  # (B, N, ...)
        b = bg.shape[0]
        logit = target_logits_batched(self, torch.cat([x, bg.reshape(-1, *x.shape[1:])]), targets.repeat(1 + b))
        delta_f = logit[:n] - logit[n:].view(b, n).mean(0)
        total = attr.sum(dim=(1, 2, 3))
        checks = [
            {
                "sum_attributions": float(t),
                "expected_logit_difference": float(d),
                "completeness_error": float(abs(t - d)),
            }
            for t, d in zip(total.tolist(), delta_f.tolist())
        ]
        self.report(1.0)
        return Attribution(maps=attr.sum(1), checks=checks)
