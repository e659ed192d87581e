"""Grad-CAM++ (Chattopadhyay et al. 2018), with the closed-form alphas of the paper (as in
pytorch-grad-cam): ``alpha = g^2 / (2 g^2 + sum(A) g^3)``, weights ``sum(alpha * relu(g))``."""

from __future__ import annotations

import torch

from ._cam import CamExplainer
from .registry import register

__all__ = ["GradCAMPlusPlus"]


@register(aliases=("gradcam++", "grad_cam_pp", "gradcam_pp"))
class GradCAMPlusPlus(CamExplainer):
    name = "gradcampp"
    order = 20
    label = "Grad-CAM++"
    description = "Grad-CAM with pixel-wise gradient weights; better for several instances."

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        sum_a = acts.sum(dim=(2, 3), keepdim=True)
        denom = 2 * g2 + sum_a * g3
        denom = torch.where(denom != 0, denom, torch.ones_like(denom))
        alpha = torch.where(grads != 0, g2 / denom, torch.zeros_like(g2))
        return (alpha * torch.relu(grads)).sum(dim=(2, 3))
