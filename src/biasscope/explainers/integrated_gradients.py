"""Integrated Gradients (Sundararajan et al. 2017) with Gauss-Legendre quadrature (as Captum).

Attributions ``(x - b) * integral_0^1 grad f(b + a (x - b)) da`` for the target logit. Every
explanation reports its completeness error ``|sum(attr) - (f(x) - f(b))|``, absolute and relative.
(image, step) pairs are batched through the model together; images are taken in groups so that
the path points of one group stay within :data:`._gradients.POINTS_BYTES` of memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._baselines import BASELINES, make_baseline
from ._gradients import image_groups, path_gradients, target_logits_batched
from .base import SEED_MAX, Attribution, Explainer, Param
from .registry import register

__all__ = ["IntegratedGradients"]

@register(aliases=("ig", "integrated_gradient"))
class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    order = 90
    label = "Integrated Gradients"
    signed = True
    requires = frozenset({"gradients"})
    params = (
        Param("steps", int, 50, "integration steps (Gauss-Legendre)", min=2, max=1000),
        Param("baseline", str, "black", "reference input", choices=BASELINES),
        Param("seed", int, 0, "random seed (noise baseline)", min=0, max=SEED_MAX),
    )
    description = "Path-integrated gradients from a baseline; satisfies completeness."

    @classmethod
    def cost(cls, config: dict[str, Any], input_size: int) -> float:
        return 3.0 * config["steps"] + 1.0  # a forward and backward per step, and f(baseline)

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        steps = self.config["steps"]
        nodes, wts = np.polynomial.legendre.leggauss(steps)
        alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float32)
        weights = torch.tensor(wts / 2, dtype=torch.float32)
        x = x.detach().cpu().float()
        targets = targets.cpu()
        n = x.shape[0]
        # one generator per image: a noise baseline does not depend on the batch an image is in
        kind = self.config["baseline"]
        base = torch.cat([make_baseline(self.adapter, xj[None], kind, generator=self.generator()) for xj in x])
        attr = torch.empty_like(x)
        for g in image_groups(x, steps):
            m = g.stop - g.start
            diff = x[g] - base[g]
            # (steps, m, 3, S, S) flattened step-major so each chunk mixes images at one alpha
            points = (base[g][None] + alphas.view(-1, 1, 1, 1, 1) * diff[None]).reshape(-1, *x.shape[1:])
            lo, hi = 0.95 * g.start / n, 0.95 * g.stop / n
            grads = path_gradients(self, points, targets[g].repeat(steps), progress_from=lo, progress_to=hi)
            attr[g] = diff * (weights.view(-1, 1, 1, 1, 1) * grads.view(steps, m, *x.shape[1:])).sum(0)
        logit = target_logits_batched(self, torch.cat([x, base]), targets.repeat(2))
        delta_f = logit[:n] - logit[n:]
        total = attr.sum(dim=(1, 2, 3))
        checks = [
            {
                "completeness_error": float(abs(t - d)),
                "completeness_relative": float(abs(t - d) / max(abs(float(d)), 1e-6)),
                "sum_attributions": float(t),
                "logit_difference": float(d),
            }
            for t, d in zip(total.tolist(), delta_f.tolist())
        ]
        self.report(1.0)
        return Attribution(maps=attr.sum(1), checks=checks)
