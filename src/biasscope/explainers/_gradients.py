"""Gradient code shared by the path and sampling methods (Integrated Gradients, SmoothGrad, Gradient
SHAP): target-logit gradients and logits at many points in measured batches, and grouping of images
so that one group's points fit in memory."""

from __future__ import annotations

import torch

from .base import Explainer

__all__ = ["POINTS_BYTES", "image_groups", "path_gradients", "target_logits_batched"]

#: memory budget for the sample points of one group of images (SmoothGrad, Gradient SHAP use it too)
POINTS_BYTES = 256 * 2**20


def image_groups(x: torch.Tensor, points_per_image: int) -> list[slice]:
    """Slices of the batch ``x`` whose ``points_per_image`` copies each fit in :data:`POINTS_BYTES`."""
    per_point = max(1, x[0].numel() * 4)
    per_group = max(1, POINTS_BYTES // (per_point * max(1, points_per_image)))
    return [slice(i, min(i + per_group, x.shape[0])) for i in range(0, x.shape[0], per_group)]


def path_gradients(
    explainer: Explainer,
    points: torch.Tensor,
    targets: torch.Tensor,
    *,
    progress_from: float = 0.0,
    progress_to: float = 1.0,
) -> torch.Tensor:
    """Gradients of the target logits at ``points`` ``(M, 3, S, S)`` (``targets`` ``(M,)``),
    computed in measured batches."""
    adapter = explainer.adapter
    bs = adapter.batch_size("backward", work=points.shape[0])
    out = torch.empty_like(points, device="cpu")
    for i in range(0, points.shape[0], bs):
        p = points[i : i + bs].to(adapter.device).requires_grad_(True)
        score = Explainer.target_logits(adapter.logits(p), targets[i : i + bs]).sum()
        (g,) = torch.autograd.grad(score, p)
        out[i : i + bs] = g.detach().cpu()
        done = min(1.0, (i + bs) / points.shape[0])
        explainer.report(progress_from + (progress_to - progress_from) * done)
    return out


@torch.no_grad()
def target_logits_batched(explainer: Explainer, points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Target logits (fp32, on CPU) at ``points`` ``(M, 3, S, S)``, computed in measured batches."""
    adapter = explainer.adapter
    bs = adapter.batch_size("forward", work=points.shape[0])
    outs = [
        Explainer.target_logits(adapter.logits(points[i : i + bs].to(adapter.device)), targets[i : i + bs])
        .float()
        .cpu()
        for i in range(0, points.shape[0], bs)
    ]
    return torch.cat(outs)
