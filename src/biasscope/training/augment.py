"""Seeded data augmentation on uint8 image batches, with a stronger variant for chosen images.

``standard``: random horizontal flip and a random shift of up to 1/8 of the side (reflect padding).
``strong`` adds colour jitter (brightness, contrast and saturation each scaled by a factor in
``[1 - s, 1 + s]``) and a larger shift (1/4 of the side). Every random number comes from the
``torch.Generator`` passed in, so a seeded run is reproducible.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["AUGMENT_MODES", "Augment", "augment_batch"]

Augment = Literal["none", "standard"]
AUGMENT_MODES: tuple[str, ...] = ("none", "standard")

STRONG_JITTER = 0.4


def _shift(x: torch.Tensor, max_frac: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = max(1, round(float(max_frac.max()) * max(h, w)))
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad < min(h, w) else F.pad(x, (pad,) * 4, mode="replicate")
    limit = (max_frac * max(h, w)).round().long().clamp(max=pad)
    out = torch.empty_like(x)
    dx = torch.randint(-pad, pad + 1, (n,), generator=g)
    dy = torch.randint(-pad, pad + 1, (n,), generator=g)
    dx = torch.maximum(torch.minimum(dx, limit), -limit)
    dy = torch.maximum(torch.minimum(dy, limit), -limit)
    for i in range(n):
        oy, ox = pad + int(dy[i]), pad + int(dx[i])
        out[i] = xp[i, :, oy : oy + h, ox : ox + w]
    return out


def _jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]

    def factors() -> torch.Tensor:
        return (1.0 + strength * (2 * torch.rand(n, generator=g) - 1)).view(n, 1, 1, 1)

    b, c, s = factors(), factors(), factors()
    x = x * b
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * c + gray.mean(dim=(2, 3), keepdim=True)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * s + gray
    return x.clamp(0.0, 1.0)


def augment_batch(
    x_uint8: torch.Tensor, *, mode: str, strong: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """Augment a ``(N, 3, H, W)`` uint8 batch; returns float ``[0, 1]``.

    ``strong`` is a boolean mask of the images that get the strong variant (applied even when
    ``mode == "none"``: stronger augmentation for under-represented groups is asked for explicitly).
    """
    x = x_uint8.float().div_(255.0)
    n = x.shape[0]
    strong = torch.zeros(n, dtype=torch.bool) if strong is None else strong.bool()
    plain = torch.full((n,), mode == "standard", dtype=torch.bool)
    touched = plain | strong
    if not bool(touched.any()):
        return x
    flip = (torch.rand(n, generator=generator) < 0.5) & touched
    x[flip] = x[flip].flip(-1)
    frac = torch.where(strong, torch.tensor(0.25), torch.where(plain, torch.tensor(0.125), torch.tensor(0.0)))
    x = _shift(x, frac, generator)
    if bool(strong.any()):
        x[strong] = _jitter(x[strong], STRONG_JITTER, generator)
    return x
