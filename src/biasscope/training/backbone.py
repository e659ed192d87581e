"""The network a run trains: a torchvision architecture with a new head (pretrained weights copied
into every other layer on request), and the head inputs of a frozen backbone, computed once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["EVAL_CHUNK", "build_backbone", "cache_head_inputs", "head_name"]

#: images per gradient-free forward pass (evaluation, cached features)
EVAL_CHUNK = 256


def head_name(model: nn.Module) -> str:
    """Dotted name of the classification head: the last ``Linear`` or ``Conv2d`` module."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            last = name
    if last is None:
        raise ModelError("the model has no Linear or Conv2d layer to use as the classification head")
    return last


def build_backbone(spec: str, num_classes: int, *, pretrained: bool, download: bool = False) -> nn.Module:
    """``build_architecture(arch, num_classes)``, with the cached torchvision weights copied into
    every layer but the head when ``pretrained`` (raises WeightsMissingError offline without them)."""
    from ..models.zoo import build_architecture, build_zoo_model

    arch = spec.split(":")[0].strip().lower()
    model = build_architecture(arch, num_classes)
    if not pretrained:
        return model
    src, _ = build_zoo_model(spec, download=download)
    own = model.state_dict()
    head = head_name(model) + "."
    take = {k: v for k, v in src.state_dict().items() if k in own and not k.startswith(head)}
    bad = [k for k, v in take.items() if v.shape != own[k].shape]
    missing = [k for k in own if k not in take and not k.startswith(head)]
    if bad or missing:
        raise ModelError(f"pretrained {spec} does not fit the {arch} architecture: "
                         f"{', '.join((bad + missing)[:5])}")
    model.load_state_dict(take, strict=False)
    return model


class _HeadInput:
    """Capture the input of the head module during a forward pass."""

    def __init__(self, head: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = head.register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, args: tuple, _out: Any) -> None:
        self.value = args[0].detach()

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def cache_head_inputs(model: nn.Module, head: nn.Module, xs: torch.Tensor, normalize: Callable,
                    device: torch.device) -> torch.Tensor | None:
    """Head inputs for every image of ``xs`` (frozen backbone in eval mode), or None if the
    model's output is not ``head(head_input)`` (e.g. pooling after the head)."""
    cap = _HeadInput(head)
    feats = []
    try:
        for i in range(0, xs.shape[0], EVAL_CHUNK):
            xb = normalize(xs[i : i + EVAL_CHUNK].float().div(255.0)).to(device)
            out = model(xb)
            if cap.value is None:
                return None
            if i == 0 and not torch.allclose(head(cap.value), out, atol=1e-5, rtol=1e-4):
                return None
            feats.append(cap.value)
    finally:
        cap.remove()
    return torch.cat(feats)
