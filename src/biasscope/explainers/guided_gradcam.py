"""Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

Guided backpropagation passes only positive gradients through ReLUs, where the ReLU itself passes
gradient. A forward hook on every ``nn.ReLU`` and ``nn.ReLU6`` (removed afterwards) zeroes the negative
gradients arriving at its output; the module's own backward then applies its derivative (``x > 0``, and
``x < 6`` for ReLU6). That is Springenberg et al.'s rule, and what Captum's ``GuidedBackprop`` computes for
modules it recognises (``nn.ReLU``; tests/explainers/test_cams.py checks ReLU6 against it through an
``nn.ReLU`` subclass). Networks with other activations (GELU, SiLU, Hardswish) are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._cam import this_thread_only
from .base import Attribution, Explainer, hooked
from .gradcam import GradCAM
from .registry import register

__all__ = ["GUIDED_ACTIVATIONS", "GuidedGradCAM", "guided_backprop"]

#: the activations whose backward guided backpropagation rewrites
GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class _GuidedReLUGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out: torch.Tensor) -> torch.Tensor:  # out = relu(input) already
        ctx.save_for_backward(out)
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


def guided_backprop(explainer: Explainer, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Guided-backprop gradients ``(N, 3, S, S)`` of the target logits with respect to ``x``."""
    adapter = explainer.adapter
    relus = [m for m in adapter.model.modules() if isinstance(m, GUIDED_ACTIVATIONS)]

    def hook(_m, _i, out):
        return _GuidedReLUGrad.apply(out)

    x = x.detach().to(adapter.device).requires_grad_(True)
    with adapter.hooks(), hooked([]) as handles:
        for m in relus:  # registered one by one inside the context: removed even if one fails
            handles.append(m.register_forward_hook(this_thread_only(hook)))
        logits = adapter.logits(x)
        score = Explainer.target_logits(logits, targets).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad.detach()


@register(aliases=("guided_grad_cam",))
class GuidedGradCAM(Explainer):
    name = "guided_gradcam"
    label = "Guided Grad-CAM"
    signed = True
    requires = frozenset({"gradients", "hooks", "relu"})
    description = "Pixel-level guided backpropagation masked by Grad-CAM."

    @classmethod
    def cost(cls, config: dict[str, Any], input_size: int) -> float:
        return 6.0  # Grad-CAM's forward and backward, and guided backpropagation's

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        cam = GradCAM(self.adapter).attribute(x, targets).maps
        self.report(0.5)
        cam_up = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps = []
        bs = self.adapter.batch_size("backward", work=x.shape[0])
        for i in range(0, x.shape[0], bs):
            gb = guided_backprop(self, x[i : i + bs], targets[i : i + bs]).cpu()
            maps.append((gb * cam_up[i : i + bs]).sum(1))
        self.report(1.0)
        return Attribution(maps=torch.cat(maps).float())
