"""XGrad-CAM (Fu et al. 2020): channel weights ``sum_ij A_k,ij * dS/dA_k,ij / (sum_ij A_k,ij + eps)``,
the activation-weighted mean gradient that makes the map satisfy the paper's sensitivity and
conservation axioms (eps 1e-7, as pytorch-grad-cam)."""

from __future__ import annotations

import torch

from ._cam import CamExplainer
from .registry import register

__all__ = ["XGradCAM"]

EPS = 1e-7


@register(aliases=("xgrad_cam", "axiom_cam"))
class XGradCAM(CamExplainer):
    name = "xgradcam"
    order = 50
    label = "XGrad-CAM"
    description = "Grad-CAM with activation-weighted gradient averages (axiom-based)."

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (grads * acts).sum(dim=(2, 3)) / (acts.sum(dim=(2, 3)) + EPS)
