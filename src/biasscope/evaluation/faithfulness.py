"""Deletion and insertion curves (Petsiuk et al. 2018), fully batched.

Deletion removes the most-attributed pixels first (replacing them with a baseline) and tracks the
target probability: a faithful map makes it fall fast (low AUC). Insertion starts from a blurred
image and restores the most-attributed pixels first: a faithful map makes it rise fast (high AUC).
"""

from __future__ import annotations

import numpy as np
import torch

from ..explainers import make_baseline
from ..models.adapter import ModelAdapter

__all__ = ["deletion_insertion", "perturbation_curves"]


def _ranks(maps: np.ndarray) -> torch.Tensor:
    """Per image, the rank of each pixel in descending attribution order ``(N, S*S)``."""
    flat = torch.as_tensor(maps.reshape(maps.shape[0], -1))
    # stable tie-breaking so equal values are removed in a fixed order
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    return ranks


def perturbation_curves(
    adapter: ModelAdapter,
    x: torch.Tensor,
    targets: torch.Tensor,
    maps: np.ndarray,
    *,
    steps: int = 20,
    deletion_baseline: str = "black",
    insertion_baseline: str = "blur",
) -> tuple[np.ndarray, np.ndarray]:
    """Target probabilities along the deletion and insertion curves: two ``(N, steps + 1)`` arrays."""
    x = x.detach().cpu().float()
    n, _, h, w = x.shape
    ranks = _ranks(np.asarray(maps, dtype=np.float32))  # (N, h*w)
    thresholds = torch.round(torch.linspace(0, h * w, steps + 1)).long()
    keep_top = (ranks[None] < thresholds[:, None, None]).view(steps + 1, n, 1, h, w)
    curves = []
    for base_kind, top_is_x in ((deletion_baseline, False), (insertion_baseline, True)):
        base = make_baseline(adapter, x, base_kind)
        if top_is_x:  # insertion: top pixels come from x, the rest from the baseline
            batch = torch.where(keep_top, x[None], base[None])
        else:  # deletion: top pixels replaced by the baseline
            batch = torch.where(keep_top, base[None], x[None])
        probs = adapter.probabilities(batch.view(-1, *x.shape[1:]))
        t = targets.repeat(steps + 1)
        p = probs.gather(1, t.view(-1, 1)).view(steps + 1, n).T
        curves.append(p.numpy())
    return curves[0], curves[1]


def _auc(curve: np.ndarray) -> np.ndarray:
    return np.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), axis=1)


def deletion_insertion(
    adapter: ModelAdapter, x: torch.Tensor, targets: torch.Tensor, maps: np.ndarray, *, steps: int = 20
) -> list[dict]:
    """Per image: deletion AUC (lower is better), insertion AUC (higher is better)."""
    dele, ins = perturbation_curves(adapter, x, targets, maps, steps=steps)
    d_auc, i_auc = _auc(dele), _auc(ins)
    return [
        {"deletion_auc": float(d), "insertion_auc": float(i)} for d, i in zip(d_auc.tolist(), i_auc.tolist())
    ]
