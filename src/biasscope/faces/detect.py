"""Face detection (dlib's HOG frontal detector) and 68/5-point landmarks (dlib's shape predictors).

Faces come back largest first as plain values (:class:`Face`): a box and ``(68, 2)`` landmarks in
original-image pixels, in the iBUG 300-W order (0-16 jaw, 17-21 and 22-26 eyebrows, 27-35 nose,
36-41 and 42-47 eyes, 48-67 mouth). dlib is imported on first use only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .deps import dlib_module, frontal_face_detector, shape_predictor

__all__ = ["DEFAULT_MIN_SCORE", "Face", "detect_faces", "landmarks_for_box"]


@dataclass(frozen=True)
class Face:
    """One detected face: box ``(left, top, right, bottom)`` (inclusive pixels), landmarks, score."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray  # (68, 2) float (x, y)
    score: float = 0.0

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0] + 1

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1] + 1

    @property
    def area(self) -> int:
        return self.width * self.height

    def eye_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres of the eye on the image's left (landmarks 36-41) and on its right (42-47)."""
        return self.landmarks[36:42].mean(0), self.landmarks[42:48].mean(0)

    def interocular(self) -> float:
        a, b = self.eye_centres()
        return float(np.hypot(*(b - a)))

    def to_dict(self) -> dict:
        return {"box": list(self.box), "score": self.score, "landmarks": self.landmarks.tolist()}


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _shape_points(shape) -> np.ndarray:
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float64)


def landmarks_for_box(
    image: Image.Image | np.ndarray, box: tuple[int, int, int, int], *, points: int = 68
) -> np.ndarray:
    """dlib landmarks ``(points, 2)`` for the face in ``box`` (``left, top, right, bottom``)."""
    dlib = dlib_module()
    arr = _rgb(image)
    rect = dlib.rectangle(*(int(v) for v in box))
    return _shape_points(shape_predictor(points)(arr, rect))


#: dlib's HOG detector reports an SVM margin; real faces score well above this, while the false
#: positives it finds on textured objects (badges, prints) score near zero.
DEFAULT_MIN_SCORE = 0.25


def detect_faces(
    image: Image.Image | np.ndarray, *, upsample: int | None = None, min_score: float = DEFAULT_MIN_SCORE
) -> list[Face]:
    """All frontal faces with 68 landmarks, largest first.

    ``upsample`` (dlib's pyramid upsampling; each step halves the smallest detectable face, about
    80 px at 0) defaults to 1 for images up to 1000 px on their long side, else 0. Detections
    scoring below ``min_score`` are dropped (lower it to find harder faces, at the cost of more
    false positives).
    """
    arr = _rgb(image)
    if upsample is None:
        upsample = 1 if max(arr.shape[:2]) <= 1000 else 0
    rects, scores, _ = frontal_face_detector().run(arr, int(upsample), 0.0)
    kept = [(r, s) for r, s in zip(rects, scores) if s >= min_score]
    predictor = shape_predictor(68)
    faces = [
        Face(
            box=(r.left(), r.top(), r.right(), r.bottom()),
            landmarks=_shape_points(predictor(arr, r)),
            score=float(s),
        )
        for r, s in kept
    ]
    return sorted(faces, key=lambda f: -f.area)
