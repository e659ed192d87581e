"""Explain a face-attribute model on one photo: the face's chip is explained and the maps placed back.

:func:`explain_face` finds the face as the model's own pipeline does (or landmarks a given box),
explains the model on its chip with :func:`biasscope.api.explain` and returns the maps both on the
chip and in the photo's pixels, with the footprint of what the model saw.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from ..models.adapter import VIEW_INFO_KEY
from .attribute import FaceAttributeModel
from .chips import FaceChip, chip_footprint
from .detect import Face, landmarks_for_box

__all__ = ["FaceExplanation", "explain_face"]


@dataclass
class FaceExplanation:
    """One face's prediction and explanations, on the chip and in the original image."""

    face: Face
    chip: FaceChip
    probabilities: dict[str, float]
    chip_explanations: dict[str, Any]  # {method: Explanation} on the chip
    explanations: dict[str, Any]  # {method: Explanation} with heatmaps in original-image pixels
    footprint: np.ndarray = field(repr=False)  # (H, W) bool: pixels the model saw

    def to_dict(self) -> dict:
        return {
            "box": list(self.face.box),
            "probabilities": self.probabilities,
            "methods": {k: e.to_dict() for k, e in self.explanations.items()},
        }


def explain_face(
    model: FaceAttributeModel,
    image: Image.Image,
    methods: str | Sequence[str] = ("gradcam",),
    *,
    face: Face | None = None,
    target: int | str | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    faithfulness: bool = False,
) -> FaceExplanation:
    """Find the face (the model's own pipeline, or ``face``'s box landmarked again), cut its chip,
    explain the model on it and map the heatmaps back onto the photo."""
    from ..api import explain

    img = image.convert("RGB")
    if face is not None:  # the given box, landmarked with the model's 5 points
        lm = landmarks_for_box(img, face.box, points=model.landmark_points)
        img.info[VIEW_INFO_KEY] = (weakref.ref(img), tuple(int(v) for v in face.box), lm)
    chip = model.adapter.chip_of(img)
    probs = model.probabilities([chip])[0]
    mapped = explain(model.adapter, img, methods, target=target, params=params, faithfulness=faithfulness)
    on_chip = {name: replace(e, heatmap=np.asarray(e.model_heatmap, dtype=np.float32), segments=None)
               for name, e in mapped.items()}
    size = (img.height, img.width)
    return FaceExplanation(
        face=face or chip.face,
        chip=chip,
        probabilities={lab: float(p) for lab, p in zip(model.labels, probs)},
        chip_explanations=on_chip,
        explanations=mapped,
        footprint=chip_footprint(chip, size),
    )
