"""Grad-CAM (Selvaraju et al. 2017): channel weights are spatially averaged gradients."""

from __future__ import annotations

import torch

from ._cam import CamExplainer
from .registry import register

__all__ = ["GradCAM"]


@register(aliases=("grad_cam",))
class GradCAM(CamExplainer):
    name = "gradcam"
    order = 10
    label = "Grad-CAM"
    description = "Class activation map weighted by the mean gradient of the class score."

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3))
