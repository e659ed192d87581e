"""Data-quality flags per image for face audits: no face, several faces, turned head, tiny face, blur.

- ``no_face``: dlib's frontal detector found no face (also for strongly turned or occluded faces).
- ``several_faces``: more than one face; face geometry then uses the largest.
- ``turned_head``: yaw asymmetry. ``yaw_ratio`` is where the nose tip (landmark 30) falls between
  the jaw's ends (0 and 16) along the eye line: 0.5 for a frontal face. With the nose about 0.8 jaw
  half-widths in front of the jaw ends, ``yaw_ratio - 0.5 ≈ 0.4 tan(yaw)``, so the default limit of
  0.2 flags heads turned more than roughly 25-30 degrees.
- ``tiny_face``: the detected box is narrower than ``min_face`` pixels (64 by default).
- ``blurry``: the variance of the Laplacian of the grey face (0-255), aligned to a 96-pixel frame
  spanning the mean face (so the measure is relative to the face's size), is below
  ``min_sharpness`` (15 by default; sharp photos score in the hundreds, a face blurred with a
  Gaussian of 1.5 of those pixels scores about 20).

These are heuristics with documented thresholds, meant to let users find and exclude doubtful
images, not to certify good ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from .align import chip_transform, warp_array
from .detect import Face, detect_faces

__all__ = ["QUALITY_FLAGS", "FaceQuality", "assess_quality", "face_sharpness", "yaw_ratio"]

QUALITY_FLAGS: tuple[str, ...] = ("no_face", "several_faces", "turned_head", "tiny_face", "blurry")
SHARPNESS_FRAME = 96


def yaw_ratio(face: Face) -> float:
    """Position of the nose tip between the jaw ends along the eye line (0.5 = frontal)."""
    lm = face.landmarks
    left, right = face.eye_centres()
    axis = (right - left) / max(float(np.hypot(*(right - left))), 1e-9)
    a, b, n = (float(lm[i] @ axis) for i in (0, 16, 30))
    return (n - a) / (b - a) if b != a else float("nan")


def face_sharpness(image: Image.Image | np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the grey face aligned to a 96-pixel mean-face frame."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    grey = arr.mean(-1) if arr.ndim == 3 else arr
    t = chip_transform(face.landmarks, SHARPNESS_FRAME, 0.0)
    g = warp_array(grey, t, (SHARPNESS_FRAME, SHARPNESS_FRAME), fill=0.0)
    return float(ndimage.laplace(g)[4:-4, 4:-4].var())


@dataclass(frozen=True)
class FaceQuality:
    """Quality flags of one image and the measurements behind them."""

    flags: tuple[str, ...]
    n_faces: int
    face: Face | None = None
    yaw_ratio: float | None = None
    face_size: int | None = None
    sharpness: float | None = None
    thresholds: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict:
        return {
            "flags": list(self.flags),
            "n_faces": self.n_faces,
            "box": list(self.face.box) if self.face else None,
            "yaw_ratio": self.yaw_ratio,
            "face_size": self.face_size,
            "sharpness": self.sharpness,
            "thresholds": dict(self.thresholds),
        }


def assess_quality(
    image: Image.Image | np.ndarray,
    faces: list[Face] | None = None,
    *,
    min_face: int = 64,
    max_yaw_asymmetry: float = 0.2,
    min_sharpness: float = 15.0,
) -> FaceQuality:
    """Flags for ``image`` (faces are detected unless given, largest first)."""
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if faces is None:
        faces = detect_faces(arr)
    th = {"min_face": min_face, "max_yaw_asymmetry": max_yaw_asymmetry, "min_sharpness": min_sharpness}
    if not faces:
        return FaceQuality(flags=("no_face",), n_faces=0, thresholds=th)
    face = faces[0]
    flags = []
    if len(faces) > 1:
        flags.append("several_faces")
    yr = yaw_ratio(face)
    if not abs(yr - 0.5) <= max_yaw_asymmetry:
        flags.append("turned_head")
    if face.width < min_face:
        flags.append("tiny_face")
    sharp = face_sharpness(arr, face)
    if sharp < min_sharpness:
        flags.append("blurry")
    return FaceQuality(
        flags=tuple(flags), n_faces=len(faces), face=face, yaw_ratio=yr, face_size=face.width,
        sharpness=sharp, thresholds=th,
    )
