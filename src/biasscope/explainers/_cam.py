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

__all__ = ["CamExplainer", "TargetSelector", "layer_activations_and_grads", "this_thread_only"]

#: ``(logits of a chunk (n, C), index of the chunk's first image) -> targets (n,)``: lets a caller
#: pick each image's target from the CAM's own forward pass (e.g. its predicted class), so that a
#: prediction and its explanation need one forward pass, not two
TargetSelector = Callable[[torch.Tensor, int], torch.Tensor]


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
    explainer: Explainer, x: torch.Tensor, targets: torch.Tensor | TargetSelector, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations ``A`` of the adapter's target layer, ``d score / d A``, the logits and the targets.

    ``targets`` is a tensor, or a :data:`TargetSelector` called with the logits (and ``start``,
    the batch's offset) before the backward pass. The forward hook keeps the layer's original
    output and hands a clone downstream, so in-place operations after the layer cannot corrupt
    ``A``. The hook is removed even after errors and ignores forwards of other threads.
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
    if callable(targets):
        targets = torch.as_tensor(targets(logits.detach().float().cpu(), start), dtype=torch.long)
    score = Explainer.target_logits(logits, targets).sum()
    (grads,) = torch.autograd.grad(score, acts)
    return acts.detach(), grads.detach(), logits.detach(), targets


class CamExplainer(Explainer):
    """Grad-CAM-style explainer; the map is ``ReLU(sum_k w_k A_k)`` at layer resolution."""

    signed = False
    requires = frozenset({"gradients", "hooks"})

    @abstractmethod
    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(N, K)`` from activations and gradients ``(N, K, h, w)``."""

    def attribute(self, x: torch.Tensor, targets: torch.Tensor | TargetSelector) -> Attribution:
        """CAMs of the batch; ``targets`` may be a :data:`TargetSelector` (then the returned
        attribution holds the logits and the chosen targets)."""
        maps, logits, chosen = [], [], []
        bs = self.adapter.batch_size("backward", work=x.shape[0])
        for i in range(0, x.shape[0], bs):
            t = targets if callable(targets) else targets[i : i + bs]
            acts, grads, lg, t = layer_activations_and_grads(self, x[i : i + bs], t, start=i)
            w = self.cam_weights(acts, grads)
            maps.append(torch.relu((w[:, :, None, None] * acts).sum(1)).float().cpu())
            logits.append(lg.float().cpu())
            chosen.append(t.cpu())
            self.report((i + bs) / x.shape[0])
        if not callable(targets):
            return Attribution(maps=torch.cat(maps))
        return Attribution(maps=torch.cat(maps), logits=torch.cat(logits), targets=torch.cat(chosen))
