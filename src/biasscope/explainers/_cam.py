"""Shared machinery for CAM methods: a CAM is "how to weight the activation maps".

The base class owns the hook (registered under the adapter's hook lock and always removed),
the target scores and the gradient; subclasses implement :meth:`CamExplainer.cam_weights`.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from .base import Attribution, Explainer, hooked

__all__ = ["CamExplainer", "layer_activations_and_grads", "this_thread_only"]


def this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a forward hook so it acts only on forwards run by the thread that registered it.

    A server shares one model between requests: while one thread's hook is registered, another
    thread's forward (e.g. Integrated Gradients, which needs no hook) passes through the same
    module and must neither be rewritten by the hook nor overwrite what the hook records.
    """
    owner = threading.get_ident()

    def wrapped(module, inputs, output):
        if threading.get_ident() != owner:
            return None
        return hook(module, inputs, output)

    return wrapped


def layer_activations_and_grads(
    explainer: Explainer, x: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations ``A`` of the adapter's target layer, ``d score / d A`` and the logits.

    The forward hook keeps the layer's original output and hands a clone downstream, so in-place
    operations after the layer cannot corrupt ``A``. The hook is removed even after errors and
    ignores forwards of other threads.
    """
    adapter = explainer.adapter
    store: dict[str, torch.Tensor] = {}

    def fwd_hook(_module, _inputs, output):
        store["a"] = output
        return output.clone()

    x = x.detach().to(adapter.device).requires_grad_(True)
    with adapter.hooks(), hooked([adapter.target_layer.register_forward_hook(this_thread_only(fwd_hook))]):
        logits = adapter.logits(x)
    acts = store["a"]
    score = Explainer.target_logits(logits, targets).sum()
    (grads,) = torch.autograd.grad(score, acts)
    return acts.detach(), grads.detach(), logits.detach()


class CamExplainer(Explainer):
    """Grad-CAM-style explainer; the map is ``ReLU(sum_k w_k A_k)`` at layer resolution."""

    signed = False
    requires = frozenset({"gradients", "hooks"})

    @abstractmethod
    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(N, K)`` from activations and gradients ``(N, K, h, w)``."""

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        maps = []
        bs = self.adapter.batch_size("backward", work=x.shape[0])
        for i in range(0, x.shape[0], bs):
            acts, grads, _ = layer_activations_and_grads(self, x[i : i + bs], targets[i : i + bs])
            w = self.cam_weights(acts, grads)
            maps.append(torch.relu((w[:, :, None, None] * acts).sum(1)).float().cpu())
            self.report((i + bs) / x.shape[0])
        return Attribution(maps=torch.cat(maps))
