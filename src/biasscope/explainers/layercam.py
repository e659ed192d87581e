"""LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(dS/dA_k) * A_k)``, per-location positive gradients
as weights, which keeps fine detail at shallow layers as well as deep ones."""

from __future__ import annotations

import torch

from ._cam import CamExplainer
from .registry import register

__all__ = ["LayerCAM"]


@register(aliases=("layer_cam",))
class LayerCAM(CamExplainer):
    name = "layercam"
    order = 40
    label = "LayerCAM"
    description = "Activations weighted by their positive gradients at each location."

    def cam_map(self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, targets: torch.Tensor):
        return torch.relu((torch.relu(grads) * acts).sum(1))
