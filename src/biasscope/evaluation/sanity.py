"""Model-parameter randomisation sanity check (Adebayo et al. 2018), callable for any method.

Cascading randomisation: re-initialise the model's top-level blocks one at a time from the output
towards the input, explain again after each, and measure how similar the map stays (Spearman rank
correlation of absolute attributions). A method whose maps barely change when the weights are
destroyed is not explaining the model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from ..explainers import Explainer, get_explainer
from ..models.adapter import ModelAdapter

__all__ = ["RandomizationResult", "randomization_check"]


@dataclass
class RandomizationResult:
    method: str
    layers: list[str]  # blocks randomised so far, one entry per step
    spearman: list[float]  # rank correlation of |map| with the original, per step

    def to_dict(self) -> dict:
        return {"method": self.method, "layers": self.layers, "spearman": self.spearman}


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level parameterised blocks from the output side (deepest first)."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        subs = list(child.named_children()) if isinstance(child, nn.Sequential) and len(child) > 2 else []
        items = [(f"{name}.{n}", m) for n, m in subs] if subs else [(name, child)]
        blocks.extend((n, m) for n, m in items if any(True for _ in m.parameters()))
    return blocks[::-1]


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (p.std() if p.numel() > 1 else 1.0) + 0.0)


def randomization_check(
    adapter: ModelAdapter,
    image: Image.Image,
    method: str,
    *,
    target: int | str | None = None,
    params: dict | None = None,
    max_steps: int | None = None,
    seed: int = 0,
) -> RandomizationResult:
    """Spearman correlation between the original map and maps after cascading randomisation.

    The randomised copy is :meth:`ModelAdapter.with_model` of a deep copy of the model: the same
    preprocessing, backend and precision as ``adapter``; only the weights change."""
    cls = get_explainer(method)
    kwargs = dict(params or {})
    x = adapter.preprocess(image)
    if target is None:
        targets = adapter.probabilities(x, fast=False).argmax(1)
    else:
        targets = torch.tensor([adapter.class_index(target)], dtype=torch.long)
    ref = np.abs(_model_map(cls(adapter, **kwargs), x, targets)).ravel()
    rand_model = copy.deepcopy(adapter.model)
    clone = adapter.with_model(rand_model, name=adapter.name + " (randomised)")
    gen = torch.Generator().manual_seed(seed)
    layers: list[str] = []
    corr: list[float] = []
    for i, (name, block) in enumerate(_blocks(rand_model)):
        if max_steps is not None and i >= max_steps:
            break
        _randomize(block, gen)
        layers.append(name)
        m = np.abs(_model_map(cls(clone, **kwargs), x, targets)).ravel()
        rho = spearmanr(ref, m).statistic if np.ptp(m) > 0 and np.ptp(ref) > 0 else 0.0
        corr.append(float(rho))
    return RandomizationResult(method=cls.name, layers=layers, spearman=corr)


def _model_map(explainer: Explainer, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """The explainer's map of the one image in ``x`` at the model's input resolution."""
    return explainer.run(x, targets).model_maps(explainer.adapter.input_size)[0]
