"""SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies of the input.

``map = sum_c mean_j |d f / d x_c|(x + eps_j)``, ``eps_j ~ N(0, sigma^2)`` with
``sigma = noise_level * (max(x) - min(x))`` per image (the paper's relative noise level). With
``absolute=False`` the signed gradients are averaged instead. (image, sample) pairs go through
:func:`~biasscope.explainers._gradients.path_gradients` in measured batches, in groups of
images whose samples fit a memory budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._gradients import image_groups, path_gradients
from .base import SEED_MAX, Attribution, Explainer, Param
from .registry import register

__all__ = ["SmoothGrad", "noisy_copies"]


def noisy_copies(x: torch.Tensor, n_samples: int, noise_level: float, seed: int) -> torch.Tensor:
    """``(n_samples * N, ...)`` sample-major noisy copies of ``x`` ``(N, ...)``.

    The noise sd of each image is ``noise_level`` times that image's value range. Each image's
    noise comes from its own generator seeded with ``seed``, so an image's map does not depend
    on which batch (or batch position) it is explained in.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    sd = noise_level * (flat.max(dim=1).values - flat.min(dim=1).values)  # (N,)
    eps = torch.stack(
        [
            torch.randn((n_samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
            for _ in range(n)
        ],
        dim=1,
    )  # (n_samples, N, ...)
    eps = eps * sd.view(1, n, *([1] * (x.ndim - 1)))
    return (x[None] + eps).reshape(n_samples * n, *x.shape[1:])


@register(aliases=("smooth_grad",))
class SmoothGrad(Explainer):
    name = "smoothgrad"
    label = "SmoothGrad"
    signed = False
    requires = frozenset({"gradients"})
    params = (
        Param("n_samples", int, 25, "number of noisy copies", min=1, max=1000),
        Param("noise_level", float, 0.15, "noise sd as a fraction of the input's value range", min=0.0, max=1.0),
        Param("absolute", bool, True, "average |gradient| (unsigned map) instead of the signed gradient"),
        Param("seed", int, 0, "random seed for the noise", min=0, max=SEED_MAX),
    )
    description = "Gradients averaged over noisy copies of the image; sharper than a single gradient."

    @classmethod
    def cost(cls, config: dict[str, Any], input_size: int) -> float:
        return 3.0 * config["n_samples"]  # a forward and backward per noisy copy

    @classmethod
    def signed_for(cls, config: Mapping[str, Any]) -> bool:
        """The signed variant (``absolute=False``) needs a diverging colour map."""
        return not config["absolute"]

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        k = self.config["n_samples"]
        x = x.detach().cpu().float()
        targets = targets.cpu()
        n = x.shape[0]
        maps = torch.empty(n, *x.shape[2:])
        for g in image_groups(x, k):
            m = g.stop - g.start
            points = noisy_copies(x[g], k, self.config["noise_level"], self.config["seed"])
            lo, hi = g.start / n, g.stop / n
            grads = path_gradients(self, points, targets[g].repeat(k), progress_from=lo, progress_to=hi)
            grads = grads.view(k, m, *x.shape[1:])
            if self.config["absolute"]:
                grads = grads.abs()
            maps[g] = grads.mean(0).sum(1)
        self.report(1.0)
        return Attribution(maps=maps)
