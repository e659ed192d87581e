"""Shared machinery for CAM methods: a CAM is "how to weight the activation maps".

The base class owns the hook (registered under the adapter's hook lock and always removed),
the target scores, the gradient and the reshape of transformer layers to a grid (:func:`to_grid`);
subclasses implement :meth:`CamExplainer.cam_weights` (channel weights) or, for maps that are not a
weighted sum of channels, :meth:`CamExplainer.cam_map`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..errors import ExplainerError
from .base import Attribution, Explainer, TargetSelector, hooked

__all__ = [
    "CamExplainer",
    "TargetSelector",
    "layer_activations_and_grads",
    "this_thread_only",
    "to_grid",
    "token_grid_side",
]

LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


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


def token_grid_side(tokens: int, size: int | None = None) -> int:
    """Side ``g`` of the square patch grid among ``tokens`` (the last ``g*g`` of them): the largest
    ``g`` with ``g*g <= tokens`` that tiles a square input of side ``size``, else ``isqrt(tokens)``."""
    g = math.isqrt(tokens)
    if size:
        g = next((k for k in range(g, 0, -1) if size % k == 0), g)
    return g


def to_grid(t: torch.Tensor, layout: str = "auto", batch: int | None = None, size: int | None = None) -> torch.Tensor:
    """A target layer's output (or its gradient) as a ``(N, C, h, w)`` grid.

    ``layout``: 'nchw' (convolutions), 'nhwc' (Swin's channels-last maps), 'tokens' (a
    transformer's ``(N, T, C)`` tokens, or ``(T, N, C)`` when ``batch`` says so; the leading
    ``T - g*g`` class/register tokens are dropped and the last ``g*g`` patch tokens, row-major,
    form a ``g x g`` grid with ``g = isqrt(T)``, which holds for a square input with fewer than
    ``2g + 1`` leading tokens), or 'auto': 3-D outputs are tokens, 4-D outputs are channels-last
    when their two middle sizes are equal and the last differs (our inputs are square), else NCHW.
    """
    if layout not in LAYOUTS:
        raise ExplainerError(f"unknown target layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if t.ndim == 4:
        nhwc = layout == "nhwc" or (layout == "auto" and t.shape[1] == t.shape[2] != t.shape[3])
        return t.permute(0, 3, 1, 2) if nhwc else t
    if t.ndim == 3 and layout in ("auto", "tokens"):
        if batch is not None and t.shape[0] != batch and t.shape[1] == batch:
            t = t.transpose(0, 1)  # sequence-first attention (T, N, C)
        n, tokens, c = t.shape
        g = token_grid_side(tokens, size)
        if g == 0:
            raise ExplainerError("the target layer returned no tokens; choose another --target-layer")
        return t[:, tokens - g * g :, :].reshape(n, g, g, c).permute(0, 3, 1, 2)
    raise ExplainerError(
        f"the target layer's output has shape {tuple(t.shape)}, which is not a (N, C, h, w) map, "
        f"(N, h, w, C) map or (N, tokens, C) sequence as layout {layout!r} expects; "
        "choose another --target-layer"
    )


def layer_activations_and_grads(
    explainer: Explainer,
    x: torch.Tensor,
    targets: torch.Tensor | TargetSelector,
    start: int = 0,
    *,
    gradients: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Activations ``A`` of the adapter's target layer, ``d score / d A``, the logits and the targets.

    ``targets`` is a tensor, or a :data:`TargetSelector` called with the logits (and ``start``,
    the batch's offset) before the backward pass. The forward hook keeps the layer's original
    output and hands a clone downstream, so in-place operations after the layer cannot corrupt
    ``A``. The hook is removed even after errors and ignores forwards of other threads. With
    ``gradients=False`` (gradient-free CAMs) there is no backward pass and the gradient is None.
    ``A`` and the gradient are in the layer's own layout (see :func:`to_grid`).
    """
    adapter = explainer.adapter
    store: dict[str, torch.Tensor] = {}

    def fwd_hook(_module, _inputs, output):
        store["a"] = output
        return output.clone()

    x = x.detach().to(adapter.device).requires_grad_(gradients)
    with (
        torch.set_grad_enabled(gradients),
        adapter.hooks(),
        hooked([adapter.target_layer.register_forward_hook(this_thread_only(fwd_hook))]),
    ):
        logits = adapter.logits(x)
    if "a" not in store or not torch.is_tensor(store["a"]):
        raise ExplainerError(
            f"target layer {adapter.target_layer_name} did not return a tensor in the forward pass; "
            "choose another --target-layer"
        )
    acts = store["a"]
    if callable(targets):
        targets = torch.as_tensor(targets(logits.detach().float().cpu(), start), dtype=torch.long)
    if not gradients:
        return acts.detach(), None, logits.detach(), targets
    score = Explainer.target_logits(logits, targets).sum()
    (grads,) = torch.autograd.grad(score, acts)
    return acts.detach(), grads.detach(), logits.detach(), targets


class CamExplainer(Explainer):
    """Grad-CAM-style explainer; the map is ``ReLU(sum_k w_k A_k)`` at layer resolution.

    Transformer layers are reshaped to ``(N, K, h, w)`` grids first (:func:`to_grid`, with the
    adapter's ``target_layout``), so every CAM works on ViTs and Swin unchanged.
    """

    signed = False
    requires = frozenset({"gradients", "hooks"})
    #: targets may be chosen from the CAM's own forward pass (:meth:`Explainer.explain_choosing_targets`)
    predicts_in_pass = True
    #: whether the map needs ``d score / d A`` (a backward pass); EigenCAM and Score-CAM do not
    uses_gradients: ClassVar[bool] = True
    _span: tuple[float, float] = (0.0, 1.0)

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(N, K)`` from activations and gradients ``(N, K, h, w)``."""
        raise NotImplementedError(f"{type(self).__name__} implements neither cam_weights nor cam_map")

    def cam_map(
        self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The maps ``(N, h, w)`` from grid activations and gradients ``(N, K, h, w)``, the model
        inputs ``x`` and the targets; by default ``ReLU(sum_k cam_weights_k * A_k)``."""
        w = self.cam_weights(acts, grads)
        return torch.relu((w[:, :, None, None] * acts).sum(1))

    def attribute(self, x: torch.Tensor, targets: torch.Tensor | TargetSelector) -> Attribution:
        """CAMs of the batch; ``targets`` may be a :data:`TargetSelector` (then the returned
        attribution holds the logits and the chosen targets)."""
        maps, logits, chosen = [], [], []
        bs = self.adapter.batch_size("backward", work=x.shape[0])
        for i in range(0, x.shape[0], bs):
            t = targets if callable(targets) else targets[i : i + bs]
            xb = x[i : i + bs]
            acts, grads, lg, t = layer_activations_and_grads(self, xb, t, start=i, gradients=self.uses_gradients)
            layout, n = self.adapter.target_layout, xb.shape[0]
            acts = to_grid(acts, layout, n, xb.shape[-1])
            grads = to_grid(grads, layout, n, xb.shape[-1]) if grads is not None else None
            self._span = (i / x.shape[0], n / x.shape[0])  # this chunk's share of the progress bar
            maps.append(self.cam_map(acts, grads, xb, t).float().cpu())
            logits.append(lg.float().cpu())
            chosen.append(t.cpu())
            self.report((i + bs) / x.shape[0])
        if not callable(targets):
            return Attribution(maps=torch.cat(maps))
        return Attribution(maps=torch.cat(maps), logits=torch.cat(logits), targets=torch.cat(chosen))
