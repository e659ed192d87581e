"""What does a region do? Remove it (blur or fill) and measure the change in a class score.

``effect = score(image with region removed) - score(original image)``: negative when the region
supported the score (removing the stethoscope lowers "doctor"), positive when it argued against it.
All removed variants of a batch of images go through the model in one batched call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import BiasscopeError
from ..models.adapter import ModelAdapter

__all__ = ["RemovalConfig", "region_removal_effects", "remove_region"]

RemovalMode = Literal["fill", "blur"]


@dataclass(frozen=True)
class RemovalConfig:
    """How a region is removed.

    ``mode="fill"`` paints the region with ``fill``: ``"mean"`` (the mean colour of the pixels outside
    the region, so the fill carries no information from inside it) or an ``(R, G, B)`` colour.
    ``mode="blur"`` replaces it by a Gaussian blur of radius ``blur_radius`` pixels (``None``: a
    quarter of the region's bounding box's smaller side, at least 2).
    """

    mode: RemovalMode = "fill"
    fill: str | tuple[int, int, int] = "mean"
    blur_radius: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("fill", "blur"):
            raise BiasscopeError(f"removal mode must be 'fill' or 'blur', got {self.mode!r}")
        if isinstance(self.fill, str) and self.fill != "mean":
            raise BiasscopeError(f"removal fill must be 'mean' or an R,G,B colour, got {self.fill!r}")
        if self.blur_radius is not None and self.blur_radius <= 0:
            raise BiasscopeError("blur radius must be positive")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "fill": self.fill if isinstance(self.fill, str) else list(self.fill),
                "blur_radius": self.blur_radius}


def remove_region(image: Image.Image, mask: np.ndarray, config: RemovalConfig | None = None) -> Image.Image:
    """A copy of ``image`` with the pixels under boolean ``mask`` blurred or filled."""
    cfg = config or RemovalConfig()
    arr = np.asarray(image.convert("RGB")).copy()
    m = np.asarray(mask, dtype=bool)
    if m.shape != arr.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image {arr.shape[:2]}")
    if not m.any():
        return _like(arr, image)
    if cfg.mode == "fill":
        if isinstance(cfg.fill, str):
            outside = arr[~m]
            colour = outside.mean(axis=0) if outside.size else np.full(3, 127.5)
        else:
            colour = np.asarray(cfg.fill, dtype=np.float64)
        arr[m] = np.clip(np.round(colour), 0, 255).astype(np.uint8)
        return _like(arr, image)
    rows, cols = np.nonzero(m)
    side = min(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    # a Python float: PIL compares the radius with a tuple, which a numpy scalar turns into an array
    radius = float(cfg.blur_radius if cfg.blur_radius is not None else max(2.0, side / 4.0))
    blurred = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)))
    arr[m] = blurred[m]
    return _like(arr, image)


def _like(arr: np.ndarray, image: Image.Image) -> Image.Image:
    """``arr`` as a variant of ``image``: a face model cuts it where it found the face in ``image``."""
    from ..models.adapter import carry_view

    return carry_view(Image.fromarray(arr), image)


def region_removal_effects(
    adapter: ModelAdapter,
    images: Sequence[Image.Image],
    masks: Sequence[Mapping[str, np.ndarray]],
    score_classes: Sequence[Sequence[int]],
    *,
    config: RemovalConfig | None = None,
    base_scores: Sequence[float] | None = None,
) -> list[dict[str, dict[str, float]]]:
    """For each image and each named mask: ``{"before", "after", "effect"}`` of the summed
    probability of ``score_classes[i]`` (the true label's class, or a concept's classes).

    ``base_scores`` skips recomputing the original images' scores. One batched model call.
    """
    if not (len(images) == len(masks) == len(score_classes)):
        raise ValueError("images, masks and score_classes must have the same length")
    variants: list[Image.Image] = []
    owners: list[tuple[int, str]] = []
    for i, (img, named) in enumerate(zip(images, masks)):
        for name, m in named.items():
            variants.append(remove_region(img, m, config))
            owners.append((i, name))
    if base_scores is None:
        probs0 = adapter.probabilities(adapter.preprocess(list(images))) if images else torch.empty(0)
        base = [float(probs0[i, list(c)].sum()) for i, c in enumerate(score_classes)]
    else:
        base = [float(b) for b in base_scores]
    out: list[dict[str, dict[str, float]]] = [{} for _ in images]
    if not variants:
        return out
    probs = adapter.probabilities(adapter.preprocess(variants))
    for row, (i, name) in enumerate(owners):
        after = float(probs[row, list(score_classes[i])].sum())
        out[i][name] = {"before": base[i], "after": after, "effect": after - base[i]}
    return out
