"""Eigen-CAM (Muhammad & Yeasin 2020): the activations projected on their first principal component.

Per image, the ``(h*w, K)`` activation matrix is centred over locations and projected on its first
right singular vector; no gradient and no class: it shows what the layer responds to most, the
same map for every target. The sign of a singular vector is arbitrary, so the map is flipped where
its most negative value is larger in size than its largest (Eq. 13 of Chung & Ying 2025, as
pytorch-grad-cam's ``get_2d_projection_with_sign_correction``); then ReLU.
"""

from __future__ import annotations

import torch

from ._cam import CamExplainer
from .registry import register

__all__ = ["EigenCAM", "first_component_projection"]


def first_component_projection(acts: torch.Tensor) -> torch.Tensor:
    """``(N, K, h, w)`` activations -> ``(N, h, w)`` sign-corrected first-component projections (float64)."""
    n, k, h, w = acts.shape
    a = torch.nan_to_num(acts.double()).reshape(n, k, h * w).transpose(1, 2)  # (N, hw, K)
    a = a - a.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(a, full_matrices=False)
    proj = (a @ vh[:, 0, :, None]).squeeze(-1)  # (N, hw)
    flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(n, h, w)


@register(aliases=("eigen_cam",))
class EigenCAM(CamExplainer):
    name = "eigencam"
    order = 70
    label = "Eigen-CAM"
    description = "First principal component of the layer's activations (class-agnostic, no gradients)."
    uses_gradients = False

    def cam_map(self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, targets: torch.Tensor):
        return torch.relu(first_component_projection(acts)).to(acts.dtype)
