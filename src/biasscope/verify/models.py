"""Face embedding models for verification audits, and the face chips they see.

A face matcher maps an aligned face *chip* to an embedding; two faces match when the cosine
similarity of their embeddings exceeds a threshold. Each model states how its chips are cut
(:class:`ChipRecipe`): chip size, dlib landmarks (5 or 68 points) and padding, exactly as
``dlib.get_face_chip_details(shape, size, padding)`` + ``dlib.extract_image_chip`` do
(:func:`biasscope.faces.chips.extract_chip`), and how pixels are normalised.

- ``dlib-face``: dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``,
  128-d, shipped offline by ``face-recognition-models``), fed 150 px chips from 5-point landmarks
  with padding 0.25: the recipe of dlib's own ``compute_face_descriptor(img, shape)``. It is a dlib
  (C++) network: no gradients, so its explanations use occlusion.
- user models: TorchScript or ONNX files taking ``(N, 3, size, size)`` chips normalised as
  ``(pixel / 255 - mean) / std`` and returning ``(N, D)`` embeddings; they are torch modules
  (ONNX through onnx2torch, checked against onnxruntime), so gradients are available.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BiasscopeError, ModelError
from ..faces.chips import FaceChip, extract_chip
from ..faces.deps import dlib_module, package_file
from ..faces.detect import Face, detect_faces
from ..faces.parts import NoFaceError

__all__ = [
    "DLIB_FACE",
    "DLIB_RECIPE",
    "MSG_NO_DLIB_RESNET",
    "ChipRecipe",
    "DlibFaceModel",
    "EmbeddingModel",
    "TorchEmbeddingModel",
    "cosine_similarity",
    "face_chip",
    "load_embedding_model",
]

DLIB_FACE = "dlib-face"
MSG_NO_DLIB_RESNET = (
    "dlib's face recognition model is missing: pip install 'biasscope[faces]' "
    "(face-recognition-models==0.3.0 ships dlib_face_recognition_resnet_model_v1.dat)"
)
MSG_NO_FACE = "no face found (dlib's frontal face detector); the image cannot be matched"
MSG_UNKNOWN_MODEL = (
    "unknown embedding model {name!r}: use 'dlib-face' or a TorchScript (.pt) / ONNX (.onnx) file "
    "with --chip-size, --padding, --landmarks, --mean and --std"
)


@dataclass(frozen=True)
class ChipRecipe:
    """How a model's face chips are cut and normalised.

    ``size`` x ``size`` pixels, dlib's alignment from ``landmarks`` (5 or 68) points with ``padding``
    (fraction of the face's size added on each side); pixels become ``(p / 255 - mean) / std``.
    """

    size: int = 150
    padding: float = 0.25
    landmarks: int = 5
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.landmarks not in (5, 68):
            raise ValueError(f"chips are aligned with 5 or 68 dlib landmarks, not {self.landmarks}")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"chip size must be between 8 and 1024 pixels, got {self.size}")
        if not 0 <= self.padding <= 2:
            raise ValueError(f"chip padding must be between 0 and 2, got {self.padding}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def to_dict(self) -> dict:
        return asdict(self)


#: dlib's compute_face_descriptor: 150 px, 5-point landmarks, padding 0.25, raw 0-255 pixels
DLIB_RECIPE = ChipRecipe(size=150, padding=0.25, landmarks=5)


def face_chip(image: Image.Image | np.ndarray, recipe: ChipRecipe, *, face: Face | None = None) -> FaceChip:
    """The aligned chip of the largest face (or ``face``) of ``image`` for ``recipe``.

    The chip keeps its image -> chip similarity and the face's 68 landmarks, so face parts can be
    drawn on it. Raises :class:`~biasscope.faces.NoFaceError` when dlib finds no face.
    """
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if face is None:
        faces = detect_faces(arr)
        if not faces:
            raise NoFaceError(MSG_NO_FACE)
        face = faces[0]
    return extract_chip(arr, face, recipe.size, recipe.padding, points=recipe.landmarks)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(N, D)`` (or ``(D,)``) arrays, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a * b, axis=-1) / (na * nb)


class EmbeddingModel(ABC):
    """A face matcher: aligned chips -> embeddings. Subclasses implement :meth:`embed`."""

    name: str
    recipe: ChipRecipe
    #: whether :meth:`torch_embed` exists (gradients of the match score)
    differentiable: bool = False

    @abstractmethod
    def embed(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, D)`` float64 embeddings of ``N`` RGB uint8 chips ``(size, size, 3)``."""

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and the recipe (a run refuses to mix two models under one name)."""
        return hashlib.sha256(repr((self.name, self.recipe.to_dict())).encode()).hexdigest()

    def chip(self, image: Image.Image | np.ndarray, *, face: Face | None = None) -> FaceChip:
        return face_chip(image, self.recipe, face=face)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "recipe": self.recipe.to_dict(), "differentiable": self.differentiable}


def _chips_array(chips: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    out = []
    for c in chips:
        a = np.ascontiguousarray(np.asarray(c, dtype=np.uint8))
        if a.shape != (size, size, 3):
            raise ValueError(f"expected RGB uint8 chips of shape ({size}, {size}, 3), got {a.shape}")
        out.append(a)
    return out


class DlibFaceModel(EmbeddingModel):
    """dlib's face recognition ResNet (128-d), as ``compute_face_descriptor`` on 150 px chips."""

    def __init__(self, path: str | Path | None = None) -> None:
        dlib = dlib_module()
        self.path = Path(path) if path else package_file(
            "face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat", MSG_NO_DLIB_RESNET
        )
        self.name = DLIB_FACE
        self.recipe = DLIB_RECIPE
        self._net = dlib.face_recognition_model_v1(str(self.path))
        self._lock = threading.Lock()  # one dlib net is not safe to run from two threads at once

    @property
    def fingerprint(self) -> str:
        st = self.path.stat()
        return hashlib.sha256(f"{self.name}:{st.st_size}:{self.recipe}".encode()).hexdigest()

    def embed(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        arrs = _chips_array(chips, self.recipe.size)
        if not arrs:
            return np.zeros((0, 128))
        with self._lock:
            vecs = self._net.compute_face_descriptor(arrs)
        return np.array([np.array(v) for v in vecs], dtype=np.float64)

    def reference_descriptor(self, image: Image.Image | np.ndarray, face: Face) -> np.ndarray:
        """dlib's own ``compute_face_descriptor(img, shape)`` for ``face`` (to check our chips against)."""
        dlib = dlib_module()
        from ..faces.detect import landmarks_for_box

        arr = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
        lm = landmarks_for_box(arr, face.box, points=self.recipe.landmarks)
        rect = dlib.rectangle(*(int(v) for v in face.box))
        shape = dlib.full_object_detection(rect, [dlib.point(*p) for p in np.rint(lm).astype(int).tolist()])
        with self._lock:
            return np.array(self._net.compute_face_descriptor(arr, shape, 0, self.recipe.padding))


class TorchEmbeddingModel(EmbeddingModel):
    """A torch module mapping normalised ``(N, 3, s, s)`` chips to ``(N, D)`` embeddings."""

    differentiable = True

    def __init__(self, module: torch.nn.Module, recipe: ChipRecipe, *, name: str = "embedding",
                 device: str = "cpu", batch_size: int = 64, fingerprint: str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.module = module.eval().to(device=device, dtype=dtype)
        self.dtype = dtype
        self.recipe = recipe
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str:
        return self._fingerprint or super().fingerprint

    def to_tensor(self, chips: Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised ``(N, 3, s, s)`` float32 tensor of uint8 chips."""
        arrs = _chips_array(chips, self.recipe.size)
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255.0)
        mean = torch.tensor(self.recipe.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.recipe.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(device=self.device, dtype=self.dtype)

    def torch_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of normalised chips, differentiable."""
        out = self.module(x)
        if isinstance(out, list | tuple):
            out = out[0]
        if out.ndim != 2:
            out = out.reshape(out.shape[0], -1)
        return out

    def embed(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        arrs = list(chips)
        outs = []
        with torch.no_grad():
            for s in range(0, len(arrs), self.batch_size):
                outs.append(self.torch_embed(self.to_tensor(arrs[s : s + self.batch_size])).double().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, 0))


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_embedding_model(
    model: str | Path = DLIB_FACE,
    *,
    recipe: ChipRecipe | None = None,
    device: str = "cpu",
) -> EmbeddingModel:
    """``"dlib-face"`` or a TorchScript / ONNX embedding model file with its chip ``recipe``.

    A user model's recipe must be given (chip size, landmarks, padding, normalisation): a matcher
    fed chips cut differently from its training chips gives meaningless scores.
    """
    if str(model) == DLIB_FACE:
        if recipe is not None and recipe != DLIB_RECIPE:
            raise BiasscopeError("dlib-face has a fixed recipe (150 px, 5 landmarks, padding 0.25); "
                                 "drop --chip-size/--padding/--landmarks/--mean/--std")
        return DlibFaceModel()
    path = Path(model)
    if not path.is_file():
        raise ModelError(MSG_UNKNOWN_MODEL.format(name=str(model)))
    if recipe is None:
        raise ModelError(f"{path}: a user embedding model needs its chip recipe "
                         "(--chip-size, --padding, --landmarks, --mean, --std)")
    from ..models.files import is_torchscript, load_onnx, load_torchscript

    if path.suffix.lower() == ".onnx":
        module, _, _ = load_onnx(path, check=False)
        _check_onnx(path, module, recipe.size)
    elif is_torchscript(path):
        module = load_torchscript(path, torch.device(device))
    else:
        raise ModelError(f"{path}: expected a TorchScript file or an .onnx file")
    return TorchEmbeddingModel(module, recipe, name=path.name, device=device, fingerprint=_file_sha(path))


def _check_onnx(path: Path, module: torch.nn.Module, size: int) -> None:
    """onnx2torch's module must give onnxruntime's embeddings (or the audit would measure a different model)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        out = (out[0] if isinstance(out, list | tuple) else out).numpy().reshape(ref.shape)
    except Exception as exc:
        raise ModelError(f"{path}: could not run it on a (1, 3, {size}, {size}) chip ({str(exc).splitlines()[0]}); "
                         "check --chip-size") from None
    scale = max(float(np.abs(ref).max()), 1e-6)
    if float(np.abs(out - ref).max()) > 1e-3 * scale:
        raise ModelError(f"{path}: the converted model disagrees with onnxruntime; export it as TorchScript instead")
