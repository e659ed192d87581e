"""HiResCAM (Draelos & Carin 2020): the element-wise product of gradients and activations summed over
channels, ``ReLU(sum_k dS/dA_k * A_k)``; unlike Grad-CAM it does not average the gradient over space,
so the map shows exactly the locations whose activations raise the score (for a linear head on the
pooled map it equals the class's contribution per location)."""

from __future__ import annotations

import torch

from ._cam import CamExplainer
from .registry import register

__all__ = ["HiResCAM"]


@register(aliases=("hires_cam",))
class HiResCAM(CamExplainer):
    name = "hirescam"
    order = 30
    label = "HiResCAM"
    description = "Gradient times activation per location, summed over channels (no spatial averaging)."

    def cam_map(self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, targets: torch.Tensor):
        return torch.relu((grads * acts).sum(1))
